"""The launcher's part of a cluster job: the workers' graph -> persons, with ids and names carried over.

Steps: gather the faces (the earlier clustering's, when incremental, then the graph's; one row per face
id), fit the threshold, give every good face a person (join the nearest earlier person, or cluster),
replay the edit log, then compute centres, representatives and the tables.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facebeam.transforms.knn import prepare, to_distance
from facebeam.transforms.persons.clustering import DEFAULT_METHOD, centres_of, join_by_neighbours, label_faces, representative
from facebeam.transforms.persons.edits import read_edits, replay_edits, replay_on_groups
from facebeam.transforms.persons.graph import padded_lists
from facebeam.transforms.persons.ids import majority, stable_ids
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
    graph = graph.take(pc.sort_indices(graph, [("face_id", "ascending"), ("image_path", "ascending")]))
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


def new_vectors(faces: Faces, spec) -> np.ndarray:
    """The prepared vectors the workers carried in the graph rows (incremental runs), one per new face."""
    if "embedding" not in faces.graph.column_names or faces.graph.num_rows == 0:
        return np.zeros((faces.graph.num_rows, spec.dim), np.float32)
    col = faces.graph.column("embedding").combine_chunks()
    x = np.zeros((faces.graph.num_rows, spec.dim), np.float32)
    have = np.asarray(col.is_valid().to_numpy(zero_copy_only=False))
    if have.any():
        x[have] = prepare(np.asarray(col.filter(pa.array(have)).values.to_numpy(zero_copy_only=False),
                                     np.float32).reshape(-1, spec.dim), spec.metric)
    return x


def persons_from_scratch(faces: Faces, nbr, dist, threshold, method, previous: list, edits: list):
    """Cluster every good face, apply the edit log to the groups, then carry ids over from the earlier
    clustering by overlap. Returns ({face: person}, {person: name} from the name edits)."""
    cluster_of = label_faces(len(faces.rows), faces.ok, nbr, dist, threshold, method)
    group_of = {faces.face_ids[i]: int(cluster_of[i]) for i in np.flatnonzero(faces.ok)}
    named = replay_on_groups(group_of, edits)
    earlier_person = {r["face_id"]: r["person_id"] for r in previous if r["person_id"] is not None}
    person_of_group = stable_ids(list(group_of), list(group_of.values()), earlier_person)
    person_of = {fid: person_of_group[_group_key(g)] for fid, g in group_of.items()}
    names = {}
    for named_faces, name in named:
        pid = majority(person_of, named_faces)
        if pid is not None:
            names[pid] = name
    return person_of, names


def _group_key(group):
    return group if isinstance(group, tuple) else int(group)


def persons_incremental(faces: Faces, nbr, dist, threshold, method, previous: list):
    """Earlier faces keep their persons. Each good new face joins the person its graph neighbours within
    the threshold hold most of (the index answered; no earlier vector is read); the new faces left over
    are clustered among themselves. Returns ({face: person}, joined)."""
    person_of = {r["face_id"]: r["person_id"] for r in previous if r["person_id"] is not None}
    pids = sorted(set(person_of.values()))
    code = {p: i for i, p in enumerate(pids)}
    person_code = np.asarray([code.get(person_of.get(f), -1) for f in faces.face_ids], np.int64)
    new_rows = np.flatnonzero((np.arange(len(faces.rows)) >= faces.earlier) & faces.ok)
    chosen = join_by_neighbours(nbr[new_rows], dist[new_rows], person_code, threshold)
    leftover = np.zeros(len(faces.rows), bool)
    for row, c in zip(new_rows, chosen):
        if c >= 0:
            person_of[faces.face_ids[row]] = pids[c]
        else:
            leftover[row] = True
    cluster_of = label_faces(len(faces.rows), leftover, nbr, dist, threshold, method)
    person_of_cluster = stable_ids(faces.face_ids[leftover], cluster_of[leftover], {})
    for i in np.flatnonzero(leftover):
        person_of[faces.face_ids[i]] = person_of_cluster[int(cluster_of[i])]
    return person_of, int(np.sum(chosen >= 0))


def centres_from_shards(person_of: dict, files, spec):
    """({person: (centre, size)}, {face: distance to its centre}) from every vector of the shards."""
    centres = centres_of(person_of, lambda: prepared_chunks(files, spec), spec.dim)
    to_centre = {}
    for fids, x in prepared_chunks(files, spec):
        for fid, v in zip(fids, x):
            pid = person_of.get(fid)
            if pid is not None and fid not in to_centre:
                to_centre[fid] = float(to_distance(np.linalg.norm(v - centres[pid][0]), spec.metric))
    return centres, to_centre


def centres_updated(person_of: dict, faces: Faces, previous: list, table: list, spec):
    """The same, for an incremental run: earlier centres moved by the new faces' vectors only (the sum of a
    person's faces is centre x size). Earlier faces keep the distance they had."""
    sums = {r["person_id"]: np.asarray(r["centre"], np.float64) * r["size"] for r in table if r["centre"] is not None}
    sizes = {r["person_id"]: int(r["size"]) for r in table if r["centre"] is not None}
    x = new_vectors(faces, spec)
    new_ids = faces.face_ids[faces.earlier:]
    for fid, v in zip(new_ids, x):
        pid = person_of.get(fid)
        if pid is not None:
            sums[pid] = sums.get(pid, 0.0) + v
            sizes[pid] = sizes.get(pid, 0) + 1
    counted = {}
    for pid in person_of.values():
        counted[pid] = counted.get(pid, 0) + 1
    centres = {p: ((sums[p] / sizes[p]).astype(np.float32), counted[p]) for p in counted if p in sums}
    to_centre = {r["face_id"]: r["distance"] for r in previous if r["person_id"] is not None}
    for fid, v in zip(new_ids, x):
        pid = person_of.get(fid)
        if pid is not None:
            to_centre[fid] = float(to_distance(np.linalg.norm(v - centres[pid][0]), spec.metric))
    return centres, to_centre


def tables_for(rows: list, person_of: dict, names: dict, centres: dict, to_centre: dict):
    """(assignments, persons table) from the faces' rows (META columns), each person's (centre, size) and each
    face's distance to it."""
    assignments = []
    for r in rows:
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
            method=DEFAULT_METHOD, k=16, limits: Limits = None) -> dict:
    """The graph the workers wrote -> persons: assignments, persons table, names carried over."""
    limits = limits or Limits()
    faces = gather_faces(output, previous, incremental)
    incremental = bool(incremental and previous)
    fitted = fit_threshold(files, spec, given=threshold, pairs=pairs,
                           carried=state.get("threshold") if incremental else None)
    t = fitted.value
    nbr, dist = padded_lists(faces.graph, faces.face_ids, faces.earlier, len(faces.rows), k)
    earlier_table = read_table(output)
    names = {r["person_id"]: r["name"] for r in earlier_table if r["name"]}
    joined = 0
    edits = read_edits(output)
    if incremental:
        person_of, joined = persons_incremental(faces, nbr, dist, t, method, previous)
        names.update(replay_edits(faces.face_ids, person_of, edits))
        centres, to_centre = centres_updated(person_of, faces, previous, earlier_table, spec)
    else:
        person_of, edit_names = persons_from_scratch(faces, nbr, dist, t, method, previous, edits)
        names.update(edit_names)
        centres, to_centre = centres_from_shards(person_of, files, spec)
    assignments, table = tables_for(faces.rows, person_of, names, centres, to_centre)
    write_outputs(output, assignments, table, spec.dim)
    clear(graph_folder(output))
    return {"faces": len(assignments), "persons": sum(1 for r in table if r["size"] > 1),
            "singletons": sum(1 for r in table if r["size"] == 1),
            "low_quality": sum(1 for a in assignments if a["status"] == LOW_QUALITY),
            "named": sum(1 for r in table if r["name"]), "new_faces": faces.new_faces, "joined": joined,
            "threshold": t, "threshold_from": fitted.source, "threshold_note": fitted.note, "method": method, "k": k,
            "limits": dataclasses.asdict(limits), "incremental": incremental}
