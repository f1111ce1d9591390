"""The kNN graph: exact top-k over prepared vectors, and a graph table's neighbour lists as arrays and edges."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facebeam.transforms.knn import merge_topk, topk_block

# efSearch for graph lookups: 64 gave recall@16 0.937 on 100k faces of the hard synthetic set (near-duplicates
# and a few very large identities crowd the candidate lists), 0.993 on the plain set.
EF_SEARCH = 128

# The graph at scale: IVF cells with 4-bit PQ fast-scan codes (one sub-quantizer per dimension up to 128), then
# the candidates re-ranked on the float vectors. On 1M faces of the hard set (2026-12-04, 2 cores, idle), over
# 1000 faces against exact search: HNSW at efSearch 128 gave recall@16 0.863 in 942 s; this at 64 probes of
# 4096 cells and 8 x k candidates, 0.974 in 199-378 s with its training (4 runs); 96 probes 0.987. Flat IVF
# scanning reached 0.972 only at an estimated 675 s, and 32-byte PQ codes lose too much (0.53).
IVF_PROBES = 64
REFINE_FACTOR = 8
IVF_MIN_FACES = 50_000  # below this the HNSW lookups (or the exact graph) are cheap and need no training


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


def knn_hnsw(x: np.ndarray, k: int, m: int = 16, ef_construction: int = 100, ef_search: int = EF_SEARCH,
             batch: int = 65536, threads: int = None):
    """Top-k neighbours of every row of prepared `x` through an in-memory faiss HNSW graph built the way
    the embedded index builds it (transforms/ann.py: IndexHNSWFlat, same M and efConstruction).

    Returns (ids N x k, distances N x k) as knn_exact does (self dropped; -1 / inf where fewer found).
    Memory: the vectors once more plus the graph (about 2 * M int32 links per face at level 0).
    """
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    n, dim = x.shape
    k = min(k, max(n - 1, 1))
    index = faiss.IndexHNSWFlat(dim, m)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    ids, dist = search_batched(index, x, k, ef_search, batch)
    del index
    return ids, dist


def ivf_cells(n: int) -> int:
    """IVF cells for n vectors: the power of two nearest 4 sqrt(n) (1M -> 4096, 100k -> 1024), at least 64."""
    return int(2 ** round(np.log2(max(4.0 * np.sqrt(max(n, 1)), 64.0))))


def _pq_parts(dim: int) -> int:
    """Sub-quantizers: one per dimension up to 128 (4 bits each), else the largest divisor of dim <= 128."""
    return max(m for m in range(1, min(dim, 128) + 1) if dim % m == 0)


def build_ivf(chunks, n: int, dim: int, train, threads: int = None):
    """An IVF-PQ fast-scan index of prepared vectors: `train` (a sample of rows) fits the cells and codes, `chunks`
    yields (positions, rows) to add. Its codes are a lossy copy: search_ivf re-ranks on the float vectors."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    index = faiss.index_factory(dim, f"IVF{ivf_cells(n)},PQ{_pq_parts(dim)}x4fs")
    index.train(np.ascontiguousarray(train, dtype=np.float32))
    for positions, rows in chunks:
        index.add_with_ids(np.ascontiguousarray(rows, dtype=np.float32), np.asarray(positions, dtype=np.int64))
    return index


def training_rows(n: int, seed: int = 0) -> np.ndarray:
    """Sorted rows to train the IVF on: 50 per cell (faiss needs >= 39), all when fewer."""
    want = min(n, 50 * ivf_cells(n))
    return np.sort(np.random.default_rng(seed).choice(n, want, replace=False))


def search_ivf(index, q: np.ndarray, k: int, vectors_of, probes: int = IVF_PROBES, factor: int = REFINE_FACTOR,
               batch: int = 256):
    """Top-k (positions, euclidean distances) of prepared queries `q`: factor x k candidates from the IVF codes,
    re-ranked exactly on `vectors_of(positions)` (float rows). -1 / inf where fewer were found. Small batches keep
    the candidates' vectors in reused memory: on 50k of 1M faces, 7.5 s at 256 against 10.4 s at 4096."""
    import faiss

    params = faiss.SearchParametersIVF(nprobe=min(int(probes), index.nlist))
    want = k * factor
    ids = np.full((len(q), k), -1, np.int64)
    dist = np.full((len(q), k), np.inf, np.float32)
    for s in range(0, len(q), batch):
        qb = np.ascontiguousarray(q[s:s + batch], dtype=np.float32)
        _, cand = index.search(qb, want, params=params)
        found = cand >= 0
        vec = vectors_of(np.where(found, cand, 0).ravel()).reshape(len(qb), want, -1)
        vec -= qb[:, None, :]  # differences, not the norms' expansion: near-duplicates keep their digits
        d2 = np.einsum("ijk,ijk->ij", vec, vec)
        d2[~found] = np.inf
        kk = min(k, want)
        part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
        pd = np.take_along_axis(d2, part, 1)
        order = np.argsort(pd, axis=1, kind="stable")
        pos = np.take_along_axis(np.take_along_axis(cand, part, 1), order, 1)
        pd = np.take_along_axis(pd, order, 1)
        pos[~np.isfinite(pd)] = -1
        ids[s:s + len(qb), :kk] = pos
        dist[s:s + len(qb), :kk] = np.sqrt(np.maximum(pd, 0.0))
    return ids, dist


def knn_ivf(x: np.ndarray, k: int, probes: int = IVF_PROBES, factor: int = REFINE_FACTOR, seed: int = 0,
            threads: int = None, chunk: int = 131_072):
    """Top-k neighbours of every row of prepared `x` (self dropped) through build_ivf + search_ivf: the graph at
    scale. Returns (ids N x k, distances N x k) as knn_exact does. Memory: the codes (dim / 2 bytes per face) and
    one batch of candidate vectors on top of x."""
    n, dim = x.shape
    k = min(k, max(n - 1, 1))
    index = build_ivf(((np.arange(s, min(s + chunk, n)), x[s:s + chunk]) for s in range(0, n, chunk)),
                      n, dim, x[training_rows(n, seed)], threads)
    found, d = search_ivf(index, x, k + 1, lambda pos: x[pos], probes, factor)
    del index
    return drop_self(found, d, np.arange(n)[:, None], k)


def search_batched(index, x: np.ndarray, k: int, ef_search: int, batch: int = 65536, own_offset: int | None = 0):
    """Batched top-k HNSW search of the rows of `x`: (ids, euclidean distances), -1 / inf where none.

    With `own_offset`, row i of x is position own_offset + i of the index, and its own entry is dropped;
    with None, the queries are not in the index (new faces).
    """
    import faiss

    extra = 0 if own_offset is None else 1
    params = faiss.SearchParametersHNSW()
    params.efSearch = max(int(ef_search), k + extra)
    n = len(x)
    ids = np.full((n, k), -1, np.int64)
    dist = np.full((n, k), np.inf, np.float32)
    for s in range(0, n, batch):
        q = np.ascontiguousarray(x[s:s + batch], dtype=np.float32)
        d2, found = index.search(q, k + extra, params=params)
        d = np.sqrt(np.maximum(d2, 0)).astype(np.float32)
        if own_offset is None:
            d[found < 0] = np.inf
        else:
            found, d = drop_self(found, d, np.arange(s, s + len(q))[:, None] + own_offset, k)
        ids[s:s + len(q)], dist[s:s + len(q)] = found, d
    return ids, dist


def drop_self(found: np.ndarray, d: np.ndarray, own: np.ndarray, k: int):
    """Top-(k + 1) lists that may hold the query itself -> top-k lists without it."""
    keep = found != own
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in their order
    ids = np.take_along_axis(found, order, 1)
    dist = np.take_along_axis(d, order, 1).astype(np.float32)
    gone = ~np.take_along_axis(keep, order, 1) | (ids < 0)
    ids[gone], dist[gone] = -1, np.inf
    return ids, dist


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Share of the exact top-k neighbours that the approximate lists found (rows aligned)."""
    hits = sum(len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx_ids, exact_ids))
    total = int(np.sum(exact_ids >= 0))
    return round(hits / total, 4) if total else 1.0


def exact_sample(x: np.ndarray, rows: np.ndarray, k: int, block: int = 4096):
    """Exact top-k of the given rows of `x` against all of `x` (self excluded): recall's ground truth."""
    q = x[rows]
    best = (np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32))
    for xs in range(0, len(x), block):
        best = merge_topk(best, topk_block(q, x[xs:xs + block], k + 1, x_offset=xs), k + 1)
    return drop_self(best[0], best[1], rows[:, None], k)
