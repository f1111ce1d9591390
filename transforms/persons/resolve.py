"""The launcher's part of a cluster job: the workers' graph -> persons, with ids and names carried over.

Steps: gather the faces (the earlier clustering's, when incremental, then the graph's; one row per face
id), fit the threshold, give every good face a person (join the nearest earlier person, or cluster),
replay the edit log, then compute centres, representatives and the tables.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from facebeam.transforms.knn import prepare, to_distance
from facebeam.transforms.persons.clustering import centres_of, label_faces, nearest_centre, representative
from facebeam.transforms.persons.edits import read_edits, replay_edits
from facebeam.transforms.persons.graph import padded_lists
from facebeam.transforms.persons.ids import stable_ids
from facebeam.transforms.persons.limits import Limits
from facebeam.transforms.persons.tables import (
    LOW_QUALITY,
    MEMBER,
    META,
    SINGLETON,
    clear,
    graph_folder,
    read_graph,
    read_table,
    scan,
    vectors_of,
    write_outputs,
)
from facebeam.transforms.persons.threshold import fit_threshold


@dataclasses.dataclass
class Faces:
    """Every face of this run, one row per face id: the earlier clustering's first, then the new ones."""

    rows: list             # META columns + `ok` (meets the limits)
    face_ids: np.ndarray   # object array, aligned with rows
    ok: np.ndarray         # bool, aligned with rows
    earlier: int           # rows[:earlier] come from the earlier clustering
    graph: pa.Table        # the graph rows of rows[earlier:], in that order
    new_faces: int         # graph rows read, before duplicates were dropped


def gather_faces(output: str, previous: list, incremental: bool) -> Faces:
    graph = read_graph(graph_folder(output))
    new_rows = graph.select(list(META) + ["ok"]).to_pylist()
    earlier = [{**{c: r[c] for c in META}, "ok": r["status"] != LOW_QUALITY} for r in previous] if incremental else []
    rows = earlier + new_rows
    # The same photo content at two paths has the same face ids: keep the first row of each.
    first = {}
    for i, r in enumerate(rows):
        first.setdefault(r["face_id"], i)
    keep = sorted(first.values())
    if len(keep) != len(rows):
        graph = graph.take(pa.array([i - len(earlier) for i in keep if i >= len(earlier)]))
        rows = [rows[i] for i in keep]
    return Faces(rows=rows, face_ids=np.asarray([r["face_id"] for r in rows], dtype=object),
                 ok=np.asarray([bool(r["ok"]) for r in rows]), earlier=len(earlier), graph=graph,
                 new_faces=len(new_rows))


def prepared_chunks(files, spec):
    """(face ids, prepared vectors) per shard chunk."""
    for b in scan(files, ["face_id", "embedding"]):
        yield b.column("face_id").to_pylist(), prepare(vectors_of(b, spec.dim), spec.metric)


def vectors_for(files, spec, wanted: dict, n: int) -> np.ndarray:
    """An n x dim array with the prepared vector of each face in `wanted` ({face_id: row}) at its row."""
    x = np.zeros((n, spec.dim), np.float32)
    for fids, chunk in prepared_chunks(files, spec):
        for j, fid in enumerate(fids):
            if fid in wanted:
                x[wanted[fid]] = chunk[j]
    return x


def persons_from_scratch(faces: Faces, nbr, dist, threshold, method, previous: list) -> dict:
    """Cluster every good face; ids carried over from the earlier clustering by overlap."""
    cluster_of = label_faces(len(faces.rows), faces.ok, nbr, dist, threshold, method)
    earlier_person = {r["face_id"]: r["person_id"] for r in previous if r["person_id"] is not None}
    person_of_cluster = stable_ids(faces.face_ids[faces.ok], cluster_of[faces.ok], earlier_person)
    return {faces.face_ids[i]: person_of_cluster[int(cluster_of[i])] for i in np.flatnonzero(faces.ok)}


def persons_incremental(faces: Faces, nbr, dist, threshold, method, previous: list, table: list, files, spec):
    """Earlier faces keep their persons; each good new face joins the nearest person centre within the
    threshold; the new faces left over are clustered among themselves. Returns ({face: person}, joined)."""
    person_of = {r["face_id"]: r["person_id"] for r in previous if r["person_id"] is not None}
    is_new = np.arange(len(faces.rows)) >= faces.earlier
    new_rows = np.flatnonzero(is_new & faces.ok)
    x = vectors_for(files, spec, {faces.face_ids[i]: i for i in new_rows}, len(faces.rows))
    with_centre = [r for r in table if r["centre"] is not None]
    centres = np.asarray([r["centre"] for r in with_centre], np.float32).reshape(-1, spec.dim)
    nearest, d = nearest_centre(x[new_rows], centres)
    d = to_distance(d, spec.metric)
    leftover = np.zeros(len(faces.rows), bool)
    joined = 0
    for row, c, dc in zip(new_rows, nearest, d):
        if len(centres) and dc <= threshold:
            person_of[faces.face_ids[row]] = with_centre[c]["person_id"]
            joined += 1
        else:
            leftover[row] = True
    cluster_of = label_faces(len(faces.rows), leftover, nbr, dist, threshold, method)
    person_of_cluster = stable_ids(faces.face_ids[leftover], cluster_of[leftover], {})
    for i in np.flatnonzero(leftover):
        person_of[faces.face_ids[i]] = person_of_cluster[int(cluster_of[i])]
    return person_of, joined


def tables_for(faces: Faces, person_of: dict, names: dict, files, spec):
    """(assignments, persons table): centres, each face's distance to its centre, representatives."""
    centres = centres_of(person_of, lambda: prepared_chunks(files, spec), spec.dim)
    to_centre = {}
    for fids, x in prepared_chunks(files, spec):
        for fid, v in zip(fids, x):
            pid = person_of.get(fid)
            if pid is not None and fid not in to_centre:
                to_centre[fid] = float(to_distance(np.linalg.norm(v - centres[pid][0]), spec.metric))
    assignments = []
    for r in faces.rows:
        pid = person_of.get(r["face_id"])
        status = LOW_QUALITY if pid is None else (SINGLETON if centres[pid][1] == 1 else MEMBER)
        assignments.append({**{c: r[c] for c in META}, "person_id": pid, "status": status,
                            "distance": to_centre.get(r["face_id"])})
    reps = representative([a["person_id"] for a in assignments], [a["face_id"] for a in assignments],
                          [np.inf if a["distance"] is None else a["distance"] for a in assignments],
                          [True] * len(assignments))
    by_face = {a["face_id"]: a for a in assignments}
    table = []
    for pid, (centre, size) in sorted(centres.items(), key=lambda kv: (-kv[1][1], kv[0])):
        rep = by_face[reps[pid]]
        table.append({"person_id": pid, "size": int(size), "name": names.get(pid),
                      "status": "person" if size > 1 else SINGLETON, "representative_face_id": rep["face_id"],
                      "representative_image_path": rep["image_path"], "rep_box_x": rep["box_x"],
                      "rep_box_y": rep["box_y"], "rep_box_w": rep["box_w"], "rep_box_h": rep["box_h"],
                      "centre": centre.tolist()})
    return assignments, table


def resolve(output, shards_dir, files, spec, incremental, previous, state, threshold=None, pairs=None,
            method="cw", k=16, limits: Limits = None) -> dict:
    """The graph the workers wrote -> persons: assignments, persons table, names carried over."""
    limits = limits or Limits()
    faces = gather_faces(output, previous, incremental)
    incremental = bool(incremental and previous)
    t, source = fit_threshold(files, spec, given=threshold, pairs=pairs,
                              carried=state.get("threshold") if incremental else None)
    nbr, dist = padded_lists(faces.graph, faces.face_ids, faces.earlier, len(faces.rows), k)
    earlier_table = read_table(output)
    names = {r["person_id"]: r["name"] for r in earlier_table if r["name"]}
    joined = 0
    if incremental:
        person_of, joined = persons_incremental(faces, nbr, dist, t, method, previous, earlier_table, files, spec)
    else:
        person_of = persons_from_scratch(faces, nbr, dist, t, method, previous)
    names.update(replay_edits(faces.face_ids, person_of, read_edits(output)))
    assignments, table = tables_for(faces, person_of, names, files, spec)
    write_outputs(output, assignments, table, spec.dim)
    clear(graph_folder(output))
    return {"faces": len(assignments), "persons": sum(1 for r in table if r["size"] > 1),
            "singletons": sum(1 for r in table if r["size"] == 1),
            "low_quality": sum(1 for a in assignments if a["status"] == LOW_QUALITY),
            "named": sum(1 for r in table if r["name"]), "new_faces": faces.new_faces, "joined": joined,
            "threshold": t, "threshold_from": source, "method": method, "k": k,
            "limits": dataclasses.asdict(limits), "incremental": incremental}
