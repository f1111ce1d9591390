"""facebeam forget: erase faces from the index and the shards, and keep them erased.

    facebeam forget (--image PATH | --sha256 H | --label L) --shards DIR [--index NAME]
                    [--store es|local[:DIR]|redis] [--dry-run]

With --index the faces are deleted from that Elasticsearch alias; with --store local[:DIR]
or --store redis from the embedded index or the Redis store of that name (default "faces").
Shard files are rewritten only where they hold an erased image. A tombstone in
DIR/tombstones/ makes later runs into DIR skip those images' content.
"""
import dataclasses
import datetime
import logging
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from facebeam.pipelines import jobs, options
from facebeam.transforms import es_index, manifest, shards, sources, stores
from facebeam.transforms.errors import UserError
from facebeam.transforms.sources import DEFAULT_MAX_FILE_BYTES

log = logging.getLogger(__name__)
BEAM = False  # no pipeline: unknown flags are errors


def _read(path):
    with FileSystems.open(path) as f:
        return pq.read_table(f)


def _write(path, table):
    """Replace a shard file: write beside it, then rename over it."""
    tmp = path + ".forget-tmp"
    with FileSystems.create(tmp) as f:
        pq.write_table(table, f, compression="zstd")
    FileSystems.rename([tmp], [path])


@dataclasses.dataclass(frozen=True)
class ForgetConfig:
    shards: str
    image: str = None
    sha256: str = None
    label: str = None
    index: str = None
    dry_run: bool = False
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()


def build_parser():
    p = options.parser("facebeam forget", __doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="a photo's path as it was embedded (or an existing file)")
    what.add_argument("--sha256", help="an image's content hash")
    what.add_argument("--label", help="every face with this identity label")
    p.add_argument("--shards", required=True, help="the embed/run output folder")
    p.add_argument("--index", default=None, help="also delete from this alias")
    p.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    options.add_es(p)
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> ForgetConfig:
    # Shards store canonical paths (absolute for local files), so a relative --image matches too.
    image = sources.canonical(a.image) if a.image else None
    return ForgetConfig(shards=a.shards, image=image, sha256=a.sha256, label=a.label, index=a.index, dry_run=a.dry_run,
                        es=options.es_from(a), store=options.store_from(a))


def images_to_erase(ns: ForgetConfig) -> dict:
    """sha256 -> (image path, label) of every image to erase."""
    found = {}
    if ns.sha256:
        found[ns.sha256] = (None, None)
    if ns.image:
        try:
            _, sha = sources.read_bytes(ns.image, DEFAULT_MAX_FILE_BYTES)
            found[sha] = (ns.image, None)
        except (OSError, ValueError):
            pass  # the photo may be gone already; the shards still know it
    for path in shards.files(ns.shards) if ns.shards else []:
        t = _read(path).select(["image_sha256", "image_path", "label"])
        for r in t.to_pylist():
            if r["image_path"] == ns.image or (ns.label and r["label"] == ns.label) or r["image_sha256"] in found:
                found[r["image_sha256"]] = (r["image_path"], r["label"])
    return found


def erase_from_shards(folder: str, shas: set, dry_run: bool) -> dict:
    """Rewrite only the files that hold those images; returns {file: rows removed}."""
    removed = {}
    for kind in ("embeddings", "errors", "manifest"):
        for path in shards.files(folder, kind):
            table = _read(path)
            hit = pc.is_in(table.column("image_sha256"), value_set=pa.array(sorted(shas), pa.string()))
            n = pc.sum(hit).as_py() or 0
            if n:
                removed[path] = n
                if not dry_run:
                    _write(path, table.filter(pc.invert(pc.fill_null(hit, False))))
    return removed


def record_tombstones(folder: str, found: dict, why: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = [{"image_sha256": sha, "image_path": path, "label": label, "reason": why, "erased_at": now}
            for sha, (path, label) in sorted(found.items())]
    target = FileSystems.join(folder, "tombstones", f"{shards.new_run_id()}.parquet")
    with FileSystems.create(target) as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=manifest.TOMBSTONE_SCHEMA), f, compression="zstd")
    return target


def erase_from_index(ns: ForgetConfig, shas: set, dry_run: bool) -> int:
    client, _, _ = es_index.open_alias(ns.es.connection(), ns.index)
    from elasticsearch import helpers

    # Scan + bulk delete by _id rather than _delete_by_query, which needs the reindex module
    # (absent from some distributions, such as the integ-test-zip that `es up` runs).
    query = {"query": {"terms": {"image_sha256": sorted(shas)}}}
    hits = list(helpers.scan(client, index=ns.index, query=query, _source=False))
    if dry_run or not hits:
        return len(hits)
    deleted, errors = helpers.bulk(client, ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]} for h in hits),
                                   raise_on_error=False)
    if errors:
        raise UserError(f"{len(errors)} face doc(s) could not be deleted: {errors[:3]}")
    client.indices.refresh(index=ns.index)
    return deleted


def erase_from_store(ns: ForgetConfig, shas: set, dry_run: bool):
    """(where, faces deleted) from the store: --store local/redis, else the Elasticsearch alias --index (or None)."""
    if ns.store.kind in ("local", "redis"):
        store = stores.resolve(ns.store, ns.es.connection, ns.index or "faces")
        return store.describe(), stores.forget(store, shas, dry_run)
    return f"index {ns.index}", (erase_from_index(ns, shas, dry_run) if ns.index else None)


def run(ns: ForgetConfig, pipeline=None) -> dict:
    """Erase; returns {'images', 'docs', 'rows'} (what went, or would go with dry_run)."""
    found = images_to_erase(ns)
    if not found:
        print("nothing matched: no shard row or file for that image/label")
        return {"images": 0, "docs": 0, "rows": 0}
    shas = set(found)
    try:
        where, deleted = erase_from_store(ns, shas, ns.dry_run)
    except UserError as e:
        raise UserError(f"{e} (nothing was erased)") from None
    removed = erase_from_shards(ns.shards, shas, ns.dry_run)
    verb = "would remove" if ns.dry_run else "removed"
    print(f"{verb} {len(shas)} image(s): " + ", ".join(sorted(p or s[:12] for s, (p, _) in found.items())))
    if deleted is not None:
        print(f"  {where}: {verb} {deleted} face doc(s)")
    for path, n in sorted(removed.items()):
        print(f"  {path}: {verb} {n} row(s)")
    if not ns.dry_run:
        why = f"forget --image {ns.image}" if ns.image else f"forget --label {ns.label}" if ns.label else "forget --sha256"
        print(f"  tombstone: {record_tombstones(ns.shards, found, why)}")
    return {"images": len(shas), "docs": deleted or 0, "rows": sum(removed.values())}


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: not s["images"])


if __name__ == "__main__":
    jobs.entry(main)
