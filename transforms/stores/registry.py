"""A collection (a shards folder) remembers every store it was loaded into, and what was erased from it.

`<shards>/stores.json`: {"stores": [{"kind", "name", "location", ...}]}: kind, name and where
(URL or folder, and for Redis the path of its connection file), never a secret. Each store lists the
collections loaded into it in its own metadata (copies.py). `forget` erases from every store listed
there, and from the other collections those stores list; the tombstones (`<shards>/tombstones/*.parquet`) say what was
erased, so a store that was down during a `forget` is cleaned by the next `forget` or load.
"""
from __future__ import annotations

import logging
import time

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import shards

log = logging.getLogger(__name__)
FILE = "stores.json"


def path(folder: str) -> str:
    return FileSystems.join(folder, FILE)


def recorded(folder: str) -> list:
    """The stores this collection was loaded into (records), oldest first."""
    if not folder or not FileSystems.exists(path(folder)):
        return []
    return list((shards.read_json(path(folder)) or {}).get("stores", []))


def key(rec: dict) -> tuple:
    return rec["kind"], rec["name"], rec.get("location")


def remember(folder: str, store) -> dict:
    """Add the store to the collection's record (once), and the collection to the store's copies (a `forget` through
    another collection loaded into the same store reaches this one too); returns the store's record."""
    from facebeam.transforms import copies, sources

    rec = store.record()
    found = recorded(folder)
    if key(rec) not in {key(r) for r in found}:
        found.append({**rec, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        shards.write_json(path(folder), {"stores": found})
        log.info("collection %s: recorded %s", folder, store.describe())
    copies.remember(store, copies.collection_copy(sources.canonical(folder)), refresh=False)
    return rec


def after_load(folder: str, store) -> dict:
    """What every load does once its faces are in: record the store with the collection, remove what was erased or
    replaced in place while the store could not be reached, and carry the collection's metadata onto it. Returns the
    summary's `erased_late`, `replaced_late` and `carried`."""
    remember(folder, store)
    late = {"erased_late": finish_erasure(folder, store), "replaced_late": finish_replacements(folder, store)}
    late["carried"] = carry_metadata(folder, store)
    return late


def carry_metadata(folder: str, store) -> list:
    """The collection's calibration and persons' names, kept with its shards, onto a store it is loaded into that
    has none of its own: a store loaded after `calibrate` or `persons ... --shards` judges and names as the
    collection does. Returns what was carried."""
    from facebeam.transforms.stores.exact import ShardsStore

    meta, carried = ShardsStore(folder).read_meta(), []
    if meta.get("calibration") and not store.calibration():
        store.set_calibration(meta["calibration"])
        carried.append("calibration")
    if meta.get("persons") and not store.has_persons():
        store.set_persons(meta["persons"])
        carried.append("persons")
    if carried:
        log.info("%s: took the collection's %s from %s", store.describe(), " and ".join(carried), folder)
    return carried


def erased(folder: str, reason: str = None) -> dict:
    """sha256 -> (image path, label) of every image the tombstones list (only those erased for `reason`)."""
    import pyarrow.parquet as pq

    out = {}
    for p in shards.tombstones(folder) if folder else []:
        with FileSystems.open(p) as f:
            for r in pq.read_table(f, columns=["image_sha256", "image_path", "label", "reason"]).to_pylist():
                if reason is None or r["reason"] == reason:
                    out[r["image_sha256"]] = (r["image_path"], r["label"])
    return out


def finish_erasure(folder: str, store) -> int:
    """Erase the tombstoned images from `store` (a store that was down during a `forget`); faces removed."""
    gone = set(erased(folder))
    n = _remove_held(store, gone, purge=True)
    if n:
        log.info("%s: erased %d face(s) of %d image(s) forgotten earlier", store.describe(), n, len(gone))
    return n


def replaced(folder: str) -> set:
    """Contents an incremental run found replaced in place (manifest `replaced`, moves.py) that no run since has done
    again: faces a store that missed the change still holds."""
    import pyarrow.parquet as pq

    from facebeam.transforms import manifest

    gone, done = set(), set()
    for p in shards.files(folder, "manifest") if folder else []:
        with FileSystems.open(p) as f:
            for r in pq.read_table(f, columns=["image_sha256", "status"]).to_pylist():
                (gone if r["status"] == manifest.REPLACED else done).add(r["image_sha256"])
    return gone - done


def finish_replacements(folder: str, store) -> int:
    """Drop from `store` the faces of photos changed in place while it could not be reached; faces dropped."""
    n = _remove_held(store, replaced(folder), purge=False)
    if n:
        log.info("%s: dropped %d face(s) of photos changed in place since it was last reached", store.describe(), n)
    return n


def _remove_held(store, shas: set, purge: bool) -> int:
    """Remove those images' faces if the store holds any: counted first (a read), since on every load the list is
    mostly of faces long gone, and a removal may open the store for writing (the embedded index loads its graph)."""
    if not shas or not store.remove(shas, dry_run=True):
        return 0
    return store.remove(shas, purge=purge)


def partition_files(output: str, run_id: str) -> list:
    return sorted(m.path for m in FileSystems.match(
        [FileSystems.join(output, "embeddings", f"run={run_id}", "*.parquet")])[0].metadata_list)


def run_files(output: str, run_id=None) -> list:
    """The shard files that count once `run_id` commits: committed ones plus the run's own partition."""
    return shards.files(output) + (partition_files(output, run_id) if run_id else [])
