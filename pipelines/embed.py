"""facebeam embed: photos -> Parquet face embedding shards + error rows + summary.

    facebeam embed --input PATTERN [PATTERN ...] --output DIR [--model Dlib] [--detector dlib] [Beam flags]
    python -m pipelines.embed ...
"""
import argparse
import logging
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from facebeam.pipelines import jobs
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import labels
from facebeam.transforms import manifest
from facebeam.transforms import records
from facebeam.transforms import shards
from facebeam.transforms import sources
from facebeam.transforms.embed import DEFAULT_MAX_FILE_BYTES, EmbedImages
from facebeam.transforms.images import DEFAULT_MAX_PIXELS
from facebeam.transforms.spec import add_spec_args, spec_from_args

log = logging.getLogger(__name__)


def add_input_args(parser, flag: str = "--input", required: bool = True) -> None:
    parser.add_argument(flag, dest="input", nargs="+", required=required, metavar="PATTERN",
                        help="folders (recursive), glob patterns, or list files (.txt/.lst or @FILE), on any Beam filesystem")
    parser.add_argument("--label-from", default=None, metavar="parent-dir|csv:FILE",
                        help="store an identity label with each face")
    parser.add_argument("--incremental", action="store_true",
                        help="skip photos whose content is already done for this spec; write a new run partition")
    parser.add_argument("--since", default=None, metavar="DATE", help="only files modified at or after DATE (ISO)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels, before decoding (default %(default)s)")
    parser.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES)
    parser.add_argument("--batch-size", type=int, default=4, help="images per model batch")
    add_spec_args(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facebeam embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_args(parser)
    parser.add_argument("--output", required=True, help="output folder (any Beam filesystem)")
    return parser


def preflight(ns, spec) -> None:
    """Fail in the launcher, before any worker starts: bad inputs, missing weights."""
    from facebeam.transforms.faces import FaceModel

    sources.check_inputs(ns.input)
    FaceModel(spec)  # raises WeightsMissing naming the file and where it goes


def embed_images(p, ns, spec, skip=None):
    """The embedding part of a pipeline; returns {'faces', 'errors'} PCollections."""
    since = sources.parse_since(ns.since) if getattr(ns, "since", None) else None
    paths = (p
             | "Inputs" >> beam.Create(ns.input)
             | "Expand" >> beam.ParDo(sources.ExpandInputs(since))
             | "Distinct" >> beam.Distinct())  # also spreads paths over workers
    if skip is not None:
        paths = paths | "SkipDone" >> skip
    return paths | "EmbedImages" >> EmbedImages(
        spec, max_pixels=ns.max_pixels, max_file_bytes=ns.max_file_bytes, max_batch_size=ns.batch_size,
        labeler=getattr(ns, "labeler", None) or labels.labeler_from(ns.label_from))


def write_outputs(out, output_dir, spec, run_id=None):
    out["faces"] | "WriteFaces" >> WriteToParquet(
        shards.partition(output_dir, "embeddings", run_id), records.face_schema(spec.dim),
        codec="zstd", file_name_suffix=".parquet")
    out["errors"] | "WriteErrors" >> WriteToParquet(
        shards.partition(output_dir, "errors", run_id), records.ERROR_SCHEMA, codec="zstd", file_name_suffix=".parquet")
    if run_id:
        manifest.manifest_rows(out["faces"], out["errors"], spec.spec_id) | "WriteManifest" >> WriteToParquet(
            shards.partition(output_dir, "manifest", run_id), manifest.MANIFEST_SCHEMA, codec="zstd",
            file_name_suffix=".parquet")


def plan_run(ns, spec):
    """(run id or None, SkipDone or None): incremental runs get a partition and skip what is done."""
    run_id = None
    if ns.incremental:
        shards.drop_uncommitted(ns.output)
        run_id = shards.new_run_id()
    erased = shards.tombstones(ns.output)
    if not (ns.incremental or erased):
        return None, None
    done = shards.files(ns.output, "manifest") if ns.incremental else []
    return run_id, manifest.SkipDone(spec.spec_id, done, erased, ns.max_file_bytes)


def finish_run(ns, run_id, summary) -> None:
    summary["run_id"] = run_id
    jobs.write_json(FileSystems.join(ns.output, "summary.json"), summary)
    if run_id:
        shards.commit(ns.output, run_id, summary)  # the run counts from here on


def summarize(result, elapsed, spec, opts) -> dict:
    counts = jobs.image_counts(jobs.counters(result))
    return {
        **counts,
        "spec": spec.identity(), "spec_id": spec.spec_id, "dim": spec.dim,
        "runner": runners.runner_name(opts),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(counts["images_seen"] / elapsed, 3) if elapsed else None,
    }


def run(argv=None, test_pipeline=None) -> dict:
    ns, beam_args = jobs.parse(build_parser(), argv)
    spec = spec_from_args(ns)
    preflight(ns, spec)
    opts = runners.pipeline_options(beam_args)
    run_id, skip = plan_run(ns, spec)
    p = runners.create_pipeline(opts, test_pipeline)
    write_outputs(embed_images(p, ns, spec, skip), ns.output, spec, run_id)
    result, elapsed = jobs.run(p)
    summary = summarize(result, elapsed, spec, opts)
    finish_run(ns, run_id, summary)
    log.info("embed done: %d images, %d embedded, %d faces, failed %s, %.2f images/s",
             summary["images_seen"], summary["images_embedded"], summary["faces"],
             summary["images_failed"] or "none", summary["images_per_s"] or 0)
    return summary


def main(argv=None) -> int:
    return jobs.cli(run, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
