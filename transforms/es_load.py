"""Loading face rows into the versioned index behind an alias: set-up, the Beam load, clean-up.

`open_target` connects (failing fast), checks the spec and readies the index before any
pipeline starts; `LoadFaces` is the Beam part (bulk writes, dead letters to Parquet);
`loading` restores refresh and replicas whatever happens in the job.
"""
from __future__ import annotations

import contextlib
import dataclasses

import apache_beam as beam
from apache_beam.io.parquetio import WriteToParquet

from facebeam.transforms import es_conn, es_index, records, shards
from facebeam.transforms.es_sink import BulkConfig, IndexFaces, dead_letter_schema
from facebeam.transforms.spec import EmbeddingSpec


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """How rows are loaded into the versioned index behind `alias`."""

    alias: str
    bulk: BulkConfig
    index_type: str = "hnsw"
    m: int = 16
    ef_construction: int = 100
    replicas: int | None = None  # after the load; None keeps what the index had
    load_replicas: int = 0


@dataclasses.dataclass
class LoadTarget:
    conn: es_conn.EsConnection
    client: object
    alias: str
    concrete: str
    replicas: int
    count: int | None = None

    def bulk(self, load: LoadConfig) -> BulkConfig:
        return dataclasses.replace(load.bulk, index=self.concrete)


def open_target(conn: es_conn.EsConnection, load: LoadConfig, spec: EmbeddingSpec) -> LoadTarget:
    """Connect (failing fast), check the spec and make the index ready for a bulk load."""
    client = conn.client()
    es_conn.check(client, conn)
    concrete, before = es_index.prepare_load(client, load.alias, spec, load.index_type, load.m, load.ef_construction,
                                             load_replicas=load.load_replicas)
    return LoadTarget(conn, client, load.alias, concrete, before if load.replicas is None else load.replicas)


@contextlib.contextmanager
def loading(target: LoadTarget):
    """Whatever happens in the job, refresh and replicas are restored; `target.count` is set after."""
    try:
        yield target
    finally:
        target.count = es_index.finish_load(target.client, target.concrete, target.replicas)


class LoadFaces(beam.PTransform):
    """Face rows -> the target index; docs that fail for good go to `<output>/index-errors/`."""

    def __init__(self, target: LoadTarget, load: LoadConfig, output_dir: str, spec: EmbeddingSpec, run_id=None):
        super().__init__()
        self._conn, self._bulk = target.conn, target.bulk(load)
        self._prefix = shards.partition(output_dir, "index-errors", run_id)
        self._schema = dead_letter_schema(records.face_schema(spec.dim))

    def expand(self, rows):
        failed = rows | "Index" >> IndexFaces(self._conn, self._bulk)
        return failed | "WriteIndexErrors" >> WriteToParquet(self._prefix, self._schema, codec="zstd",
                                                             file_name_suffix=".parquet")
