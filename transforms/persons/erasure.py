"""Faces erased from a cluster folder (`facebeam forget`): their rows go, their persons shrink or go, and
each person left is summed up again from the faces it still holds."""
from __future__ import annotations

import numpy as np

from facebeam.transforms import shards
from facebeam.transforms.persons.edits import read_edits, write_edits
from facebeam.transforms.persons.from_graph import centres_from_shards, tables_for
from facebeam.transforms.persons.tables import LOW_QUALITY, read_state, read_table, write_outputs, write_state


def drop_faces(folder: str, kept: list, gone: set, shards_dir: str) -> None:
    """Write the folder's tables with the assignments `kept` only. Centres, distances and representatives come
    again from the collection's vectors of the faces left, so no erased vector stays in a centre. A person whose
    faces the shards no longer hold keeps its earlier centre. Names stay with their persons; the edit log and
    the state forget the erased face ids."""
    spec = shards.spec_of(shards_dir)
    person_of = {a["face_id"]: a["person_id"] for a in kept if a["person_id"] is not None}
    centres, to_centre = centres_from_shards(person_of, shards.files(shards_dir), spec)
    earlier = {r["person_id"]: r for r in read_table(folder)}
    for pid in set(person_of.values()) - set(centres):
        size = sum(1 for p in person_of.values() if p == pid)
        centres[pid] = (np.asarray(earlier[pid]["centre"], np.float32), size)
        to_centre.update({a["face_id"]: a["distance"] for a in kept if a["person_id"] == pid})
    names = {pid: r["name"] for pid, r in earlier.items() if r["name"]}
    assignments, table = tables_for(kept, person_of, names, centres, to_centre)
    write_outputs(folder, assignments, table, spec.dim)
    edits = read_edits(folder)
    if edits:
        for e in edits:
            for key in ("faces", "into_faces"):
                if key in e:
                    e[key] = [f for f in e[key] if f not in gone]
        write_edits(folder, edits)
    state = read_state(folder)
    if state:
        write_state(folder, {**state, "faces": len(assignments), "persons": sum(1 for r in table if r["size"] > 1),
                             "singletons": sum(1 for r in table if r["size"] == 1),
                             "low_quality": sum(1 for a in assignments if a["status"] == LOW_QUALITY),
                             "named": sum(1 for r in table if r["name"])})
