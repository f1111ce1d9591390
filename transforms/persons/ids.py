"""Person ids that survive re-clustering: derived from members, carried over by face overlap."""
from __future__ import annotations

import hashlib

import numpy as np


def new_person_id(face_ids) -> str:
    """A person's id from its smallest member face id: the same members give the same id on any run."""
    return "p-" + hashlib.sha256(min(face_ids).encode()).hexdigest()[:12]


def split_person_id(moving) -> str:
    """The id a split gives the faces it moves out: from those faces, so a replay gives the same id."""
    return "p-" + hashlib.sha256(("split|" + "|".join(sorted(moving))).encode()).hexdigest()[:12]


def stable_ids(face_ids, labels, previous: dict = None) -> dict:
    """Cluster labels -> {label: person_id}, carrying over ids of an earlier clustering by overlap.

    `previous` maps face_id -> person_id. Each earlier person goes to the new cluster that holds the most
    of its faces (ties: the larger overlap share, then the smaller label); every new cluster takes at most
    one earlier id. The rest get `new_person_id` of their members.
    """
    face_ids = np.asarray(face_ids, dtype=object)
    labels = np.asarray(labels)
    previous = previous or {}
    overlap = {}
    for fid, lab in zip(face_ids, labels):
        old = previous.get(fid)
        if old is not None:
            overlap[(int(lab), old)] = overlap.get((int(lab), old), 0) + 1
    taken_labels, taken_ids, out = set(), set(), {}
    for (lab, old), _count in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1])):
        if lab in taken_labels or old in taken_ids:
            continue
        out[lab] = old
        taken_labels.add(lab)
        taken_ids.add(old)
    members = {}
    for fid, lab in zip(face_ids, labels):
        members.setdefault(int(lab), []).append(fid)
    used = set(out.values())
    for lab in sorted(members):
        if lab not in out:
            pid = new_person_id(members[lab])
            while pid in used:  # an id already carried by another person: derive a fresh one
                pid = "p-" + hashlib.sha256(pid.encode()).hexdigest()[:12]
            out[lab] = pid
            used.add(pid)
    return out


def majority(person_of: dict, faces):
    """The person that holds most of `faces` now (ties: the smaller id); None when it holds none."""
    counts = {}
    for fid in faces:
        pid = person_of.get(fid)
        if pid is not None:
            counts[pid] = counts.get(pid, 0) + 1
    return min(counts, key=lambda p: (-counts[p], p)) if counts else None
