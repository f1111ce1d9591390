"""Forgotten images out of the outputs made from a store (copies.py records them): `forget`'s part beyond the stores.

- query results lose the rows of forgotten images, as probe or as hit; the ranks close up and the photo's
  labels are decided again from the hits that are left;
- a cluster folder loses those faces; their persons shrink (or go), with centres and representatives
  computed again from the faces left, and the edit log forgets their ids;
- a report or contact sheet is rendered again from what is left, or removed when it cannot be.
"""
from __future__ import annotations

import json
import logging

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms.copies import CLUSTER, QUERY, read_results, read_rows, result_files
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


def erase(copy: dict, shas: set, face_ids: set, dry_run: bool = False) -> dict:
    """Those images' faces out of one recorded query or cluster output: {'rows': n removed, 'what': their words,
    'page': 'rendered again' | 'removed' | None}, or {'gone': True} when the output is no longer there."""
    if not FileSystems.exists(copy["output"]):
        return {"gone": True}
    if copy["kind"] == QUERY:
        n, what = _erase_results(copy["output"], copy.get("format") or "parquet", shas, copy["threshold"],
                                 dry_run), "result row(s)"
    elif copy["kind"] == CLUSTER:
        n, what = _erase_persons(copy["output"], copy["shards"], face_ids, dry_run), "face(s) from its persons"
    else:
        raise UserError(f"unknown copy kind {copy['kind']!r} recorded for {copy['output']}")
    page = None
    if n and copy.get("page") and FileSystems.exists(copy["page"]):
        page = "would render again" if dry_run else _render_again(copy)
    return {"rows": n, "what": what, "page": page}


def _write_rows(path: str, rows: list, fmt: str) -> None:
    """Beside, then renamed over the file: a failure leaves the old file whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facebeam.transforms import records

    tmp = path + ".forget-tmp"
    with FileSystems.create(tmp) as f:
        if fmt == "jsonl":
            f.write("".join(json.dumps(r) + "\n" for r in rows).encode())
        else:
            pq.write_table(pa.Table.from_pylist(rows, schema=records.RESULT_SCHEMA), f, compression="zstd")
    FileSystems.rename([tmp], [path])


def _erase_results(output: str, fmt: str, shas: set, threshold: float, dry_run: bool) -> int:
    from facebeam.transforms import labels

    removed = 0
    for path in result_files(output):
        rows = read_rows(path, fmt)
        kept = [r for r in rows if r["probe_sha256"] not in shas and r["hit_image_sha256"] not in shas]
        if len(kept) == len(rows):
            continue
        removed += len(rows) - len(kept)
        if dry_run:
            continue
        touched = {r["probe_path"] for r in rows if r["hit_image_sha256"] in shas}
        by_photo = {}
        for r in kept:
            by_photo.setdefault(r["probe_path"], []).append(r)
        for photo in touched & set(by_photo):
            faces = {}
            for r in sorted(by_photo[photo], key=lambda r: (r["probe_face_index"], r["rank"])):
                faces.setdefault(r["probe_face_index"], []).append(r)
            decided = labels.photo_labels([(i, [{"label": h["hit_label"], "distance": h["distance"]} for h in hits])
                                           for i, hits in faces.items()], threshold)
            for i, hits in faces.items():
                for rank, h in enumerate(hits, 1):
                    h["rank"], h["top_label"] = rank, decided[i]
        _write_rows(path, kept, fmt)
    return removed


# --- cluster outputs -----------------------------------------------------------------------------
def _erase_persons(output: str, shards_dir: str, face_ids: set, dry_run: bool) -> int:
    from facebeam.transforms import persons

    assignments = persons.read_assignments(output)
    kept = [a for a in assignments if a["face_id"] not in face_ids]
    if len(kept) == len(assignments) or dry_run:
        return len(assignments) - len(kept)
    persons.drop_faces(output, kept, face_ids, shards_dir)
    return len(assignments) - len(kept)


def _render_again(copy: dict) -> str:
    """The copy's page from what is left; removed when that fails (a photo of it moved): an erased face must
    not stay on a page."""
    try:
        if copy["kind"] == QUERY:
            from facebeam.transforms import report
            from facebeam.transforms.spec import EmbeddingSpec

            report.write(copy["page"], read_results(copy["output"], copy.get("format") or "parquet"),
                         EmbeddingSpec.from_dict(copy["spec"]), copy["threshold"])
        else:
            from facebeam.transforms import contact_sheet

            contact_sheet.write(copy["page"], copy["output"], max_persons=copy["sheet_persons"])
        return "rendered again"
    except (OSError, ValueError) as e:
        FileSystems.delete([copy["page"]])
        log.warning("%s could not be rendered again (%s): removed", copy["page"], e)
        return "removed"
