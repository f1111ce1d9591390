"""facebeam forget: erase faces from every store, the shards, and keep them erased.

    facebeam forget (--image PATH | --sha256 H | --label L | --person NAME | --missing) --shards DIR
                    [--index NAME] [--store es|local[:DIR]|redis] [--dry-run]

The images are resolved once, from the shards and the tombstones. Their faces are then
erased from every store the collection DIR was loaded into (DIR/stores.json: kind, name,
location), from the store --index/--store names, and from the shards (rewritten only
where they hold an erased image), with one line per store. From each store it also erases
the outputs made from it (query results and reports, cluster folders and contact sheets)
and the other collections loaded into it, followed to their own stores (copies.py). A
tombstone in DIR/tombstones/ (and in each other collection that held them) makes later runs
skip those images' content. A store that cannot be reached is
named and the command exits 2, with the tombstone written: the same `forget` again, or any
later load into that store, finishes the erasure. Run a second time, it says the images
are already erased everywhere. `--missing` erases the photos deleted from the library: those
none of whose paths exists now (refused when that is every photo: a drive not mounted).
"""
import dataclasses
import datetime
import logging
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from facebeam.pipelines import jobs, options
from facebeam.transforms import copies, erase_copies, manifest, privacy, shards, sources, stores
from facebeam.transforms.errors import UserError
from facebeam.transforms.sources import DEFAULT_MAX_FILE_BYTES
from facebeam.transforms.stores import registry

log = logging.getLogger(__name__)
BEAM = False  # no pipeline: unknown flags are errors
MAX_NAMED = 10  # photos named in the first line; the rest are counted


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
    missing: bool = False
    index: str = None
    dry_run: bool = False
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()


def build_parser():
    p = options.parser("facebeam forget", __doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="a photo's path as it was embedded (or an existing file)")
    what.add_argument("--sha256", type=options.sha256_hex, help="an image's content hash (64 hex digits)")
    what.add_argument("--label", help="every face with this identity label")
    what.add_argument("--person", metavar="NAME", help="every photo of the person of this name (or person id), "
                                                       "as the stores' persons' names say (`persons ... --shards`)")
    what.add_argument("--missing", action="store_true",
                      help="every photo of the collection deleted since it was embedded (no path it had exists now)")
    p.add_argument("--shards", type=options.beam_path, required=True, help="the embed/run output folder")
    p.add_argument("--index", type=options.index_name, default=None,
                   help="also erase from this store (the one --store names, else as `index` chooses)")
    p.add_argument("--dry-run", action="store_true", help="say what would go, change nothing")
    options.add_es(p)
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> ForgetConfig:
    # Shards store canonical paths (absolute for local files), so a relative --image matches too.
    image = sources.canonical(a.image) if a.image else None
    return ForgetConfig(shards=a.shards, image=image, sha256=a.sha256, label=a.label, person=a.person,
                        missing=a.missing, index=a.index, dry_run=a.dry_run,
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
    if ns.missing:
        found.update(missing_images(ns.shards))
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


def missing_images(folder: str) -> dict:
    """sha256 -> (path, label) of the photos with faces none of whose paths (shard rows, manifests: a photo moved keeps
    both) exists now. A copy of a photo still elsewhere in the library keeps it. Every photo missing is refused."""
    paths, labels = {}, {}
    for path in shards.files(folder):
        for r in _read(path).select(["image_sha256", "image_path", "label"]).to_pylist():
            paths.setdefault(r["image_sha256"], set()).add(r["image_path"])
            labels[r["image_sha256"]] = labels.get(r["image_sha256"]) or r["label"]
    for path in shards.files(folder, "manifest"):
        for r in _read(path).select(["image_sha256", "image_path"]).to_pylist():
            if r["image_sha256"] in paths:
                paths[r["image_sha256"]].add(r["image_path"])
    gone = {sha: sorted(p for p in ps if p) for sha, ps in paths.items() if not any(p and FileSystems.exists(p)
                                                                                    for p in ps)}
    if gone and len(gone) == len(paths):
        raise UserError(f"none of the {len(paths)} photo(s) of {folder} exists now (is their drive or bucket "
                        "mounted?); nothing erased")
    return {sha: (ps[0] if ps else None, labels.get(sha)) for sha, ps in gone.items()}


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


def face_ids_of(folder: str, shas: set) -> set:
    """The face ids the shards give those images."""
    out = set()
    for path in shards.files(folder):
        for r in _read(path).select(["image_sha256", "face_id"]).to_pylist():
            if r["image_sha256"] in shas:
                out.add(r["face_id"])
    return out


@dataclasses.dataclass
class Erasure:
    """One `forget`, followed through every copy: the stores a collection was loaded into, the outputs made from
    each store (copies.py), and the other collections loaded into the same stores, which hold the same faces
    and would bring them back on their next load."""

    shas: set
    found: dict
    dry_run: bool
    why: str
    connect: object
    face_ids: set = dataclasses.field(default_factory=set)
    stores_seen: set = dataclasses.field(default_factory=set)
    folders_seen: set = dataclasses.field(default_factory=set)
    pending: list = dataclasses.field(default_factory=list)
    per_store: dict = dataclasses.field(default_factory=dict)
    unreachable: list = dataclasses.field(default_factory=list)
    copied: dict = dataclasses.field(default_factory=dict)
    rows: dict = dataclasses.field(default_factory=dict)  # collection -> shard rows removed
    checked: int = 0

    @property
    def verb(self) -> str:
        return "would remove" if self.dry_run else "removed"

    def collection(self, folder: str, named=None, tombstoned=None, files_said: bool = False) -> None:
        """Erase from `folder`'s stores, its shards and the outputs made from them; queue the collections found."""
        self.folders_seen.add(sources.canonical(folder))
        self.face_ids |= face_ids_of(folder, self.shas)  # a cluster folder knows faces by id: read before they go
        targets = stores.recorded_stores(folder, self.connect, named)
        for store in targets[:-1]:
            if store.identity() not in self.stores_seen:
                self.stores_seen.add(store.identity())
                self.store(store)
        self.checked += len(targets) - 1
        removed = targets[-1].erase(self.shas, self.dry_run)  # the shards: rows, and the names of those faces
        if files_said:
            for path, n in sorted(removed.items()):
                print(f"  {path}: {self.verb} {n} row(s)")
        self.rows[folder] = sum(removed.values())
        print(f"  {targets[-1].describe()}: {self.verb} {self.rows[folder]} row(s)")
        self.copies(targets[-1])
        # The collection named, or one that held the images: later runs into it skip that content.
        held = tombstoned is not None or removed
        already = tombstoned if tombstoned is not None else set(registry.erased(folder))
        fresh = {s: v for s, v in self.found.items() if s not in already}
        if held and fresh and not self.dry_run:
            print(f"  tombstone: {record_tombstones(folder, fresh, self.why)}")

    def store(self, store) -> None:
        try:
            n = store.remove(self.shas, self.dry_run)
            self.per_store[store.describe()] = n
            print(f"  {store.describe()}: {self.verb} {n} face doc(s)")
            self.copies(store)
        except UserError as e:
            self.unreachable.append(store.describe())
            said = "the outputs made from it not erased" if store.describe() in self.per_store else "nothing removed there"
            print(f"  {store.describe()}: NOT reached, {said}: {e}")
        finally:
            store.close()

    def copies(self, store) -> None:
        """Those images out of every output made from `store`; records of outputs that are gone are dropped."""
        recorded, kept = (store.copies() if store.exists() else []), []
        for copy in recorded:
            if copy["kind"] == copies.COLLECTION:
                if FileSystems.exists(copy["output"]):
                    kept.append(copy)
                    if sources.canonical(copy["output"]) not in self.folders_seen | set(self.pending):
                        self.pending.append(sources.canonical(copy["output"]))
                continue
            done = erase_copies.erase(copy, self.shas, self.face_ids, self.dry_run)
            if done.get("gone"):
                continue
            kept.append(copy)
            if done["rows"]:
                self.copied[copy["output"]] = done["rows"]
                page = f"; {copy['page']} {done['page']}" if done["page"] else ""
                print(f"  {copy['kind']} output {copy['output']}: {self.verb} {done['rows']} {done['what']}{page}")
        gone = {c["output"] for c in recorded} - {c["output"] for c in kept}
        if gone and not self.dry_run:  # records another job added meanwhile stay
            store.update_copies(lambda now: [c for c in now if c["output"] not in gone])


def reason(ns: ForgetConfig) -> str:
    return (f"forget --image {ns.image}" if ns.image else f"forget --label {ns.label}" if ns.label
            else f"forget --person {ns.person}" if ns.person else "forget --missing" if ns.missing
            else "forget --sha256")


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
        print("no photo of the collection is missing: nothing to erase" if ns.missing else
              "nothing matched: no shard row, tombstone, person or file for that image/label/person")
        return {"images": 0, "docs": 0, "rows": 0, "missing": ns.missing}
    shas = set(found)
    named = sorted(p or s[:12] for s, (p, _) in found.items())
    print(f"{'would erase' if ns.dry_run else 'erasing'} {len(shas)} image(s): " + ", ".join(named[:MAX_NAMED])
          + (f" and {len(named) - MAX_NAMED} more" if len(named) > MAX_NAMED else ""))
    e = Erasure(shas, found, ns.dry_run, reason(ns), ns.es.connection)
    with privacy.private_umask():  # the shards, tombstones and outputs it writes again are 0600, as first written
        e.collection(ns.shards, named_store(ns), tombstoned, files_said=True)
        while e.pending:  # other collections loaded into the same stores: their shards would bring the faces back
            e.collection(e.pending.pop(0))
    docs, removed, unreachable = sum(e.per_store.values()), sum(e.rows.values()), e.unreachable
    fresh = {s: v for s, v in found.items() if s not in tombstoned}
    if not fresh and not docs and not removed and not e.copied and not unreachable:
        print(f"already erased everywhere: {len(shas)} image(s) listed in the tombstones of {ns.shards}; "
              f"no store ({e.checked + len(e.rows)} checked) holds any of their faces")
    summary = {"images": len(shas), "docs": docs, "rows": removed, "stores": e.per_store, "copies": e.copied,
               "collections": {f: n for f, n in e.rows.items() if f != ns.shards}, "unreachable": unreachable,
               "already_erased": not fresh}
    if unreachable and ns.dry_run:  # nothing was written, no tombstone either
        raise UserError(f"could not reach {'; '.join(unreachable)}: its faces of those {len(shas)} image(s) were not "
                        "counted; nothing was changed (dry run)")
    if unreachable:
        raise UserError(f"could not reach {'; '.join(unreachable)}: its faces of those {len(shas)} image(s) are not "
                        "erased yet; the tombstone is written, so the next `facebeam forget` (the same command) or "
                        "any load into it finishes the erasure")
    return summary


def main(argv=None) -> int:
    # Nothing matched is a failure (a typo would otherwise read as done); nothing missing is an answer.
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: not s["images"] and not s.get("missing"))


if __name__ == "__main__":
    jobs.entry(main)
