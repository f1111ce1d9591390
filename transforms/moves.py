"""Photos that moved: their faces follow them to the new path, in the shards and in every store.

An incremental run finds a done photo whose content is now listed only under a new path, while
no path it was done under exists any more (manifest.keep_new). It is not embedded again: the run's
manifest records it as `moved` with its new path, and after the pipeline its face rows are read
from the collection's shards, given the new path, and handed to every store the collection was
loaded into and to the shards themselves (`FaceStore.relocate`). Search results and reports then
name a file that exists.

A store that cannot be reached is named and keeps the old path; `facebeam index` from the shards
brings it the new ones later (it sends every face again to Elasticsearch, and the embedded index
takes the changed path of a face it holds).
"""
from __future__ import annotations

import logging

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import manifest, shards
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


def moved_in_run(output: str, run_id: str | None) -> dict:
    """image_sha256 -> new path of the photos the run found moved (its manifest partition, committed or not)."""
    import pyarrow.parquet as pq

    if not run_id:
        return {}
    found = {}
    pattern = FileSystems.join(output, "manifest", f"run={run_id}", "*.parquet")
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path) as f:
            for r in pq.read_table(f, columns=["image_sha256", "status", "image_path"]).to_pylist():
                if r["status"] == manifest.MOVED:
                    found[r["image_sha256"]] = r["image_path"]
    return found


def rows_at_new_paths(output: str, moved: dict) -> list:
    """The collection's face rows of those photos (vectors included), each naming its photo's new path."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = pa.array(sorted(moved), pa.string())
    rows = []
    for path in shards.files(output):
        with FileSystems.open(path) as f:
            shas = pq.read_table(f, columns=["image_sha256"]).column("image_sha256")
        if not pc.any(pc.is_in(shas, value_set=wanted)).as_py():
            continue  # the vectors of a file without them are not read
        with FileSystems.open(path) as f:
            table = pq.read_table(f)
        for r in table.filter(pc.is_in(table.column("image_sha256"), value_set=wanted)).to_pylist():
            rows.append({**r, "image_path": moved[r["image_sha256"]]})
    return rows


def follow(output: str, moved: dict, targets) -> tuple:
    """Relocate the moved photos' faces in each store of `targets` (the shards last); (their faces, [line per store])."""
    if not moved:
        return 0, []
    rows = rows_at_new_paths(output, moved)
    lines = []
    for store in targets:
        try:
            n = store.relocate(rows)
        except UserError as e:
            lines.append(f"{store.describe()}: keeps the old paths ({e}); `facebeam index --shards {output}` brings "
                         "it the new ones")
            continue
        finally:
            store.close()
        if n:
            lines.append(f"{store.describe()}: {n} face(s) now name their photo's new path")
    for line in lines:
        log.info("moved photos: %s", line)
    return len(rows), lines
