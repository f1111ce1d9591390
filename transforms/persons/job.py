"""The Beam side of a cluster job: score faces against the limits, find each good face's neighbours."""
from __future__ import annotations

import logging
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import ann, images, knn, metrics, privacy, progress
from facebeam.transforms.knn import merge_topk, prepare, to_distance, topk_block
from facebeam.transforms.persons.graph import EF_SEARCH, IVF_MIN_FACES, build_ivf, search_ivf, training_rows
from facebeam.transforms.persons.limits import Limits, sharpness
from facebeam.transforms.persons.tables import GRAPH_SCHEMA

log = logging.getLogger(__name__)

FACES_SCORED = "persons_faces_scored"
PHOTOS_DECODED = "persons_photos_decoded"
FACES_SEARCHED = "persons_faces_searched"


def score_photo(item, limits: Limits):
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
            log.warning("cannot score faces of %s: %r", path, e)
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
            return rows | "Limits" >> beam.FlatMap(lambda r, lim: score_photo((r["image_path"], [r]), lim),
                                                   self._limits)
        return (rows | "ByPhoto" >> beam.Map(lambda r: (r["image_path"], r))
                | "Group" >> beam.GroupByKey()
                | "Sharpness" >> beam.FlatMap(score_photo, self._limits))


def collection_index(shards_dir: str, files, spec) -> str | None:
    """The embedded index the collection was loaded into (its stores.json), when it holds exactly the
    collection's faces in this spec: where a large collection's graph comes from without --ann or --index (an
    exact graph grows with the square of the faces). None when there is no such index."""
    from facebeam.transforms.stores import registry

    want = None
    for rec in registry.recorded(shards_dir):
        folder = rec.get("location")
        if rec.get("kind") != "local" or not folder or not ann.exists(folder):
            continue
        if ann.spec_of(folder).spec_id != spec.spec_id:
            continue
        if want is None:
            want = set()
            for path in files:
                with FileSystems.open(path) as f:
                    want.update(pq.read_table(f, columns=["face_id"]).column("face_id").to_pylist())
        if set(ann.AnnIndex.open(folder, spec).positions()) == want:
            return folder
    return None


def graph_index_for(ann_dir: str, spec, folder: str, min_faces: int | None = None, chunk: int = 131_072,
                    seed: int = 0) -> str | None:
    """The graph index over the embedded index's live faces (graph.build_ivf), built once by the launcher and
    written privately into `folder` for every worker to read; None under `min_faces`, where HNSW look-ups are
    cheap. Its codes are derived from face vectors: the caller removes the folder when the graph is written."""
    import faiss

    index = ann.AnnIndex.open(ann_dir, spec)
    live = index.live_positions()
    if len(live) < (IVF_MIN_FACES if min_faces is None else min_faces):
        return None
    train = index.vectors(live[training_rows(len(live), seed)])
    chunks = ((live[s:s + chunk], index.vectors(live[s:s + chunk])) for s in range(0, len(live), chunk))
    built = build_ivf(chunks, len(live), spec.dim, train, threads=os.cpu_count())
    path = FileSystems.join(folder, "graph.ivf")
    privacy.make_dirs(folder)
    with privacy.private_umask(), FileSystems.create(path) as f:
        f.write(faiss.serialize_index(built).tobytes())
    log.info("graph index: %d faces in %d cells", len(live), built.nlist)
    return path


class Neighbours(beam.DoFn):
    """A batch of scored faces -> graph rows: each good face's top k (face ids, distances).

    Three sources, one shape: the embedded index (`ann_dir`: a folder, memory-mapped once per worker, one
    batched HNSW search per batch; from graph_index_for's size on, one IVF search re-ranked on the index's
    vectors, `graph_index`), Elasticsearch (`conn` + `alias`: one msearch per batch), or exact
    (the collection's vectors once per worker, N x dim float32, scanned in blocks: small sets, and the
    ground truth for recall). `keep_vectors` carries each face's embedding on (incremental runs).
    """

    def __init__(self, spec, k: int, files=(), conn=None, alias=None, block: int = 65536, ann_dir=None,
                 ef: int = EF_SEARCH, keep_vectors: bool = False, graph_index: str = None):
        self._spec, self._k, self._files = spec, k, list(files)
        self._conn, self._alias, self._block = conn, alias, block
        self._ann_dir, self._ef, self._keep_vectors = ann_dir, ef, keep_vectors
        self._graph_index = graph_index
        self._progress = progress.shared_folder()

    def setup(self):
        progress.GRAPH.share_into(self._progress)
        if self._conn is not None:
            self._client = self._conn.client()
            return
        if self._ann_dir is not None:
            self._ann = ann.AnnIndex.open(self._ann_dir, self._spec)
            self._ivf = None
            if self._graph_index is not None:
                import faiss

                with FileSystems.open(self._graph_index) as f:
                    self._ivf = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
            return
        ids, vecs, seen = [], [], set()
        for path in self._files:
            with FileSystems.open(path) as f:
                t = pq.read_table(f, columns=["face_id", "embedding"])
            fids = t.column("face_id").to_pylist()
            first = [i for i, fid in enumerate(fids) if not (fid in seen or seen.add(fid))]  # one row per face
            ids += [fids[i] for i in first]
            x = np.asarray(t.column("embedding").combine_chunks().values, np.float32).reshape(-1, self._spec.dim)
            vecs.append(x[first])
        self._ids = np.asarray(ids, dtype=object)
        self._x = prepare(np.concatenate(vecs) if vecs else np.zeros((0, self._spec.dim), np.float32), self._spec.metric)

    def _index(self, rows):
        if self._ivf is not None:
            q = prepare([r["embedding"] for r in rows], self._spec.metric)
            pos, d = search_ivf(self._ivf, q, self._k + 1, self._ann.vectors)
            d = to_distance(d, self._spec.metric)
            found = [[(int(i), float(x)) for i, x in zip(pr, dr) if i >= 0] for pr, dr in zip(pos, d)]
        else:
            found = self._ann.search_vectors([r["embedding"] for r in rows], self._k + 1,
                                             ef=max(self._ef, self._k + 1))
        face_of = self._ann.meta["face_id"]
        return [[(face_of[i], d) for i, d in hits if face_of[i] != r["face_id"]][:self._k]
                for r, hits in zip(rows, found)]

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
            if self._conn is not None:
                lists = self._es(good)
            elif self._ann_dir is not None:
                lists = self._index(good)
            else:
                lists = self._exact(good)
            found = {id(r): hits for r, hits in zip(good, lists)}
            metrics.count(FACES_SEARCHED, len(good))
        progress.GRAPH.add(faces=len(batch))
        for r in batch:
            hits = found.get(id(r), [])
            yield {**{k: r[k] for k in GRAPH_SCHEMA.names if k in r and k != "embedding"},
                   "neighbours": [h[0] for h in hits], "distances": [h[1] for h in hits],
                   "embedding": list(r["embedding"]) if self._keep_vectors else None}

    def finish_bundle(self):
        progress.GRAPH.flush()

    def teardown(self):
        if getattr(self, "_client", None) is not None:
            self._client.close()
