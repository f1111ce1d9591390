"""The edge threshold: from labeled pairs, from the shards' labels, or from the distance distribution.

A fitted threshold is only used when it is plausible: inside the metric's range and within
[PLAUSIBLE_LOW, PLAUSIBLE_HIGH] x the spec's verification threshold. Otherwise, and when there are
too few faces or pairs to fit, the spec's default (SPEC_SHARE x the verification threshold) is used,
and the summary says why.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os

import numpy as np

from facebeam.transforms import labels
from facebeam.transforms.errors import UserError
from facebeam.transforms.knn import prepare, to_distance
from facebeam.transforms.persons.tables import scan, vectors_of

log = logging.getLogger(__name__)
# The different-person false-accept rate one edge may have (Gaussian fit of different-person distances).
EDGE_FAR = 1e-3
# Measured on the sample (dlib, verification threshold 0.6): labeled pairs fit 0.57, the distance
# distribution 0.614. A graph edge is a little tighter than a one-pair verification, never far off.
SPEC_SHARE = 0.95
PLAUSIBLE_LOW, PLAUSIBLE_HIGH = 0.5, 1.1
METRIC_MAX = {"cosine": 2.0, "euclidean_l2": 2.0}  # normalized metrics; raw euclidean has no bound
MIN_RANDOM_PAIRS = 50


@dataclasses.dataclass(frozen=True)
class Threshold:
    """An edge threshold, where it came from (flag, carried, pairs, labels, distribution, spec), and why."""

    value: float
    source: str
    note: str = ""

    def describe(self) -> str:
        return f"threshold {self.value:.4f} ({self.source}{': ' + self.note if self.note else ''})"


def plausible_range(verification: float | None, metric: str) -> tuple:
    """(low, high) an edge threshold must fall in: the metric's range, and near the verification threshold."""
    top = METRIC_MAX.get(metric, math.inf)
    if verification is None or not math.isfinite(verification) or verification <= 0:
        return 1e-6, top
    return round(PLAUSIBLE_LOW * verification, 4), round(min(top, PLAUSIBLE_HIGH * verification), 4)


def spec_default(verification: float | None, metric: str) -> float:
    if verification is None:
        return {"cosine": 0.3, "euclidean_l2": 0.75}.get(metric, 0.6)  # deepface's usual order of magnitude
    return round(SPEC_SHARE * verification, 4)


def checked(value: float, source: str, verification: float | None, metric: str) -> Threshold:
    """A fitted threshold if plausible, else the spec default, saying why."""
    low, high = plausible_range(verification, metric)
    if math.isfinite(value) and low <= value <= high:
        return Threshold(value, source, f"plausible range [{low}, {high}]")
    fallback = spec_default(verification, metric)
    # info: the result line says it (summary.Threshold.fallback)
    log.info("fitted threshold %.4f (%s) is outside the plausible range [%s, %s]; using the spec default %.4f",
             value, source, low, high, fallback)
    return Threshold(fallback, "spec", f"fitted {value:.4f} from the {source} is outside [{low}, {high}]")


def verification_of(spec) -> float | None:
    try:
        return float(spec.threshold)
    except (KeyError, ImportError, AttributeError, TypeError):  # a model deepface has no threshold for
        return None


def threshold_from_vectors(x: np.ndarray, metric: str, verification: float | None) -> Threshold:
    """From a sample of prepared vectors without labels: the distance distribution, checked; too few faces
    to fit -> the spec default."""
    d = random_pair_distances(x, metric)
    if len(d) < MIN_RANDOM_PAIRS:
        value = spec_default(verification, metric)
        log.info("%d faces give %d random pairs, fewer than the %d a fit needs; using the spec default %.4f",
                 len(x), len(d), MIN_RANDOM_PAIRS, value)  # info: the result line says it
        return Threshold(value, "spec", f"{len(x)} faces: too few to fit a distribution (need {MIN_RANDOM_PAIRS} pairs)")
    return checked(threshold_from_distances(d), "distribution", verification, metric)


def normal_quantile(p: float) -> float:
    """The standard normal quantile of 1 - p (p small), by bisection on erfc (no scipy needed for one number)."""
    lo, hi = 0.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def threshold_from_pairs(same, different, far: float = EDGE_FAR) -> float:
    """From labeled distances: the point where a Gaussian fit of the different-person distances has
    false-accept rate `far`, but never past the largest same-person distance (no use linking further)."""
    diff = np.asarray(different, dtype=np.float64)
    same = np.asarray(same, dtype=np.float64)
    if len(diff) < 10 or len(same) < 3:
        raise ValueError("need at least 10 different-person and 3 same-person distances")
    t = float(diff.mean() - normal_quantile(far) * diff.std(ddof=1))
    return round(min(t, float(np.quantile(same, 0.99))), 4)


def threshold_from_distances(random_d, far: float = EDGE_FAR, iters: int = 200) -> float:
    """From the distances of random face pairs (no labels): a two-component Gaussian mixture; the
    far component is different people. Threshold: that component's false-accept rate is `far`."""
    d = np.asarray(random_d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < MIN_RANDOM_PAIRS:
        raise ValueError(f"need at least {MIN_RANDOM_PAIRS} random pair distances")
    lo, hi = np.quantile(d, [0.05, 0.5])
    mu = np.array([lo, hi])
    sd = np.array([d.std() / 2, d.std()])
    w = np.array([0.1, 0.9])
    for _ in range(iters):
        dens = w / (sd * math.sqrt(2 * math.pi)) * np.exp(-0.5 * ((d[:, None] - mu) / sd) ** 2)
        r = dens / np.maximum(dens.sum(1, keepdims=True), 1e-300)
        nk = r.sum(0) + 1e-9
        w, mu = nk / len(d), (r * d[:, None]).sum(0) / nk
        sd = np.sqrt(np.maximum((r * (d[:, None] - mu) ** 2).sum(0) / nk, 1e-6))
    far_c = int(np.argmax(mu))
    return round(float(mu[far_c] - normal_quantile(far) * sd[far_c]), 4)


def random_pair_distances(x: np.ndarray, metric: str, n: int = 200_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if len(x) < 2:
        return np.zeros(0)
    if len(x) * (len(x) - 1) // 2 <= n:
        i, j = np.triu_indices(len(x), 1)
    else:
        i, j = rng.integers(0, len(x), n), rng.integers(0, len(x), n)
        keep = i != j
        i, j = i[keep], j[keep]
    return to_distance(np.linalg.norm(x[i] - x[j], axis=1), metric)


def fit_threshold(files, spec, given=None, pairs=None, carried=None, sample: int = 3000) -> Threshold:
    """The threshold and where it came from: the flag; the one carried by an incremental run; labeled
    pairs (--pairs, largest face of each named photo); labels in the shards; else the distance
    distribution. Fitted values are checked (`checked`); too few faces or pairs -> the spec default."""
    verification = verification_of(spec)
    if given is not None:
        return Threshold(float(given), "flag")
    if carried is not None:
        return Threshold(float(carried), "carried", "from the earlier clustering")
    total = sum(b.num_rows for b in scan(files, ["face_id"]))
    cut = int(0x1000000 * min(1.0, sample / max(total, 1)))
    wanted = {n for x, y, _ in labels.read_pairs(pairs) for n in (x, y)} if pairs else set()
    biggest, labeled, rand = {}, [], []
    for b in scan(files, ["face_id", "image_path", "box_w", "box_h", "label", "embedding"]):
        d = b.to_pydict()
        x = prepare(vectors_of(b, spec.dim), spec.metric)
        for i, fid in enumerate(d["face_id"]):
            name = os.path.basename(d["image_path"][i])
            if name in wanted:
                area = d["box_w"][i] * d["box_h"][i]
                if name not in biggest or area > biggest[name][0]:
                    biggest[name] = (area, x[i])
            if d["label"][i] and len(labeled) < 20000:
                labeled.append((d["label"][i], x[i]))
            if int(fid[:6], 16) < cut:
                rand.append(x[i])

    def dist(a, b):
        return float(to_distance(np.linalg.norm(a - b), spec.metric))

    if pairs:
        same, diff = [], []
        for a, b, yes in labels.read_pairs(pairs):
            if a in biggest and b in biggest:
                (same if yes else diff).append(dist(biggest[a][1], biggest[b][1]))
        try:
            return checked(threshold_from_pairs(same, diff), "pairs", verification, spec.metric)
        except ValueError as e:
            raise UserError(f"--pairs {pairs}: {e} among photos of the shards (found {len(same)} + {len(diff)})") from None
    if labeled:
        lab = np.asarray([x for x, _ in labeled], dtype=object)
        vec = np.asarray([v for _, v in labeled], dtype=np.float32)
        i, j = np.triu_indices(len(vec), 1)
        d = to_distance(np.linalg.norm(vec[i] - vec[j], axis=1), spec.metric) if len(vec) <= 3000 else None
        if d is not None:
            same_mask = lab[i] == lab[j]
            try:
                return checked(threshold_from_pairs(d[same_mask], d[~same_mask]), "labels", verification, spec.metric)
            except ValueError:
                pass
    x = np.asarray(rand, dtype=np.float32).reshape(-1, spec.dim)
    return threshold_from_vectors(x, spec.metric, verification)


def threshold_for_bench(x: np.ndarray, stats: dict, given=None) -> tuple:
    """(threshold, source) for synthetic vectors: the flag, else their distance distribution, checked against
    the verification threshold the stats were fitted with (dlib's 0.6 when they carry none)."""
    if given is not None:
        return float(given), "flag"
    t = threshold_from_vectors(x[:3000], stats.get("metric", "euclidean"), stats.get("threshold") or 0.6)
    return t.value, t.source
