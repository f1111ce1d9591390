"""facebeam index: Parquet face shards -> Elasticsearch, in chunks with retries.

    facebeam index --shards DIR --index NAME [--es-url URL] [--chunk-docs N] [--chunk-bytes B]
                   [--max-retries R] [--index-type hnsw|int8_hnsw|int4_hnsw|bbq_hnsw|...] [--m M]
                   [--ef-construction E] [--replicas R] [Beam flags]

Writes go to a versioned index behind the alias NAME, with refresh off and
replicas at --load-replicas during the load; both are restored afterwards.
Docs that fail for good land in DIR/index-errors/ with Elasticsearch's reason.
"""
import argparse
import contextlib
import dataclasses
import logging
import sys

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet, WriteToParquet

from facebeam.pipelines import jobs
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import es_conn
from facebeam.transforms import es_index
from facebeam.transforms import records
from facebeam.transforms import shards
from facebeam.transforms.es_sink import BulkConfig, IndexFaces, dead_letter_schema
from facebeam.transforms.spec import EmbeddingSpec, SpecError

log = logging.getLogger(__name__)


def add_index_args(parser) -> None:
    parser.add_argument("--index", required=True, help="alias name; the concrete index is versioned behind it")
    d = BulkConfig.__dataclass_fields__
    g = parser.add_argument_group("bulk loading")
    g.add_argument("--chunk-docs", type=int, default=d["chunk_docs"].default)
    g.add_argument("--chunk-bytes", type=int, default=d["chunk_bytes"].default)
    g.add_argument("--max-retries", type=int, default=d["max_retries"].default)
    g.add_argument("--initial-backoff", type=float, default=d["initial_backoff_s"].default)
    g.add_argument("--index-type", default="hnsw", choices=es_index.INDEX_TYPES)
    g.add_argument("--m", type=int, default=16, help="HNSW graph degree")
    g.add_argument("--ef-construction", type=int, default=100)
    g.add_argument("--replicas", type=int, default=None, help="replicas after the load (default: as before)")
    g.add_argument("--load-replicas", type=int, default=0, help="replicas during the load (default 0)")
    es_conn.add_es_args(parser)


def bulk_config(ns, concrete: str) -> BulkConfig:
    return BulkConfig(index=concrete, chunk_docs=ns.chunk_docs, chunk_bytes=ns.chunk_bytes,
                      max_retries=ns.max_retries, initial_backoff_s=ns.initial_backoff)


def shards_spec(folder: str) -> EmbeddingSpec:
    """The one spec all shards share; raises SpecError if they mix specs or there are none."""
    files = shards.files(folder)
    if not files:
        raise ValueError(f"no Parquet shards under {FileSystems.join(folder, 'embeddings')}")
    specs = {}
    for path in files:
        with FileSystems.open(path) as f:
            table = pq.read_table(f, columns=["spec_id", "spec"])
        for spec_id, text in set(zip(table.column("spec_id").to_pylist(), table.column("spec").to_pylist())):
            specs[spec_id] = text
    if len(specs) > 1:
        raise SpecError(f"shards under {folder} mix {len(specs)} embedding specs: {sorted(specs)}")
    if not specs:
        raise ValueError(f"the shards under {folder} hold no faces")
    return EmbeddingSpec.from_json(next(iter(specs.values())))


@dataclasses.dataclass
class Target:
    conn: object
    client: object
    alias: str
    concrete: str
    replicas: int


def open_target(ns, spec: EmbeddingSpec) -> Target:
    """Connect (failing fast), check the spec and make the index ready, before any pipeline starts."""
    conn = es_conn.from_args(ns)
    client = conn.client()
    es_conn.check(client, conn)
    concrete, before = es_index.prepare_load(client, ns.index, spec, ns.index_type, ns.m, ns.ef_construction,
                                             load_replicas=ns.load_replicas)
    return Target(conn, client, ns.index, concrete, before if ns.replicas is None else ns.replicas)


@contextlib.contextmanager
def loading(target: Target):
    """Whatever happens in the job, refresh and replicas are restored."""
    try:
        yield
    finally:
        target.count = es_index.finish_load(target.client, target.concrete, target.replicas)


def index_rows(rows, target: Target, ns, output_dir: str, spec: EmbeddingSpec, run_id=None):
    failed = rows | "Index" >> IndexFaces(target.conn, bulk_config(ns, target.concrete))
    failed | "WriteIndexErrors" >> WriteToParquet(
        shards.partition(output_dir, "index-errors", run_id), dead_letter_schema(records.face_schema(spec.dim)),
        codec="zstd", file_name_suffix=".parquet")


def index_counts(c: dict) -> dict:
    return {"indexed": c.get("docs_indexed", 0), "failed": c.get("docs_failed", 0), "retried": c.get("docs_retried", 0)}


def run(argv=None, test_pipeline=None) -> dict:
    parser = argparse.ArgumentParser(prog="facebeam index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="an embed/run output folder (reads DIR/embeddings/)")
    add_index_args(parser)
    ns, beam_args = jobs.parse(parser, argv)
    spec = shards_spec(ns.shards)
    target = open_target(ns, spec)
    opts = runners.pipeline_options(beam_args)
    p = runners.create_pipeline(opts, test_pipeline)
    rows = (p | "ShardFiles" >> beam.Create(shards.files(ns.shards))
              | "ReadShards" >> ReadAllFromParquet()
              | "CountRead" >> beam.Map(jobs.counted, "rows_read"))
    index_rows(rows, target, ns, ns.shards, spec)
    with loading(target):
        result, elapsed = jobs.run(p)
    c = jobs.counters(result)
    summary = {"rows_read": c.get("rows_read", 0), **index_counts(c), "index": ns.index, "concrete_index": target.concrete,
               "doc_count": target.count, "spec_id": spec.spec_id, "runner": runners.runner_name(opts),
               "elapsed_s": round(elapsed, 3), "docs_per_s": round(c.get("docs_indexed", 0) / elapsed, 1)}
    jobs.write_json(FileSystems.join(ns.shards, "index-summary.json"), summary)
    log.info("index done: %d rows read, %d indexed, %d failed (%d retries); %s holds %d docs",
             summary["rows_read"], summary["indexed"], summary["failed"], summary["retried"], target.concrete, target.count)
    return summary


def main(argv=None) -> int:
    return jobs.cli(run, argv, failed=lambda s: s["failed"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
