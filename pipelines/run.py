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
from facebeam.transforms.stores import registry

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
    turns: str = options.DEFAULT_TURNS
    closer: str = options.DEFAULT_CLOSER


def build_parser():
    p = options.parser("facebeam run", __doc__)
    options.add_inputs(p)
    options.add_incremental(p)
    p.add_argument("--output", required=True, help="output folder for the shards (any Beam filesystem)")
    options.add_spec(p)
    options.add_detection(p)
    options.add_load(p, alias_required=False)  # default "faces", as query and search
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> RunConfig:
    return RunConfig(inputs=options.inputs_from(a), output=a.output, load=options.load_from(a), spec=options.spec_from(a),
                     incremental=a.incremental, es=options.es_from(a), store=options.store_from(a),
                     beam_args=tuple(beam_args), turns=a.turns, closer=a.look_closer)


def run(config: RunConfig, pipeline=None) -> dict:
    photos = jobs.preflight(config.inputs, config.spec)
    with jobs.lock_output(config.output, "collection"):  # a second job into the same folder refuses at once
        return _run(config, pipeline, photos)


def _run(config: RunConfig, pipeline, photos: int | None = None) -> dict:
    """Embed and write the shards; the store loads the faces in the pipeline (Elasticsearch) or from the shards after."""
    spec = config.spec
    store = stores.for_loading(config.store, config.es.connection, config.load.alias)
    opts = pipeline_options(config.beam_args, photos=photos)
    run_id, skip = jobs.plan_backfill(config.output, spec, config.incremental, config.inputs.max_file_bytes)
    loading = store.begin_load(spec, config.load, config.output, run_id=run_id)  # reachable, this spec: fails fast
    p = create_pipeline(opts, pipeline)
    out = p | "Embed" >> EmbedInputs(config.inputs, spec, skip, turns=config.turns, closer=config.closer)
    out | "Write" >> shards.WriteShards(config.output, spec, run_id)
    loading.attach(out["faces"])
    with loading.running():
        result, elapsed = jobs.run(p, totals={"embed": photos})
    summary = jobs.embed_summary(result, elapsed, spec, opts, config.turns, config.closer)
    loaded = loading.finish(result)
    summary.update({k: v for k, v in loaded.items() if k in ("backend", "store", "index", "concrete_index",
                                                             "index_errors", "ann_dir", "library", "bytes_on_disk", "vector_type",
                                                             "skipped_present")},
                   index=loaded.get("index", store.name), doc_count=loaded["doc_count"],
                   docs_indexed=loaded["indexed"], docs_failed=loaded["failed"], docs_retried=loaded.get("retried", 0))
    summary.update(registry.after_load(config.output, store))
    summary.update(jobs.follow_changes(config.output, run_id, config.es.connection, store))
    if summary["erased_late"] or summary["replaced_late"] or summary.get("faces_replaced"):  # after the load counted
        summary["doc_count"] = store.count()
    jobs.finish_run(config.output, run_id, summary)
    log.info("run done: %d images, %d embedded, %d faces, failed %s; %d faces added to the %s (%d in all)%s",
             summary["images_seen"], summary["images_embedded"], summary["faces"], summary["images_failed"] or "none",
             summary["docs_indexed"], store.describe(), summary["doc_count"], jobs.skipped_note(summary))
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["docs_failed"])


if __name__ == "__main__":
    jobs.entry(main)
