"""Persons into the search index: a named person's name onto its faces' documents."""
from __future__ import annotations

from facebeam.transforms import es_index
from facebeam.transforms.persons.tables import read_assignments, read_table


def check_index(conn, alias: str, spec) -> None:
    es_index.open_alias(conn, alias, spec)[0].close()


def es_set_person(client, index: str, face_ids, name, chunk: int = 1000) -> int:
    """Bulk `update` ops by face_id (the document _id): the person's name goes into the `label` field."""
    done = 0
    ids = list(face_ids)
    for i in range(0, len(ids), chunk):
        ops = []
        for fid in ids[i:i + chunk]:
            ops += [{"update": {"_index": index, "_id": fid}}, {"doc": {"label": name}}]
        resp = client.bulk(operations=ops, refresh=False).body
        for item in resp["items"]:
            if item["update"].get("status", 500) < 300:
                done += 1
            elif item["update"].get("status") != 404:
                raise RuntimeError(f"update of {item['update'].get('_id')} failed: {item['update'].get('error')}")
    client.indices.refresh(index=index)
    return done


def push_names(conn, alias: str, folder: str) -> int:
    """Every named person's name onto its faces' documents (bulk updates by face id)."""
    named = {r["person_id"]: r["name"] for r in read_table(folder) if r["name"]}
    if not named:
        return 0
    faces = {}
    for r in read_assignments(folder):
        if r["person_id"] in named:
            faces.setdefault(r["person_id"], []).append(r["face_id"])
    client = conn.client()
    try:
        return sum(es_set_person(client, alias, fids, named[pid]) for pid, fids in faces.items())
    finally:
        client.close()
