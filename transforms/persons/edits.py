"""Names, merges and splits: applied to the persons table, logged by face, replayed on every re-cluster."""
from __future__ import annotations

import difflib
import json
import time

import numpy as np
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms.errors import UserError
from facebeam.transforms.persons.ids import majority, split_person_id
from facebeam.transforms.persons.tables import MEMBER, SINGLETON, join, read_assignments, read_table, write_outputs


def read_edits(folder: str) -> list:
    path = join(folder, "edits.jsonl")
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path) as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


def write_edits(folder: str, edits: list) -> None:
    with FileSystems.create(join(folder, "edits.jsonl")) as f:
        f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in edits).encode())


def append_edit(folder: str, edit: dict) -> None:
    write_edits(folder, read_edits(folder) + [edit])


def replay_edits(face_ids, person_of: dict, edits: list) -> dict:
    """Apply merges and splits (by face) to {face_id: person_id}; returns {person_id: name} from the names.

    merge: every face of the merged person (as listed in the edit) goes to the person that holds most of
    the target's listed faces now. split: the listed faces become one person of their own, with the id
    the edit gave it. Names follow the person that holds most of the faces named (recorded at naming).
    """
    names = {}
    for e in edits:
        if e["op"] == "merge":
            target = majority(person_of, e["into_faces"])
            if target is None:
                continue
            for fid in e["faces"]:
                if person_of.get(fid) is not None:
                    person_of[fid] = target
        elif e["op"] == "split":
            for fid in e["faces"]:
                if fid in person_of:
                    person_of[fid] = e["new_person_id"]
        elif e["op"] == "name":
            pid = majority(person_of, e["faces"])
            if pid is not None:
                names[pid] = e["name"]
    return names


def replay_on_groups(group_of: dict, edits: list) -> list:
    """Apply merges and splits (by face) to a fresh clustering, {face_id: group}, before ids are given, so
    the ids that follow (ids.stable_ids) see the partition the user made. Returns the name edits as
    [(faces named, name)], in order.

    merge: the merged faces join the group most of the target's faces are in now; split: the listed
    faces become a group of their own.
    """
    named = []
    for e in edits:
        if e["op"] == "merge":
            target = majority(group_of, e["into_faces"])
            if target is None:
                continue
            for fid in e["faces"]:
                if fid in group_of:
                    group_of[fid] = target
        elif e["op"] == "split":
            for fid in e["faces"]:
                if fid in group_of:
                    group_of[fid] = ("split", e["new_person_id"])
        elif e["op"] == "name":
            named.append((e["faces"], e["name"]))
    return named


def _rep_fields(a: dict) -> dict:
    return {"representative_face_id": a["face_id"], "representative_image_path": a["image_path"],
            "rep_box_x": a["box_x"], "rep_box_y": a["box_y"], "rep_box_w": a["box_w"], "rep_box_h": a["box_h"]}


def person_named_by(table: dict, ref: str, folder: str) -> str:
    """The person id `ref` names: an id, or the name of exactly one person (as given, else in any case)."""
    if ref in table:
        return ref
    named = sorted(p for p, r in table.items() if r.get("name") == ref) or \
        sorted(p for p, r in table.items() if (r.get("name") or "").casefold() == ref.casefold())
    if len(named) == 1:
        return named[0]
    if named:
        raise UserError(f"{len(named)} persons in {folder} are named {ref!r} ({', '.join(named[:4])}"
                        f"{', ...' if len(named) > 4 else ''}): give one's id")
    close = difflib.get_close_matches(ref, [*table, *sorted({r["name"] for r in table.values() if r.get("name")})], n=1)
    raise UserError(f"no person {ref!r} in {folder}" + (f"; did you mean {close[0]!r}?" if close else
                                                       f" (`facebeam persons list --clusters {folder}` shows them)"))


def _merge(table: dict, assignments: list, person_id: str, into: str, folder: str, members: list) -> dict:
    if into == person_id:
        raise UserError(f"{person_id} cannot be merged into itself: name another person to merge it into")
    keep, gone = table[into], table.pop(person_id)
    if gone["centre"] is not None and keep["centre"] is not None:
        keep["centre"] = ((np.asarray(keep["centre"]) * keep["size"] + np.asarray(gone["centre"]) * gone["size"])
                          / (keep["size"] + gone["size"])).astype(np.float32).tolist()
    keep["size"] += gone["size"]
    keep["status"] = "person"
    keep["name"] = keep["name"] or gone["name"]
    for a in assignments:
        if a["person_id"] == person_id:
            a["person_id"], a["status"] = into, MEMBER
    return {"op": "merge", "person_id": person_id, "into": into, "faces": members,
            "into_faces": [a["face_id"] for a in assignments if a["person_id"] == into and a["face_id"] not in members]}


def _split(table: dict, assignments: list, person_id: str, faces, members: list) -> dict:
    moving = [f for f in faces if f in set(members)]
    if not moving or len(moving) == len(members):
        raise UserError(f"--faces must name some, not all, faces of {person_id}")
    new_id = split_person_id(moving)
    if new_id in table:
        raise UserError(f"those faces were split off already: {new_id}")
    rows = [a for a in assignments if a["face_id"] in set(moving)]
    for a in rows:
        a["person_id"], a["status"] = new_id, (SINGLETON if len(moving) == 1 else MEMBER)
    old = table[person_id]
    old["size"] -= len(moving)
    if old["representative_face_id"] in set(moving):
        old.update(_rep_fields(next(a for a in assignments if a["person_id"] == person_id)))
    if old["size"] == 1:
        old["status"] = SINGLETON
        for a in assignments:
            if a["person_id"] == person_id:
                a["status"] = SINGLETON
    table[new_id] = {"person_id": new_id, "size": len(moving), "name": None,
                     "status": "person" if len(moving) > 1 else SINGLETON, **_rep_fields(rows[0]),
                     "centre": old["centre"]}
    return {"op": "split", "person_id": person_id, "new_person_id": new_id, "faces": moving}


def edit(folder: str, action: str, person_id: str, name=None, into=None, faces=()) -> dict:
    """Name, merge or split a person in the persons table and log the edit (by face) for re-clusters."""
    table = {r["person_id"]: r for r in read_table(folder)}
    assignments = read_assignments(folder)
    person_id = person_named_by(table, person_id, folder)
    into = person_named_by(table, into, folder) if action == "merge" else into
    members = [a["face_id"] for a in assignments if a["person_id"] == person_id]
    dim = len(next(r["centre"] for r in table.values() if r["centre"] is not None))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if action == "name":
        table[person_id]["name"] = name
        e = {"op": "name", "person_id": person_id, "name": name, "faces": members}
    elif action == "merge":
        e = _merge(table, assignments, person_id, into, folder, members)
    elif action == "split":
        e = _split(table, assignments, person_id, faces, members)
    else:
        raise UserError(f"unknown persons action {action!r}")
    ordered = sorted(table.values(), key=lambda r: (-r["size"], r["person_id"]))
    write_outputs(folder, assignments, ordered, dim)
    append_edit(folder, {**e, "at": stamp})
    return {"action": action, "person_id": person_id, "faces": len(e["faces"]),
            **({"name": name} if action == "name" else {}), **({"into": into} if action == "merge" else {}),
            **({"new_person_id": e["new_person_id"]} if action == "split" else {})}
