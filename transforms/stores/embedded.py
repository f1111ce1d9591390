"""The embedded HNSW index (transforms/ann.py) as a FaceStore: a folder, no server.

Its metadata (calibration, persons' names) is `<folder>/meta.json`, written atomically under
the folder's lock; a face that is erased leaves it too.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os

from facebeam.transforms import ann
from facebeam.transforms.errors import UserError
from facebeam.transforms.stores.base import (
    Capabilities,
    FaceStore,
    Load,
    Reindex,
    Searcher,
    annotate,
    comparison,
    person_faces,
    split_filters,
)

log = logging.getLogger(__name__)
META_FILE = "meta.json"
META_LOCK = ".meta.lock"  # locks.held around every read-change-write of META_FILE


@contextlib.contextmanager
def ann_lock(folder: str):
    """`<folder>/.facebeam.lock`, exclusive and non-blocking: one writer of an embedded index at a time."""
    from facebeam.transforms import locks

    with locks.held(folder, ".facebeam.lock", timeout=0, busy=f"embedded index {folder} is being written by another "
                    "facebeam job; wait for it to finish"):
        yield


class EmbeddedStore(FaceStore):
    kind = "local"
    capabilities = Capabilities(search=True, reindex=True)

    def __init__(self, name: str, folder: str):
        super().__init__(name)
        self.folder = os.path.abspath(folder)

    def describe(self) -> str:
        return f"embedded HNSW index at {self.folder}"

    def location(self) -> str:
        return self.folder

    def where(self) -> dict:
        return ann.where(self.folder)

    def threshold_place(self) -> str:
        return f"embedded index {self.folder}"

    def exists(self) -> bool:
        return ann.exists(self.folder)

    def spec(self):
        return ann.spec_of(self.folder)

    def check(self, spec) -> None:
        if self.exists():
            spec.require_same(self.spec(), what=f"embedded index {self.folder}")

    def begin_load(self, spec, load, output, shard_files=None, run_id=None) -> Load:
        return _EmbeddedLoad(self, spec, load, output, shard_files, run_id)

    def load_shards(self, shard_files, spec, m: int = 16, ef_construction: int = 100) -> dict:
        with ann_lock(self.folder):
            summary = ann.load_shards(self.folder, shard_files, spec, m, ef_construction)
        log.info("embedded index %s: %d faces added (%d already there), %d in all, %.0f vectors/s, %d bytes on disk",
                 self.folder, summary["indexed"], summary["skipped_present"], summary["doc_count"],
                 summary["docs_per_s"], summary["bytes_on_disk"])
        return summary

    def count(self) -> int:
        return ann.AnnIndex.open(self.folder).count if self.exists() else 0

    def remove(self, shas, dry_run: bool = False, purge: bool = True) -> int:  # zeroed either way
        if not self.exists():
            return 0
        shas = set(shas)
        if dry_run:
            idx = ann.AnnIndex.open(self.folder)
            return sum(1 for s, d in zip(idx.meta["image_sha256"], idx.meta["deleted"]) if s in shas and not d)
        with ann_lock(self.folder):
            idx = ann.AnnIndex.open(self.folder, writable=True)
            gone = {f for f, s, d in zip(idx.meta["face_id"], idx.meta["image_sha256"], idx.meta["deleted"])
                    if s in shas and not d}
            n = idx.remove_images(shas)
            if n:
                idx.save()
            persons = self._read_meta_file().get("persons") or {}
            if gone & set(persons):
                self._write_meta_file(persons={f: v for f, v in persons.items() if f not in gone})
            kept = self._kept_generation()
            if kept is not None and kept.remove_images(shas):  # a rollback must not bring them back
                kept.rewrite()
                log.info("embedded index %s: the generation a reindex kept (previous.json) lost them too", self.folder)
        return n

    def relocate(self, rows) -> int:
        if not self.exists():
            return 0
        with ann_lock(self.folder):
            idx = ann.AnnIndex.open(self.folder, writable=True)
            n = idx.relocate({r["face_id"]: r["image_path"] for r in rows})
            if n:
                idx.save()
        return n

    def _kept_generation(self):
        """The previous generation a reindex keeps for a rollback (`previous.json`), writable; None without one."""
        path = os.path.join(self.folder, "previous.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            info = json.load(f)
        if not all(os.path.exists(os.path.join(self.folder, info[k])) for k in ("index_file", "meta_file")):
            return None
        return ann.AnnIndex.open(self.folder, writable=True, info=info)

    def closest(self, vector, label: str) -> tuple:
        from facebeam.transforms import knn

        if not self.exists():
            return None, None, 0
        idx = self._reader()
        hits = idx.search([{"embedding": vector, "image_sha256": ""}],
                          knn.SearchSpec(k=1, num_candidates=100, filters=(("label", label),)))[0]
        if not hits:
            return None, None, 0
        n = sum(1 for lab, d in zip(idx.meta["label"], idx.meta["deleted"]) if lab == label and not d)
        return hits[0]["face_id"], hits[0]["distance"], n

    def _reader(self):
        """The current generation, memory-mapped, reopened once a writer switched generations."""
        gen = ann.read_info(self.folder)["generation"]
        if self.__dict__.get("_open") is None or self._open.info["generation"] != gen:
            self._open = ann.AnnIndex.open(self.folder)
        return self._open

    def __getstate__(self):
        return {**self.__dict__, "_open": None}

    def close(self) -> None:
        self._open = None

    def searcher(self) -> Searcher:
        if not self.exists():
            raise UserError(ann.missing(self.folder))
        return _EmbeddedSearcher(self.folder, self.persons())

    def reindexer(self, new_spec, load) -> Reindex:
        return _EmbeddedReindex(self, new_spec, load)

    def search_settings(self, search) -> dict:
        return {"k": search.k, "ef_search": search.num_candidates, "threads_per_search": 1,
                "filters": f"exact up to {ann.EXACT_SUBSET:,} allowed faces or while a scan costs less than the graph "
                           "search, else HNSW with a bitmap selector and efSearch / share",
                "index": "memory-mapped"}

    # --- metadata -------------------------------------------------------------------------------
    def _read_meta_file(self) -> dict:
        try:
            with open(os.path.join(self.folder, META_FILE)) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise UserError(f"embedded index {self.folder}: {META_FILE} cannot be read ({type(e).__name__})") from None

    def _update_meta_file(self, change) -> dict:
        """meta.json replaced by change(meta), read and written under its own lock (a recorder of copies does not
        wait for the index's writer, and neither loses the other's keys); nothing written when unchanged."""
        from facebeam.transforms import locks, shards

        with locks.held(self.folder, META_LOCK):
            old = self._read_meta_file()
            meta = {k: v for k, v in change(dict(old)).items() if v is not None}
            if meta != old:
                # persons' names and the outputs made from the faces: private like the index (write_json: 0600)
                shards.write_json(os.path.join(self.folder, META_FILE), meta)
        return meta

    def _write_meta_file(self, **updates) -> None:
        self._update_meta_file(lambda meta: {**meta, **updates})

    def _require(self) -> None:
        if not self.exists():
            raise UserError(ann.missing(self.folder))

    def update_copies(self, change) -> list:
        self._require()
        return self._update_meta_file(lambda meta: {**meta, "copies": change(list(meta.get("copies") or [])) or None}
                                      ).get("copies") or []

    def read_meta(self) -> dict:
        return self._read_meta_file()

    def write_meta(self, **updates) -> None:
        self._require()
        with ann_lock(self.folder):
            self._write_meta_file(**updates)

    def set_persons(self, found: dict) -> int:
        have = set(ann.AnnIndex.open(self.folder).positions()) if self.exists() else set()
        mine = {f: list(v) for f, v in found.items() if f in have}
        self.write_meta(persons=mine)
        return len(mine)


class _EmbeddedSearcher(Searcher):
    def __init__(self, folder: str, persons: dict):
        self._ann = ann.AnnIndex.open(folder)  # memory-mapped
        self._persons = persons
        self._of_person = {}  # name -> positions of their faces, looked up once per searcher

    def search(self, probes: list, search) -> list:
        import dataclasses

        rest, person = split_filters(search.filters)
        if person is not None:
            if person not in self._of_person:
                self._of_person[person] = self._ann.positions_of(person_faces(self._persons, person))
            found = self._ann.search(probes, dataclasses.replace(search, filters=rest),
                                     positions=self._of_person[person])
        else:
            found = self._ann.search(probes, search)
        annotate(found, self._persons)
        return found


class _EmbeddedLoad(Load):
    def __init__(self, store: EmbeddedStore, spec, load, output, shard_files, run_id):
        store.check(spec)  # of this spec, before anything is embedded
        self.store, self.spec, self.load, self.output, self.files, self.run_id = (store, spec, load, output,
                                                                                    shard_files, run_id)

    def finish(self, result) -> dict:
        from facebeam.transforms.stores import registry

        files = self.files if self.files is not None else registry.run_files(self.output, self.run_id)
        out = self.store.load_shards(files, self.spec, self.load.m, self.load.ef_construction)
        out.update(retried=0)
        return out


class _EmbeddedReindex(Reindex):
    """The new spec's generation built beside the old one in the same folder; `spec.json` switched to it in one
    atomic rename. The old generation's files stay (named in `previous.json`) until drop_old."""

    def __init__(self, store: EmbeddedStore, new_spec, load):
        from facebeam.transforms.spec import SpecError

        self.store, self.new_spec, self.load, self.folder = store, new_spec, load, store.folder
        self.old = ann.AnnIndex.open(self.folder)  # memory-mapped; stays readable after the switch
        if self.old.spec.spec_id == new_spec.spec_id:
            raise SpecError(f"embedded index {self.folder} already has this spec ({new_spec.spec_id}); give the new "
                            "model or settings")
        self.new = self.before = self.info = None
        self._lock = contextlib.ExitStack()

    def images(self) -> dict:
        return self.old.images()

    def begin_load(self, output: str) -> Load:
        return _EmbeddedReindexLoad(self, output)

    def compare(self, shas, k: int = 10) -> dict:
        old, new = self.old, self.new
        pairs = []
        for sha in shas:
            a, b = old.largest_face(sha), new.largest_face(sha)
            if a is None or b is None:
                continue
            ha = old.search_vectors([a[1]], k, ef=max(100, 10 * k), exclude_shas=[sha])[0]
            hb = new.search_vectors([b[1]], k, ef=max(100, 10 * k), exclude_shas=[sha])[0]
            pairs.append(([(old.meta["image_sha256"][i], d) for i, d in ha],
                          [(new.meta["image_sha256"][i], d) for i, d in hb]))
        return comparison(pairs, old.spec, self.new_spec, k)

    def comparing(self) -> str:
        return f"old {self.old.spec.spec_id} vs new {self.new_spec.spec_id} in {self.folder}"

    def switch(self) -> str:
        from facebeam.transforms import shards

        try:
            shards.write_json(os.path.join(self.folder, "previous.json"), self.before)  # private, like the index
            self.info = self.new.save()  # the switch: spec.json now names the new generation
        except BaseException:
            self._lock.close()
            raise
        return (f"embedded index {self.folder}: spec {self.before['spec_id']} (generation {self.before['generation']})"
                f" -> {self.new_spec.spec_id} (generation {self.info['generation']}, {self.new.count} faces)")

    def drop_old(self) -> str:
        for name in (self.before["index_file"], self.before["meta_file"], "previous.json"):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(self.folder, name))
        return f"dropped generation {self.before['generation']}"

    def close(self) -> None:
        self._lock.close()

    def summary(self) -> dict:
        return {"backend": "local", "ann_dir": self.folder, "old_spec_id": self.before["spec_id"],
                "new_spec_id": self.new_spec.spec_id, "doc_count": self.new.count, "docs_indexed": self.new.count,
                "docs_failed": 0}


class _EmbeddedReindexLoad(Load):
    def __init__(self, job: _EmbeddedReindex, output: str):
        self.job, self.output = job, output

    def finish(self, result) -> dict:
        from facebeam.transforms import shards

        job = self.job
        job._lock.enter_context(ann_lock(job.folder))  # held until the switch is done (close)
        job.before = ann.read_info(job.folder)
        job.new = ann.AnnIndex.create(job.folder, job.new_spec, job.load.m, job.load.ef_construction)
        job.new.info["generation"] = job.before["generation"]  # the next generation number of this folder
        ann.add_shards(job.new, shards.files(self.output))
        return {"doc_count": job.new.count, "docs_failed": 0,
                "incomplete_note": f"{job.folder} keeps spec {job.old.spec.spec_id}"}
