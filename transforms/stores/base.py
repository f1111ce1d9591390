"""The contract every face store keeps: `FaceStore`, its `Capabilities`, and one load around a pipeline.

Modelled on fsspec's `AbstractFileSystem`: callers hold a `FaceStore` and never ask which store
it is. What a store cannot do is declared in `capabilities` (read by the commands, which say so
in one line, and by the conformance suite in tests/store_conformance.py), never hidden behind a
branch on its kind.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging

from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


class StoreError(UserError):
    """A store cannot be reached, or refuses the operation; the message names the store."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a store does beyond the operations every store has (count, load, remove, verify, metadata)."""

    search: bool = True  # ranks the whole collection: top-k with filters
    in_pipeline: bool = False  # loaded by a Beam step while the faces are embedded (else from the shards after)
    labeled_only: bool = False  # keeps only faces with an identity label
    reindex: bool = False  # a new spec built beside the old one, switched in one step
    paths: bool = True  # names each face's photo, so a photo that moved is followed (`relocate`)

    def lacks(self, what: str) -> str:
        return {"search": "verifies by identity and does not rank the whole collection",
                "reindex": "cannot switch to a new spec in place: load the new spec's shards into a new name"}[what]


class Searcher(abc.ABC):
    """An open store on one worker: `search(probes, knn.SearchSpec)` -> hit lists (knn.HIT_FIELDS + distance, score,
    person_id, person)."""

    @abc.abstractmethod
    def search(self, probes: list, search) -> list: ...

    def close(self) -> None:
        return None  # nothing held open by default


class Load(abc.ABC):
    """One load of faces into a store around an embed or index pipeline.

    `attach(rows)` adds the Beam step that loads the rows (stores loaded in the pipeline), `running()`
    wraps the pipeline's run, and `finish(result)` loads what the pipeline wrote (other stores) and
    returns the summary's load fields.
    """

    def attach(self, rows) -> None:
        return None  # loaded from the shards in finish()

    def running(self):
        return contextlib.nullcontext()

    @abc.abstractmethod
    def finish(self, result) -> dict: ...


class Reindex(abc.ABC):
    """A store moving to a new embedding spec: the new one built beside the old (`begin_load`), compared on the
    same probes (`compare`), then switched to in one step (`switch`); the old one stays until `drop_old`."""

    @abc.abstractmethod
    def images(self) -> dict:
        """image_sha256 -> (image_path, label) of everything the store holds now."""

    @abc.abstractmethod
    def begin_load(self, output: str) -> Load: ...

    @abc.abstractmethod
    def compare(self, shas, k: int = 10) -> dict:
        """Same probes in both: top-k image overlap and top-1 same-person agreement."""

    @abc.abstractmethod
    def comparing(self) -> str:
        """'old ... vs new ...' for the comparison line."""

    @abc.abstractmethod
    def switch(self) -> str:
        """Readers see the new spec from now on; a line saying what changed."""

    @abc.abstractmethod
    def drop_old(self) -> str: ...

    @abc.abstractmethod
    def summary(self) -> dict: ...

    def close(self) -> None:
        return None  # nothing held by default


def comparison(pairs, old_spec, new_spec, k: int) -> dict:
    """[(old hits, new hits)] (hit: (image_sha256, distance), best first) -> overlap and agreement."""
    overlaps, agree, n = [], 0, 0
    for ha, hb in pairs:
        if not ha or not hb:
            continue
        n += 1
        sa, sb = {s for s, _ in ha}, {s for s, _ in hb}
        overlaps.append(len(sa & sb) / max(len(sa), 1))
        agree += (ha[0][1] <= old_spec.threshold) == (hb[0][1] <= new_spec.threshold)
    return {"probes": n, "k": k, "topk_image_overlap": round(sum(overlaps) / n, 4) if n else None,
            "same_person_agreement": round(agree / n, 4) if n else None}


class FaceStore(abc.ABC):
    """One store of faces of one embedding spec, named `name` (alias, folder name or key prefix)."""

    kind: str = ""  # the word in --store and in the collection's record; never dispatched on
    capabilities: Capabilities = Capabilities()

    def __init__(self, name: str):
        self.name = name

    # --- what it is ---------------------------------------------------------------------------
    @abc.abstractmethod
    def describe(self) -> str:
        """One line: what and where."""

    @abc.abstractmethod
    def location(self) -> str:
        """Where it is, without secrets (URL, folder): recorded in the collection."""

    def record(self) -> dict:
        return {"kind": self.kind, "name": self.name, "location": self.location()}

    def identity(self) -> tuple:
        """Two handles on the same store have the same identity (stores a cluster reaches by name: no location)."""
        return self.kind, self.name, self.location()

    def where(self) -> dict:
        """For summaries and logs: backend, searched."""
        return {"backend": self.kind, "searched": self.describe()}

    # --- spec ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def exists(self) -> bool:
        """Does it hold a collection yet (a created index, folder or key prefix)?"""

    @abc.abstractmethod
    def spec(self):
        """The stored embedding spec (a StoreError when there is none)."""

    @abc.abstractmethod
    def check(self, spec) -> None:
        """Reachable, and holds `spec` or nothing yet (SpecError otherwise); nothing is written."""

    # --- faces --------------------------------------------------------------------------------
    @abc.abstractmethod
    def begin_load(self, spec, load, output: str, shard_files=None, run_id=None) -> Load:
        """A load of `spec` faces (es_load.LoadConfig settings); `shard_files` what to load after the pipeline."""

    @abc.abstractmethod
    def count(self) -> int:
        """Live faces."""

    @abc.abstractmethod
    def remove(self, shas, dry_run: bool = False, purge: bool = True) -> int:
        """Every face of those images (and their person names) out; how many faces went (or would). `purge`: out of the
        store's own files at once too, as an erasure must be (False for faces a newer version of their photo
        replaces: the store's own merges drop them in time)."""

    @abc.abstractmethod
    def relocate(self, rows) -> int:
        """Face rows (shard rows, vectors included) of photos that moved, each naming its new path: the faces the
        store holds take that path. Returns how many changed (0 again when repeated; 0 where `paths` is False)."""

    @abc.abstractmethod
    def closest(self, vector, label: str) -> tuple:
        """(face_id, distance, faces of label or None) of the label's face closest to `vector`; (None, None, 0)."""

    def searcher(self) -> Searcher:
        raise StoreError(f"{self.describe()} {self.capabilities.lacks('search')}")

    def search_settings(self, search) -> dict:
        """How a search (knn.SearchSpec) runs here, for the summaries of `query` and `search`."""
        return {"k": search.k}

    def reindexer(self, new_spec, load) -> Reindex:
        raise StoreError(f"{self.describe()} {self.capabilities.lacks('reindex')}")

    # --- the collection's metadata ------------------------------------------------------------
    @abc.abstractmethod
    def read_meta(self) -> dict:
        """{'calibration': {...} or absent, 'persons': {face_id: [person_id, name]} or absent, 'copies': [...] or
        absent}."""

    @abc.abstractmethod
    def write_meta(self, **updates) -> None:
        """Replace those keys of the metadata (None removes one)."""

    def calibration(self):
        return self.read_meta().get("calibration")

    def set_calibration(self, result: dict) -> None:
        from facebeam.transforms import calibrate

        self.write_meta(calibration=calibrate.public(result))

    def threshold(self, spec, override=None) -> tuple:
        """(same-person distance, where it came from): --threshold, this store's calibration, the spec's."""
        from facebeam.transforms import calibrate

        carried = None if override is not None else self.calibration()
        return calibrate.choose_threshold(spec, override, carried, self.threshold_place())

    def threshold_place(self) -> str:
        return self.describe()

    def persons(self) -> dict:
        return self.read_meta().get("persons") or {}

    def has_persons(self) -> bool:
        """Whether any face here carries a person."""
        return bool(self.persons())

    def person_named(self, name: str):
        """The person's name or id that `--person name` means here: `name` when a face carries it, else the one
        name or id equal to it but for case (`angelina` -> `Angelina`); None when there is none, or several."""
        return resolve_person({v for pair in self.persons().values() for v in list(pair)[:2] if v}, name)

    def set_persons(self, found: dict) -> int:
        """{face_id: (person_id, name)} (persons.lookup) -> kept with the faces; how many of its faces got one."""
        self.write_meta(persons={f: list(v) for f, v in found.items()})
        return len(found)

    def copies(self) -> list:
        """The outputs made from this store's faces (copies.py records them): what `forget` erases beyond it."""
        return list(self.read_meta().get("copies") or [])

    @abc.abstractmethod
    def update_copies(self, change) -> list:
        """The recorded copies replaced by `change(records)` in one atomic step (`change` may run again if another
        job wrote in between), so that jobs recording at the same moment all land: a lost record is an output
        `forget` never reaches. Nothing is written when `change` returns the records unchanged. Returns the
        records now."""

    def close(self) -> None:
        return None  # nothing held open by default


def annotate(hits_per_probe, persons: dict) -> None:
    """Give each hit its `person_id` and `person` (name) from a store's persons, in place (kept when it has them)."""
    for hits in hits_per_probe:
        for h in hits:
            if h.get("person") is None:
                h["person_id"], h["person"] = (list(persons.get(h["face_id"]) or ()) + [None, None])[:2]


def person_faces(persons: dict, name: str) -> set:
    """The face_ids whose person is called `name` (or whose person id is `name`)."""
    return {f for f, (pid, who) in ((f, (list(v) + [None, None])[:2]) for f, v in persons.items()) if name in (who, pid)}


def resolve_person(known, name: str):
    """`name` when it is among `known` (persons' names and ids), else the one known equal to it but for case."""
    if name in known:
        return name
    folded = {k for k in known if k.casefold() == name.casefold()}
    return folded.pop() if len(folded) == 1 else None


def split_filters(filters) -> tuple:
    """((field, value), ...) -> (the fields a store keeps, the person's name or None)."""
    rest, person = [], None
    for field, value in filters:
        if field == "person":
            person = value
        else:
            rest.append((field, value))
    return tuple(rest), person
