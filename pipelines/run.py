"""facebeam run: embed and index in one pipeline (the Parquet shards are still written).

    facebeam run --input PATTERN [PATTERN ...] --output DIR --index NAME [embed and index options] [Beam flags]
"""
import argparse
import logging
import sys

from facebeam.pipelines import embed
from facebeam.pipelines import index
from facebeam.pipelines import jobs
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms.spec import spec_from_args

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facebeam run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    embed.add_input_args(parser)
    parser.add_argument("--output", required=True)
    index.add_index_args(parser)
    return parser


def run(argv=None, test_pipeline=None) -> dict:
    ns, beam_args = jobs.parse(build_parser(), argv)
    spec = spec_from_args(ns)
    embed.preflight(ns, spec)
    target = index.open_target(ns, spec)
    opts = runners.pipeline_options(beam_args)
    run_id, skip = embed.plan_run(ns, spec)
    p = runners.create_pipeline(opts, test_pipeline)
    out = embed.embed_images(p, ns, spec, skip)
    embed.write_outputs(out, ns.output, spec, run_id)
    index.index_rows(out["faces"], target, ns, ns.output, spec, run_id)
    with index.loading(target):
        result, elapsed = jobs.run(p)
    summary = embed.summarize(result, elapsed, spec, opts)
    summary.update(index=ns.index, concrete_index=target.concrete, doc_count=target.count,
                   **{f"docs_{k}": v for k, v in index.index_counts(jobs.counters(result)).items()})
    embed.finish_run(ns, run_id, summary)
    log.info("run done: %d images, %d embedded, %d faces, failed %s; %d docs indexed into %s (%d docs)",
             summary["images_seen"], summary["images_embedded"], summary["faces"], summary["images_failed"] or "none",
             summary["docs_indexed"], target.concrete, target.count)
    return summary


def main(argv=None) -> int:
    return jobs.cli(run, argv, failed=lambda s: s["docs_failed"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
