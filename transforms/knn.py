"""Top-k face search: Elasticsearch kNN (msearch) or an exact scan over the Parquet shards.

`ExactScan` is the one exact top-k over a float32 matrix (an array or a memory map) that the
benchmarks and the embedded index's filtered path use; `topk_block`/`merge_topk` serve the scans
that must exclude pairs (the shards with filters, the persons graph).

Both take probe face rows and return hits as the same dicts, so one job and one
report serve both; the exact scan is the recall ground truth. The stores
(transforms/stores/) search through these; this module imports none of them.
"""
import dataclasses
import functools
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


#: Elasticsearch refuses a kNN with more candidates (and so a k above it) with a 400.
ES_MAX_CANDIDATES = 10_000


def default_candidates(k: int) -> int:
    """num_candidates when none is given: recall@10 reached 0.95 at 200 candidates on 1M vectors (issue 24's
    `bench query`: one merged hnsw shard, or the default two int8_hnsw shards re-ranked on the floats; 100 gave
    0.88-0.92), at 1-2 ms more per query than 100 on 100k. Never above what Elasticsearch takes, unless k is."""
    return max(k, min(max(200, 20 * k), ES_MAX_CANDIDATES))


# The fields every searching store filters on alike (Elasticsearch keeps the box as box.x, so no box field):
# a field outside them would filter nothing on one store and everything on another.
FILTER_FIELDS = ("label", "image_path", "image_sha256", "face_id", "face_index", "person")


def parse_filters(items) -> tuple:
    out = []
    for item in items or ():
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"--filter wants FIELD=VALUE, got {item!r}")
        if field not in FILTER_FIELDS:
            raise ValueError(f"--filter cannot filter on {field!r}: the fields are {', '.join(FILTER_FIELDS)} "
                             "(and --path-prefix P)")
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


# How a kNN request asks for its hits (measured side by side by `facebeam bench query`, the first is the default):
# "source" reads the hit fields from `_source`; "docvalues" turns `_source` off and reads them from doc values.
# Both trim the response to the hits (filter_path): no _shards, took, _index or _id to send and parse.
FETCH = ("source", "docvalues")
SOURCE_FIELDS = ["face_id", "image_path", "image_sha256", "face_index", "label", "box"]
DOCVALUE_FIELDS = ["face_id", "image_path", "image_sha256", "face_index", "label", "box.x", "box.y", "box.w", "box.h"]
FILTER_PATH = ["responses.hits.hits._score", "responses.hits.hits._source", "responses.hits.hits.fields",
               "responses.error", "responses.status"]
# Where the kNN goes (the first is the default, measured side by side by `facebeam bench query`): the `knn` query,
# which a shard answers in its query phase, or the top-level `knn` section, which adds a DFS phase before it (one
# more round of the search's phases). Same hits and scores; the query was 0.13-0.44 ms faster at 1M.
KNN_IN = ("query", "section")


@dataclasses.dataclass(frozen=True)
class FaceIdsLookup:
    """A kNN pre-filter on face ids kept server-side: the `face_ids` arrays of documents (terms lookups; a document
    that is not there matches nothing)."""

    index: str
    ids: tuple
    path: str = "face_ids"

    def query(self) -> dict:
        terms = [{"terms": {"face_id": {"index": self.index, "id": i, "path": self.path}}} for i in self.ids]
        return terms[0] if len(terms) == 1 else {"bool": {"should": terms, "minimum_should_match": 1}}


def es_knn_body(vector, sha256, search: SearchSpec, face_ids=None, fetch: str = FETCH[0],
                knn_in: str = KNN_IN[0]) -> dict:
    """The kNN request; every filter is a pre-filter (the top k are all within it). `face_ids`: only those (a set,
    or a FaceIdsLookup the server resolves). `knn_in`: one of KNN_IN."""
    flt = [{"term": {f: v}} for f, v in search.filters]
    if isinstance(face_ids, FaceIdsLookup):
        flt.append(face_ids.query())
    elif face_ids is not None:
        flt.append({"terms": {"face_id": sorted(face_ids)}})
    if search.path_prefix:
        flt.append({"prefix": {"image_path": search.path_prefix}})
    must_not = [{"term": {"image_sha256": sha256}}] if search.exclude_same_image else []
    knn = {"field": "embedding", "query_vector": [float(x) for x in vector], "k": search.k,
           "num_candidates": search.num_candidates}
    if flt or must_not:
        knn["filter"] = {"bool": {"filter": flt, "must_not": must_not}}
    if knn_in not in KNN_IN:
        raise ValueError(f"knn_in: {knn_in!r} is not one of {KNN_IN}")
    body = {"query": {"knn": knn}} if knn_in == "query" else {"knn": knn}
    if fetch == "docvalues":
        return {**body, "size": search.k, "_source": False, "docvalue_fields": DOCVALUE_FIELDS}
    return {**body, "size": search.k, "_source": SOURCE_FIELDS}


def es_hit(h: dict, spec: EmbeddingSpec) -> dict:
    """One kNN hit (either FETCH shape) -> the hit dict every store returns."""
    if "_source" in h:
        s = h["_source"]
        box = s.get("box") or {}
    else:  # doc values: every field a list
        s = {name: v[0] for name, v in (h.get("fields") or {}).items() if v}
        box = {k: s.get(f"box.{k}") for k in ("x", "y", "w", "h")}
    return {"face_id": s.get("face_id"), "image_path": s.get("image_path"), "image_sha256": s.get("image_sha256"),
            "face_index": s.get("face_index"), "label": s.get("label"),
            "box_x": box.get("x"), "box_y": box.get("y"), "box_w": box.get("w"), "box_h": box.get("h"),
            "score": float(h["_score"]), "distance": score_to_distance(h["_score"], spec)}


def fast_json():
    """orjson when installed (it encodes vectors ~10x faster than the stdlib's json), else None."""
    try:
        import orjson
    except ImportError:
        return None
    return orjson


def es_client_options() -> dict:
    """Options for a search client: orjson parses its responses when installed (`facebeam bench query` measures it)."""
    if fast_json() is None:
        return {}
    from elasticsearch.serializer import OrjsonSerializer

    return {"serializer": OrjsonSerializer()}


def es_settings(search: SearchSpec, fetch: str = FETCH[0]) -> dict:
    """The request settings a kNN search uses, for summaries."""
    return {"num_candidates": search.num_candidates, "k": search.k, "fetch": fetch, "knn": KNN_IN[0],
            "response": "filter_path (hits only)",
            "request": "msearch", "json": "orjson" if fast_json() else "json (stdlib)",
            "connection": "one keep-alive client per worker"}


def es_search(client, index: str, probes: list, search: SearchSpec, spec: EmbeddingSpec, face_ids=None,
              fetch: str = FETCH[0], encode: bool = True, filter_path=FILTER_PATH, one_by_search: bool = False,
              knn_in: str = KNN_IN[0]) -> list:
    """One msearch for a batch of probe rows (the response trimmed to the hits); returns a list of hit lists.
    `encode`: each request line encoded here with orjson when installed (the client's NDJSON uses the stdlib).
    `one_by_search`: a single probe goes through the search API instead."""
    body = []
    for p in probes:
        body += [{"index": index}, es_knn_body(p["embedding"], p.get("image_sha256"), search, face_ids, fetch, knn_in)]
    if len(probes) == 1 and one_by_search:  # one probe: the search API, without msearch's NDJSON framing
        one = [f.removeprefix("responses.") for f in filter_path] if filter_path else None
        responses = [client.search(index=index, **body[1], filter_path=one).body]
    else:
        fast = fast_json() if encode else None
        if fast is not None:
            body = [fast.dumps(line) for line in body]
        responses = client.msearch(searches=body, filter_path=filter_path).body["responses"]
    out = []
    for r in responses:
        if "error" in r:
            raise RuntimeError(f"kNN search failed: {r['error']}")
        out.append([es_hit(h, spec) for h in (r.get("hits") or {}).get("hits", [])])
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


EINSUM_QUERIES = 8
SELECT_STRIDE = 64


def largest_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest of a 1-d array (unordered), exactly, at a fraction of argpartition's cost.

    The k-th largest of every 64th score is a lower bound on the k-th largest of all (those k are among all),
    so every score at or above it is a candidate, about k x 64 of them; argpartition then runs on those alone.
    On a 131k-score block this took 0.05 ms where argpartition over the block took 1.2 ms.
    """
    sample = scores[::SELECT_STRIDE]
    if len(sample) < k:
        return np.argpartition(-scores, k - 1)[:k]
    bound = np.partition(sample, len(sample) - k)[len(sample) - k]
    candidates = np.flatnonzero(scores >= bound)
    return candidates[np.argpartition(-scores[candidates], k - 1)[:k]]


class ExactScan:
    """Exact top-k (euclidean) over a float32 matrix, an array or a memory map, scanned in row blocks.

    ||q - x||^2 = ||q||^2 - 2 (q.x - ||x||^2 / 2): with the rows' half squared norms computed once
    (on open), a query reads every vector once, in one product per block (einsum for a few queries,
    BLAS for many). Blocks run on a thread pool (numpy releases the GIL); their top k merge at the end. Memory per block:
    queries x block_rows floats (query batches are cut to keep it under `block_floats`).

    From `sketch_rows` rows on, a few queries scan an 8-bit copy first (`_Sketch`): a quarter of the bytes, which is
    what one query's time is made of (the float32 scan runs at memory speed, and a second thread does not speed it up).
    """

    def __init__(self, x, block_rows: int = 131_072, threads: int = None, block_floats: int = 8_388_608,
                 sketch_rows: int = 262_144):
        import concurrent.futures
        import os

        self.x = x
        n = len(x)
        threads = max(1, threads or os.cpu_count() or 1)
        block_rows = max(1, min(block_rows, -(-n // threads)))  # at least one block per thread
        self.half_norms = np.empty(n, dtype=np.float32)
        for s in range(0, n, block_rows):
            b = np.asarray(x[s:s + block_rows], dtype=np.float32)
            self.half_norms[s:s + len(b)] = 0.5 * np.einsum("ij,ij->i", b, b)
        self.blocks = [(s, min(n, s + block_rows)) for s in range(0, n, block_rows)]
        self.threads = max(1, min(len(self.blocks), threads))
        self.query_batch = max(1, block_floats // block_rows)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        self.sketch = _Sketch(x, self.half_norms, self.threads, block_rows) if n >= sketch_rows else None

    def _run_block(self, q: np.ndarray, k: int, block: tuple):
        return self._block(q, block[0], block[1], k)

    def _block(self, q: np.ndarray, start: int, stop: int, k: int):
        x = np.asarray(self.x[start:stop], dtype=np.float32)
        # A few queries: numpy's own loop (einsum) streams the block at memory speed and runs beside the other
        # blocks' threads; BLAS' gemv was 3-4x slower here and serializes concurrent calls. Many: BLAS gemm.
        s = np.einsum("ij,qj->qi", x, q) if len(q) <= EINSUM_QUERIES else q @ x.T
        s -= self.half_norms[None, start:stop]
        kk = min(k, stop - start)
        part = np.stack([largest_k(row, kk) for row in s])
        return part + start, np.take_along_axis(s, part, 1)

    def topk(self, queries, k: int):
        """(ids, euclidean distances) of the k nearest rows per query, best first."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.x.shape[1]))
        ids_out = np.empty((len(q), min(k, len(self.x))), dtype=np.int64)
        dist_out = np.empty(ids_out.shape, dtype=np.float32)
        for qs in range(0, len(q), self.query_batch):
            qb = q[qs:qs + self.query_batch]
            found = self.sketch.candidates(qb, k, self._pool) if self.sketch and len(qb) <= EINSUM_QUERIES else None
            if found is not None:
                ids, sc = self._rescore(qb, found)
            else:
                run = functools.partial(self._run_block, qb, k)
                parts = list(self._pool.map(run, self.blocks) if self._pool else map(run, self.blocks))
                ids = np.concatenate([p[0] for p in parts], axis=1)
                sc = np.concatenate([p[1] for p in parts], axis=1)
            order = np.argsort(-sc, axis=1, kind="stable")[:, :ids_out.shape[1]]
            ids, sc = np.take_along_axis(ids, order, 1), np.take_along_axis(sc, order, 1)
            d2 = np.einsum("ij,ij->i", qb, qb)[:, None] - 2.0 * sc
            ids_out[qs:qs + len(qb)], dist_out[qs:qs + len(qb)] = ids, np.sqrt(np.maximum(d2, 0.0))
        return ids_out, dist_out

    def _rescore(self, q: np.ndarray, candidates: list) -> tuple:
        """The sketch's candidate rows per query, scored on their float32 vectors as a block would score them."""
        width = max(len(c) for c in candidates)
        ids = np.zeros((len(q), width), dtype=np.int64)
        sc = np.full((len(q), width), -np.inf, dtype=np.float32)
        for i, rows in enumerate(candidates):
            x = np.asarray(self.x[rows], dtype=np.float32)  # sorted positions: one pass over the memory map
            ids[i, :len(rows)] = rows
            sc[i, :len(rows)] = np.einsum("ij,j->i", x, q[i]) - self.half_norms[rows]
        return ids, sc

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


class _Sketch:
    """The rows in 8 bits per dimension (faiss' scalar quantizer, trained on every row, so nothing is clipped), and
    how far any decoded row lies from its float32 row (`error`, measured at build, not assumed).

    Why not faiss' own refine index: it re-ranks a fixed number of candidates, which is approximate. Here the bound
    decides how many: if a row's squared distance through its codes is d', its true one d differs by at most
    B = e (2 |q| + 2 |x| + e) (the difference is (x' - x).(2q - x - x')), so every row of the exact top k has
    d' <= d'_k + 2B, where d'_k is the k-th smallest d'. The codes are scanned once for the best `first` rows per
    part; a part whose last one still lies inside that bound is scanned again for more (faiss' range search on
    these codes was 20x slower than a search for the best 1,024). The candidates are then scored on their float32
    rows: the result is the float32 scan's, with a quarter of its bytes read.
    """

    def __init__(self, x, half_norms: np.ndarray, parts: int, block_rows: int):
        import faiss

        n, dim = x.shape
        trained = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
        trained.train(np.ascontiguousarray(x, dtype=np.float32))
        step = -(-n // parts)
        self.parts, self.error = [], 0.0
        for start in range(0, n, step):
            part = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
            part.sq = trained.sq
            part.is_trained = True
            for s in range(start, min(n, start + step), block_rows):
                rows = np.ascontiguousarray(x[s:min(n, start + step, s + block_rows)], dtype=np.float32)
                part.add(rows)
                back = part.sa_decode(part.sa_encode(rows))
                self.error = max(self.error, float(np.sqrt(np.einsum("ij,ij->i", rows - back, rows - back).max())))
            self.parts.append((start, part))
        self.max_norm = float(np.sqrt(2.0 * half_norms.max())) if n else 0.0

    def bound(self, q: np.ndarray) -> np.ndarray:
        """Per query, the most a squared distance through the codes can differ from the float32 one; the second
        term covers float32 rounding in both sums."""
        qn = np.sqrt(np.einsum("ij,ij->i", q, q))
        e = self.error
        return e * (2.0 * qn + 2.0 * self.max_norm + e) + 1e-5 * (qn + self.max_norm) ** 2

    def candidates(self, q: np.ndarray, k: int, pool, first: int = 256, most: int = 16_384):
        """Per query, the sorted row positions that hold its exact top k; None if more than `most` rows per part
        lie inside the bound (then the float32 scan is the cheaper way)."""
        first = max(first, 4 * k)
        while True:
            def scan(item, wanted=first):
                start, part = item
                d, i = part.search(q, min(wanted, part.ntotal))
                return start, part.ntotal, d, i

            found = list(pool.map(scan, self.parts) if pool else map(scan, self.parts))
            d_all = np.concatenate([d for _, _, d, _ in found], axis=1)
            limit = np.sort(d_all, axis=1)[:, min(k, d_all.shape[1]) - 1] + 2.0 * self.bound(q)
            # A part is complete for a query when it returned all its rows or its last one lies past the limit.
            if all(d.shape[1] == total or (d[:, -1] > limit).all() for _, total, d, _ in found):
                return [np.unique(np.concatenate([i[j][d[j] <= limit[j]] + start for start, _, d, i in found]))
                        for j in range(len(q))]
            if first >= most:
                return None
            first *= 8


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
