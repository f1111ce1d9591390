"""facebeam embed: photos -> Parquet face embedding shards + error rows + summary.

    facebeam embed --input PATTERN [PATTERN ...] --output DIR [--model Dlib] [--detector dlib] [Beam flags]
    python -m facebeam.pipelines.embed ...
"""
import dataclasses
import logging
import sys

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.transforms import shards
from facebeam.transforms.embed import EmbedInputs
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    inputs: Inputs
    output: str
    spec: EmbeddingSpec = EmbeddingSpec()
    incremental: bool = False
    beam_args: tuple = ()
    turns: str = options.DEFAULT_TURNS
    closer: str = options.DEFAULT_CLOSER


def build_parser():
    p = options.parser("facebeam embed", __doc__)
    options.add_inputs(p)
    options.add_incremental(p)
    p.add_argument("--output", required=True, help="output folder (any Beam filesystem)")
    options.add_spec(p)
    options.add_detection(p)
    return p


def configure(a: options.Args, beam_args=()) -> EmbedConfig:
    return EmbedConfig(inputs=options.inputs_from(a), output=a.output, spec=options.spec_from(a),
                       incremental=a.incremental, beam_args=tuple(beam_args), turns=a.turns,
                       closer=a.look_closer)


def run(config: EmbedConfig, pipeline=None) -> dict:
    photos = jobs.preflight(config.inputs, config.spec)
    with jobs.lock_output(config.output, "collection"):  # a second job into the same folder refuses at once
        return _embed(config, pipeline, photos)


def _embed(config: EmbedConfig, pipeline, photos: int | None = None) -> dict:
    opts = pipeline_options(config.beam_args, blocking=True, photos=photos)  # its shuffles carry paths and file names
    run_id, skip = jobs.plan_backfill(config.output, config.spec, config.incremental, config.inputs.max_file_bytes)
    p = create_pipeline(opts, pipeline)
    (p | "Embed" >> EmbedInputs(config.inputs, config.spec, skip, turns=config.turns, closer=config.closer)
       | "Write" >> shards.WriteShards(config.output, config.spec, run_id))
    result, elapsed = jobs.run(p, totals={"embed": photos})
    summary = jobs.embed_summary(result, elapsed, config.spec, opts, config.turns, config.closer)
    # The stores loaded from these shards, reached as `index` would (environment or connection file)
    summary.update(jobs.follow_changes(config.output, run_id, options.EsFlags().connection))
    jobs.finish_run(config.output, run_id, summary)
    log.info("embed done: %d images, %d embedded, %d faces, failed %s, %.2f images/s%s",
             summary["images_seen"], summary["images_embedded"], summary["faces"],
             summary["images_failed"] or "none", summary["images_per_s"] or 0, jobs.skipped_note(summary))
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
