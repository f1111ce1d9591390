"""Synthetic face vectors against the real sample: same-person distances, norms, not noise."""
import json
import os

import numpy as np
import pytest

from facebeam.pipelines.bench import synthetic
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import PAIRS, labeled_pairs, largest_face_by_file, read_rows

SPEC = EmbeddingSpec()


@pytest.fixture(scope="module")
def real(sample_run):
    """(stats fitted on the sample, name -> vector of each photo's largest face, norms of every face)."""
    out, _ = sample_run
    folder = os.path.join(out, "embeddings")
    rows = read_rows(folder)
    vectors = {k: np.asarray(r["embedding"], np.float32) for k, r in largest_face_by_file(rows).items()}
    norms = np.linalg.norm(np.asarray([r["embedding"] for r in rows], np.float32), axis=1)
    return synthetic.fit_sample(folder, PAIRS, SPEC), vectors, norms


@pytest.fixture(scope="module")
def faces(real):
    return synthetic.SyntheticFaces(real[0], 20_000, seed=3)


def _real_pair_distances(vectors):
    same, diff = [], []
    for x, y, is_same in labeled_pairs():
        (same if is_same else diff).append(float(SPEC.distance(vectors[x], vectors[y])))
    return np.asarray(same), np.asarray(diff)


def _synthetic_pairs(faces, x, n=4000, seed=0):
    """Distances of consecutive faces of one identity, and of random different-identity pairs."""
    order = np.argsort(faces.labels, kind="stable")
    lab = faces.labels[order]
    a, b = order[:-1][lab[:-1] == lab[1:]], order[1:][lab[:-1] == lab[1:]]
    same = SPEC.distance(x[a[:n]], x[b[:n]])
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(x), n), rng.integers(0, len(x), n)
    keep = faces.labels[i] != faces.labels[j]
    return same, SPEC.distance(x[i[keep]], x[j[keep]])


def test_stats_are_small_json_and_describe_the_sample(real):
    stats, _, _ = real
    text = json.dumps(stats)
    assert len(text) < 200_000
    back = json.loads(text)
    assert back["dim"] == SPEC.dim and back["threshold"] == pytest.approx(SPEC.threshold)
    assert back["source"]["identities"] >= 10 and back["source"]["faces"] >= 50
    # Shrinkage spreads the few sample directions over every dimension.
    assert 0 < back["between"]["shrinkage"] <= 1 and 0 < back["within"]["shrinkage"] <= 1
    a = synthetic.SyntheticFaces(stats, 3000, seed=5).vectors()
    b = synthetic.SyntheticFaces(back, 3000, seed=5).vectors()
    np.testing.assert_array_equal(a, b)


def test_same_identity_pairs_fall_under_the_threshold_like_real_ones(real, faces):
    _, vectors, _ = real
    real_same, real_diff = _real_pair_distances(vectors)
    syn_same, syn_diff = _synthetic_pairs(faces, faces.vectors())
    t = SPEC.threshold
    real_rate, syn_rate = float(np.mean(real_same <= t)), float(np.mean(syn_same <= t))
    assert abs(syn_rate - real_rate) <= 0.08, (syn_rate, real_rate)
    assert np.mean(syn_diff > t) >= 0.97
    assert np.median(syn_same) == pytest.approx(np.median(real_same), rel=0.12)
    assert np.median(syn_diff) == pytest.approx(np.median(real_diff), rel=0.12)
    # Spread, not just the centre: some people and some photos vary more than others.
    real_iqr = np.subtract(*np.percentile(real_same, [75, 25]))
    syn_iqr = np.subtract(*np.percentile(syn_same, [75, 25]))
    assert 0.6 * real_iqr <= syn_iqr <= 1.6 * real_iqr


def test_norms_match_the_real_ones(real, faces):
    _, _, real_norms = real
    norms = np.linalg.norm(faces.vectors(), axis=1)
    assert norms.mean() == pytest.approx(real_norms.mean(), rel=0.02)
    assert norms.std() == pytest.approx(real_norms.std(), rel=0.25)
    q, _ = faces.queries(500, seed=1)
    assert np.linalg.norm(q, axis=1).mean() == pytest.approx(real_norms.mean(), rel=0.02)


def test_it_is_not_uniform_noise(real, faces):
    stats, vectors, _ = real
    x = faces.vectors(0, 5000)
    noise = synthetic.uniform_like(stats, 5000)
    r = np.stack(list(vectors.values()))

    def nearest(points, cloud):
        return np.sqrt(np.maximum(np.sum(points ** 2, 1)[:, None] + np.sum(cloud ** 2, 1)[None, :]
                                  - 2 * points @ cloud.T, 0)).min(1)

    # Real faces sit close to synthetic faces, not to noise of the same mean and per-dimension spread.
    assert np.median(nearest(r, x)) < 0.9 * np.median(nearest(r, noise))
    # Identities: a synthetic face has its siblings within the threshold; noise has nobody.
    t = SPEC.threshold
    syn_close = (SPEC.distance(x[:300, None, :], x[None, :, :]) <= t).sum(1) - 1
    noise_close = (SPEC.distance(noise[:300, None, :], noise[None, :, :]) <= t).sum(1) - 1
    assert syn_close.mean() >= 0.5 * (5000 / faces.n) * (faces.sizes.mean() - 1)  # siblings present in x
    assert noise_close.mean() < 0.05
    # Correlated dimensions: the synthetic covariance is far from diagonal, like the real one.
    off = ~np.eye(SPEC.dim, dtype=bool)
    assert np.abs(np.corrcoef(x.T)[off]).mean() > 2 * np.abs(np.corrcoef(noise.T)[off]).mean()


def test_generation_is_deterministic_chunked_and_skewed(real):
    stats = real[0]
    f = synthetic.SyntheticFaces(stats, 30_000, seed=11)
    whole = f.vectors()
    assert whole.shape == (30_000, SPEC.dim) and whole.dtype == np.float32
    pieces = list(f.chunks(7_001))
    assert [s for s, _ in pieces] == list(range(0, 30_000, 7_001))
    np.testing.assert_array_equal(np.concatenate([p for _, p in pieces]), whole)
    np.testing.assert_array_equal(f.vectors(12_345, 12_400), whole[12_345:12_400])
    np.testing.assert_array_equal(synthetic.SyntheticFaces(stats, 30_000, seed=11).vectors(9000, 9100),
                                  whole[9000:9100])
    assert not np.array_equal(synthetic.SyntheticFaces(stats, 30_000, seed=12).vectors(0, 100), whole[:100])
    assert f.k == 1500 and f.sizes.sum() == 30_000 and f.sizes.min() >= 1
    assert f.sizes.max() >= 3 * f.sizes.mean()  # a realistic skew, not 20 faces each
    assert len(np.unique(f.labels[:1000])) > 500  # identities spread over the id range


def test_queries_are_new_faces_of_existing_identities(faces):
    x = faces.vectors()
    q, labels = faces.queries(200, seed=2)
    assert labels.max() < faces.k
    d2 = np.sum(q ** 2, 1)[:, None] + np.sum(x ** 2, 1)[None, :] - 2 * q @ x.T
    nn = d2.argmin(1)
    assert d2.min() > 1e-4  # not copies of corpus vectors
    assert np.mean(faces.labels[nn] == labels) > 0.95
    np.testing.assert_array_equal(faces.queries(200, seed=2)[0], q)


def test_the_hard_set_has_heavy_tails_look_alikes_wide_faces_and_near_duplicates(real):
    stats, _, _ = real
    hard = synthetic.HardFaces(stats, 20_000, seed=2)
    x = hard.vectors()
    assert np.array_equal(x[8000:8300], hard.vectors(8000, 8300))  # random access, whatever the slicing
    sizes = np.sort(hard.sizes)[::-1]
    assert sizes[0] >= 100 * np.median(sizes)  # a few people in thousands of photos, most in a handful
    assert sizes[:len(sizes) // 100].sum() >= 0.3 * hard.n
    dup = np.flatnonzero(hard.duplicate)
    assert len(dup) > 500
    same = SPEC.distance(x[dup], x[dup - 1])
    assert np.all(hard.labels[dup] == hard.labels[dup - 1]) and np.median(same) < 0.05
    centre = hard.centroids[hard.labels]
    spread = np.linalg.norm(x - centre, axis=1)
    low, plain = spread[hard.low_quality], spread[~hard.low_quality & ~hard.duplicate]
    assert np.median(low) > 1.5 * np.median(plain)
    assert hard.lookalikes > 0.1 * hard.k
