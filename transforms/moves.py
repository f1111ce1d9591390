"""Photos that moved or changed in place: every copy of their faces follows the library.

An incremental run compares what it lists with what is done (manifest.keep_new):
- a done photo whose content is now listed only under a new path, while no path it was done under
  still holds it, has moved. It is not embedded again: the run's manifest records it as `moved`
  with its new path, and after the pipeline its face rows are read from the collection's shards,
  given the new path, and handed to every store the collection was loaded into and to the shards
  themselves (`FaceStore.relocate`). Search results and reports then name a file that exists.
- done content whose path now holds other content (a photo edited or replaced in place), and which
  is listed nowhere now, was replaced. The new content is embedded as any new photo; the old
  content's faces are dropped from the shards and every store (`FaceStore.remove`, without the
  purge an erasure needs), or a search would find faces that photo no longer shows.

A store that cannot be reached is named and keeps what it had until the next load into it (`index`,
`run`): that sends every face again to Elasticsearch, the embedded index takes the changed path of a
face it holds, and every store drops the replaced contents the manifests list (registry.replaced).
"""
from __future__ import annotations

import logging

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import manifest, shards
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


def changes_in_run(output: str, run_id: str | None) -> tuple:
    """({sha: new path} moved, {sha: path} replaced) as the run's manifest partition records them."""
    import pyarrow.parquet as pq

    found = {manifest.MOVED: {}, manifest.REPLACED: {}}
    if not run_id:
        return found[manifest.MOVED], found[manifest.REPLACED]
    pattern = FileSystems.join(output, "manifest", f"run={run_id}", "*.parquet")
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path) as f:
            for r in pq.read_table(f, columns=["image_sha256", "status", "image_path"]).to_pylist():
                if r["status"] in found:
                    found[r["status"]][r["image_sha256"]] = r["image_path"]
    return found[manifest.MOVED], found[manifest.REPLACED]


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


def follow(output: str, moved: dict, replaced: dict, targets) -> dict:
    """The moved photos' faces relocated, the replaced content's faces dropped, in each store of `targets` (the
    shards last). {'faces_moved', 'faces_replaced', 'changes': [a line per store]}."""
    rows = rows_at_new_paths(output, moved) if moved else []
    dropped, lines = 0, []
    for store in targets:
        said = []
        try:
            if rows and store.relocate(rows):
                said.append("the moved photos' faces name their new paths")
            if replaced:
                n = store.remove(set(replaced), purge=False)
                dropped = max(dropped, n)
                if n:
                    said.append(f"{n} face(s) of photos changed in place dropped")
        except UserError as e:
            lines.append(f"{store.describe()}: NOT updated, it keeps what it had ({e})")
            log.warning("library changes: %s", lines[-1])  # said whatever the verbosity: that store is now behind
            continue
        finally:
            store.close()
        if said:
            lines.append(f"{store.describe()}: {', '.join(said)}")
            log.info("library changes: %s", lines[-1])
    return {"faces_moved": len(rows), "faces_replaced": dropped, "changes": lines}
