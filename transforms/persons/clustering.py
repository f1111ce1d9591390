"""Clustering a kNN graph into persons, person centres, and quality against known identities."""
from __future__ import annotations

import numpy as np

from facebeam.transforms.knn import topk_block
from facebeam.transforms.persons.graph import edges

METHODS = ("cw", "cc", "mutual")


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

    w = np.clip(1.0 - d / max(threshold, 1e-9), 0.05, 1.0)
    graph = [(int(i), int(j), float(x)) for i, j, x in zip(a, b, w)]
    graph += [(i, i, 1e-6) for i in range(n)]  # every face is a vertex, also those with no edge
    return np.asarray(dlib.chinese_whispers(graph), dtype=np.int64)


def cluster(ids: np.ndarray, dist: np.ndarray, threshold: float, method: str = "cw") -> np.ndarray:
    """kNN lists of n faces -> a cluster label per face (labels are arbitrary ints)."""
    n = len(ids)
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; choose one of {METHODS}")
    a, b, d = edges(ids, dist, threshold, mutual=(method == "mutual"))
    if method == "cw":
        return chinese_whispers(n, a, b, d, threshold)
    return components(n, a, b)


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
    """Mean prepared vector per person, streaming (face_ids, prepared vectors) chunks: {pid: (centre, n)}."""
    sums, counts = {}, {}
    for fids, x in chunks():
        for pid, v in zip((person_of.get(f) for f in fids), x):
            if pid is None:
                continue
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
