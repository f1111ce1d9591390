"""The cluster folder's files: the per-face assignments, the persons table, the state and the graph.

    DIR/persons/*.parquet   one row per face: face_id, person_id (null for low-quality faces), status, distance
    DIR/persons.parquet     one row per person: person_id, size, representative face, name, centre
    DIR/edits.jsonl         names, merges and splits, replayed on every re-cluster (persons/edits.py)
    DIR/cluster.json        threshold, method, limits, spec id and the last run's summary
    DIR/graph/*.parquet     the workers' kNN lists, while a cluster job runs
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import shards

# A face's status in the persons table.
MEMBER, SINGLETON, LOW_QUALITY = "member", "singleton", "low_quality"

ASSIGN_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("person_id", pa.string()), ("status", pa.string()),
    ("distance", pa.float32()), ("image_path", pa.string()), ("face_index", pa.int32()),
    ("box_x", pa.int32()), ("box_y", pa.int32()), ("box_w", pa.int32()), ("box_h", pa.int32()),
    ("confidence", pa.float32()), ("sharpness", pa.float32()),
])
# The face columns a cluster job reads from the shards, and those each graph row carries on.
FACE_COLUMNS = ("face_id", "image_path", "face_index", "box_x", "box_y", "box_w", "box_h", "confidence", "embedding")
META = ("face_id", "image_path", "face_index", "box_x", "box_y", "box_w", "box_h", "confidence", "sharpness")
GRAPH_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("image_path", pa.string()), ("face_index", pa.int32()),
    ("box_x", pa.int32()), ("box_y", pa.int32()), ("box_w", pa.int32()), ("box_h", pa.int32()),
    ("confidence", pa.float32()), ("sharpness", pa.float32()), ("ok", pa.bool_()),
    ("neighbours", pa.list_(pa.string())), ("distances", pa.list_(pa.float32())),
    ("embedding", pa.list_(pa.float32())),  # carried only by incremental runs: the launcher reads no shard vector
])


def table_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("person_id", pa.string()), ("size", pa.int64()), ("name", pa.string()), ("status", pa.string()),
        ("representative_face_id", pa.string()), ("representative_image_path", pa.string()),
        ("rep_box_x", pa.int32()), ("rep_box_y", pa.int32()), ("rep_box_w", pa.int32()), ("rep_box_h", pa.int32()),
        ("centre", pa.list_(pa.float32(), dim)),
    ])


def join(*parts) -> str:
    return FileSystems.join(*parts)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def clear(folder: str) -> None:
    if FileSystems.exists(folder):
        FileSystems.delete([folder])


def write_parquet(path: str, table) -> None:
    with FileSystems.create(path) as f:
        pq.write_table(table, f, compression="zstd")


def read_parquet(path: str):
    with FileSystems.open(path) as f:
        return pq.read_table(f)


def matching(pattern: str) -> list:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def assignment_files(folder: str) -> list:
    return matching(join(folder, "persons", "*.parquet"))


def read_assignments(folder: str) -> list:
    return [r for p in assignment_files(folder) for r in read_parquet(p).to_pylist()]


def read_table(folder: str) -> list:
    path = join(folder, "persons.parquet")
    return read_parquet(path).to_pylist() if exists(path) else []


def write_outputs(folder: str, assignments: list, persons: list, dim: int, rows_per_file: int = 500_000) -> None:
    """Replace the assignments and the persons table (written beside, then the old files removed)."""
    old = assignment_files(folder)
    tag = hashlib.sha256(repr((len(assignments), old)).encode()).hexdigest()[:8]
    new = []
    for i in range(0, max(len(assignments), 1), rows_per_file):
        path = join(folder, "persons", f"part-{tag}-{i // rows_per_file:05d}.parquet")
        write_parquet(path, pa.Table.from_pylist(assignments[i:i + rows_per_file], schema=ASSIGN_SCHEMA))
        new.append(path)
    write_parquet(join(folder, "persons.parquet"), pa.Table.from_pylist(persons, schema=table_schema(dim)))
    stale = [p for p in old if p not in new]
    if stale:
        FileSystems.delete(stale)


def lookup(folder: str) -> dict:
    """{face_id: (person_id, name)} from a cluster folder: what query results carry."""
    names = {r["person_id"]: r["name"] for r in read_table(folder)}
    return {r["face_id"]: (r["person_id"], names.get(r["person_id"])) for r in read_assignments(folder)
            if r["person_id"] is not None}


def annotate(hits_per_probe, found: dict) -> None:
    """Give each hit its face's `person_id` and `person` (the name) from `lookup()`, in place."""
    for hits in hits_per_probe:
        for h in hits:
            h["person_id"], h["person"] = found.get(h["face_id"], (None, None))


def read_state(folder: str) -> dict:
    path = join(folder, "cluster.json")
    return shards.read_json(path) if exists(path) else {}


def write_state(folder: str, state: dict) -> None:
    shards.write_json(join(folder, "cluster.json"), state)


def graph_folder(folder: str) -> str:
    return join(folder, "graph")


def read_graph(folder: str) -> pa.Table:
    """Every graph file the workers wrote into `folder`, as one table."""
    tables = [read_parquet(path) for path in matching(join(folder, "*.parquet"))]
    return pa.concat_tables(tables) if tables else GRAPH_SCHEMA.empty_table()


def scan(files, columns, chunk_rows: int = 65536):
    """Record batches of the given columns over every shard, chunk by chunk."""
    for path in files:
        with FileSystems.open(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=chunk_rows, columns=list(columns))


def row_count(files) -> int:
    """Face rows over every shard, from the Parquet footers alone (a bar's total)."""
    total = 0
    for path in files:
        with FileSystems.open(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def vectors_of(batch, dim: int) -> np.ndarray:
    """A record batch's `embedding` column as an N x dim float32 array."""
    return np.asarray(batch.column("embedding").values, dtype=np.float32).reshape(batch.num_rows, dim)
