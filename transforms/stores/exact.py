"""The shards themselves as a FaceStore: the exact scan (knn.exact_search), the recall ground truth.

Loading is what `embed` and `run` do (the shards are written by the pipeline); this store is
read, calibrated and erased like the others. Its metadata: `<shards>/calibration.json` (as
`facebeam calibrate` always wrote it), `<shards>/persons.json` and `<shards>/copies.json`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import shards
from facebeam.transforms.errors import UserError
from facebeam.transforms.stores.base import Capabilities, FaceStore, Load, Searcher, annotate, person_faces, split_filters

log = logging.getLogger(__name__)
PERSONS_FILE = "persons.json"
COPIES_FILE = "copies.json"
COPIES_LOCK = ".copies.lock"  # locks.held: one recorder of the copies at a time


class ShardsStore(FaceStore):
    kind = "exact"
    capabilities = Capabilities(search=True)

    def __init__(self, folder: str):
        super().__init__(folder)
        self.folder = folder

    def describe(self) -> str:
        return f"shards {self.folder}"

    def location(self) -> str:
        return self.folder

    def where(self) -> dict:
        return {"backend": "exact", "shards": self.folder,
                "searched": f"{len(shards.files(self.folder))} embedding shard file(s) under {self.folder}"}

    def threshold_place(self) -> str:
        return self.folder

    def exists(self) -> bool:
        return bool(shards.files(self.folder))

    def spec(self):
        return shards.spec_of(self.folder)

    def check(self, spec) -> None:
        if self.exists():
            spec.require_same(self.spec(), what=f"shards {self.folder}")

    def begin_load(self, spec, load, output, shard_files=None, run_id=None) -> Load:
        return _ShardsLoad(self, spec)

    def _column(self, name: str) -> list:
        import pyarrow.parquet as pq

        out = []
        for path in shards.files(self.folder):
            with FileSystems.open(path) as f:
                out += pq.read_table(f, columns=[name]).column(name).to_pylist()
        return out

    def count(self) -> int:
        return len(self._column("face_id"))

    def remove(self, shas, dry_run: bool = False, purge: bool = True) -> int:  # rewritten either way
        """The embeddings' rows of those images (errors and manifest rows too; the count is of faces)."""
        removed = self.erase(shas, dry_run)
        return sum(n for path, n in removed.items() if "/embeddings/" in path.replace("\\", "/"))

    def erase(self, shas, dry_run: bool = False) -> dict:
        """`remove`, by file: {shard file: rows removed}; the persons' names of those faces go too."""
        removed = erase_rows(self.folder, set(shas), dry_run)
        persons = self.persons()
        if persons and not dry_run:
            have = set(self._column("face_id"))
            if set(persons) - have:
                self.write_meta(persons={f: v for f, v in persons.items() if f in have})
        return removed

    def relocate(self, rows) -> int:
        return relocate_rows(self.folder, {r["face_id"]: r["image_path"] for r in rows})

    def closest(self, vector, label: str) -> tuple:
        from facebeam.transforms import knn

        spec = self.spec()
        search = knn.SearchSpec(k=1, num_candidates=1, filters=(("label", label),))
        hits = knn.exact_search(shards.files(self.folder), [{"embedding": vector, "image_sha256": ""}], search, spec)[0]
        if not hits:
            return None, None, 0
        return hits[0]["face_id"], hits[0]["distance"], None

    def search_settings(self, search) -> dict:
        return {"k": search.k, "scan": "every shard, exactly"}

    def searcher(self) -> Searcher:
        if not self.exists():
            raise UserError(f"no embedding shards under {self.folder}")
        return _ShardsSearcher(self.folder, self.spec(), self.persons())

    # --- metadata --------------------------------------------------------------------------------
    def read_meta(self) -> dict:
        from facebeam.transforms import calibrate

        out = {}
        cal = calibrate.load(self.folder)
        if cal:
            out["calibration"] = cal
        for key, name in (("persons", PERSONS_FILE), ("copies", COPIES_FILE)):
            path = FileSystems.join(self.folder, name)
            if FileSystems.exists(path):
                out[key] = shards.read_json(path)
        return out

    def write_meta(self, **updates) -> None:
        from facebeam.transforms import calibrate

        for key, value in updates.items():
            path = FileSystems.join(self.folder, calibrate.FILE if key == "calibration" else f"{key}.json")
            if value is None:
                if FileSystems.exists(path):
                    FileSystems.delete([path])
            elif key == "calibration":
                calibrate.save(self.folder, value)
            else:
                shards.write_json(path, value)

    def update_copies(self, change) -> list:
        from facebeam.transforms import locks

        path = FileSystems.join(self.folder, COPIES_FILE)
        with locks.held(self.folder, COPIES_LOCK):
            old = list(shards.read_json(path) or []) if FileSystems.exists(path) else []
            new = change(list(old))
            if new != old:
                self.write_meta(copies=new or None)
        return new

    def set_persons(self, found: dict) -> int:
        have = set(self._column("face_id"))
        mine = {f: list(v) for f, v in found.items() if f in have}
        self.write_meta(persons=mine)
        return len(mine)


class _ShardsSearcher(Searcher):
    def __init__(self, folder, spec, persons):
        self._files, self._spec, self._persons = shards.files(folder), spec, persons

    def search(self, probes: list, search) -> list:
        from facebeam.transforms import knn

        rest, person = split_filters(search.filters)
        faces = person_faces(self._persons, person) if person is not None else None
        found = knn.exact_search(self._files, probes, dataclasses.replace(search, filters=rest), self._spec,
                                 face_ids=faces)
        annotate(found, self._persons)
        return found


class _ShardsLoad(Load):
    def __init__(self, store, spec):
        store.check(spec)

    def finish(self, result) -> dict:
        return {}


def erase_rows(folder: str, shas: set, dry_run: bool) -> dict:
    """Rewrite only the shard files that hold those images; returns {file: rows removed}."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    removed = {}
    for kind in ("embeddings", "errors", "manifest"):
        for path in shards.files(folder, kind):
            with FileSystems.open(path) as f:
                table = pq.read_table(f)
            hit = pc.is_in(table.column("image_sha256"), value_set=pa.array(sorted(shas), pa.string()))
            n = pc.sum(hit).as_py() or 0
            if n:
                removed[path] = n
                if not dry_run:
                    _replace(path, table.filter(pc.invert(pc.fill_null(hit, False))))
    return removed


def relocate_rows(folder: str, paths: dict) -> int:
    """{face_id: image path} onto the embedding shards, rewriting only the files where a face's path changes;
    returns how many faces changed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    changed = 0
    for path in shards.files(folder):
        with FileSystems.open(path) as f:
            head = pq.read_table(f, columns=["face_id", "image_path"])
        ids, old = head.column("face_id").to_pylist(), head.column("image_path").to_pylist()
        new = [paths.get(i, p) for i, p in zip(ids, old)]
        n = sum(a != b for a, b in zip(old, new))
        if n:
            with FileSystems.open(path) as f:
                table = pq.read_table(f)
            _replace(path, table.set_column(table.schema.get_field_index("image_path"), "image_path",
                                            pa.array(new, pa.string())))
            changed += n
    return changed


def _replace(path: str, table) -> None:
    """Write the file's new rows beside it, then rename over it: a reader sees the old file or the new one."""
    import pyarrow.parquet as pq

    tmp = path + ".rewrite-tmp"
    try:
        with FileSystems.create(tmp) as f:
            pq.write_table(table, f, compression="zstd")
    except OSError as e:
        with contextlib.suppress(Exception):
            FileSystems.delete([tmp])
        if not shards.disk_full(e):
            raise
        raise UserError(f"no space left to rewrite {path} (the shard is as it was): free some space on its "
                        "filesystem and run the same command again") from None
    FileSystems.rename([tmp], [path])
