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


def _key(label):
    return int(label) if isinstance(label, (int, np.integer)) else label


def stable_ids(face_ids, labels, previous: dict = None) -> dict:
    """Cluster labels -> {label: person_id}, carrying over ids of an earlier clustering by overlap.

    `previous` maps face_id -> person_id. Greedily, largest overlap first, each earlier person goes to the
    new group that holds the most of its faces, and each group takes at most one earlier id. Ties are
    broken by the earlier id, then by the group's smallest face id, never by the (arbitrary) label, so
    the same partition gives the same ids on every run. The rest get `new_person_id` of their members.
    """
    previous = previous or {}
    members, overlap = {}, {}
    for fid, lab in zip(face_ids, labels):
        lab = _key(lab)
        members.setdefault(lab, []).append(fid)
        old = previous.get(fid)
        if old is not None:
            overlap[(lab, old)] = overlap.get((lab, old), 0) + 1
    smallest = {lab: min(fids) for lab, fids in members.items()}
    out, taken = {}, set()
    for (lab, old), _count in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0][1], smallest[kv[0][0]])):
        if lab in out or old in taken:
            continue
        out[lab] = old
        taken.add(old)
    for lab in sorted(members, key=smallest.get):
        if lab not in out:
            pid = new_person_id(members[lab])
            while pid in taken:  # an id already carried by another person: derive a fresh one
                pid = "p-" + hashlib.sha256(pid.encode()).hexdigest()[:12]
            out[lab] = pid
            taken.add(pid)
    return out


def majority(person_of: dict, faces):
    """The person (or group) that holds most of `faces` now; ties go to the one holding the smallest of
    those face ids (never to the label itself, which may be arbitrary). None when it holds none."""
    counts, smallest = {}, {}
    for fid in faces:
        pid = person_of.get(fid)
        if pid is not None:
            counts[pid] = counts.get(pid, 0) + 1
            smallest[pid] = min(smallest.get(pid, fid), fid)
    return min(counts, key=lambda p: (-counts[p], smallest[p])) if counts else None
