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
