"""facebeam forget: erase faces from every store, the shards, and keep them erased.

    facebeam forget (--image PATH | --sha256 H | --label L | --person NAME) --shards DIR [--index NAME]
                    [--store es|local[:DIR]|redis] [--dry-run]

The images are resolved once, from the shards and the tombstones. Their faces are then
erased from every store the collection DIR was loaded into (DIR/stores.json: kind, name,
location), from the store --index/--store names, and from the shards (rewritten only
where they hold an erased image), with one line per store. A tombstone in DIR/tombstones/
makes later runs into DIR skip those images' content. A store that cannot be reached is
named and the command exits 2, with the tombstone written: the same `forget` again, or any
later load into that store, finishes the erasure. Run a second time, it says the images
are already erased everywhere.
"""
import dataclasses
import datetime
import logging
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from facebeam.pipelines import jobs, options
from facebeam.transforms import manifest, shards, sources, stores
from facebeam.transforms.errors import UserError
from facebeam.transforms.sources import DEFAULT_MAX_FILE_BYTES
from facebeam.transforms.stores import exact, registry

log = logging.getLogger(__name__)
BEAM = False  # no pipeline: unknown flags are errors


def _read(path):
    with FileSystems.open(path) as f:
        return pq.read_table(f)


@dataclasses.dataclass(frozen=True)
class ForgetConfig:
    shards: str
    image: str = None
    sha256: str = None
    label: str = None
    person: str = None
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
    what.add_argument("--person", metavar="NAME", help="every photo of the person of this name (or person id), "
                                                       "as the stores' persons' names say (`persons ... --shards`)")
    p.add_argument("--shards", required=True, help="the embed/run output folder")
    p.add_argument("--index", type=options.index_name, default=None,
                   help="also erase from this store (the one --store names, else as `index` chooses)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    options.add_es(p)
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> ForgetConfig:
    # Shards store canonical paths (absolute for local files), so a relative --image matches too.
    image = sources.canonical(a.image) if a.image else None
    return ForgetConfig(shards=a.shards, image=image, sha256=a.sha256, label=a.label, person=a.person, index=a.index,
                        dry_run=a.dry_run,
                        es=options.es_from(a), store=options.store_from(a))


def images_to_erase(ns: ForgetConfig) -> tuple:
    """(sha256 -> (image path, label) of every image to erase, the shas the tombstones already list).

    Resolved once, from the shards and the tombstones: a second `forget --label X` still finds X's photos.
    """
    found = {}
    if ns.sha256:
        found[ns.sha256] = (None, None)
    if ns.image:
        try:
            _, sha = sources.read_bytes(ns.image, DEFAULT_MAX_FILE_BYTES)
            found[sha] = (ns.image, None)
        except (OSError, ValueError):
            pass  # the photo may be gone already; the shards still know it
    faces = person_faces(ns) if ns.person else set()
    for path in shards.files(ns.shards) if ns.shards else []:
        t = _read(path).select(["image_sha256", "image_path", "label", "face_id"])
        for r in t.to_pylist():
            if (r["image_path"] == ns.image or (ns.label and r["label"] == ns.label) or r["image_sha256"] in found
                    or r["face_id"] in faces):
                found[r["image_sha256"]] = (r["image_path"], r["label"])
    tombstoned = set()
    by_person = registry.erased(ns.shards, reason=reason(ns)) if ns.person else {}
    for sha, (path, label) in registry.erased(ns.shards).items():
        if (sha == ns.sha256 or (ns.image and path == ns.image) or (ns.label and label == ns.label) or sha in found
                or sha in by_person):
            tombstoned.add(sha)
            prev = found.get(sha, (None, None))
            found[sha] = (prev[0] or path, prev[1] or label)
    return found, tombstoned


def person_faces(ns: ForgetConfig) -> set:
    """The face ids the stores' persons' names give `--person` (every reachable recorded store, and the shards)."""
    from facebeam.transforms.stores.base import person_faces as named

    out = set()
    for store in stores.recorded_stores(ns.shards, ns.es.connection, named_store(ns)):
        try:
            stored = store.person_named(ns.person)  # as `--person` finds it in a search: whatever its case
            if stored is not None:
                out |= named(store.persons(), stored)
        except UserError as e:
            log.warning("%s: its persons' names cannot be read (%s)", store.describe(), e)
        finally:
            store.close()
    return out


def reason(ns: ForgetConfig) -> str:
    return (f"forget --image {ns.image}" if ns.image else f"forget --label {ns.label}" if ns.label
            else f"forget --person {ns.person}" if ns.person else "forget --sha256")


def record_tombstones(folder: str, found: dict, why: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = [{"image_sha256": sha, "image_path": path, "label": label, "reason": why, "erased_at": now}
            for sha, (path, label) in sorted(found.items())]
    target = FileSystems.join(folder, "tombstones", f"{shards.new_run_id()}.parquet")
    with FileSystems.create(target) as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=manifest.TOMBSTONE_SCHEMA), f, compression="zstd")
    return target


def named_store(ns: ForgetConfig):
    """The store --store or --index names (besides the ones the collection recorded), or None."""
    if ns.store.given():
        return stores.make(ns.store, ns.es.connection, ns.index or "faces")
    if ns.index:  # chosen as `index` chooses: Elasticsearch when configured, else the embedded index
        return stores.for_loading(ns.store, ns.es.connection, ns.index)
    return None


def run(ns: ForgetConfig, pipeline=None) -> dict:
    """Erase from every store the collection was loaded into, and the shards; returns {'images', 'docs', 'rows',
    'stores', 'unreachable'} (what went, or would go with dry_run). A store that cannot be reached is named,
    the tombstone is still written, and the command exits 2: the next `forget` or load finishes it."""
    if not (shards.files(ns.shards) or shards.tombstones(ns.shards) or registry.recorded(ns.shards)):
        # a mistyped folder must not read as "nothing to erase": the faces would stay where they are
        raise UserError(f"no collection at {ns.shards}: no shards, tombstones or stores.json there (--shards is "
                        "the folder `embed` or `run` wrote)")
    found, tombstoned = images_to_erase(ns)
    if not found:
        print("nothing matched: no shard row, tombstone, person or file for that image/label/person")
        return {"images": 0, "docs": 0, "rows": 0}
    shas = set(found)
    verb = "would remove" if ns.dry_run else "removed"
    print(f"{'would erase' if ns.dry_run else 'erasing'} {len(shas)} image(s): "
          + ", ".join(sorted(p or s[:12] for s, (p, _) in found.items())))
    per_store, unreachable, docs = {}, [], 0
    targets = stores.recorded_stores(ns.shards, ns.es.connection, named_store(ns))
    for store in targets[:-1]:
        try:
            n = store.remove(shas, ns.dry_run)
        except UserError as e:
            unreachable.append(store.describe())
            print(f"  {store.describe()}: NOT reached, nothing removed there: {e}")
            continue
        finally:
            store.close()
        per_store[store.describe()] = n
        docs += n
        print(f"  {store.describe()}: {verb} {n} face doc(s)")
    removed = exact.erase_rows(ns.shards, shas, ns.dry_run)
    for path, n in sorted(removed.items()):
        print(f"  {path}: {verb} {n} row(s)")
    print(f"  {targets[-1].describe()}: {verb} {sum(removed.values())} row(s)")
    fresh = {s: v for s, v in found.items() if s not in tombstoned}
    if not ns.dry_run and fresh:
        print(f"  tombstone: {record_tombstones(ns.shards, fresh, reason(ns))}")
    if not fresh and not docs and not removed and not unreachable:
        print(f"already erased everywhere: {len(shas)} image(s) listed in the tombstones of {ns.shards}; "
              f"no store ({len(targets)} checked) holds any of their faces")
    summary = {"images": len(shas), "docs": docs, "rows": sum(removed.values()), "stores": per_store,
               "unreachable": unreachable, "already_erased": not fresh}
    if unreachable and ns.dry_run:  # nothing was written, no tombstone either
        raise UserError(f"could not reach {'; '.join(unreachable)}: its faces of those {len(shas)} image(s) were not "
                        "counted; nothing was changed (dry run)")
    if unreachable:
        raise UserError(f"could not reach {'; '.join(unreachable)}: its faces of those {len(shas)} image(s) are not "
                        "erased yet; the tombstone is written, so the next `facebeam forget` (the same command) or "
                        "any load into it finishes the erasure")
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: not s["images"])


if __name__ == "__main__":
    jobs.entry(main)
