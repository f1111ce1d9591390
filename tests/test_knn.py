"""The one exact top-k (knn.ExactScan) and its selection step, against numpy's full sort."""
import numpy as np
import pytest

from facebeam.transforms import knn

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n,k", [(5, 5), (63, 10), (64, 1), (131_072, 10), (200_000, 200)])
def test_largest_k_is_the_k_largest_set(n, k):
    scores = np.random.default_rng(n + k).standard_normal(n).astype(np.float32)
    got = knn.largest_k(scores, k)
    assert len(got) == k and len(set(got.tolist())) == k
    assert set(got.tolist()) == set(np.argsort(-scores, kind="stable")[:k].tolist())


def test_largest_k_with_ties_returns_k_of_the_tied_best():
    scores = np.zeros(10_000, dtype=np.float32)
    scores[[3, 500, 9_999]] = 2.0
    got = knn.largest_k(scores, 5)
    assert len(set(got.tolist())) == 5
    assert {3, 500, 9_999} <= set(got.tolist()) and (scores[got] >= 0).all()


@pytest.mark.parametrize("queries", [1, 3, 20])
def test_exact_scan_matches_a_full_sort(queries):
    rng = np.random.default_rng(queries)
    corpus = rng.standard_normal((50_000, 32)).astype(np.float32)
    q = rng.standard_normal((queries, 32)).astype(np.float32)
    scan = knn.ExactScan(corpus, block_rows=8_192, threads=2)
    try:
        ids, dist = scan.topk(q, 10)
    finally:
        scan.close()
    d = np.linalg.norm(q[:, None, :] - corpus[None, :, :], axis=2)
    want = np.argsort(d, axis=1, kind="stable")[:, :10]
    assert (ids == want).all()
    np.testing.assert_allclose(dist, np.take_along_axis(d, want, 1), rtol=1e-4, atol=1e-4)


def _assert_exact(corpus, q, ids, dist, k):
    """The k returned rows are a true top k: their own distances, and the k smallest of all, ties in any order."""
    d = np.linalg.norm(q[:, None, :] - corpus[None, :, :], axis=2)
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :k], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dist, np.take_along_axis(d, ids, 1), rtol=1e-4, atol=1e-4)
    assert all(len(set(row)) == k for row in ids.tolist())


def _clustered(rng, n, dim, centres=50):
    """Identities as tight clusters, with exact duplicates (ties) and a few rows far out (the codes' range)."""
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.05 * rng.standard_normal((n, dim)).astype(np.float32)
    x[: n // 100] = x[n // 100: 2 * (n // 100)]
    x[-5:] *= 40.0
    return np.ascontiguousarray(x)


@pytest.mark.parametrize("queries,k", [(1, 1), (1, 10), (3, 10), (8, 50)])
def test_the_8bit_first_pass_returns_the_float32_scans_exact_top_k(queries, k):
    rng = np.random.default_rng(queries * 100 + k)
    corpus = _clustered(rng, 40_000, 32)
    q = np.concatenate([corpus[rng.integers(0, len(corpus), queries - 1)],  # a probe that is a row: a tie at 0
                        rng.standard_normal((1, 32)).astype(np.float32)]) if queries > 1 else corpus[:1] + 0.01
    scan = knn.ExactScan(corpus, block_rows=8_192, threads=2, sketch_rows=1_000)
    try:
        assert scan.sketch is not None and scan.sketch.error > 0
        ids, dist = scan.topk(q, k)
    finally:
        scan.close()
    _assert_exact(corpus, q, ids, dist, k)


def test_when_too_many_rows_lie_inside_the_bound_the_scan_widens_then_falls_back_to_float32():
    rng = np.random.default_rng(7)
    # 3,000 rows closer together than one step of the codes (the far rows stretch their range): all are candidates.
    corpus = np.concatenate([np.ones((3_000, 16), np.float32) + 1e-2 * rng.standard_normal((3_000, 16), np.float32),
                             rng.standard_normal((20_000, 16)).astype(np.float32) * 3.0])
    q = np.ones((1, 16), np.float32)
    scan = knn.ExactScan(corpus, threads=2, sketch_rows=1_000)
    try:
        widened = scan.sketch.candidates(q, 10, scan._pool, first=256, most=16_384)
        assert widened is not None and len(widened[0]) >= 3_000  # 256 -> 2,048 -> 16,384 per part
        assert scan.sketch.candidates(q, 10, scan._pool, first=256, most=1_024) is None
        ids, dist = scan.topk(q, 10)
    finally:
        scan.close()
    _assert_exact(corpus, q, ids, dist, 10)
