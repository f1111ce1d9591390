"""What every facebeam job shares: the command-line wrapper, running a pipeline, backfill runs, summaries.

Output folder lock: a job that writes into a folder (`embed`, `run`, `index` for its dead letters)
holds an exclusive, non-blocking `fcntl.flock` on `<folder>/.facebeam.lock` for as long as it runs,
so a second job into the same folder refuses at once, naming the folder and the holder's pid. The
lock goes with the process (a killed run frees it). On other Beam filesystems (`gs://`, `s3://`, ...)
there is no atomic lock to take: no lock is taken (a warning says so), and runs into one such
folder must not overlap.

Output faults: before the job the output must have room (`shards.check_room`); a full disk, a
read-only or unwritable folder, or a folder deleted mid-run (its lock file is gone when the run
would commit) ends the job with one line (`shards.OutputFault`, exit 2) after `shards.discard_partial`
removed what the run wrote; the lock is released either way.

Worker errors: Beam re-raises an exception from a worker as a RuntimeError holding the worker's
traceback text. `run` finds facebeam `UserError`s in it (e.g. `EsDownDeadline`, `EsAuthError`,
`ShardError`) by their qualified class name and raises them again, so they are one line, exit 2.
"""
import contextlib
import importlib
import logging
import os
import re
import time

from apache_beam.io.filesystems import FileSystems

from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import manifest, metrics, privacy, shards
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
    # Worker errors come back as the job's exception (a user error as one line, a bug with its traceback).
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.CRITICAL)


def entry(main_fn) -> None:
    """`python -m facebeam.pipelines.<command>`: the same as `facebeam <command>`."""
    import sys

    setup_logging()
    sys.exit(main_fn())


_WORKER_ERROR = re.compile(r"^(facebeam\.transforms\.[\w.]+)\.(\w+): (.+?)(?: \[while running '.*'\])?$", re.M)


def worker_user_error(exc: BaseException):
    """The facebeam `UserError` a worker raised, rebuilt from Beam's wrapped exception; None if there is none."""
    if isinstance(exc, UserError):
        return exc
    for module, name, message in _WORKER_ERROR.findall(str(exc)):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, UserError):
            try:
                return cls(message)
            except TypeError:
                return UserError(message)
    return None


def run(pipeline):
    """Run to completion; returns (result, elapsed seconds). A user error raised on a worker is raised as such."""
    started = time.perf_counter()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:
        user = worker_user_error(e)
        if user is None or user is e:
            raise
        raise user from None
    return result, time.perf_counter() - started


@contextlib.contextmanager
def lock_output(folder: str):
    """Hold `<folder>/.facebeam.lock` (exclusive, non-blocking) while the body runs; see the module docstring."""
    if "://" in folder:
        log.warning("no lock on %s (not a local folder): runs into it must not overlap", folder)
        yield
        return

    started = time.time()
    path = os.path.join(folder, shards.LOCK_FILE)
    with privacy.private_umask():  # what the job writes is 0600 in 0700 folders (transforms/privacy.py)
        try:
            os.makedirs(folder, exist_ok=True)
            f = open(path, "a+")  # noqa: SIM115 - held for the whole body
        except OSError as e:  # a read-only, unwritable or full output
            raise (shards.output_fault(folder, e) or e) from None
        yield from _held(folder, f, started)


def _held(folder: str, f, started: float):
    """The body of `lock_output` once its file is open: take the lock, run the job, release it."""
    import fcntl

    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise UserError(f"output folder {os.path.abspath(folder)} is in use by another facebeam job (pid {holder}); "
                            "wait for it to finish, or use another folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            shards.check_room(folder)
            yield
        except Exception as e:
            # A full disk, a read-only or vanished folder: one line, and nothing of the run left behind.
            fault = e if isinstance(e, shards.OutputFault) else shards.output_fault(folder, e)
            if fault is None:
                raise
            shards.discard_partial(folder, started)
            raise fault from None
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()


def preflight(inputs, spec) -> None:
    """Fail in the launcher, before any worker starts: inputs that name nothing, missing weights."""
    from facebeam.transforms import sources, weights

    sources.check_inputs(inputs.patterns)
    weights.require(spec)  # raises WeightsMissing naming the file and where it goes; loads nothing


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
    if "://" not in output and not os.path.exists(os.path.join(output, shards.LOCK_FILE)):
        raise shards.output_gone(os.path.abspath(output))  # deleted mid-run (Beam made it again): do not commit
    summary["run_id"] = run_id
    shards.write_json(FileSystems.join(output, "summary.json"), summary)
    if run_id:
        shards.commit(output, run_id, summary)  # the run counts from here on


def embed_summary(result, elapsed: float, spec, opts) -> dict:
    from facebeam.transforms import sources

    counters = metrics.read_counters(result)
    counts = metrics.image_counts(counters)
    return {
        **counts,
        # Files listed but not read (not images by extension, symlinks out of the input) and TIFF pages (sources.py).
        **sources.input_counts(counters, counts["images_seen"]),
        "stages_core_s": metrics.stage_totals(counters),  # CPU per stage, all workers together
        "spec": spec.identity(), "spec_id": spec.spec_id, "dim": spec.dim,
        "runner": runners.runner_name(opts),
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(counts["images_seen"] / elapsed, 3) if elapsed else None,
    }


def load_summary(result, target, index_errors: str | None = None) -> dict:
    """The load's counts; `index_errors` is the folder of this load's dead letters (es_load.LoadFaces.errors_dir)."""
    counts = metrics.index_counts(metrics.read_counters(result))
    out = {"index": target.alias, "concrete_index": target.concrete, "doc_count": target.count,
           **{f"docs_{k}": v for k, v in counts.items()}}
    if index_errors:
        out["index_errors"] = index_errors
    return out


def skipped_note(summary: dict) -> str:
    what = {"not_image": "file(s) that are not images by extension", "symlink_outside": "symlink(s) out of the input"}
    return "".join(f"; skipped {n} {what.get(why, why)}" for why, n in summary.get("files_skipped", {}).items())
