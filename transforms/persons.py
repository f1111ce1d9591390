"""Persons: group the faces of a collection into people, keep their ids stable, carry names over.

The pieces, all plain numpy on arrays of faces, so a Beam job (pipelines/cluster.py) can run
the graph build on its workers and the clustering in the launcher:

- `knn.topk_block` / `knn.merge_topk` (the one exact top-k): a worker scans the shards chunk by chunk.
- `threshold_from_pairs` / `threshold_from_distances`: the edge threshold, from labeled pairs when
  there are some, else from the collection's own distance distribution (never deepface's verification
  threshold, which is tuned for one pair, not for a transitive graph).
- `cluster`: kNN edges within the threshold -> labels (Chinese whispers by default; connected
  components and mutual-kNN components for comparison).
- `stable_ids`: labels -> person ids that survive re-clustering (carried over by face overlap).
- `quality`: pairwise precision / recall and BCubed F1 against known identities.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import es_index, images, knn, labels, metrics, shards
from facebeam.transforms.errors import UserError
from facebeam.transforms.knn import merge_topk, prepare, to_distance, topk_block

METHODS = ("cw", "cc", "mutual")
# A face's status in the persons table.
MEMBER, SINGLETON, LOW_QUALITY = "member", "singleton", "low_quality"
# The different-person false-accept rate one edge may have (Gaussian fit of different-person distances).
EDGE_FAR = 1e-3


# --- distances and the kNN graph --------------------------------------------------------------------
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
        keep = best[0][:, :k], best[1][:, :k]
        ids[qs:qs + len(q)], dist[qs:qs + len(q)] = keep
    return ids, dist


# --- the threshold ---------------------------------------------------------------------------------
def _z(p: float) -> float:
    """The standard normal quantile of 1 - p (p small), by bisection on erfc."""
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
    t = float(diff.mean() - _z(far) * diff.std(ddof=1))
    return round(min(t, float(np.quantile(same, 0.99))), 4)


def threshold_from_distances(random_d, far: float = EDGE_FAR, iters: int = 200) -> float:
    """From the distances of random face pairs (no labels): a two-component Gaussian mixture; the
    far component is different people. Threshold: that component's false-accept rate is `far`."""
    d = np.asarray(random_d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 50:
        raise ValueError("need at least 50 random pair distances")
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
    return round(float(mu[far_c] - _z(far) * sd[far_c]), 4)


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


# --- clustering -------------------------------------------------------------------------------------
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


# --- stable ids -------------------------------------------------------------------------------------
def new_person_id(face_ids) -> str:
    """A person's id from its smallest member face id: the same members give the same id on any run."""
    return "p-" + hashlib.sha256(min(face_ids).encode()).hexdigest()[:12]


def stable_ids(face_ids, labels, previous: dict = None) -> dict:
    """Cluster labels -> {label: person_id}, carrying over ids of an earlier clustering by overlap.

    `previous` maps face_id -> person_id. Each earlier person goes to the new cluster that holds the most
    of its faces (ties: the larger overlap share, then the smaller label); every new cluster takes at most
    one earlier id. The rest get `new_person_id` of their members.
    """
    face_ids = np.asarray(face_ids, dtype=object)
    labels = np.asarray(labels)
    previous = previous or {}
    overlap = {}
    for fid, lab in zip(face_ids, labels):
        old = previous.get(fid)
        if old is not None:
            overlap[(int(lab), old)] = overlap.get((int(lab), old), 0) + 1
    taken_labels, taken_ids, out = set(), set(), {}
    for (lab, old), _count in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1])):
        if lab in taken_labels or old in taken_ids:
            continue
        out[lab] = old
        taken_labels.add(lab)
        taken_ids.add(old)
    members = {}
    for fid, lab in zip(face_ids, labels):
        members.setdefault(int(lab), []).append(fid)
    used = set(out.values())
    for lab in sorted(members):
        if lab not in out:
            pid = new_person_id(members[lab])
            while pid in used:  # an id already carried by another person: derive a fresh one
                pid = "p-" + hashlib.sha256(pid.encode()).hexdigest()[:12]
            out[lab] = pid
            used.add(pid)
    return out


# --- quality ----------------------------------------------------------------------------------------
def quality(pred, truth) -> dict:
    """Pairwise precision/recall/F1 and BCubed precision/recall/F1 of predicted clusters vs true ids."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    n = len(pred)
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    both = p.astype(np.int64) * (t.max() + 1) + t
    _, joint = np.unique(both, return_counts=True)
    pc, tc = np.bincount(p), np.bincount(t)
    def pairs(c):
        return float(np.sum(c * (c - 1) / 2))
    tp, pp, tt = pairs(joint), pairs(pc), pairs(tc)
    precision = tp / pp if pp else 1.0
    recall = tp / tt if tt else 1.0
    jc = np.bincount(np.unique(both, return_inverse=True)[1])[np.unique(both, return_inverse=True)[1]]
    bp = float(np.mean(jc / pc[p])) if n else 1.0
    br = float(np.mean(jc / tc[t])) if n else 1.0
    def f(x, y):
        return 2 * x * y / (x + y) if x + y else 0.0
    return {"pairwise_precision": round(precision, 4), "pairwise_recall": round(recall, 4),
            "pairwise_f1": round(f(precision, recall), 4), "bcubed_precision": round(bp, 4),
            "bcubed_recall": round(br, 4), "bcubed_f1": round(f(bp, br), 4),
            "clusters": int(len(pc)), "true_clusters": int(len(tc)), "faces": int(n)}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Faces worth clustering; those below a limit are kept, marked `low_quality`, and not clustered."""

    # Measured (pipelines/bench/cluster.py docstring): faces scaled to 35 px move 0.46 on average from
    # their full-size embedding (max 0.50, near the edge threshold), at 45 px 0.39; blur that leaves a
    # Laplacian variance of ~45 (64 px crop) moves them 0.47 (max 0.63), at ~150 only 0.29.
    # dlib's HOG confidence did not separate bad faces (a 0.40 face clusters right), so it is off.
    min_box: int = 40
    min_confidence: float = 0.0
    min_sharpness: float = 50.0

    def passes(self, box_w, box_h, confidence, sharpness) -> np.ndarray:
        """Boolean mask of faces that meet every limit (a missing sharpness passes)."""
        side = np.minimum(np.asarray(box_w, dtype=np.float64), np.asarray(box_h, dtype=np.float64))
        ok = (side >= self.min_box) & (np.asarray(confidence, dtype=np.float64) >= self.min_confidence)
        s = np.asarray(sharpness, dtype=np.float64)
        return ok & ~(s < self.min_sharpness)


SHARP_PX = 64


def sharpness(bgr: np.ndarray, box) -> float:
    """Variance of the Laplacian of the face crop, gray, resized to SHARP_PX square (so photo size does not count)."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    crop = bgr[max(0, y):y + h, max(0, x):x + w]
    if crop.size == 0:
        return 0.0
    gray = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2GRAY)
    gray = cv2.resize(gray, (SHARP_PX, SHARP_PX), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


# --- the cluster folder -----------------------------------------------------------------------------
# DIR/persons/*.parquet   one row per face: face_id, person_id (null for low-quality faces), status, distance
# DIR/persons.parquet     one row per person: person_id, size, representative face, name, centre
# DIR/edits.jsonl         names, merges and splits, replayed on every re-cluster
# DIR/cluster.json        threshold, method, limits, spec id and the last run's summary
ASSIGN_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("person_id", pa.string()), ("status", pa.string()),
    ("distance", pa.float32()), ("image_path", pa.string()), ("face_index", pa.int32()),
    ("box_x", pa.int32()), ("box_y", pa.int32()), ("box_w", pa.int32()), ("box_h", pa.int32()),
    ("confidence", pa.float32()), ("sharpness", pa.float32()),
])


def table_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("person_id", pa.string()), ("size", pa.int64()), ("name", pa.string()), ("status", pa.string()),
        ("representative_face_id", pa.string()), ("representative_image_path", pa.string()),
        ("rep_box_x", pa.int32()), ("rep_box_y", pa.int32()), ("rep_box_w", pa.int32()), ("rep_box_h", pa.int32()),
        ("centre", pa.list_(pa.float32(), dim)),
    ])


def _join(*parts):
    return FileSystems.join(*parts)


def write_parquet(path: str, table) -> None:
    import pyarrow.parquet as pq
    with FileSystems.create(path) as f:
        pq.write_table(table, f, compression="zstd")


def read_parquet(path: str):
    import pyarrow.parquet as pq
    with FileSystems.open(path) as f:
        return pq.read_table(f)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def assignment_files(folder: str) -> list:
    return sorted(m.path for m in FileSystems.match([_join(folder, "persons", "*.parquet")])[0].metadata_list)


def read_assignments(folder: str) -> list:
    return [r for p in assignment_files(folder) for r in read_parquet(p).to_pylist()]


def read_table(folder: str) -> list:
    path = _join(folder, "persons.parquet")
    return read_parquet(path).to_pylist() if exists(path) else []


def write_outputs(folder: str, assignments: list, persons: list, dim: int, rows_per_file: int = 500_000) -> None:
    """Replace the assignments and the persons table (written beside, then the old files removed)."""
    old = assignment_files(folder)
    tag = hashlib.sha256(repr((len(assignments), old)).encode()).hexdigest()[:8]
    new = []
    for i in range(0, max(len(assignments), 1), rows_per_file):
        path = _join(folder, "persons", f"part-{tag}-{i // rows_per_file:05d}.parquet")
        write_parquet(path, pa.Table.from_pylist(assignments[i:i + rows_per_file], schema=ASSIGN_SCHEMA))
        new.append(path)
    write_parquet(_join(folder, "persons.parquet"), pa.Table.from_pylist(persons, schema=table_schema(dim)))
    stale = [p for p in old if p not in new]
    if stale:
        FileSystems.delete(stale)


def read_edits(folder: str) -> list:
    import json

    path = _join(folder, "edits.jsonl")
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def append_edit(folder: str, edit: dict) -> None:
    import json

    lines = read_edits(folder) + [edit]
    with FileSystems.create(_join(folder, "edits.jsonl")) as f:
        f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in lines).encode())


def replay_edits(face_ids, person_of: dict, edits: list) -> dict:
    """Apply merges and splits (by face) to {face_id: person_id}; returns {person_id: name} from the names.

    merge: every face of the merged person (as listed in the edit) goes to the person that holds most of
    the target's listed faces now. split: the listed faces become one person of their own, with the id
    the edit gave it. Names follow the person that holds most of the faces named (recorded at naming).
    """
    names = {}
    for e in edits:
        if e["op"] == "merge":
            target = majority(person_of, e["into_faces"])
            if target is None:
                continue
            for fid in e["faces"]:
                if person_of.get(fid) is not None:
                    person_of[fid] = target
        elif e["op"] == "split":
            for fid in e["faces"]:
                if fid in person_of:
                    person_of[fid] = e["new_person_id"]
        elif e["op"] == "name":
            pid = majority(person_of, e["faces"])
            if pid is not None:
                names[pid] = e["name"]
    return names


def majority(person_of: dict, faces):
    counts = {}
    for fid in faces:
        pid = person_of.get(fid)
        if pid is not None:
            counts[pid] = counts.get(pid, 0) + 1
    return min(counts, key=lambda p: (-counts[p], p)) if counts else None


def lookup(folder: str) -> dict:
    """{face_id: (person_id, name)} from a cluster folder: what query results carry."""
    names = {r["person_id"]: r["name"] for r in read_table(folder)}
    return {r["face_id"]: (r["person_id"], names.get(r["person_id"])) for r in read_assignments(folder)
            if r["person_id"] is not None}


def annotate(hits_per_probe, found: dict) -> None:
    """Give each hit its face's `person_id` and `person` (the name) from `lookup()`, in place."""
    for hits in hits_per_probe:
        for h in hits:
            h["person_id"], h["person"] = found.get(h["face_id"], (None, None))


def es_set_person(client, index: str, face_ids, name, chunk: int = 1000) -> int:
    """Bulk `update` ops by face_id (the document _id): the person's name goes into the `label` field."""
    done = 0
    ids = list(face_ids)
    for i in range(0, len(ids), chunk):
        ops = []
        for fid in ids[i:i + chunk]:
            ops += [{"update": {"_index": index, "_id": fid}}, {"doc": {"label": name}}]
        resp = client.bulk(operations=ops, refresh=False).body
        for item in resp["items"]:
            if item["update"].get("status", 500) < 300:
                done += 1
            elif item["update"].get("status") != 404:
                raise RuntimeError(f"update of {item['update'].get('_id')} failed: {item['update'].get('error')}")
    client.indices.refresh(index=index)
    return done


# --- from a graph to persons (the launcher's part) ---------------------------------------------------
def label_faces(n: int, ok: np.ndarray, nbr: np.ndarray, dist: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Cluster labels for the faces that pass the limits (edges to the others are dropped); -1 elsewhere."""
    nbr = np.where(nbr >= 0, nbr, 0)
    dist = np.where((nbr >= 0) & ok[nbr] & ok[:, None], dist, np.inf)
    labels = cluster(nbr, dist, threshold, method)
    labels = np.where(ok, labels, -1)
    return labels


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


def centres_of(person_of: list, chunks, dim: int):
    """Mean prepared vector per person, streaming (face_ids, prepared vectors) chunks: {pid: (centre, n)}."""
    sums, counts = {}, {}
    for fids, x in chunks():
        pids = [person_of.get(f) for f in fids]
        for pid, v in zip(pids, x):
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


# --- the Beam side: score faces, find their neighbours ----------------------------------------------
FACE_COLUMNS = ("face_id", "image_path", "face_index", "box_x", "box_y", "box_w", "box_h", "confidence", "embedding")
GRAPH_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("image_path", pa.string()), ("face_index", pa.int32()),
    ("box_x", pa.int32()), ("box_y", pa.int32()), ("box_w", pa.int32()), ("box_h", pa.int32()),
    ("confidence", pa.float32()), ("sharpness", pa.float32()), ("ok", pa.bool_()),
    ("neighbours", pa.list_(pa.string())), ("distances", pa.list_(pa.float32())),
])
FACES_SCORED = "persons_faces_scored"
PHOTOS_DECODED = "persons_photos_decoded"
FACES_SEARCHED = "persons_faces_searched"


def join(*parts) -> str:
    return _join(*parts)


def graph_folder(folder: str) -> str:
    return _join(folder, "graph")


def clear(folder: str) -> None:
    if FileSystems.exists(folder):
        FileSystems.delete([folder])


def read_state(folder: str) -> dict:
    path = _join(folder, "cluster.json")
    return shards.read_json(path) if exists(path) else {}


def write_state(folder: str, state: dict) -> None:
    shards.write_json(_join(folder, "cluster.json"), state)


def _score_photo(item, limits: Limits):
    """All faces of one photo: decode it once (only when sharpness is asked for), score every face."""
    path, rows = item
    rows = list(rows)
    sharp = [None] * len(rows)
    if limits.min_sharpness > 0:
        try:
            with FileSystems.open(path) as f:
                bgr = images.decode(path, f.read(), "", detect_max_side=10**9).bgr
            sharp = [sharpness(bgr, (r["box_x"], r["box_y"], r["box_w"], r["box_h"])) for r in rows]
            metrics.count(PHOTOS_DECODED)
        except Exception as e:  # noqa: BLE001 - a photo gone or unreadable since embed: its faces stay unscored
            import logging

            logging.getLogger(__name__).warning("cannot score faces of %s: %r", path, e)
    for r, s in zip(rows, sharp):
        ok = bool(limits.passes([r["box_w"]], [r["box_h"]], [r["confidence"] or 0.0],
                                [np.nan if s is None else s])[0])
        metrics.count(FACES_SCORED)
        yield {**r, "sharpness": s, "ok": ok}


class ScoreFaces(beam.PTransform):
    """Face rows -> the same rows with `sharpness` (photo crop, when asked for) and `ok` (meets the limits)."""

    def __init__(self, limits: Limits):
        super().__init__()
        self._limits = limits

    def expand(self, rows):
        if self._limits.min_sharpness <= 0:
            return rows | "Limits" >> beam.FlatMap(lambda r, lim: _score_photo((r["image_path"], [r]), lim),
                                                   self._limits)
        return (rows | "ByPhoto" >> beam.Map(lambda r: (r["image_path"], r))
                | "Group" >> beam.GroupByKey()
                | "Sharpness" >> beam.FlatMap(_score_photo, self._limits))


class Neighbours(beam.DoFn):
    """A batch of scored faces -> graph rows: each good face's top k (face ids, distances).

    Exact mode holds the collection's vectors once per worker (N x dim float32) and scans them in
    blocks; Elasticsearch mode sends one msearch per batch.
    """

    def __init__(self, spec, k: int, files=(), conn=None, alias=None, block: int = 65536):
        self._spec, self._k, self._files = spec, k, list(files)
        self._conn, self._alias, self._block = conn, alias, block

    def setup(self):
        if self._conn is not None:
            self._client = self._conn.client()
            return
        import pyarrow.parquet as pq
        ids, vecs = [], []
        for path in self._files:
            with FileSystems.open(path) as f:
                t = pq.read_table(f, columns=["face_id", "embedding"])
            ids += t.column("face_id").to_pylist()
            vecs.append(np.asarray(t.column("embedding").combine_chunks().values, np.float32).reshape(-1, self._spec.dim))
        self._ids = np.asarray(ids, dtype=object)
        self._x = prepare(np.concatenate(vecs) if vecs else np.zeros((0, self._spec.dim), np.float32), self._spec.metric)

    def _exact(self, rows):
        q = prepare([r["embedding"] for r in rows], self._spec.metric)
        best = (np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32))
        for s in range(0, len(self._x), self._block):
            best = merge_topk(best, topk_block(q, self._x[s:s + self._block], self._k + 1, x_offset=s), self._k + 1)
        out = []
        for r, ids, d in zip(rows, best[0], best[1]):
            hits = [(self._ids[i], float(to_distance(x, self._spec.metric))) for i, x in zip(ids, d)]
            out.append([(f, x) for f, x in hits if f != r["face_id"]][:self._k])
        return out

    def _es(self, rows):
        search = knn.SearchSpec(k=self._k + 1, num_candidates=max(100, 10 * (self._k + 1)))
        found = knn.es_search(self._client, self._alias, rows, search, self._spec)
        return [[(h["face_id"], h["distance"]) for h in hits if h["face_id"] != r["face_id"]][:self._k]
                for r, hits in zip(rows, found)]

    def process(self, batch):
        good = [r for r in batch if r["ok"]]
        found = {}
        if good:
            lists = self._es(good) if self._conn is not None else self._exact(good)
            found = {id(r): hits for r, hits in zip(good, lists)}
            metrics.count(FACES_SEARCHED, len(good))
        for r in batch:
            hits = found.get(id(r), [])
            yield {**{k: r[k] for k in GRAPH_SCHEMA.names if k in r},
                   "neighbours": [h[0] for h in hits], "distances": [h[1] for h in hits]}

    def teardown(self):
        if getattr(self, "_client", None) is not None:
            self._client.close()


def check_index(conn, alias: str, spec) -> None:
    es_index.open_alias(conn, alias, spec)[0].close()


# --- the launcher's part: threshold, clustering, ids, names, centres ---------------------------------
def scan(files, columns, chunk_rows: int = 65536):
    """Record batches of the given columns over every shard, chunk by chunk."""
    import pyarrow.parquet as pq
    for path in files:
        with FileSystems.open(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=chunk_rows, columns=list(columns))


def _vectors(batch, dim: int) -> np.ndarray:
    return np.asarray(batch.column("embedding").values, dtype=np.float32).reshape(batch.num_rows, dim)


def fit_threshold(files, spec, given=None, pairs=None, carried=None, sample: int = 3000):
    """(threshold, where it came from): the flag; the one carried by an incremental run; labeled pairs
    (--pairs, largest face of each named photo); labels in the shards; else the distance distribution."""
    import os

    if given is not None:
        return float(given), "flag"
    if carried is not None:
        return float(carried), "carried"
    total = sum(b.num_rows for b in scan(files, ["face_id"]))
    cut = int(0x1000000 * min(1.0, sample / max(total, 1)))
    wanted = {n for x, y, _ in labels.read_pairs(pairs) for n in (x, y)} if pairs else set()
    biggest, labeled, rand = {}, [], []
    for b in scan(files, ["face_id", "image_path", "box_w", "box_h", "label", "embedding"]):
        d = b.to_pydict()
        x = prepare(_vectors(b, spec.dim), spec.metric)
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
            return threshold_from_pairs(same, diff), "pairs"
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
                return threshold_from_pairs(d[same_mask], d[~same_mask]), "labels"
            except ValueError:
                pass
    x = np.asarray(rand, dtype=np.float32).reshape(-1, spec.dim)
    return threshold_from_distances(random_pair_distances(x, spec.metric)), "distribution"


def _read_graph(folder: str):
    import pyarrow.parquet as pq
    paths = sorted(m.path for m in FileSystems.match([_join(folder, "*.parquet")])[0].metadata_list)
    tables = []
    for path in paths:
        with FileSystems.open(path) as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else GRAPH_SCHEMA.empty_table()


def _padded(graph, face_ids: np.ndarray, offset: int, n: int, k: int):
    """The graph's ragged neighbour lists -> N x k (index, distance) arrays (-1 / inf where none)."""
    import pyarrow.compute as pc

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


META = ("face_id", "image_path", "face_index", "box_x", "box_y", "box_w", "box_h", "confidence", "sharpness")


def resolve(output, shards_dir, files, spec, incremental, previous, state, threshold=None, pairs=None,
            method="cw", k=16, limits=Limits()) -> dict:
    """The graph the workers wrote -> persons: assignments, persons table, names carried over."""
    graph = _read_graph(graph_folder(output))
    g = graph.select(list(META) + ["ok"]).to_pylist()
    old = [{**{c: r[c] for c in META}, "ok": r["status"] != LOW_QUALITY} for r in previous] if incremental else []
    meta = old + g
    face_ids = np.asarray([r["face_id"] for r in meta], dtype=object)
    n = len(meta)
    if len(set(face_ids)) != n:  # the same photo content at two paths: one face
        seen, keep = set(), []
        for i, f in enumerate(face_ids):
            if f not in seen:
                seen.add(f)
                keep.append(i)
        meta = [meta[i] for i in keep]
        face_ids = face_ids[keep]
        graph = graph.take(pa.array([i - len(old) for i in keep if i >= len(old)]))
        n = len(meta)
    ok = np.asarray([bool(r["ok"]) for r in meta])
    t, source = fit_threshold(files, spec, given=threshold, pairs=pairs,
                              carried=state.get("threshold") if (incremental and previous) else None)
    nbr, dist = _padded(graph, face_ids, len(old), n, k)
    joined = 0
    if incremental and previous:
        person_of = {r["face_id"]: r["person_id"] for r in previous if r["person_id"] is not None}
        table = read_table(output)
        new = np.zeros(n, bool)
        new[len(old):] = True
        want = {face_ids[i]: i for i in np.flatnonzero(new & ok)}
        x_new = np.zeros((n, spec.dim), np.float32)
        for b in scan(files, ["face_id", "embedding"]):
            fids = b.column("face_id").to_pylist()
            hit = [j for j, f in enumerate(fids) if f in want]
            if hit:
                x = prepare(_vectors(b, spec.dim)[hit], spec.metric)
                for j, v in zip(hit, x):
                    x_new[want[fids[j]]] = v
        rows_new = np.asarray(sorted(want.values()), np.int64)
        cent_ids = [r["person_id"] for r in table if r["centre"] is not None]
        cents = np.asarray([r["centre"] for r in table if r["centre"] is not None], np.float32).reshape(-1, spec.dim)
        ci, cd = nearest_centre(x_new[rows_new], cents)
        cd = to_distance(cd, spec.metric)
        rest = np.zeros(n, bool)
        for i, c, d in zip(rows_new, ci, cd):
            if d <= t and len(cents):
                person_of[face_ids[i]] = cent_ids[c]
                joined += 1
            else:
                rest[i] = True
        labels = label_faces(n, rest, nbr, dist, t, method)
        lab2pid = stable_ids(face_ids[rest], labels[rest], {})
        for i in np.flatnonzero(rest):
            person_of[face_ids[i]] = lab2pid[int(labels[i])]
        names = {r["person_id"]: r["name"] for r in table if r["name"]}
    else:
        labels = label_faces(n, ok, nbr, dist, t, method)
        prev = {r["face_id"]: r["person_id"] for r in previous if r["person_id"] is not None}
        lab2pid = stable_ids(face_ids[ok], labels[ok], prev)
        person_of = {face_ids[i]: lab2pid[int(labels[i])] for i in np.flatnonzero(ok)}
        names = {r["person_id"]: r["name"] for r in read_table(output) if r["name"]}
    names.update(replay_edits(face_ids, person_of, read_edits(output)))

    def chunks():
        for b in scan(files, ["face_id", "embedding"]):
            yield b.column("face_id").to_pylist(), prepare(_vectors(b, spec.dim), spec.metric)

    cents = centres_of(person_of, chunks, spec.dim)
    to_centre = {}
    for fids, x in chunks():
        for f, v in zip(fids, x):
            pid = person_of.get(f)
            if pid is not None and f not in to_centre:
                to_centre[f] = float(to_distance(np.linalg.norm(v - cents[pid][0]), spec.metric))
    sizes = {p: c[1] for p, c in cents.items()}
    assignments = []
    for r in meta:
        pid = person_of.get(r["face_id"])
        status = LOW_QUALITY if pid is None else (SINGLETON if sizes[pid] == 1 else MEMBER)
        assignments.append({**{c: r[c] for c in META}, "person_id": pid, "status": status,
                            "distance": to_centre.get(r["face_id"])})
    reps = representative([a["person_id"] for a in assignments], [a["face_id"] for a in assignments],
                          [a["distance"] if a["distance"] is not None else np.inf for a in assignments],
                          [True] * len(assignments))
    by_face = {a["face_id"]: a for a in assignments}
    table = []
    for pid, (centre, size) in sorted(cents.items(), key=lambda kv: (-kv[1][1], kv[0])):
        rep = by_face[reps[pid]]
        table.append({"person_id": pid, "size": int(size), "name": names.get(pid),
                      "status": "person" if size > 1 else SINGLETON, "representative_face_id": rep["face_id"],
                      "representative_image_path": rep["image_path"], "rep_box_x": rep["box_x"],
                      "rep_box_y": rep["box_y"], "rep_box_w": rep["box_w"], "rep_box_h": rep["box_h"],
                      "centre": centre.tolist()})
    write_outputs(output, assignments, table, spec.dim)
    clear(graph_folder(output))
    return {"faces": len(assignments), "persons": sum(1 for r in table if r["size"] > 1),
            "singletons": sum(1 for r in table if r["size"] == 1),
            "low_quality": sum(1 for a in assignments if a["status"] == LOW_QUALITY),
            "named": sum(1 for r in table if r["name"]), "new_faces": len(g), "joined": joined,
            "threshold": t, "threshold_from": source, "method": method, "k": k,
            "limits": dataclasses.asdict(limits), "incremental": bool(incremental and previous)}


def push_names(conn, alias: str, folder: str) -> int:
    """Every named person's name onto its faces' documents (bulk updates by face id)."""
    table = read_table(folder)
    named = {r["person_id"]: r["name"] for r in table if r["name"]}
    if not named:
        return 0
    faces = {}
    for r in read_assignments(folder):
        if r["person_id"] in named:
            faces.setdefault(r["person_id"], []).append(r["face_id"])
    client = conn.client()
    try:
        return sum(es_set_person(client, alias, fids, named[pid]) for pid, fids in faces.items())
    finally:
        client.close()


def edit(folder: str, action: str, person_id: str, name=None, into=None, faces=()) -> dict:
    """Name, merge or split a person in the persons table and log the edit (by face) for re-clusters."""
    import time as _time

    table = {r["person_id"]: r for r in read_table(folder)}
    assignments = read_assignments(folder)
    if person_id not in table:
        raise UserError(f"no person {person_id!r} in {folder}")
    members = [a["face_id"] for a in assignments if a["person_id"] == person_id]
    dim = len(next(r["centre"] for r in table.values() if r["centre"] is not None))
    stamp = _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime())
    if action == "name":
        table[person_id]["name"] = name
        e = {"op": "name", "person_id": person_id, "name": name, "faces": members}
    elif action == "merge":
        if into not in table or into == person_id:
            raise UserError(f"no other person {into!r} in {folder} to merge into")
        keep, gone = table[into], table.pop(person_id)
        if gone["centre"] is not None and keep["centre"] is not None:
            keep["centre"] = ((np.asarray(keep["centre"]) * keep["size"] + np.asarray(gone["centre"]) * gone["size"])
                              / (keep["size"] + gone["size"])).astype(np.float32).tolist()
        keep["size"] += gone["size"]
        keep["status"] = "person"
        keep["name"] = keep["name"] or gone["name"]
        for a in assignments:
            if a["person_id"] == person_id:
                a["person_id"], a["status"] = into, MEMBER
        e = {"op": "merge", "person_id": person_id, "into": into, "faces": members,
             "into_faces": [a["face_id"] for a in assignments if a["person_id"] == into and a["face_id"] not in members]}
    elif action == "split":
        moving = [f for f in faces if f in set(members)]
        if not moving or len(moving) == len(members):
            raise UserError(f"--faces must name some, not all, faces of {person_id}")
        new_id = "p-" + hashlib.sha256(("split|" + "|".join(sorted(moving))).encode()).hexdigest()[:12]
        if new_id in table:
            raise UserError(f"those faces were split off already: {new_id}")
        rows = [a for a in assignments if a["face_id"] in set(moving)]
        for a in rows:
            a["person_id"], a["status"] = new_id, (SINGLETON if len(moving) == 1 else MEMBER)
        old = table[person_id]
        old["size"] -= len(moving)
        if old["representative_face_id"] in set(moving):
            rest = next(a for a in assignments if a["person_id"] == person_id)
            old.update(representative_face_id=rest["face_id"], representative_image_path=rest["image_path"],
                       rep_box_x=rest["box_x"], rep_box_y=rest["box_y"], rep_box_w=rest["box_w"], rep_box_h=rest["box_h"])
        if old["size"] == 1:
            old["status"] = SINGLETON
            for a in assignments:
                if a["person_id"] == person_id:
                    a["status"] = SINGLETON
        r0 = rows[0]
        table[new_id] = {"person_id": new_id, "size": len(moving), "name": None,
                         "status": "person" if len(moving) > 1 else SINGLETON, "representative_face_id": r0["face_id"],
                         "representative_image_path": r0["image_path"], "rep_box_x": r0["box_x"],
                         "rep_box_y": r0["box_y"], "rep_box_w": r0["box_w"], "rep_box_h": r0["box_h"],
                         "centre": old["centre"]}
        e = {"op": "split", "person_id": person_id, "new_person_id": new_id, "faces": moving}
    else:
        raise UserError(f"unknown persons action {action!r}")
    ordered = sorted(table.values(), key=lambda r: (-r["size"], r["person_id"]))
    write_outputs(folder, assignments, ordered, dim)
    append_edit(folder, {**e, "at": stamp})
    return {"action": action, "person_id": person_id, "faces": len(e["faces"]),
            **({"new_person_id": e["new_person_id"]} if action == "split" else {})}
