"""The embedded face index: an HNSW graph in a folder, the store that needs no server.

Library: faiss-cpu (`IndexHNSWFlat`): a wheel on PyPI (installs in seconds, where hnswlib
compiles for ~1.5 minutes and nmslib's wheel is built without SIMD), the same build speed
and latency as hnswlib at equal recall, and the only one of the three that loads an index
memory-mapped (`IO_FLAG_MMAP_IFC`: the vectors and graph stay in the page cache, shared
between processes, and opening a 100k index takes milliseconds).

A folder holds one generation of the index at a time:

    spec.json             the pointer: spec (JSON), spec_id, dim, metric, library, m, ef_construction,
                          generation, counts; replaced atomically last, so readers see one whole generation
    faces-<g>.faiss       the HNSW graph and the float32 vectors (row i = position i)
    faces-<g>.parquet     position -> face_id, image_path, image_sha256, face_index, label, box, deleted

Writers (index, run, forget) hold `<folder>/.facebeam.lock`, read the current generation
into memory, change it and write the next one; readers memory-map the files of the
generation `spec.json` names. Adding faces appends to the graph (no rebuild); a face_id
already present is skipped, so replays are idempotent. Forgetting a face marks its position
deleted (never returned again) and overwrites its vector bytes with zeros in the saved file;
once deleted positions pass `COMPACT_SHARE` of the index, the next write rebuilds the graph
without them.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import numpy as np

from facebeam.transforms import privacy, shards
from facebeam.transforms.errors import UserError
from facebeam.transforms.spec import EmbeddingSpec, SpecError

log = logging.getLogger(__name__)
FORMAT = 1
SPEC_FILE = "spec.json"
COMPACT_SHARE = 0.25
EXACT_SUBSET = 20_000  # a filter that keeps at most this many faces is always answered exactly
# A filtered graph search meets an allowed face once in 1/share visits, so it needs efSearch / share visits for the
# recall an unfiltered search gets at efSearch (at 1M with an 11% filter, efSearch 200 alone gave recall 0.83).
# An exact scan of the S allowed faces costs S rows. Measured at 1M, 128-d (2026-12-05): a graph visit costs about
# 135 scanned rows (3.5 us against 26 ns), so the scan is the cheaper of the two while S^2 <= 135 x efSearch x N.
VISIT_ROWS = 135
GATHERED_BYTES = 256 << 20  # the gathered vectors of recent filters kept, in all
META_FIELDS = ("face_id", "image_path", "image_sha256", "face_index", "label", "box_x", "box_y", "box_w", "box_h")


class AnnError(UserError):
    """The embedded index is missing, damaged, or of another layout."""


def library() -> str:
    import faiss

    return f"faiss-cpu {faiss.__version__}"


def missing(folder: str) -> str:
    """The one line for an embedded index that is not there."""
    from facebeam.transforms.home import elsewhere_hint

    return (f"no embedded index at {folder}: build one with `facebeam run` or `facebeam index --store local:{folder}`"
            + elsewhere_hint(folder))


def exists(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, SPEC_FILE))


def read_info(folder: str) -> dict:
    path = os.path.join(folder, SPEC_FILE)
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise AnnError(missing(folder)) from None
    except (OSError, ValueError) as e:
        raise AnnError(f"embedded index {folder}: {SPEC_FILE} cannot be read ({type(e).__name__})") from None
    if info.get("format") != FORMAT:
        raise AnnError(f"embedded index {folder} has format {info.get('format')!r}; this facebeam reads {FORMAT}")
    return info


def spec_of(folder: str) -> EmbeddingSpec:
    return EmbeddingSpec.from_dict(read_info(folder)["spec"])


def _normalized(spec: EmbeddingSpec) -> bool:
    return spec.metric in ("cosine", "euclidean_l2")


def scan_is_cheaper(allowed: int, ef: int, count: int) -> bool:
    """Whether a filter keeping `allowed` of `count` faces is answered by an exact scan of them (see VISIT_ROWS)."""
    return allowed <= EXACT_SUBSET or allowed * allowed <= VISIT_ROWS * ef * count


def _prepare(vectors, spec: EmbeddingSpec) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, spec.dim))
    if _normalized(spec):
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(x, dtype=np.float32)


def _distance(d2: np.ndarray, spec: EmbeddingSpec) -> np.ndarray:
    """faiss' squared L2 (on normalized vectors for cosine / euclidean_l2) -> the spec's distance."""
    d2 = np.maximum(d2, 0.0)
    return d2 / 2.0 if spec.metric == "cosine" else np.sqrt(d2)


class AnnIndex:
    """One generation of an embedded index, in memory (writable) or memory-mapped (read-only)."""

    def __init__(self, folder: str, spec: EmbeddingSpec, index, meta: dict, info: dict, writable: bool):
        self.folder, self.spec, self.index, self.meta, self.info = folder, spec, index, meta, info
        self.writable = writable
        self._positions = None  # face_id -> position (live faces), built on demand
        self._selector = None
        self._lookup = {}  # filter look-ups (sorted paths, positions by field value), built on demand

    # --- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str, spec: EmbeddingSpec, m: int = 16, ef_construction: int = 100) -> AnnIndex:
        import faiss

        index = faiss.IndexHNSWFlat(spec.dim, m)
        index.hnsw.efConstruction = ef_construction
        info = {"format": FORMAT, "spec": spec.identity(), "spec_id": spec.spec_id, "dim": spec.dim,
                "metric": spec.metric, "library": library(), "m": m, "ef_construction": ef_construction,
                "generation": 0}
        return cls(folder, spec, index, {k: [] for k in META_FIELDS + ("deleted",)}, info, writable=True)

    @classmethod
    def open(cls, folder: str, spec: EmbeddingSpec | None = None, writable: bool = False,
             info: dict | None = None) -> AnnIndex:
        """The current generation, or the one `info` describes (a reindex's kept previous generation); `spec` must
        match (SpecError); read-only opens are memory-mapped."""
        import faiss
        import pyarrow.parquet as pq

        given = info
        for attempt in range(3):  # a writer may switch generations (and drop the old files) between our reads
            info = given or read_info(folder)
            index_path = os.path.join(folder, info["index_file"])
            try:
                index = faiss.read_index(index_path) if writable else faiss.read_index(index_path,
                                                                                       faiss.IO_FLAG_MMAP_IFC)
                table = pq.read_table(os.path.join(folder, info["meta_file"]))
                break
            except Exception as e:  # noqa: BLE001 - a damaged or missing file names the folder
                if attempt < 2 and not given and read_info(folder).get("generation") != info.get("generation"):
                    continue
                raise AnnError(f"embedded index {folder} (generation {info['generation']}) cannot be read: "
                               f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
        stored = EmbeddingSpec.from_dict(info["spec"])
        if spec is not None:
            spec.require_same(stored, what=f"embedded index {folder}")
        meta = {k: table.column(k).to_pylist() for k in META_FIELDS + ("deleted",)}
        if not writable:  # a search worker: one thread per search (Beam runs one worker per core)
            faiss.omp_set_num_threads(1)
        if index.ntotal != len(meta["face_id"]):
            raise AnnError(f"embedded index {folder}: {index.ntotal} vectors but {len(meta['face_id'])} rows of metadata")
        return cls(folder, stored, index, meta, info, writable)

    @classmethod
    def open_or_create(cls, folder: str, spec: EmbeddingSpec, m: int = 16, ef_construction: int = 100) -> AnnIndex:
        if exists(folder):
            return cls.open(folder, spec, writable=True)
        return cls.create(folder, spec, m, ef_construction)

    # --- counts ---------------------------------------------------------------------------
    @property
    def total(self) -> int:
        return int(self.index.ntotal)

    @property
    def deleted(self) -> int:
        if self.__dict__.get("_deleted") is None:  # cached: a search reads it on every call
            self.__dict__["_deleted"] = int(sum(self.meta["deleted"]))
        return self.__dict__["_deleted"]

    @property
    def count(self) -> int:
        return self.total - self.deleted

    def positions(self) -> dict:
        if self._positions is None:
            self._positions = {f: i for i, (f, gone) in enumerate(zip(self.meta["face_id"], self.meta["deleted"]))
                               if not gone}
        return self._positions

    def live_positions(self) -> np.ndarray:
        """Positions of the faces not deleted, ascending."""
        return np.flatnonzero(~np.asarray(self.meta["deleted"], dtype=bool))

    def vectors(self, positions) -> np.ndarray:
        """The stored vectors of those positions, as searched (unit length for cosine and euclidean_l2)."""
        return self.index.reconstruct_batch(np.asarray(positions, dtype=np.int64))

    # --- writing --------------------------------------------------------------------------
    def _require_writable(self):
        if not self.writable:
            raise RuntimeError("this embedded index was opened read-only (memory-mapped)")

    def add_rows(self, rows, chunk: int = 50_000) -> dict:
        """Face rows (shard rows) -> appended to the graph; face_ids already present are skipped."""
        self._require_writable()
        have = self.positions()
        added = skipped = 0
        pending, pending_ids = [], set()

        def flush():
            nonlocal added
            if not pending:
                return
            import faiss

            faiss.omp_set_num_threads(os.cpu_count() or 1)  # the graph is built on every core
            self.index.add(_prepare([r["embedding"] for r in pending], self.spec))
            for r in pending:
                have[r["face_id"]] = len(self.meta["face_id"])
                for k in META_FIELDS:
                    self.meta[k].append(r.get(k))
                self.meta["deleted"].append(False)
            added += len(pending)
            pending.clear()
            pending_ids.clear()

        for r in rows:
            if r["spec_id"] != self.spec.spec_id:
                raise SpecError(f"face {r['face_id']} has spec {r['spec_id']}; embedded index {self.folder} holds "
                                f"spec {self.spec.spec_id}")
            if r["face_id"] in have or r["face_id"] in pending_ids:
                skipped += 1
                continue
            pending.append(r)
            pending_ids.add(r["face_id"])
            if len(pending) >= chunk:
                flush()
        flush()
        self._selector, self._lookup = None, {}
        self.__dict__.pop("_most", None)
        self.__dict__.pop("_deleted", None)
        return {"added": added, "skipped": skipped}

    def relocate(self, paths: dict) -> int:
        """{face_id: image path} onto the faces held (a photo that moved); how many changed."""
        self._require_writable()
        have, changed = self.positions(), 0
        for face_id, path in paths.items():
            pos = have.get(face_id)
            if pos is not None and self.meta["image_path"][pos] != path:
                self.meta["image_path"][pos] = path
                changed += 1
        if changed:
            self._lookup = {}  # the sorted paths a prefix filter looks up
        return changed

    def remove_images(self, shas) -> int:
        """Mark every face of those images deleted and zero its vector; returns how many went."""
        self._require_writable()
        import faiss

        shas = set(shas)
        gone = [i for i, (s, d) in enumerate(zip(self.meta["image_sha256"], self.meta["deleted"])) if s in shas and not d]
        if not gone:
            return 0
        storage = faiss.downcast_index(self.index.storage)
        codes = faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size()).reshape(self.total, storage.code_size)
        for i in gone:
            self.meta["deleted"][i] = True
            codes[i, :] = 0
            for k in META_FIELDS:  # nothing of the face stays, its id included
                self.meta[k][i] = None
        self._positions = self._selector = None
        self._lookup = {}
        self.__dict__.pop("_most", None)
        self.__dict__.pop("_deleted", None)
        return len(gone)

    def compact(self) -> None:
        """Rebuild the graph from the live faces only (drops deleted positions for good)."""
        self._require_writable()
        import faiss

        live = [i for i, d in enumerate(self.meta["deleted"]) if not d]
        vectors = self.index.reconstruct_batch(np.asarray(live, dtype=np.int64)) if live else np.zeros((0, self.spec.dim))
        index = faiss.IndexHNSWFlat(self.spec.dim, self.info["m"])
        index.hnsw.efConstruction = self.info["ef_construction"]
        if live:
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.index = index
        self.meta = {k: [v[i] for i in live] for k, v in self.meta.items()}
        self._positions = self._selector = None
        self._lookup = {}
        self.__dict__.pop("_most", None)
        self.__dict__.pop("_deleted", None)
        self.info["compacted_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def save(self) -> dict:
        """Write the next generation beside the current one, switch `spec.json` to it, drop the old files."""
        self._require_writable()

        if self.total and self.deleted / self.total > COMPACT_SHARE:
            log.info("embedded index %s: %d of %d positions deleted, rebuilding the graph without them",
                     self.folder, self.deleted, self.total)
            self.compact()
        privacy.make_dirs(self.folder)  # biometric data: 0700 / 0600 unless FACEBEAM_SHARED_FILES (privacy.py)
        old = {self.info.get("index_file"), self.info.get("meta_file")} - {None}
        gen = int(self.info.get("generation", 0)) + 1
        info = {**self.info, "generation": gen, "index_file": f"faces-{gen}.faiss", "meta_file": f"faces-{gen}.parquet",
                "count": self.count, "total": self.total, "deleted": self.deleted, "library": library(),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = os.path.join(self.folder, SPEC_FILE + ".tmp")
        with self._all_or_nothing(info["index_file"], info["meta_file"], tmp):
            self._write_files(info["index_file"], info["meta_file"])
            with open(tmp, "w") as f:
                json.dump(info, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.folder, SPEC_FILE))
        privacy.restrict(self.folder, info["index_file"], info["meta_file"], SPEC_FILE)
        self.info = info
        for name in old - {info["index_file"], info["meta_file"]}:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.folder, name))
        return info

    @contextlib.contextmanager
    def _all_or_nothing(self, *names):
        """The files `names` (in the folder) written whole, or removed again: the index stays as it was. A full
        disk says so in one line (faiss's own error is a RuntimeError)."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            for name in names:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.folder, name))
            if not shards.disk_full(e):
                raise
            st = os.statvfs(self.folder)
            raise AnnError(f"no space left on the filesystem of the embedded index {self.folder} "
                           f"({st.f_bavail * st.f_frsize / 2**20:.1f} MiB free now): free some space or choose "
                           "another folder (--store local:DIR); the index is as it was before") from None

    def _write_files(self, index_file: str, meta_file: str) -> None:
        import faiss
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Through Python's file: a full disk is an OSError here, where faiss's own writer prints to stderr.
        with open(os.path.join(self.folder, index_file), "wb") as f:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(f.write))
        schema = pa.schema([(k, pa.int32() if k == "face_index" or k.startswith("box_") else pa.string())
                            for k in META_FIELDS] + [("deleted", pa.bool_())])
        pq.write_table(pa.table({k: self.meta[k] for k in schema.names}, schema=schema),
                       os.path.join(self.folder, meta_file), compression="zstd")

    def rewrite(self) -> None:
        """Write this generation's files again in place (a kept previous generation that lost faces): beside, then
        renamed over them, so a reader sees the old files or the new ones."""
        self._require_writable()
        names = (self.info["index_file"], self.info["meta_file"])
        with self._all_or_nothing(*(f"{n}.tmp" for n in names)):
            self._write_files(*(f"{n}.tmp" for n in names))
        for n in names:
            os.replace(os.path.join(self.folder, f"{n}.tmp"), os.path.join(self.folder, n))
        privacy.restrict(self.folder, *names)

    def images(self) -> dict:
        """image_sha256 -> (image_path, label) of the live faces."""
        out = {}
        for sha, path, label, gone in zip(self.meta["image_sha256"], self.meta["image_path"], self.meta["label"],
                                          self.meta["deleted"]):
            if not gone:
                prev = out.get(sha, (None, None))
                out[sha] = (path, label or prev[1])
        return out

    def largest_face(self, sha: str):
        """(position, vector) of the image's largest live face, or None."""
        pos = [i for i, (s, d) in enumerate(zip(self.meta["image_sha256"], self.meta["deleted"])) if s == sha and not d]
        if not pos:
            return None
        best = max(pos, key=lambda i: (self.meta["box_w"][i] or 0) * (self.meta["box_h"][i] or 0))
        return best, self.index.reconstruct(int(best))

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.folder, n)) for n in
                   (SPEC_FILE, self.info.get("index_file"), self.info.get("meta_file"))
                   if n and os.path.exists(os.path.join(self.folder, n)))

    # --- searching ------------------------------------------------------------------------
    def _params(self, ef: int, allowed=None):
        import faiss

        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef)
        keep = []
        if allowed is not None:  # a bitmap: one bit per position, built in numpy (no per-id hash set)
            mask = np.zeros(self.total, dtype=bool)
            mask[allowed] = True
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(self.total, faiss.swig_ptr(bits))
            keep += [sel, bits]
        elif self.deleted:
            if self._selector is None:
                gone = np.asarray([i for i, d in enumerate(self.meta["deleted"]) if d], dtype=np.int64)
                inner = faiss.IDSelectorBatch(gone)
                self._selector = (faiss.IDSelectorNot(inner), inner)
            sel = self._selector[0]
            keep.append(self._selector)
        else:
            sel = None
        if sel is not None:
            params.sel = sel
        return params, keep

    def _hit(self, pos: int, dist: float) -> dict:
        from facebeam.transforms.knn import distance_to_score

        m = self.meta
        return {"face_id": m["face_id"][pos], "image_path": m["image_path"][pos], "image_sha256": m["image_sha256"][pos],
                "face_index": m["face_index"][pos], "label": m["label"][pos], "box_x": m["box_x"][pos],
                "box_y": m["box_y"][pos], "box_w": m["box_w"][pos], "box_h": m["box_h"][pos],
                "distance": float(dist), "score": distance_to_score(float(dist), self.spec)}

    def positions_of(self, face_ids) -> np.ndarray:
        """Positions of those live faces (sorted)."""
        have = self.positions()
        return np.asarray(sorted(have[f] for f in face_ids if f in have), dtype=np.int64)

    def _with_value(self, field: str, value: str) -> np.ndarray:
        """Live positions whose `field` is `value` (as text), from a per-field table built once."""
        key = ("value", field)
        if key not in self._lookup:
            table = {}
            for i, (v, gone) in enumerate(zip(self.meta[field], self.meta["deleted"])):
                if not gone:
                    table.setdefault(str(v), []).append(i)
            self._lookup[key] = {v: np.asarray(p, dtype=np.int64) for v, p in table.items()}
        return self._lookup[key].get(value, np.zeros(0, dtype=np.int64))

    def _under(self, prefix: str) -> np.ndarray:
        """Live positions whose image path starts with `prefix`: a range of the paths sorted once (binary search)."""
        if "paths" not in self._lookup:
            live = [i for i, gone in enumerate(self.meta["deleted"]) if not gone]
            paths = np.asarray([self.meta["image_path"][i] or "" for i in live], dtype=object)
            order = np.argsort(paths, kind="stable")
            self._lookup["paths"] = (paths[order], np.asarray(live, dtype=np.int64)[order])
        under = self._lookup.setdefault("under", {})
        if prefix not in under:
            paths, pos = self._lookup["paths"]
            lo, hi = np.searchsorted(paths, prefix, "left"), np.searchsorted(paths, prefix + "\U0010ffff", "left")
            if len(under) >= 64:
                under.pop(next(iter(under)))
            under[prefix] = np.sort(pos[lo:hi])
        return under[prefix]

    def _allowed(self, filters, face_ids=None, path_prefix=None, positions=None) -> np.ndarray | None:
        """Sorted live positions every filter keeps, or None when there is no filter."""
        if not filters and face_ids is None and not path_prefix and positions is None:
            return None
        for field, _ in filters:
            if field not in self.meta:
                raise ValueError(f"cannot filter on {field!r} in the embedded index; it keeps {', '.join(META_FIELDS)}")
        sets = [self._with_value(f, v) for f, v in filters]
        if face_ids is not None:
            sets.append(self.positions_of(face_ids))
        if positions is not None:
            sets.append(np.asarray(positions, dtype=np.int64))
        if path_prefix:
            sets.append(self._under(path_prefix))
        out = sets[0]
        for other in sets[1:]:
            out = np.intersect1d(out, other, assume_unique=True)
        return out

    def search_vectors(self, vectors, k: int, ef: int = 100, filters=(), exclude_shas=None, face_ids=None,
                       path_prefix=None, positions=None) -> list:
        """[(position, distance), ...] per query vector, best first; deleted faces never come back. Filters:
        field values, `face_ids`, `path_prefix`, `positions` (sorted, unique live positions, e.g. a person's from
        positions_of, looked up once)."""
        q = _prepare(vectors, self.spec)
        if self.total == 0 or len(q) == 0:
            return [[] for _ in range(len(q))]
        extra = 0
        if exclude_shas is not None:
            extra = self._most_faces_per_image()
        allowed = self._allowed(filters, face_ids, path_prefix, positions)
        want = k + extra
        if allowed is not None and scan_is_cheaper(len(allowed), max(ef, want), self.count):
            out = self._exact(q, allowed, want)
        else:
            want = min(want, self.count)
            ef = max(ef, want)
            if allowed is not None:  # as many allowed faces met as an unfiltered search meets
                ef = min(self.total, -(-ef * self.count // max(1, len(allowed))))
            params, keep = self._params(ef, allowed)
            d2, idx = self.index.search(q, want, params=params)
            del keep
            dist = _distance(d2, self.spec)
            out = [[(int(i), float(d)) for i, d in zip(row_i, row_d) if i >= 0] for row_i, row_d in zip(idx, dist)]
        if exclude_shas is not None:
            out = [[(i, d) for i, d in hits if self.meta["image_sha256"][i] != sha]
                   for hits, sha in zip(out, exclude_shas)]
        return [hits[:k] for hits in out]

    def _gathered(self, ids: np.ndarray):
        """An exact scan (knn.ExactScan, one thread) over those positions' vectors, kept for the last few filters
        (GATHERED_BYTES in all): a person or a prefix asked again copies nothing out of the memory-mapped index."""
        import hashlib

        from facebeam.transforms.knn import ExactScan

        key = hashlib.blake2b(ids.tobytes(), digest_size=16).digest()
        cache = self._lookup.setdefault("gathered", {})
        if key not in cache:
            need = len(ids) * self.spec.dim * 4
            while cache and sum(scan.x.nbytes for scan in cache.values()) + need > GATHERED_BYTES:
                cache.pop(next(iter(cache)))
            cache[key] = ExactScan(self.index.reconstruct_batch(ids), threads=1)
        return cache[key]

    def _exact(self, q: np.ndarray, allowed: np.ndarray, want: int) -> list:
        if not len(allowed):
            return [[] for _ in range(len(q))]
        ids = np.asarray(allowed, dtype=np.int64)
        found, dist = self._gathered(ids).topk(q, want)
        dist = _distance(dist * dist, self.spec)
        return [[(int(ids[j]), float(d)) for j, d in zip(found[r], dist[r])] for r in range(len(q))]

    def _most_faces_per_image(self) -> int:
        if "_most" not in self.__dict__:
            from collections import Counter

            c = Counter(s for s, d in zip(self.meta["image_sha256"], self.meta["deleted"]) if not d)
            self.__dict__["_most"] = max(c.values(), default=0)
        return self.__dict__["_most"]

    def search(self, probes: list, search, face_ids=None, positions=None) -> list:
        """Probe face rows + a knn.SearchSpec -> hit lists in the shape knn.es_search returns (`face_ids`,
        `positions`: only those)."""
        excl = [p["image_sha256"] for p in probes] if search.exclude_same_image else None
        found = self.search_vectors([p["embedding"] for p in probes], search.k, ef=search.num_candidates,
                                    filters=search.filters, exclude_shas=excl, face_ids=face_ids,
                                    path_prefix=getattr(search, "path_prefix", None), positions=positions)
        return [[self._hit(i, d) for i, d in hits] for hits in found]

    def describe(self) -> str:
        return (f"embedded HNSW index {self.folder} ({self.count} faces, {self.info.get('library', library())}, "
                f"generation {self.info.get('generation')})")


def add_shards(ann: AnnIndex, shard_files) -> tuple:
    """Shard files -> appended to `ann` (faces already there skipped, but for a path that changed: their photo moved,
    moves.py); (rows read, added, skipped, paths changed)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    rows_read = added = skipped = moved = 0
    for path in shard_files:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            pf = pq.ParquetFile(f)
            for i in range(pf.num_row_groups):
                head = pf.read_row_group(i, columns=["face_id", "image_path"])
                ids = head.column("face_id").to_pylist()
                rows_read += len(ids)
                have = ann.positions()
                if all(x in have for x in ids):  # an earlier load or run added them: no vectors to read
                    moved += ann.relocate(dict(zip(ids, head.column("image_path").to_pylist())))
                    skipped += len(ids)
                    continue
                rows = pf.read_row_group(i, columns=["face_id", "spec_id", "embedding", *META_FIELDS[1:]]).to_pylist()
                res = ann.add_rows(rows)
                moved += ann.relocate({r["face_id"]: r["image_path"] for r in rows})
                added, skipped = added + res["added"], skipped + res["skipped"]
    return rows_read, added, skipped, moved


def load_shards(folder: str, shard_files, spec: EmbeddingSpec, m: int = 16, ef_construction: int = 100,
                read_rows=None) -> dict:
    """Shard files -> the embedded index in `folder` (created, or appended to); returns a summary."""
    started = time.perf_counter()
    ann = AnnIndex.open_or_create(folder, spec, m, ef_construction)
    before = ann.count
    rows_read, added, skipped, moved = add_shards(ann, shard_files)
    built = time.perf_counter() - started
    info = ann.save() if added or moved or not exists(folder) else ann.info
    elapsed = time.perf_counter() - started
    return {"backend": "local", "store": f"local:{folder}", "ann_dir": folder, "library": info["library"],
            "rows_read": rows_read, "indexed": added, "skipped_present": skipped, "paths_changed": moved, "failed": 0,
            "doc_count": ann.count, "doc_count_before": before, "generation": info["generation"],
            "spec_id": spec.spec_id, "build_s": round(built, 3), "elapsed_s": round(elapsed, 3),
            "docs_per_s": round(added / built, 1) if built and added else 0.0, "bytes_on_disk": ann.disk_bytes()}


def where(folder: str) -> dict:
    """What a search of this embedded index runs against, for summaries and logs (FaceStore.where)."""
    info = read_info(folder)
    return {"backend": "local", "ann_dir": folder, "library": info.get("library"),
            "searched": f"embedded HNSW index {folder} ({info.get('count')} faces, {info.get('library')})"}
