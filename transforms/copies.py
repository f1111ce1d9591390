"""The copies of faces that facebeam writes outside its stores, recorded where `forget` will look.

A `query` output (its results and its HTML report) copies faces of the store it searched. A `cluster`
output (its persons tables and its contact sheet) copies faces of the collection. Every collection (shards
folder) loaded into a store holds the same faces. Each is recorded in the metadata of the store it came
from (`FaceStore.copies`): what it is, where it is, and what rebuilds its page. `forget` erases from every
copy its stores record (erase_copies.py), and follows the collections to their own stores. A copy the
user moved or deleted is dropped from the record.
"""
from __future__ import annotations

import json
import logging
import time

from apache_beam.io.filesystems import FileSystems

from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)
QUERY, CLUSTER, COLLECTION = "query", "cluster", "collection"


def remember(store, copy: dict, refresh: bool = True) -> bool:
    """Record an output made from `store` (replacing an earlier record of the same folder; kept as it is unless
    `refresh`), and drop records of outputs that are gone. A store that refuses the write (read-only credentials)
    is named in a warning: the output is still written, but `forget` will not find it."""
    stamped = {**copy, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def change(recorded: list) -> list:
        if not refresh and any(c["output"] == copy["output"] for c in recorded):
            return recorded
        return [c for c in recorded if c["output"] != copy["output"] and FileSystems.exists(c["output"])] + [stamped]

    try:
        store.update_copies(change)  # one atomic step: two jobs recording at once both land
        return True
    except UserError as e:
        log.warning("%s: could not record the %s output %s, so `facebeam forget` will not reach it: %s",
                    store.describe(), copy["kind"], copy["output"], e)
        return False


def query_copy(output: str, fmt: str, report, spec, threshold: float) -> dict:
    return {"kind": QUERY, "output": output, "format": fmt, "page": report, "spec": json.loads(spec.to_json()),
            "threshold": threshold}


def cluster_copy(output: str, shards_dir: str, contact_sheet, sheet_persons: int) -> dict:
    return {"kind": CLUSTER, "output": output, "shards": shards_dir, "page": contact_sheet,
            "sheet_persons": sheet_persons}


def collection_copy(folder: str) -> dict:
    """A shards folder loaded into the store: `forget` erases its rows too, or its next load would bring the faces
    back (the erasure itself is forget's: tombstones, and that collection's own stores and outputs)."""
    return {"kind": COLLECTION, "output": folder}


# --- query outputs -------------------------------------------------------------------------------
def result_files(output: str) -> list:
    return sorted(m.path for m in FileSystems.match([FileSystems.join(output, "results", "*")])[0].metadata_list)


def read_rows(path: str, fmt: str) -> list:
    import pyarrow.parquet as pq

    with FileSystems.open(path) as f:
        if fmt == "jsonl":
            return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        return pq.read_table(f).to_pylist()


def read_results(output: str, fmt: str = "parquet") -> list:
    """Every result row of a query output, by probe photo, face and rank."""
    rows = [r for path in result_files(output) for r in read_rows(path, fmt)]
    return sorted(rows, key=lambda r: (r["probe_path"], r["probe_face_index"], r["rank"]))


