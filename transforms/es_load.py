"""Loading face rows into the versioned index behind an alias: set-up, the Beam load, clean-up.

`open_target` connects (failing fast), checks the spec and readies the index before any
pipeline starts; `LoadFaces` is the Beam part (bulk writes, dead letters to Parquet, one
folder per load: see `shards.index_errors`); `loading` restores the settings whatever happens
in the job, and a new index gets its graph at the end (`es_index.LoadTuning`). When the cluster
refuses that too (401/403, or it is down), the job does not end in a traceback: the error says
which settings call restores the index. A job that failed on a user error (a cluster that stays
down, changed credentials) keeps its own message, with the restore instruction added.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from facebeam.transforms import es_conn, es_index, records, shards
from facebeam.transforms.errors import UserError
from facebeam.transforms.es_sink import BulkConfig, IndexFaces, dead_letter_schema
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """How rows are loaded into the versioned index behind `alias`."""

    alias: str
    bulk: BulkConfig
    index_type: str = es_index.DEFAULT_INDEX_TYPE
    m: int = 16
    ef_construction: int = 100
    replicas: int | None = None  # after the load; None keeps what the index had
    load_replicas: int = 0
    tuning: es_index.LoadTuning = es_index.DEFAULT_TUNING  # the measured best load (bench index)


@dataclasses.dataclass
class LoadTarget:
    conn: es_conn.EsConnection
    client: object
    alias: str
    concrete: str
    replicas: int
    count: int | None = None
    plan: es_index.LoadPlan | None = None  # what the end of the load does; None: restore the settings only

    def bulk(self, load: LoadConfig) -> BulkConfig:
        return dataclasses.replace(load.bulk, index=self.concrete)


def open_target(conn: es_conn.EsConnection, load: LoadConfig, spec: EmbeddingSpec) -> LoadTarget:
    """Connect (failing fast), check the spec and make the index ready for a bulk load."""
    client = conn.client()
    es_conn.check(client, conn)
    plan = es_index.plan_load(client, load.alias, spec, load.index_type, load.m, load.ef_construction,
                              load_replicas=load.load_replicas, tuning=load.tuning, replicas=load.replicas)
    return LoadTarget(conn, client, load.alias, plan.concrete, plan.replicas, plan=plan)


def finish(target: LoadTarget, completed: bool = True) -> int:
    """Settings restored (and, for a new index, the vector switched and merged: `es_index.finish_plan`)."""
    plan = target.plan or es_index.LoadPlan(target.concrete, target.replicas)
    return es_index.finish_plan(target.client, plan, completed)


@contextlib.contextmanager
def loading(target: LoadTarget):
    """Whatever happens in the job, refresh and replicas are restored; `target.count` is set after.

    A failed restore is a `RestoreFailed` naming the call to run; when the job itself failed, its
    error wins (a user error gets the restore instruction added; a bug keeps its traceback and the
    instruction is logged).
    """
    try:
        yield target
    except BaseException as failure:
        try:
            target.count = finish(target, completed=False)
        except es_index.RestoreFailed as restore:
            if isinstance(failure, UserError):
                raise _with_note(failure, f"also, {restore}") from None
            log.error("%s", restore)
        except Exception as other:  # noqa: BLE001 - the job's own error is the one to show
            log.error("after the failed load, finishing index %s failed too: %s: %s",
                      target.concrete, type(other).__name__, other)
        raise
    target.count = finish(target)


def _with_note(error: UserError, note: str) -> UserError:
    try:
        return type(error)(f"{error}; {note}")
    except TypeError:
        return UserError(f"{error}; {note}")


class LoadFaces(beam.PTransform):
    """Face rows -> the target index; docs that fail for good go to `self.errors_dir`.

    That is `<output>/index-errors/run=<run_id>/` for an incremental run, else a new
    `<output>/index-errors/load=<id>/` (or `errors_dir` when given).
    """

    def __init__(self, target: LoadTarget, load: LoadConfig, output_dir: str, spec: EmbeddingSpec, run_id=None,
                 errors_dir: str | None = None):
        super().__init__()
        self._conn, self._bulk = target.conn, target.bulk(load)
        self.errors_dir = errors_dir or shards.index_errors(output_dir, run_id)
        self._prefix = FileSystems.join(self.errors_dir, "part")
        self._schema = dead_letter_schema(records.face_schema(spec.dim))

    def expand(self, rows):
        failed = rows | "Index" >> IndexFaces(self._conn, self._bulk)
        return failed | "WriteIndexErrors" >> WriteToParquet(self._prefix, self._schema, codec="zstd",
                                                             file_name_suffix=".parquet")
