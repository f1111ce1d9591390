"""Top-k face search: Elasticsearch kNN (msearch) or an exact scan over the Parquet shards.

Both take probe face rows and return hits as the same dicts, so one job and one
report serve both; the exact scan is the recall ground truth. The stores
(transforms/stores/) search through these; this module imports none of them.
"""
import dataclasses
import logging

import numpy as np

from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)
HIT_FIELDS = ("face_id", "image_path", "image_sha256", "face_index", "label",
              "box_x", "box_y", "box_w", "box_h")


@dataclasses.dataclass(frozen=True)
class SearchSpec:
    k: int = 5
    num_candidates: int = 100
    filters: tuple = ()  # ((field, value), ...); field "person" is a person's name (the stores resolve it)
    exclude_same_image: bool = False
    path_prefix: str = None  # only faces of images whose path starts with this

    def __post_init__(self):
        if self.k < 1 or self.num_candidates < self.k:
            raise ValueError("need k >= 1 and num_candidates >= k")


def parse_filters(items) -> tuple:
    out = []
    for item in items or ():
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--filter wants FIELD=VALUE, got {item!r}")
        out.append((field, value))
    return tuple(out)


def score_to_distance(score: float, spec: EmbeddingSpec) -> float:
    """Invert Elasticsearch's similarity score to the model's distance."""
    if spec.es_similarity == "l2_norm":  # score = 1 / (1 + d^2)
        return float(np.sqrt(max(1.0 / score - 1.0, 0.0)))
    return float(max(0.0, 2.0 - 2.0 * score))  # cosine: score = (1 + cos) / 2


def distance_to_score(distance: float, spec: EmbeddingSpec) -> float:
    if spec.es_similarity == "l2_norm":
        return 1.0 / (1.0 + distance * distance)
    return (2.0 - distance) / 2.0


def es_knn_body(vector, sha256, search: SearchSpec, face_ids=None) -> dict:
    """The kNN request; every filter is a pre-filter (the top k are all within it). `face_ids`: only those."""
    flt = [{"term": {f: v}} for f, v in search.filters]
    if face_ids is not None:
        flt.append({"terms": {"face_id": sorted(face_ids)}})
    if search.path_prefix:
        flt.append({"prefix": {"image_path": search.path_prefix}})
    must_not = [{"term": {"image_sha256": sha256}}] if search.exclude_same_image else []
    knn = {"field": "embedding", "query_vector": [float(x) for x in vector], "k": search.k,
           "num_candidates": search.num_candidates}
    if flt or must_not:
        knn["filter"] = {"bool": {"filter": flt, "must_not": must_not}}
    return {"knn": knn, "size": search.k, "_source": ["face_id", "image_path", "image_sha256", "face_index", "label", "box"]}


def es_search(client, index: str, probes: list, search: SearchSpec, spec: EmbeddingSpec, face_ids=None) -> list:
    """One msearch for a batch of probe rows; returns a list of hit lists."""
    body = []
    for p in probes:
        body += [{"index": index}, es_knn_body(p["embedding"], p.get("image_sha256"), search, face_ids)]
    responses = client.msearch(searches=body).body["responses"]
    out = []
    for r in responses:
        if "error" in r:
            raise RuntimeError(f"kNN search failed: {r['error']}")
        hits = []
        for h in r["hits"]["hits"]:
            s, box = h["_source"], h["_source"].get("box") or {}
            hits.append({"face_id": s["face_id"], "image_path": s["image_path"], "image_sha256": s["image_sha256"],
                         "face_index": s["face_index"], "label": s.get("label"),
                         "box_x": box.get("x"), "box_y": box.get("y"), "box_w": box.get("w"), "box_h": box.get("h"),
                         "score": float(h["_score"]), "distance": score_to_distance(h["_score"], spec)})
        out.append(hits)
    return out


def _matches(table, filters):
    mask = np.ones(table.num_rows, dtype=bool)
    for field, value in filters:
        if field not in table.column_names:
            raise ValueError(f"cannot filter on {field!r}: the shards have no such column")
        col = np.asarray(table.column(field).to_pylist(), dtype=object)
        mask &= np.array([str(v) == value for v in col], dtype=bool)
    return mask


# --- the one exact top-k: every exact scan (query, cluster, benchmarks) runs on these -----------------
def prepare(x, metric: str) -> np.ndarray:
    """Vectors in the space where the spec's distance is euclidean (cosine: unit vectors)."""
    x = np.asarray(x, dtype=np.float32)
    if metric in ("cosine", "euclidean_l2"):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x)


def to_distance(d_euclid: np.ndarray, metric: str) -> np.ndarray:
    """Euclidean distance between prepared vectors -> the spec's distance."""
    return d_euclid * d_euclid / 2.0 if metric == "cosine" else d_euclid


def topk_block(q: np.ndarray, x: np.ndarray, k: int, q_offset: int = None, x_offset: int = 0, exclude=None):
    """Top-k (ids, euclidean distances) of prepared queries `q` among prepared rows `x` (ids from x_offset).

    With `q_offset`, q is rows [q_offset, q_offset + len(q)) of the same collection and a face is
    not its own neighbour; `exclude` (len(q) x len(x) booleans) rules out more pairs (their
    distance is inf). Memory: len(q) x len(x) floats.
    """
    d2 = np.einsum("ij,ij->i", q, q)[:, None] + np.einsum("ij,ij->i", x, x)[None, :] - 2.0 * (q @ x.T)
    if exclude is not None:
        d2[exclude] = np.inf
    if q_offset is not None:
        rows = np.arange(len(q))
        cols = rows + q_offset - x_offset
        ok = (cols >= 0) & (cols < len(x))
        d2[rows[ok], cols[ok]] = np.inf
    kk = min(k, x.shape[0])
    part = np.argpartition(d2, kk - 1, axis=1)[:, :kk]
    dist = np.sqrt(np.maximum(np.take_along_axis(d2, part, 1), 0.0)).astype(np.float32)
    return part.astype(np.int64) + x_offset, dist


def merge_topk(a, b, k: int):
    """Two (ids, distances) top-k candidate sets per row -> the k best, sorted by distance."""
    ids = np.concatenate([a[0], b[0]], axis=1)
    dist = np.concatenate([a[1], b[1]], axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1), np.take_along_axis(dist, order, 1)


def empty_topk(rows: int):
    return np.zeros((rows, 0), np.int64), np.zeros((rows, 0), np.float32)


def exact_search(shard_files, probes: list, search: SearchSpec, spec: EmbeddingSpec, chunk_rows: int = 65536,
                 face_ids=None) -> list:
    """Brute force over every shard, chunk by chunk: memory is O(chunk_rows x dim + probes x k); `face_ids`: only those."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    q = prepare([p["embedding"] for p in probes], spec.metric)
    k, best, meta, offset = search.k, empty_topk(len(probes)), {}, 0
    columns = list(HIT_FIELDS) + ["embedding"] + [f for f, _ in search.filters if f not in HIT_FIELDS]
    for path in shard_files:
        with FileSystems.open(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=chunk_rows, columns=columns):
                n = batch.num_rows
                if n == 0:
                    continue
                x = prepare(np.asarray(batch.column("embedding").values, dtype=np.float32).reshape(n, spec.dim),
                            spec.metric)
                excluded = np.zeros((len(probes), n), dtype=bool)
                if search.filters:
                    excluded[:, ~_matches(batch, search.filters)] = True
                if face_ids is not None:
                    fids = batch.column("face_id").to_pylist()
                    excluded[:, ~np.array([f in face_ids for f in fids], dtype=bool)] = True
                if search.path_prefix:
                    paths = batch.column("image_path").to_pylist()
                    excluded[:, ~np.array([(p or "").startswith(search.path_prefix) for p in paths], dtype=bool)] = True
                if search.exclude_same_image:
                    shas = np.asarray(batch.column("image_sha256").to_pylist(), dtype=object)
                    for i, p in enumerate(probes):
                        excluded[i, shas == p["image_sha256"]] = True
                best = merge_topk(best, topk_block(q, x, k, x_offset=offset, exclude=excluded), k)
                rows = batch.select(list(HIT_FIELDS)).to_pylist()
                keep = set(best[0][np.isfinite(best[1])].tolist())
                meta = {i: m for i, m in meta.items() if i in keep}
                meta.update((offset + j, rows[j]) for j in range(n) if offset + j in keep)
                offset += n
    out = []
    for ids, dists in zip(*best):
        hits = []
        for i, d in zip(ids.tolist(), to_distance(dists, spec.metric).tolist()):
            if np.isfinite(d):
                hits.append({**meta[i], "distance": float(d), "score": distance_to_score(float(d), spec)})
        out.append(hits)
    return out


PROBE_FIELDS = ("image_path", "image_sha256", "face_index", "box_x", "box_y", "box_w", "box_h")


def probe_faces(found, spec: EmbeddingSpec) -> list:
    """A photo's detected faces (faces.ImageFaces) -> probe rows numbered as the shards number them."""
    from facebeam.transforms import records

    return records.face_rows(found, spec)


def photo_rows(path: str, faces, spec: EmbeddingSpec, threshold: float, mode: str) -> list:
    """All faces of one probe photo, [(probe row, hits), ...] -> result rows (records.RESULT_SCHEMA).

    The one code path behind `query` and `search`: faces in face_index order, `same_person`
    by `threshold`, and the photo's labels decided together (labels.photo_labels).
    """
    from facebeam.transforms import labels

    faces = sorted(faces, key=lambda f: f[0]["face_index"])
    decided = labels.photo_labels([(probe["face_index"], hits) for probe, hits in faces], threshold)
    rows = []
    for probe, hits in faces:
        for rank, h in enumerate(hits, 1):
            rows.append({
                "probe_path": path, "probe_sha256": probe["image_sha256"], "probe_face_index": probe["face_index"],
                "probe_box_x": probe["box_x"], "probe_box_y": probe["box_y"],
                "probe_box_w": probe["box_w"], "probe_box_h": probe["box_h"],
                "rank": rank, "face_id": h["face_id"], "hit_image_path": h["image_path"],
                "hit_image_sha256": h["image_sha256"], "hit_face_index": h["face_index"],
                "hit_box_x": h["box_x"], "hit_box_y": h["box_y"], "hit_box_w": h["box_w"], "hit_box_h": h["box_h"],
                "hit_label": h.get("label"), "hit_person_id": h.get("person_id"), "hit_person": h.get("person"),
                "score": h["score"], "distance": h["distance"],
                "same_person": h["distance"] <= threshold, "top_label": decided[probe["face_index"]],
                "mode": mode, "spec_id": spec.spec_id,
            })
    return rows
