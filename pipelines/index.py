"""facebeam index: Parquet face shards -> Elasticsearch, in chunks with retries.

    facebeam index --shards DIR --index NAME [--es-url URL] [--chunk-docs N] [--chunk-bytes B]
                   [--max-retries R] [--es-down-deadline S] [--index-type hnsw|int8_hnsw|...] [--m M]
                   [--ef-construction E] [--replicas R] [Beam flags]

Every shard is verified (footer, row groups, plausible vectors) before anything is
written; a damaged one stops the job naming the file. Writes go to a versioned index
behind the alias NAME, with refresh off and replicas at --load-replicas during the
load; both are restored afterwards. Docs that fail for good land in
DIR/index-errors/load=<id>/ with Elasticsearch's reason (the summary's `index_errors`);
older dead letters are removed once the load has finished. DIR is locked
(DIR/.facebeam.lock) while the job runs.
"""
import dataclasses
import logging
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import es_load, metrics, shards, stores

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    shards: str
    load: es_load.LoadConfig
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam index", __doc__)
    p.add_argument("--shards", required=True, help="an embed/run output folder (reads DIR/embeddings/)")
    options.add_load(p, alias_required=False)  # default "faces", as query and search
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> IndexConfig:
    return IndexConfig(shards=a.shards, load=options.load_from(a), es=options.es_from(a), store=options.store_from(a),
                       beam_args=tuple(beam_args))


def run(config: IndexConfig, pipeline=None) -> dict:
    found = shards.files(config.shards)
    shards.verify(found)  # every footer and row group, before anything is written
    spec = shards.spec_of(config.shards)
    store = stores.resolve(config.store, config.es.connection, config.load.alias)
    if store.kind != "es":  # the embedded index or Redis: loaded from the shards here, no Beam job
        return stores.index_job(store, config.shards, found, spec, config.load.m, config.load.ef_construction,
                                config.load.bulk.chunk_docs, config.load.bulk.max_retries)
    target = es_load.open_target(config.es.connection(), config.load, spec)  # fails fast, before any file is made
    with jobs.lock_output(config.shards):
        return _load(config, pipeline, found, spec, target)


def _load(config: IndexConfig, pipeline, found, spec, target) -> dict:
    opts = runners.pipeline_options(config.beam_args)
    p = runners.create_pipeline(opts, pipeline)
    load = es_load.LoadFaces(target, config.load, config.shards, spec)
    (p | "ShardFiles" >> beam.Create(found)
       | "ReadShards" >> beam.ParDo(shards.ReadShardRows())
       | "Spread" >> beam.Reshuffle()
       | "CountRead" >> beam.Map(metrics.counted, metrics.ROWS_READ)
       | "Load" >> load)
    with es_load.loading(target):
        result, elapsed = jobs.run(p)
    shards.clear_index_errors(config.shards, keep=load.errors_dir, runs_too=True)  # every shard was re-sent
    c = metrics.read_counters(result)
    summary = {"rows_read": c.get(metrics.ROWS_READ, 0), **metrics.index_counts(c), "backend": "elasticsearch",
               "index": target.alias,
               "concrete_index": target.concrete, "doc_count": target.count, "spec_id": spec.spec_id,
               "index_errors": load.errors_dir,
               "runner": runners.runner_name(opts), "elapsed_s": round(elapsed, 3),
               "docs_per_s": round(c.get(metrics.DOCS_INDEXED, 0) / elapsed, 1)}
    jobs.write_summary(FileSystems.join(config.shards, "index-summary.json"), summary)
    log.info("index done: %d rows read, %d indexed, %d failed (%d retries); %s holds %d docs",
             summary["rows_read"], summary["indexed"], summary["failed"], summary["retried"], target.concrete, target.count)
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["failed"])


if __name__ == "__main__":
    jobs.entry(main)
