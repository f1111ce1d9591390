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
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.kinds import runner_name
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.transforms import es_load, metrics, shards, stores
from facebeam.transforms.stores import registry

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
    p.add_argument("--shards", type=options.beam_path, required=True, help="an embed/run output folder (reads DIR/embeddings/)")
    options.add_load(p, alias_required=False)  # default "faces", as query and search
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> IndexConfig:
    return IndexConfig(shards=a.shards, load=options.load_from(a), es=options.es_from(a), store=options.store_from(a),
                       beam_args=tuple(beam_args))


def run(config: IndexConfig, pipeline=None) -> dict:
    found = shards.files(config.shards)
    faces = shards.verify(found)  # every footer and row group, before anything is written
    spec = shards.spec_of(config.shards)
    store = stores.for_loading(config.store, config.es.connection, config.load.alias)
    loading = store.begin_load(spec, config.load, config.shards, shard_files=found)  # fails fast, before any file
    with jobs.lock_output(config.shards):
        return _load(config, pipeline, found, spec, store, loading, faces)


def _load(config: IndexConfig, pipeline, found, spec, store, loading, faces: int | None = None) -> dict:
    opts = pipeline_options(config.beam_args, faces=faces)
    result, elapsed, c = None, 0.0, {}
    if store.capabilities.in_pipeline:  # a Beam job reads the shards into the store
        p = create_pipeline(opts, pipeline)
        rows = (p | "ShardFiles" >> beam.Create(found)
                  | "ReadShards" >> beam.ParDo(shards.ReadShardRows())
                  | "Spread" >> beam.Reshuffle()
                  | "CountRead" >> beam.Map(metrics.counted, metrics.ROWS_READ))
        loading.attach(rows)
        with loading.running():
            result, elapsed = jobs.run(p, totals={"index": faces})
        c = metrics.read_counters(result)
    loaded = loading.finish(result)  # other stores read the shards here, no Beam job
    summary = {"rows_read": c.get(metrics.ROWS_READ, 0), **loaded, "index": loaded.get("index", store.name),
               "spec_id": spec.spec_id, "retried": loaded.get("retried", 0)}
    if store.capabilities.in_pipeline:
        summary.update(runner=runner_name(opts), elapsed_s=round(elapsed, 3),
                       docs_per_s=round(loaded["indexed"] / elapsed, 1) if elapsed else 0.0)
    summary.update(registry.after_load(config.shards, store))
    if summary["erased_late"] or summary["replaced_late"]:  # removed after the load counted
        summary["doc_count"] = store.count()
    jobs.write_summary(FileSystems.join(config.shards, "index-summary.json"), summary)
    log.info("index done (%s): %d rows read, %d loaded, %d failed (%d retries); %s holds %d faces", summary["backend"],
             summary["rows_read"], summary["indexed"], summary["failed"], summary["retried"], store.describe(),
             summary["doc_count"])
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["failed"])


if __name__ == "__main__":
    jobs.entry(main)
