"""facebeam index: Parquet face shards -> Elasticsearch, in chunks with retries.

    facebeam index --shards DIR --index NAME [--es-url URL] [--chunk-docs N] [--chunk-bytes B]
                   [--max-retries R] [--index-type hnsw|int8_hnsw|int4_hnsw|bbq_hnsw|...] [--m M]
                   [--ef-construction E] [--replicas R] [Beam flags]

Writes go to a versioned index behind the alias NAME, with refresh off and
replicas at --load-replicas during the load; both are restored afterwards.
Docs that fail for good land in DIR/index-errors/ with Elasticsearch's reason.
"""
import dataclasses
import logging
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import es_load, metrics, shards

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    shards: str
    load: es_load.LoadConfig
    es: options.EsFlags = options.EsFlags()
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam index", __doc__)
    p.add_argument("--shards", required=True, help="an embed/run output folder (reads DIR/embeddings/)")
    options.add_load(p)
    return p


def configure(a: options.Args, beam_args=()) -> IndexConfig:
    return IndexConfig(shards=a.shards, load=options.load_from(a), es=options.es_from(a), beam_args=tuple(beam_args))


def run(config: IndexConfig, pipeline=None) -> dict:
    spec = shards.spec_of(config.shards)
    target = es_load.open_target(config.es.connection(), config.load, spec)
    opts = runners.pipeline_options(config.beam_args)
    p = runners.create_pipeline(opts, pipeline)
    (p | "ShardFiles" >> beam.Create(shards.files(config.shards))
       | "ReadShards" >> ReadAllFromParquet()
       | "CountRead" >> beam.Map(metrics.counted, metrics.ROWS_READ)
       | "Load" >> es_load.LoadFaces(target, config.load, config.shards, spec))
    with es_load.loading(target):
        result, elapsed = jobs.run(p)
    c = metrics.read_counters(result)
    summary = {"rows_read": c.get(metrics.ROWS_READ, 0), **metrics.index_counts(c), "index": target.alias,
               "concrete_index": target.concrete, "doc_count": target.count, "spec_id": spec.spec_id,
               "runner": runners.runner_name(opts), "elapsed_s": round(elapsed, 3),
               "docs_per_s": round(c.get(metrics.DOCS_INDEXED, 0) / elapsed, 1)}
    shards.write_json(FileSystems.join(config.shards, "index-summary.json"), summary)
    log.info("index done: %d rows read, %d indexed, %d failed (%d retries); %s holds %d docs",
             summary["rows_read"], summary["indexed"], summary["failed"], summary["retried"], target.concrete, target.count)
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["failed"])


if __name__ == "__main__":
    jobs.entry(main)
