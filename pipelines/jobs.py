"""What every facebeam job shares: the command-line wrapper, running a pipeline, backfill runs, summaries."""
import logging
import time

from apache_beam.io.filesystems import FileSystems

from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import manifest, metrics, shards
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


def main(module, argv=None, failed=lambda summary: False) -> int:
    """`module.configure(*parse(argv))` then `module.run(config)`: exit 0, 1 when `failed(summary)`, 2 on a user error.

    Only `UserError`s become one line and exit 2; any other exception is a bug and keeps its traceback.
    """
    from facebeam.pipelines import options

    try:
        config = module.configure(*options.parse(module.build_parser(), argv, beam=getattr(module, "BEAM", True)))
        summary = module.run(config)
    except UserError as e:
        log.error("%s", e)
        return 2
    return 1 if failed(summary) else 0


def setup_logging() -> None:
    """Launcher logs: facebeam at INFO; Beam's and the client's chatter off (workers print their own)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)


def entry(main_fn) -> None:
    """`python -m facebeam.pipelines.<command>`: the same as `facebeam <command>`."""
    import sys

    setup_logging()
    sys.exit(main_fn())


def run(pipeline):
    """Run to completion; returns (result, elapsed seconds)."""
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    return result, time.perf_counter() - started


def preflight(inputs, spec) -> None:
    """Fail in the launcher, before any worker starts: inputs that name nothing, missing weights."""
    from facebeam.transforms import sources
    from facebeam.transforms.faces import FaceModel

    sources.check_inputs(inputs.patterns)
    FaceModel(spec)  # raises WeightsMissing naming the file and where it goes


def plan_backfill(output: str, spec, incremental: bool, max_file_bytes: int):
    """(run id or None, SkipDone or None): incremental runs get a partition and skip what is done."""
    run_id = None
    if incremental:
        shards.drop_uncommitted(output)
        run_id = shards.new_run_id()
    erased = shards.tombstones(output)
    if not (incremental or erased):
        return None, None
    done = shards.files(output, "manifest") if incremental else []
    return run_id, manifest.SkipDone(spec.spec_id, done, erased, max_file_bytes)


def finish_run(output: str, run_id, summary: dict) -> None:
    summary["run_id"] = run_id
    shards.write_json(FileSystems.join(output, "summary.json"), summary)
    if run_id:
        shards.commit(output, run_id, summary)  # the run counts from here on


def embed_summary(result, elapsed: float, spec, opts) -> dict:
    counts = metrics.image_counts(metrics.read_counters(result))
    return {
        **counts,
        "spec": spec.identity(), "spec_id": spec.spec_id, "dim": spec.dim,
        "runner": runners.runner_name(opts),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(counts["images_seen"] / elapsed, 3) if elapsed else None,
    }


def load_summary(result, target) -> dict:
    counts = metrics.index_counts(metrics.read_counters(result))
    return {"index": target.alias, "concrete_index": target.concrete, "doc_count": target.count,
            **{f"docs_{k}": v for k, v in counts.items()}}
