"""facebeam run: embed and index in one pipeline (the Parquet shards are still written).

    facebeam run --input PATTERN [PATTERN ...] --output DIR --index NAME [embed and index options] [Beam flags]
"""
import dataclasses
import logging
import sys

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import es_load, shards
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
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam run", __doc__)
    options.add_inputs(p)
    options.add_incremental(p)
    p.add_argument("--output", required=True, help="output folder for the shards (any Beam filesystem)")
    options.add_spec(p)
    options.add_load(p)
    return p


def configure(a: options.Args, beam_args=()) -> RunConfig:
    return RunConfig(inputs=options.inputs_from(a), output=a.output, load=options.load_from(a), spec=options.spec_from(a),
                     incremental=a.incremental, es=options.es_from(a), beam_args=tuple(beam_args))


def run(config: RunConfig, pipeline=None) -> dict:
    jobs.preflight(config.inputs, config.spec)
    with jobs.lock_output(config.output):  # a second job into the same folder refuses at once
        return _run(config, pipeline)


def _run(config: RunConfig, pipeline) -> dict:
    spec = config.spec
    target = es_load.open_target(config.es.connection(), config.load, spec)
    opts = runners.pipeline_options(config.beam_args)
    run_id, skip = jobs.plan_backfill(config.output, spec, config.incremental, config.inputs.max_file_bytes)
    p = runners.create_pipeline(opts, pipeline)
    out = p | "Embed" >> EmbedInputs(config.inputs, spec, skip)
    out | "Write" >> shards.WriteShards(config.output, spec, run_id)
    load = es_load.LoadFaces(target, config.load, config.output, spec, run_id)
    out["faces"] | "Load" >> load
    with es_load.loading(target):
        result, elapsed = jobs.run(p)
    if not run_id:  # a plain run re-sent the flat shards: older flat/load= dead letters are stale
        shards.clear_index_errors(config.output, keep=load.errors_dir, runs_too=False)
    summary = jobs.embed_summary(result, elapsed, spec, opts)
    summary.update(jobs.load_summary(result, target, load.errors_dir))
    jobs.finish_run(config.output, run_id, summary)
    log.info("run done: %d images, %d embedded, %d faces, failed %s; %d docs indexed into %s (%d docs)%s",
             summary["images_seen"], summary["images_embedded"], summary["faces"], summary["images_failed"] or "none",
             summary["docs_indexed"], target.concrete, target.count, jobs.skipped_note(summary))
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["docs_failed"])


if __name__ == "__main__":
    jobs.entry(main)
