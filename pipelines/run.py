"""facebeam run: embed and index in one pipeline (the Parquet shards are still written).

    facebeam run --input PATTERN [PATTERN ...] --output DIR --index NAME [embed and index options] [Beam flags]
"""
import dataclasses
import logging
import sys

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.transforms import es_load, shards, stores
from facebeam.transforms.embed import EmbedInputs
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    inputs: Inputs
    output: str
    load: es_load.LoadConfig
    spec: EmbeddingSpec = EmbeddingSpec()
    incremental: bool = False
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam run", __doc__)
    options.add_inputs(p)
    options.add_incremental(p)
    p.add_argument("--output", required=True, help="output folder for the shards (any Beam filesystem)")
    options.add_spec(p)
    options.add_load(p, alias_required=False)  # default "faces", as query and search
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> RunConfig:
    return RunConfig(inputs=options.inputs_from(a), output=a.output, load=options.load_from(a), spec=options.spec_from(a),
                     incremental=a.incremental, es=options.es_from(a), store=options.store_from(a),
                     beam_args=tuple(beam_args))


def run(config: RunConfig, pipeline=None) -> dict:
    jobs.preflight(config.inputs, config.spec)
    with jobs.lock_output(config.output):  # a second job into the same folder refuses at once
        return _run(config, pipeline)


def _run(config: RunConfig, pipeline) -> dict:
    spec = config.spec
    store = stores.resolve(config.store, config.es.connection, config.load.alias)
    if store.kind != "es":
        return _run_into_store(config, pipeline, store)
    target = es_load.open_target(config.es.connection(), config.load, spec)
    opts = pipeline_options(config.beam_args)
    run_id, skip = jobs.plan_backfill(config.output, spec, config.incremental, config.inputs.max_file_bytes)
    p = create_pipeline(opts, pipeline)
    out = p | "Embed" >> EmbedInputs(config.inputs, spec, skip)
    out | "Write" >> shards.WriteShards(config.output, spec, run_id)
    load = es_load.LoadFaces(target, config.load, config.output, spec, run_id)
    out["faces"] | "Load" >> load
    with es_load.loading(target):
        result, elapsed = jobs.run(p)
    if not run_id:  # a plain run re-sent the flat shards: older flat/load= dead letters are stale
        shards.clear_index_errors(config.output, keep=load.errors_dir, runs_too=False)
    summary = jobs.embed_summary(result, elapsed, spec, opts)
    summary.update(jobs.load_summary(result, target, load.errors_dir), backend="elasticsearch")
    jobs.finish_run(config.output, run_id, summary)
    log.info("run done: %d images, %d embedded, %d faces, failed %s; %d docs indexed into %s (%d docs)%s",
             summary["images_seen"], summary["images_embedded"], summary["faces"], summary["images_failed"] or "none",
             summary["docs_indexed"], target.concrete, target.count, jobs.skipped_note(summary))
    return summary



def _run_into_store(config: RunConfig, pipeline, store) -> dict:
    """Embed and write the shards, then add the new faces to the embedded index or Redis (no cluster needed)."""
    spec = config.spec
    stores.check(store, spec)  # reachable and of this spec, before anything is embedded
    opts = pipeline_options(config.beam_args)
    run_id, skip = jobs.plan_backfill(config.output, spec, config.incremental, config.inputs.max_file_bytes)
    p = create_pipeline(opts, pipeline)
    out = p | "Embed" >> EmbedInputs(config.inputs, spec, skip)
    out | "Write" >> shards.WriteShards(config.output, spec, run_id)
    result, elapsed = jobs.run(p)
    summary = jobs.embed_summary(result, elapsed, spec, opts)
    loaded = stores.load_shards(store, stores.run_shards(store, config.output, run_id), spec, config.load.m,
                                config.load.ef_construction, config.load.bulk.chunk_docs, config.load.bulk.max_retries)
    summary.update(backend=loaded["backend"], store=loaded["store"], index=store.name, doc_count=loaded["doc_count"],
                   docs_indexed=loaded["indexed"], docs_failed=0, docs_retried=loaded.get("retried", 0),
                   **{k: loaded[k] for k in ("ann_dir", "library", "bytes_on_disk") if k in loaded})
    jobs.finish_run(config.output, run_id, summary)
    log.info("run done: %d images, %d embedded, %d faces, failed %s; %d faces added to the %s (%d in all)%s",
             summary["images_seen"], summary["images_embedded"], summary["faces"], summary["images_failed"] or "none",
             summary["docs_indexed"], store.describe(), summary["doc_count"], jobs.skipped_note(summary))
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["docs_failed"])


if __name__ == "__main__":
    jobs.entry(main)
