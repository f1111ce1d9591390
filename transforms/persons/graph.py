"""The kNN graph: exact top-k over prepared vectors, and a graph table's neighbour lists as arrays and edges."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facebeam.transforms.knn import merge_topk, topk_block


def knn_exact(x: np.ndarray, k: int, block: int = 2048):
    """Top-k neighbours of every row of prepared `x` (self excluded): (ids N x k, distances N x k).

    Memory: block x block distances plus the N x k result; time O(N^2 dim), for small collections and
    tests (the job scans shards on its workers the same way, block by block).
    """
    n = len(x)
    k = min(k, max(n - 1, 1))
    ids = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    for qs in range(0, n, block):
        q = x[qs:qs + block]
        best = (np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32))
        for xs in range(0, n, block):
            best = merge_topk(best, topk_block(q, x[xs:xs + block], k + 1, q_offset=qs, x_offset=xs), k + 1)
        ids[qs:qs + len(q)], dist[qs:qs + len(q)] = best[0][:, :k], best[1][:, :k]
    return ids, dist


def edges(ids: np.ndarray, dist: np.ndarray, threshold: float, mutual: bool = False):
    """kNN lists -> undirected edges (src < dst, distance) within the threshold, each once."""
    n, k = ids.shape
    src = np.repeat(np.arange(n), k)
    dst, d = ids.ravel(), dist.ravel()
    keep = (d <= threshold) & (dst >= 0) & (dst != src)
    src, dst, d = src[keep], dst[keep], d[keep]
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    key = a * n + b
    order = np.argsort(key, kind="stable")
    key, a, b, d = key[order], a[order], b[order], d[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    if mutual:  # an edge both ends list: it appears twice
        count = np.diff(np.append(np.flatnonzero(first), len(key)))
        first = first.copy()
        first[np.flatnonzero(first)[count < 2]] = False
    return a[first], b[first], d[first]


def padded_lists(graph: pa.Table, face_ids: np.ndarray, offset: int, n: int, k: int):
    """A graph table's ragged neighbour lists (face ids) -> N x k (row index, distance) arrays.

    Row i of the table fills row `offset + i`; -1 / inf where a face has fewer than k neighbours or a
    neighbour is not among `face_ids`.
    """
    nbr = np.full((n, k), -1, np.int64)
    dist = np.full((n, k), np.inf, np.float32)
    if graph.num_rows == 0:
        return nbr, dist
    lists = graph.column("neighbours").combine_chunks()
    dists = graph.column("distances").combine_chunks()
    idx = pc.index_in(lists.values, value_set=pa.array(face_ids, pa.string())).fill_null(-1).to_numpy()
    dv = np.asarray(dists.values.to_numpy(zero_copy_only=False), np.float32)
    starts = np.asarray(lists.offsets.to_numpy())
    row = np.repeat(np.arange(graph.num_rows), np.diff(starts))
    col = np.arange(len(idx)) - starts[row]
    keep = col < k
    nbr[row[keep] + offset, col[keep]] = idx[keep]
    dist[row[keep] + offset, col[keep]] = dv[keep]
    return nbr, dist
