"""Synthetic face vectors shaped like real ones: identities, within-identity spread, norms.

Fit once on real embeddings with known identities (`fit`, `fit_sample`), keep the
result as a small JSON-able dict, and generate any number of vectors from it
(`SyntheticFaces`), chunk by chunk and deterministically from a seed.

The model is a two-level Gaussian, as in PLDA:

    face = mean + identity offset + within-identity residual
    identity offset ~ N(0, S_between),  residual ~ N(0, S_within)

S_within comes from the residuals around each identity's mean (pooled, N - K
degrees of freedom). S_between comes from the identity means, less the share of
S_within that the mean of n_i faces still carries (Var(mean) = S_between + S_within / n_i).
A sample of a few dozen faces gives covariances of low rank, so each one is shrunk
toward its own diagonal with the Schafer-Strimmer intensity: the trace (and so the
expected distances) is kept, the variance is spread over all dimensions instead of
the dozen directions the sample happens to span. Both are stored as low-rank factors
plus a diagonal, so sampling is two small matrix products and no matrix square root.

Norms: the generated norms are mapped radially (a monotone, affine map of each
vector's norm) onto the mean and spread of the real norms, so a bench indexes
vectors of the real magnitude.
"""
import glob
import logging
import os

import numpy as np

from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)
# The photos benchmarks run on and fit their synthetic vectors to (with face-recognition-pivot.csv).
DEFAULT_SAMPLE = os.path.join("..", "shared", "data", "faces")
STATS_VERSION = 1
BLOCK_ROWS = 8192  # random streams are cut per block: vectors(i) do not depend on the chunk size
_STREAM_FACES, _STREAM_QUERIES, _STREAM_LAYOUT = 1, 2, 3


class SyntheticError(UserError, ValueError):
    """The sample cannot be fitted, or the stats are not usable."""


# --- fitting -------------------------------------------------------------------------------
def _shrinkage(z: np.ndarray) -> float:
    """Schafer-Strimmer intensity toward the diagonal for centred data z (n x p)."""
    n = z.shape[0]
    if n < 3:
        return 1.0
    w = z[:, :, None] * z[:, None, :]  # n x p x p: fine for the few dozen rows of a sample
    s = w.mean(0) * n / (n - 1)
    var_s = n / (n - 1) ** 3 * ((w - w.mean(0)) ** 2).sum(0)
    off = ~np.eye(z.shape[1], dtype=bool)
    denom = float((s[off] ** 2).sum())
    return 1.0 if denom == 0 else float(np.clip(var_s[off].sum() / denom, 0.0, 1.0))


def _factor(cov: np.ndarray, rel_tol: float = 1e-9) -> np.ndarray:
    """L (r x p) with L.T @ L == cov over its non-null eigenvalues."""
    vals, vecs = np.linalg.eigh(cov)
    keep = vals > rel_tol * max(vals.max(), 1e-30)
    return (vecs[:, keep] * np.sqrt(vals[keep])).T[::-1]


def _shrunk(z: np.ndarray, scale: float = 1.0, dof=None) -> dict:
    """Covariance of centred rows z (with `dof`), times `scale`, shrunk toward its diagonal."""
    dof = dof or (z.shape[0] - 1)
    cov = z.T @ z / dof * scale
    lam = _shrinkage(z)
    return {"factor": _rounded(_factor(cov) * np.sqrt(1.0 - lam)),
            "diag_std": _rounded(np.sqrt(np.diag(cov) * lam)),
            "shrinkage": round(lam, 4), "trace": float(np.trace(cov)), "rank": int(np.linalg.matrix_rank(cov))}


def _spread_heterogeneity(resid: np.ndarray, inv: np.ndarray, counts: np.ndarray, within: dict) -> dict:
    """Log-variance of the residual scale per identity and per face (method of moments).

    Real people differ in how much their photos vary, and some photos are worse than
    others; a single S_within makes every same-person distance alike. q_i = |r_i|^2
    (corrected for the mean's share) has, under the plain Gaussian, a log-variance of
    about 2 tr(S^2) / tr(S)^2; what the sample shows beyond that within identities is
    the per-face part, what the identity means of log q show beyond their own noise is
    the per-identity part. Each scale multiplies the residual's variance by a
    mean-one lognormal, so traces and expected distances are kept.
    """
    dim = resid.shape[1]
    factor = np.asarray(within["factor"]).reshape(-1, dim)
    cov = factor.T @ factor + np.diag(np.asarray(within["diag_std"]) ** 2)
    gauss = 2.0 * float(np.sum(cov * cov)) / float(np.trace(cov)) ** 2
    n_i = counts[inv]
    log_q = np.log(np.maximum(np.sum(resid ** 2, axis=1) * n_i / (n_i - 1), 1e-30))
    groups = [log_q[inv == g] for g in np.unique(inv)]
    within_var = float(np.mean([g.var(ddof=1) for g in groups]))
    between_var = float(np.var([g.mean() for g in groups], ddof=1)) if len(groups) > 1 else 0.0
    face = max(within_var - gauss, 0.0)
    identity = max(between_var - within_var * float(np.mean([1.0 / len(g) for g in groups])), 0.0)
    return {"log_var_identity": round(identity, 5), "log_var_face": round(face, 5)}


def _rounded(a: np.ndarray):
    return np.round(np.asarray(a, dtype=np.float64), 7).tolist()


def fit(vectors, labels, norms=None, threshold=None, metric="euclidean") -> dict:
    """Stats of identity-labelled vectors (N x dim; labels: N hashables, >= 2 faces for some).

    `norms` (default: those of `vectors`) sets the norm distribution to match, e.g.
    the norms of every face of the sample, labelled or not.
    """
    x = np.asarray(vectors, dtype=np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(labels):
        raise SyntheticError("need an N x dim array and N labels")
    ids, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if (counts >= 2).sum() < 2:
        raise SyntheticError("need at least two identities with two or more faces each")
    means = np.zeros((len(ids), x.shape[1]))
    np.add.at(means, inv, x)
    means /= counts[:, None]
    resid = (x - means[inv])[counts[inv] >= 2]  # singletons carry no within-identity information
    n_within, k_within = len(resid), int((counts >= 2).sum())
    within = _shrunk(resid, dof=n_within - k_within)
    within.update(_spread_heterogeneity(resid, inv[counts[inv] >= 2], counts, within))
    centre = means.mean(0)
    # Var(identity mean) = S_between + S_within / n_i: take the expected S_within share out of the trace.
    spread = max(float(np.sum((means - centre) ** 2)) / (len(ids) - 1), 1e-30)
    between_share = within["trace"] * float(np.mean(1.0 / counts)) / spread
    between = _shrunk(means - centre, scale=max(1.0 - between_share, 0.05))
    real_norms = np.linalg.norm(x, axis=1) if norms is None else np.asarray(norms, dtype=np.float64)
    return {
        "version": STATS_VERSION, "dim": int(x.shape[1]), "metric": metric, "threshold": threshold,
        "mean": _rounded(centre), "between": between, "within": within,
        "norm": {"mean": float(real_norms.mean()), "std": float(real_norms.std(ddof=1)),
                 "min": float(real_norms.min()), "max": float(real_norms.max())},
        "source": {"faces": int(len(x)), "identities": int(len(ids)),
                   "faces_per_identity": sorted(int(c) for c in counts)},
    }


def identities_from_pairs(pairs_csv: str) -> dict:
    """file name -> identity (the smallest file name of its group); see labels.identities_from_pairs."""
    from facebeam.transforms import labels

    return labels.identities_from_pairs(labels.read_pairs(pairs_csv))


def fit_sample(embeddings_dir: str, pairs_csv: str, spec=None) -> dict:
    """Stats from an embed job's Parquet shards and the labelled pairs of its photos.

    The largest face of each photo is that photo's face; photos in no 'Yes' pair are
    used for the norms only.
    """
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(embeddings_dir, "*.parquet")))
    if not files:
        raise SyntheticError(f"no Parquet shards in {embeddings_dir}")
    cols = ["image_path", "embedding", "box_w", "box_h"]
    best, all_vectors = {}, []
    for f in files:
        for r in pq.read_table(f, columns=cols).to_pylist():
            all_vectors.append(r["embedding"])
            name = os.path.basename(r["image_path"])
            if name not in best or r["box_w"] * r["box_h"] > best[name]["box_w"] * best[name]["box_h"]:
                best[name] = r
    ident = identities_from_pairs(pairs_csv)
    names = sorted(n for n in best if n in ident)
    if not names:
        raise SyntheticError(f"no photo of {embeddings_dir} appears in a 'Yes' pair of {pairs_csv}")
    stats = fit([best[n]["embedding"] for n in names], [ident[n] for n in names],
                norms=np.linalg.norm(np.asarray(all_vectors, dtype=np.float64), axis=1),
                threshold=spec.threshold if spec else None, metric=spec.metric if spec else "euclidean")
    if spec is not None:
        stats["spec_id"], stats["model"] = spec.spec_id, spec.model
    return stats


# --- generating ------------------------------------------------------------------------------
def _gaussian(rng, n: int, part: dict, dim: int, dtype=np.float64) -> np.ndarray:
    """n draws of N(0, L.T L + diag(d^2))."""
    factor = np.asarray(part["factor"], dtype=dtype).reshape(-1, dim)
    out = rng.standard_normal((n, dim), dtype=dtype) * np.asarray(part["diag_std"], dtype=dtype)
    if len(factor):
        out += rng.standard_normal((n, len(factor)), dtype=dtype) @ factor
    return out


class SyntheticFaces:
    """N vectors of K identities drawn from fitted stats; vectors(start, stop) is random access.

    Identity sizes are skewed (lognormal weights, every identity at least one face,
    mean `faces_per_identity`), and faces are shuffled so identities are spread over the
    whole id range. Memory: N int32 labels + K x dim centroids; vectors are made per block.
    """

    def __init__(self, stats: dict, n: int, seed: int = 0, faces_per_identity: float = 20.0, skew: float = 0.8):
        if stats.get("version") != STATS_VERSION:
            raise SyntheticError(f"stats version {stats.get('version')!r}, expected {STATS_VERSION}")
        if n < 1 or faces_per_identity < 1:
            raise SyntheticError("need n >= 1 and faces_per_identity >= 1")
        self.stats, self.n, self.seed, self.dim = stats, int(n), int(seed), int(stats["dim"])
        self.faces_per_identity, self.skew = float(faces_per_identity), float(skew)
        self.k = max(1, int(round(n / faces_per_identity)))
        rng = np.random.default_rng([self.seed, _STREAM_LAYOUT])
        weights = rng.lognormal(0.0, skew, self.k)
        self.sizes = 1 + rng.multinomial(self.n - self.k, weights / weights.sum())
        labels = np.repeat(np.arange(self.k, dtype=np.int32), self.sizes)
        rng.shuffle(labels)
        self.labels = labels
        self._mean = np.asarray(stats["mean"], dtype=np.float64)
        self._within_factor = np.asarray(stats["within"]["factor"], dtype=np.float32).reshape(-1, self.dim)
        self._within_diag = np.asarray(stats["within"]["diag_std"], dtype=np.float32)
        self.centroids = (self._mean + _gaussian(rng, self.k, stats["between"], self.dim)).astype(np.float32)
        var_id = float(stats["within"].get("log_var_identity", 0.0))
        self._id_scale = np.exp(0.5 * (rng.standard_normal(self.k) * np.sqrt(var_id) - var_id / 2)).astype(np.float32)
        # The affine norm map, calibrated once on a fixed draw of the unmapped model.
        calib = self._raw(np.random.default_rng([self.seed, 99]), min(20000, max(2000, self.n)),
                          rng.integers(0, self.k, min(20000, max(2000, self.n))))
        cn = np.linalg.norm(calib, axis=1)
        self._norm_from = (float(cn.mean()), float(cn.std()) or 1.0)

    def _raw(self, rng, n: int, labels: np.ndarray) -> np.ndarray:
        within = self.stats["within"]
        var_face = float(within.get("log_var_face", 0.0))
        scale = self._id_scale[labels] * np.exp(0.5 * (rng.standard_normal(n) * np.sqrt(var_face) - var_face / 2))
        resid = rng.standard_normal((n, self.dim), dtype=np.float32) * self._within_diag
        resid += rng.standard_normal((n, len(self._within_factor)), dtype=np.float32) @ self._within_factor
        resid *= scale.astype(np.float32)[:, None]
        return resid + self.centroids[labels]

    def _finish(self, x: np.ndarray) -> np.ndarray:
        target = self.stats["norm"]
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        mapped = target["mean"] + (norms - self._norm_from[0]) * (target["std"] / self._norm_from[1])
        mapped = np.maximum(mapped, 1e-3)
        x *= (mapped / np.maximum(norms, 1e-12)).astype(np.float32)
        return x

    def _block(self, b: int) -> np.ndarray:
        lo, hi = b * BLOCK_ROWS, min(self.n, (b + 1) * BLOCK_ROWS)
        rng = np.random.default_rng([self.seed, _STREAM_FACES, b])
        return self._finish(self._raw(rng, hi - lo, self.labels[lo:hi]))

    def vectors(self, start: int = 0, stop=None) -> np.ndarray:
        """Rows [start, stop) as float32 (stop - start) x dim; the same whatever the slicing."""
        stop = self.n if stop is None else min(int(stop), self.n)
        start = max(0, int(start))
        if stop <= start:
            return np.zeros((0, self.dim), dtype=np.float32)
        first, last = start // BLOCK_ROWS, (stop - 1) // BLOCK_ROWS
        parts = [self._block(b) for b in range(first, last + 1)]
        out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out[start - first * BLOCK_ROWS: stop - first * BLOCK_ROWS]

    def chunks(self, chunk_rows: int = 50_000):
        """(start, float32 array) pieces covering all n rows, at most chunk_rows each."""
        for start in range(0, self.n, chunk_rows):
            yield start, self.vectors(start, start + chunk_rows)

    def queries(self, n: int, seed: int = 0):
        """(vectors, identity labels): n new faces of existing identities, not among the N."""
        rng = np.random.default_rng([self.seed, _STREAM_QUERIES, int(seed)])
        labels = rng.integers(0, self.k, n).astype(np.int32)
        return self._finish(self._raw(rng, n, labels)), labels


def uniform_like(stats: dict, n: int, seed: int = 0) -> np.ndarray:
    """Uniform noise with the per-dimension centre and spread of the model: the baseline to beat."""
    rng = np.random.default_rng([seed, 7])
    mean = np.asarray(stats["mean"])
    std = np.sqrt(sum(np.sum(np.asarray(p["factor"]).reshape(-1, len(mean)) ** 2, axis=0) + np.asarray(p["diag_std"]) ** 2
                      for p in (stats["between"], stats["within"])))
    half = np.sqrt(3.0) * std  # a uniform on [-h, h] has std h / sqrt(3)
    return (mean + rng.uniform(-1, 1, (n, len(mean))) * half).astype(np.float32)


_STREAM_HARD = 4


class HardFaces(SyntheticFaces):
    """A harder collection from the same fitted stats, closer to real photo libraries:

    - identity sizes from a Zipf-like law (rank r gets weight r^-zipf): a few people in thousands of
      photos, most in one or two;
    - look-alikes: `lookalike_share` of the identities have their centre pulled toward another's, to
      `lookalike_gap` of the distance between them;
    - low-quality faces: `low_quality_share` of the faces lie `low_quality_spread` times further from
      their identity's centre (blur, tiny crops), kept at the real norms;
    - near-duplicates: `duplicate_share` of the faces are another face of theirs plus a tiny jitter
      (bursts, edited copies).

    `labels` are the true identities; vectors(start, stop) stays random access and deterministic.
    """

    def __init__(self, stats: dict, n: int, seed: int = 0, faces_per_identity: float = 20.0, zipf: float = 1.1,
                 lookalike_share: float = 0.2, lookalike_gap: float = 0.55, low_quality_share: float = 0.05,
                 low_quality_spread: float = 2.0, duplicate_share: float = 0.05):
        super().__init__(stats, n, seed=seed, faces_per_identity=faces_per_identity)
        rng = np.random.default_rng([self.seed, _STREAM_HARD])
        weights = np.arange(1, self.k + 1, dtype=np.float64) ** -float(zipf)
        sizes = 1 + rng.multinomial(self.n - self.k, weights / weights.sum())
        labels = np.repeat(np.arange(self.k, dtype=np.int32), sizes)
        rng.shuffle(labels)
        # Near-duplicates copy the face just before them (same block, so a block is made alone).
        dup = rng.random(self.n) < duplicate_share
        dup[np.arange(self.n) % BLOCK_ROWS == 0] = False
        for i in np.flatnonzero(dup):  # in order, so a run of duplicates copies one face
            labels[i] = labels[i - 1]
        self.labels, self.duplicate = labels, dup
        self.sizes = np.bincount(labels, minlength=self.k)
        self.low_quality = (rng.random(self.n) < low_quality_share) & ~dup
        self.low_quality_spread = float(low_quality_spread)
        alike = np.flatnonzero(rng.random(self.k) < lookalike_share)
        partner = rng.integers(0, self.k, len(alike))
        keep = partner != alike
        alike, partner = alike[keep], partner[keep]
        c = self.centroids
        c[alike] = c[partner] + float(lookalike_gap) * (c[alike] - c[partner])
        self.lookalikes = len(alike)

    def _block(self, b: int) -> np.ndarray:
        lo, hi = b * BLOCK_ROWS, min(self.n, (b + 1) * BLOCK_ROWS)
        rng = np.random.default_rng([self.seed, _STREAM_HARD, b])
        x = self._finish(self._raw(rng, hi - lo, self.labels[lo:hi]))
        low = self.low_quality[lo:hi]
        if low.any():
            norms = np.linalg.norm(x[low], axis=1, keepdims=True)
            centre = self.centroids[self.labels[lo:hi][low]]
            wide = centre + self.low_quality_spread * (x[low] - centre)
            x[low] = wide * (norms / np.maximum(np.linalg.norm(wide, axis=1, keepdims=True), 1e-12))
        dup = np.flatnonzero(self.duplicate[lo:hi])
        if len(dup):
            jitter = 0.02 * float(np.mean(self._within_diag))
            for i in dup:  # in order: a duplicate of a duplicate copies the copy
                x[i] = x[i - 1] + rng.standard_normal(self.dim).astype(np.float32) * jitter
        return x
