"""Clustering a kNN graph into persons, person centres, and quality against known identities."""
from __future__ import annotations

import warnings

import numpy as np

from facebeam.transforms.knn import topk_block
from facebeam.transforms.persons.graph import edges

# Every method clusters the same graph: the kNN lists cut at the edge threshold. Edge weight 1 - d / t.
# infomap: map equation over the weighted graph (learn-to-cluster's strongest training-free baseline).
# leiden: Leiden optimising modularity (the constant Potts model cut the thousands-of-faces people of a
#   kNN graph into pieces: pairwise recall 0.03 on the harder synthetic set).
# density: Immich's rule (a face is core with MIN_CORE faces, itself counted, within the threshold;
#   cores link, every other face joins its nearest core in reach, else stays alone).
# cw: dlib's Chinese whispers; cc: connected components; mutual: components of mutual-kNN edges.
# The default by `facebeam bench cluster` on the hard synthetic set (IVF graph, 2026-12-04): Chinese whispers'
# BCubed F1 0.978 at 100k and 0.972 at 1M; Infomap's 0.977 at 100k fell to 0.928 at 1M (it cut the largest
# identities, of 60k-130k faces, into modules: pairwise recall 0.57). Equal on the plain set (0.9996 / 0.9993).
METHODS = ("cw", "infomap", "leiden", "density", "cc", "mutual")
DEFAULT_METHOD = "cw"
MIN_CORE = 3  # Immich's minFaces
SEED = 0


def edge_weights(d: np.ndarray, threshold: float) -> np.ndarray:
    """Near edges count more: 1 at distance 0, falling to a floor of 0.05 at the threshold."""
    return np.clip(1.0 - d / max(threshold, 1e-9), 0.05, 1.0)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components (union-find with path halving, vectorized rounds)."""
    parent = np.arange(n)
    while True:
        pa, pb = parent[a], parent[b]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        if not np.any(lo != hi):
            break
        np.minimum.at(parent, hi, lo)
        while True:  # full compression
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


def chinese_whispers(n: int, a: np.ndarray, b: np.ndarray, d: np.ndarray, threshold: float) -> np.ndarray:
    """dlib's Chinese whispers on the weighted graph (weight 1 - d / threshold: near edges count more)."""
    import dlib

    w = edge_weights(d, threshold)
    graph = [(int(i), int(j), float(x)) for i, j, x in zip(a, b, w)]
    graph += [(i, i, 1e-6) for i in range(n)]  # every face is a vertex, also those with no edge
    return np.asarray(dlib.chinese_whispers(graph), dtype=np.int64)


def infomap_labels(n: int, a: np.ndarray, b: np.ndarray, d: np.ndarray, threshold: float) -> np.ndarray:
    """Two-level Infomap (the `infomap` package) on the weighted, undirected graph; faces with no edge alone."""
    from infomap import Infomap

    labels = np.arange(n, dtype=np.int64) + n  # faces Infomap never sees keep a label of their own
    if len(a) == 0:
        return labels
    im = Infomap(two_level=True, silent=True, num_trials=1, seed=SEED + 1)  # links are undirected by default
    im.add_links(zip(a.tolist(), b.tolist(), edge_weights(d, threshold).tolist()))
    im.run()
    # Not `im.run().modules()`, the replacement the deprecation names: its snapshot walks a SWIG iterator, and
    # with faiss loaded (the embedded index) faiss's SwigPyIterator answers it and the process segfaults.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Infomap.get_modules is deprecated")
        nodes, modules = zip(*im.get_modules().items())
    labels[np.asarray(nodes, np.int64)] = np.asarray(modules, np.int64)
    return labels


def leiden_labels(n: int, a: np.ndarray, b: np.ndarray, d: np.ndarray, threshold: float) -> np.ndarray:
    """Leiden (leidenalg over igraph) optimising weighted modularity."""
    import igraph
    import leidenalg

    graph = igraph.Graph(n=n, edges=np.column_stack([a, b]).tolist(), directed=False)
    part = leidenalg.find_partition(graph, leidenalg.ModularityVertexPartition,
                                    weights=edge_weights(d, threshold).tolist(), seed=SEED)
    return np.asarray(part.membership, dtype=np.int64)


def density_labels(n: int, ids: np.ndarray, dist: np.ndarray, threshold: float, min_core: int = MIN_CORE) -> np.ndarray:
    """Immich's density rule on the kNN lists (see METHODS)."""
    near = (dist <= threshold) & (ids >= 0)
    core = near.sum(1) + 1 >= min_core  # the face itself counts, as in Immich's search
    a, b, _ = edges(np.where(near & core[np.where(ids >= 0, ids, 0)] & core[:, None], ids, -1), dist, threshold)
    labels = components(n, a, b)
    # Non-core faces: the nearest core among their neighbours within reach (lists are nearest first).
    reach = near & core[np.where(ids >= 0, ids, 0)]
    first = np.argmax(reach, axis=1)
    joins = ~core & reach.any(1)
    labels[joins] = labels[ids[joins, first[joins]]]
    return labels


def cluster(ids: np.ndarray, dist: np.ndarray, threshold: float, method: str = DEFAULT_METHOD) -> np.ndarray:
    """kNN lists of n faces -> a cluster label per face (labels are arbitrary ints)."""
    n = len(ids)
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; choose one of {METHODS}")
    if method == "density":
        return density_labels(n, ids, dist, threshold)
    a, b, d = edges(ids, dist, threshold, mutual=(method == "mutual"))
    if method == "cw":
        return chinese_whispers(n, a, b, d, threshold)
    if method == "infomap":
        return infomap_labels(n, a, b, d, threshold)
    if method == "leiden":
        return leiden_labels(n, a, b, d, threshold)
    return components(n, a, b)


def join_by_neighbours(ids: np.ndarray, dist: np.ndarray, person_of: np.ndarray, threshold: float) -> np.ndarray:
    """New faces -> the person (an entry of `person_of`, indexed by neighbour id; < 0: none) that their
    neighbours within the threshold hold the most edge weight of; -1 for faces with no such neighbour.

    Each new face is decided alone, through its top-k lists only: no vector of the clustered faces is read.
    """
    reach = (ids >= 0) & (dist <= threshold)
    pid = np.where(reach, person_of[np.where(ids >= 0, ids, 0)], -1)
    reach &= pid >= 0
    w = np.where(reach, edge_weights(dist, threshold), 0.0)
    out = np.full(len(ids), -1, np.int64)
    for i in np.flatnonzero(reach.any(1)):  # k entries per face: a small loop per new face
        people, at = np.unique(pid[i][reach[i]], return_inverse=True)
        out[i] = people[np.argmax(np.bincount(at, weights=w[i][reach[i]]))]
    return out


def label_faces(n: int, ok: np.ndarray, nbr: np.ndarray, dist: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Cluster labels for the faces that pass the limits (edges to the others are dropped); -1 elsewhere."""
    nbr = np.where(nbr >= 0, nbr, 0)
    dist = np.where((nbr >= 0) & ok[nbr] & ok[:, None], dist, np.inf)
    return np.where(ok, cluster(nbr, dist, threshold, method), -1)


def nearest_centre(x: np.ndarray, centres: np.ndarray, block: int = 4096):
    """(index, distance) of the nearest centre for each prepared row of x."""
    idx = np.zeros(len(x), np.int64)
    dist = np.full(len(x), np.inf, np.float32)
    if len(centres) == 0:
        return idx, dist
    for s in range(0, len(x), block):
        i, d = topk_block(x[s:s + block], centres, 1)
        idx[s:s + block], dist[s:s + block] = i[:, 0], d[:, 0]
    return idx, dist


def centres_of(person_of: dict, chunks, dim: int):
    """Mean prepared vector per person, streaming (face_ids, prepared vectors) chunks: {pid: (centre, n)}.

    A face id seen twice (one photo content at two paths) counts once.
    """
    sums, counts, seen = {}, {}, set()
    for fids, x in chunks():
        for fid, v in zip(fids, x):
            pid = person_of.get(fid)
            if pid is None or fid in seen:
                continue
            seen.add(fid)
            if pid in sums:
                sums[pid] += v
                counts[pid] += 1
            else:
                sums[pid] = v.astype(np.float64).copy()
                counts[pid] = 1
    return {p: ((sums[p] / counts[p]).astype(np.float32), counts[p]) for p in sums}


def representative(pids, fids, dists, sizes_ok) -> dict:
    """{person_id: face_id nearest its centre}."""
    best = {}
    for pid, fid, d, good in zip(pids, fids, dists, sizes_ok):
        if pid is None:
            continue
        key = (not good, d, fid)
        if pid not in best or key < best[pid][0]:
            best[pid] = (key, fid)
    return {p: v[1] for p, v in best.items()}


def quality(pred, truth) -> dict:
    """Pairwise precision/recall/F1 and BCubed precision/recall/F1 of predicted clusters vs true ids."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    n = len(pred)
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    both = p.astype(np.int64) * (t.max() + 1) + t
    _, joint_of, joint = np.unique(both, return_inverse=True, return_counts=True)
    pc, tc = np.bincount(p), np.bincount(t)

    def pairs(c):
        return float(np.sum(c * (c - 1) / 2))

    def f(x, y):
        return 2 * x * y / (x + y) if x + y else 0.0

    tp, pp, tt = pairs(joint), pairs(pc), pairs(tc)
    precision = tp / pp if pp else 1.0
    recall = tp / tt if tt else 1.0
    jc = joint[joint_of]
    bp = float(np.mean(jc / pc[p])) if n else 1.0
    br = float(np.mean(jc / tc[t])) if n else 1.0
    return {"pairwise_precision": round(precision, 4), "pairwise_recall": round(recall, 4),
            "pairwise_f1": round(f(precision, recall), 4), "bcubed_precision": round(bp, 4),
            "bcubed_recall": round(br, 4), "bcubed_f1": round(f(bp, br), 4),
            "clusters": int(len(pc)), "true_clusters": int(len(tc)), "faces": int(n)}
