"""What every facebeam job shares: the command-line wrapper, running a pipeline, backfill runs, summaries.

Output folder lock: a job that writes into a folder (`embed`, `run`, `index` for its dead letters)
holds an exclusive, non-blocking lock (filelock: `flock`) on `<folder>/.facebeam.lock` for as long as it runs,
so a second job into the same folder refuses at once, naming the folder and the holder's pid. The
lock goes with the process (a killed run frees it). On other Beam filesystems (`gs://`, `s3://`, ...)
there is no atomic lock to take: no lock is taken (a warning says so), and runs into one such
folder must not overlap.

Output faults: before the job the output must have room (`shards.check_room`); a full disk, a
read-only or unwritable folder, or a folder deleted mid-run (its lock file is gone when the run
would commit) ends the job with one line (`shards.OutputFault`, exit 2). Whatever stops a job,
`shards.discard_partial` removes what the run wrote, a folder the job made goes again when only
empty folders are left in it, and the lock is released.

Worker errors: Beam re-raises an exception from a worker as a RuntimeError holding the worker's
traceback text. `run` finds facebeam `UserError`s in it (e.g. `EsDownDeadline`, `EsAuthError`,
`ShardError`) by their qualified class name and raises them again, so they are one line, exit 2.
"""
import contextlib
import errno
import importlib
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

import filelock
from apache_beam.io.filesystems import FileSystems

from facebeam.pipelines import options
from facebeam.pipelines.runner.kinds import runner_kind, runner_name
from facebeam.transforms import locks, manifest, metrics, privacy, progress, shards, sources
from facebeam.transforms.errors import UserError
from facebeam.transforms.summary import JobSummary, skipped_words

log = logging.getLogger(__name__)
# The stderr level of local worker processes (the worker main reads it): ERROR by default, INFO with -v.
WORKER_LOG_ENV = "FACEBEAM_WORKER_LOG"


VERBOSE_FLAGS = ("-v", "--verbose")


def main(module, argv=None, failed=lambda summary: False) -> int:
    """`module.configure(*parse(argv))`, `module.run(config)`, then the result line: exit 0, 1 when `failed(summary)`,
    2 on a user error (one plain line on stderr, before any work when it is a flag).

    `-v/--verbose` (anywhere) brings the logs back; `--json` prints the typed summary instead of its line, and
    whatever the command prints itself goes to stderr. Only `UserError`s become one line; any other exception
    is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = module.build_parser()
    own_json = "--json" in options.flags_of(parser)  # a command's own --json: `es status`, `bench cluster FILE`
    prints_json = own_json and "--json" in argv and options.json_switch(parser)  # `es status --json`: stdout is its
    options.finish_help(parser)
    as_json = "--json" in argv and not own_json
    # -v was read by the entry point (cli.main, entry), which set the log levels for the process.
    argv = [a for a in argv if a not in VERBOSE_FLAGS and (own_json or a != "--json")]
    command = parser.prog.removeprefix("facebeam ").strip()
    try:
        config = module.configure(*options.parse(parser, argv, beam=getattr(module, "BEAM", True)))
        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext(), progress.launch_folder():
            result = module.run(config)
    except UserError as e:
        log.error("%s", e)  # one plain line on stderr (setup_logging's format)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (interrupt_on_sigterm): lock_output removed what the run wrote
        log.error("%s interrupted: nothing of this run was committed; run the same command again", command)
        return 130
    except OSError as e:  # a full or read-only disk outside a job's output (which lock_output says itself)
        said = disk_fault(e)
        if said is None:
            raise
        log.error("%s", said)
        return 2
    action = getattr(config, "action", None)
    if isinstance(action, str):
        command = f"{command} {action}"
    summary = JobSummary.build(command, result or {}, choices=options.choices_said(command, config, result or {}))
    if not prints_json:
        print(summary.to_json() if as_json else summary.line(), flush=True)
    return 1 if failed(summary) else 0


def disk_fault(e: OSError) -> str | None:
    """One line for a full or read-only filesystem, naming the file the write was for; None for other errors."""
    where = e.filename or "a file this command writes"
    if shards.disk_full(e):
        free = f" ({shards.free_bytes(str(e.filename)) / 2**20:.1f} MiB free now)" if e.filename else ""
        return f"no space left on the filesystem of {where}{free}: free some space and run the same command again"
    if e.errno == errno.EROFS:
        return f"{where} is on a read-only filesystem: make it writable or choose another place"
    return None


class _Plain(logging.Formatter):
    """Quiet mode: a facebeam warning reads as a sentence ("warning: ..."), no logger name or time."""

    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def setup_logging(verbose: bool = False) -> None:
    """Quiet by default: facebeam's warnings and errors as sentences, nothing from Beam, gRPC or the clients.

    `verbose`: every facebeam INFO line (progress, choices, timings) and Beam's warnings, with time and logger.
    Workers started from here inherit the choice (FACEBEAM_WORKER_LOG, read by the worker main).
    """
    handler = logging.StreamHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_Plain())
        # Beam relays a portable job's own messages on the root logger; its failure comes back as the job's error.
        handler.addFilter(lambda record: not record.pathname.endswith(os.path.join("portability", "portable_runner.py")))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("facebeam").setLevel(logging.INFO if verbose else logging.WARNING)
    # Quiet: a failure Beam or a client reports comes back as the job's exception (one line or a traceback).
    for name in ("apache_beam", "elastic_transport", "urllib3", "py4j"):
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    # Worker errors come back as the job's exception (a user error as one line, a bug with its traceback).
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.CRITICAL)
    os.environ[WORKER_LOG_ENV] = "INFO" if verbose else "ERROR"  # what workers count, the summary says
    if not verbose:  # GRPC_VERBOSITY is set where gRPC is first imported (pipelines/__init__.py)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def entry(main_fn) -> None:
    """`python -m facebeam.pipelines.<command>`: the same as `facebeam <command>`."""
    setup_logging(any(a in VERBOSE_FLAGS for a in sys.argv[1:]))
    interrupt_on_sigterm()
    exit_process(until_reader_leaves(main_fn))


#: The status a shell gives a process whose reader left (128 + SIGPIPE), as `git log | head` ends.
READER_GONE = 141


def until_reader_leaves(main_fn) -> int:
    """`main_fn()`, or READER_GONE, quietly, when stdout's reader has closed its end (`facebeam ... | head -1`).

    Python ignores SIGPIPE (its sockets rely on that), so a print into a closed pipe raises BrokenPipeError. Only
    that one ends quietly; a broken pipe anywhere else (a socket) is a fault and keeps its traceback.
    """
    try:
        return main_fn()
    except BrokenPipeError:
        if not _reader_gone(sys.stdout):
            raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):  # the exit's flushes go nowhere, not into a second error
            if _reader_gone(stream):
                os.dup2(devnull, stream.fileno())
        return READER_GONE


def _reader_gone(stream) -> bool:
    """Whether `stream` is a pipe whose read end is closed (poll says POLLERR on its write end)."""
    import select

    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def interrupt_on_sigterm() -> None:
    """A command's process takes SIGTERM as Ctrl-C (SIGINT): the job stops with one line and removes what it
    wrote. A second signal ends the process at once."""
    import signal

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _interrupt)


def _interrupt(signum, frame):
    import signal

    import psutil

    from facebeam.pipelines.runner import worker

    _interrupted.set()
    signal.signal(signum, signal.SIG_DFL)
    # Local workers first: Beam's FnApiRunner, interrupted, waits for each worker to finish its bundle.
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if worker.MODULE in " ".join(p.cmdline()):
                p.terminate()
    raise KeyboardInterrupt


#: Set once the process was interrupted: its local workers' deaths are then no news.
_interrupted = threading.Event()


def exit_process(code) -> None:
    """End a command's process with `code` once its own exit handlers have run.

    By hand: a short command can end while a native library's background thread (gRPC's, under Beam) is still
    starting, and the C++ static destructors that `exit()` runs then abort the process ("terminate called
    without an active exception", exit 134) after the answer was printed. So Python's exit handlers run
    (job servers and worker pools stop) and the process ends without the C++ destructors.
    """
    import atexit

    code = 0 if code is None else code if isinstance(code, int) else 1
    try:
        atexit._run_exitfuncs()  # the stdlib's own exit handlers, which os._exit would skip
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


# What Beam appends to the message of an error a DoFn raised (in-process, the exception keeps its class).
_STEP_NOTE = re.compile(r"(?: \[while running '[^']*'\])+$")
# By hand: the Fn API hands a worker's failure back as text (InstructionResponse.error is a string, on
# every runner), so there is no exception object to unpickle; the qualified class name is the contract.
_WORKER_ERROR = re.compile(r"^(facebeam\.transforms\.[\w.]+)\.(\w+): (.+?)(?: \[while running '.*'\])?$", re.M)


class WorkerLost(UserError):
    """Workers of a job died and the engine's retries did not get past it; nothing of the run was committed."""


# By hand, as above: what a worker's death looks like in the text of the failure a runner hands back, and
# what died. Spark's and Flink's own names first: a lost executor or TaskManager also cancels harness streams.
_DEATHS = (
    (re.compile(r"ExecutorLostFailure|Lost executor"), "a Spark executor"),
    (re.compile(r"TaskManager\S* .*(?:lost|disconnected|timed out|no longer reachable)|NoResourceAvailableException|"
                r"heartbeat of TaskManager|RecipientUnreachableException.*TaskExecutor", re.I), "the Flink TaskManager"),
    (re.compile(r"Worker subprocess exited with return code"), "a local worker process"),
    (re.compile(r"StatusRuntimeException: (?:CANCELLED|UNAVAILABLE)"), "an SDK harness (a Python worker process)"),
)
#: What to look at, per engine, before running again.
_CHECK = {"flink": "`facebeam flink status` (logs in its logs folder)", "spark": "`facebeam spark status`",
          "direct": "the machine's memory (a worker killed by the OOM killer?)"}


def worker_lost(exc: BaseException, kind: str):
    """A `WorkerLost` naming what died, when `exc` (a failed job) shows a worker's death; else None."""
    text = str(exc)
    for pattern, what in _DEATHS:
        m = pattern.search(text)
        if m:
            line = next((ln.strip() for ln in text[m.start():].splitlines() if ln.strip()), "")[:160]
            return WorkerLost(
                f"the {kind} job failed: {what} died and the engine's retries did not get past it ({line}); "
                f"nothing of this run was committed. Check {_CHECK.get(kind, 'the cluster')}, then run the same "
                "command again (with --incremental only what is not done yet is redone)")
    return None


def worker_user_error(exc: BaseException):
    """The facebeam `UserError` a worker raised, rebuilt from Beam's wrapped exception; None if there is none."""
    if isinstance(exc, UserError):  # in-process, Beam raised it again with its step appended to the message
        text = str(exc)
        clean = _STEP_NOTE.sub("", text)
        if clean == text:
            return exc
        try:
            return type(exc)(clean)
        except TypeError:
            return UserError(clean)
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


def run(pipeline, totals=None):
    """Run to completion; returns (result, elapsed seconds). A user error raised on a worker is raised as such.

    On a terminal, a progress bar per kind of work (photos embedded, faces indexed) runs meanwhile; `totals`
    ({"embed": n}, e.g. the photo count `preflight` returned; None where unknown) gives it an ETA.
    """
    started = time.perf_counter()
    totals = {kind: n for kind, n in (totals or {}).items() if n}
    _interrupted.clear()
    hook, threading.excepthook = threading.excepthook, _quiet_worker_death(threading.excepthook)
    result = None
    try:
        with progress.bars(totals) as final:
            result = pipeline.run()
            result.wait_until_finish()
            if final is not None:  # the bars end on the job's own counters
                c = metrics.read_counters(result)
                final.update(embed=c.get(metrics.IMAGES_SEEN, 0),
                             index=c.get(metrics.DOCS_INDEXED, 0) + c.get(metrics.DOCS_FAILED, 0))
    except KeyboardInterrupt:  # a cluster job would go on without its launcher
        if result is not None:
            with contextlib.suppress(Exception):
                result.cancel()
        raise
    except Exception as e:
        if _interrupted.is_set():  # an in-process job: Beam wraps the interrupt raised in a DoFn in a RuntimeError
            raise KeyboardInterrupt from None
        user = worker_user_error(e) or worker_lost(e, runner_kind(pipeline.runner))
        if user is None or user is e:
            raise
        raise user from None
    finally:
        if not _interrupted.is_set():  # interrupted, Beam's threads may still die after this: stay quiet till exit
            threading.excepthook = hook
    return result, time.perf_counter() - started


def _quiet_worker_death(hook):
    """A threading.excepthook that says a dead local worker in one line: Beam's FnApiRunner raises its exit in
    the worker's watch thread, whose traceback would go to stderr whatever the job's outcome. Once the process
    is interrupted, every thread's death (a data-plane reader's grpc.RpcError) is the interrupt's echo. A LOOPBACK
    worker's data-plane threads (a job with a job server of its own) die with "Multiplexer hanging up" when the
    runner closes a bundle's channel: Beam's noise, not the job's outcome, which the job's result carries."""
    def quiet(args):
        if _interrupted.is_set():
            return
        if "Multiplexer hanging up" in str(args.exc_value):
            log.info("a Beam data channel closed under its reader (%s)", args.thread.name if args.thread else "?")
            return
        if isinstance(args.exc_value, RuntimeError) and "Worker subprocess exited with return code" in str(
                args.exc_value):
            log.warning("a local worker process died (%s)", args.exc_value)
            return
        hook(args)
    return quiet


def _ancestors(folder: str) -> list:
    """`folder` and the folders above it, nearest first."""
    out, path = [], os.path.abspath(folder)
    while True:
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            return out
        path = parent


@contextlib.contextmanager
def lock_output(folder: str, kind: str = None):
    """Hold `<folder>/.facebeam.lock` (exclusive, non-blocking) while the body runs; see the module docstring.
    `kind` ("collection", "query"): refuse a folder that holds the other kind (shards.check_output_kind)."""
    if sources.has_wildcard(folder):  # Beam's own writes match their temp files by pattern, and fail
        raise UserError(f"output folder {folder!r} has a *, ? or [ in its path, which Beam's file matching reads as "
                        "a wildcard (it has no quoting): choose a folder without them")
    if "://" in folder:
        sources.check_filesystem(folder, "output")
        if kind:
            shards.check_output_kind(folder, kind)
        log.warning("no lock on %s (not a local folder): runs into it must not overlap", folder)
        yield
        return
    if not folder.strip():
        raise UserError("no output folder given (the output path is empty)")
    blocker = next((p for p in _ancestors(folder) if os.path.lexists(p) and not os.path.isdir(p)), None)
    if blocker is not None:
        raise UserError(f"output folder {folder!r} cannot be made: {blocker} is a file, not a folder; "
                        "choose another --output")
    if kind:
        shards.check_output_kind(folder, kind)
    started = time.time()
    path = os.path.join(folder, locks.OUTPUT_LOCK_FILE)

    def write_holder(fd: int) -> None:  # the holder's pid, for the message of the job that is refused
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    with privacy.private_umask():  # what the job writes is 0600 in 0700 folders (transforms/privacy.py)
        lock = filelock.FileLock(path, blocking=False, preserve_lock_file=True, on_acquired=write_holder)
        made = not os.path.isdir(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:  # a full or read-only disk as such; a path that cannot be made was not "deleted"
            fault = shards.output_fault(folder, e) if e.errno != errno.ENOENT else None
            raise fault or UserError(f"output folder {folder!r} cannot be made: {e.strerror or e}; choose another "
                                     "--output") from None
        try:
            lock.acquire()
        except filelock.Timeout:
            try:
                holder = Path(path).read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise UserError(f"output folder {os.path.abspath(folder)} is in use by another facebeam job (pid {holder}); "
                            "wait for it to finish, or use another folder") from None
        except OSError as e:  # a read-only, unwritable or full output
            if made:
                _unmake(folder, lock)
            raise (shards.output_fault(folder, e) or e) from None
        try:
            try:
                shards.check_room(folder)
                yield
            except BaseException as e:
                # Whatever stopped the job (an interrupt, a dead worker, a user error a worker raised, a full disk,
                # a bug), nothing it half-wrote stays: Beam's temp folders, uncommitted partitions.
                shards.discard_partial(folder, started)
                if isinstance(e, (KeyboardInterrupt, WorkerLost)) or not isinstance(e, Exception):
                    raise
                # A full disk, a read-only or vanished folder: one line (a user error already is one: kept as it
                # is, whatever OSError it came from).
                fault = e if isinstance(e, UserError) else shards.output_fault(folder, e)
                if fault is None or fault is e:
                    raise
                raise fault from None
        except BaseException:
            if made:
                _unmake(folder, lock)
            raise
        finally:
            with contextlib.suppress(OSError):  # the folder may have been deleted mid-run
                os.truncate(path, 0)
            lock.release()


def _unmake(folder: str, lock) -> None:
    """A job refused or stopped: the output folder it made goes too, when nothing but empty folders is in it."""
    with contextlib.suppress(OSError):
        lock.release()
        os.remove(lock.lock_file)
    for inner, _, _ in sorted(os.walk(folder), reverse=True):  # deepest first
        with contextlib.suppress(OSError):
            os.rmdir(inner)


def preflight(inputs, spec) -> int | None:
    """Fail in the launcher, before any worker starts: inputs that name nothing, missing weights. Returns the
    photo count where it is cheap to know (`progress.count_files`), else None."""
    from facebeam.transforms import weights

    sources.check_inputs(inputs.patterns)
    if os.environ.get("FACEBEAM_ORT_PROVIDERS"):  # a typo there is refused here, not by every worker
        from facebeam.transforms import mmod

        mmod.providers()
    if weights.require(spec) is None:  # raises WeightsMissing naming the file and where it goes; loads nothing
        from facebeam.transforms.faces import FaceModel

        FaceModel(spec)  # a model only deepface knows the files of: loaded once here, failing before any worker
    return progress.count_files(inputs.patterns, since=sources.parse_since(inputs.since) if inputs.since else None)


def plan_backfill(output: str, spec, incremental: bool, max_file_bytes: int):
    """(run id or None, SkipDone or None): incremental runs get a partition and skip what is done."""
    run_id = None
    if incremental:
        shards.drop_uncommitted(output)
        held = shards.spec_id_held(output)
        if held and held != spec.spec_id:  # else the output mixes two embedding spaces, and no store takes it
            raise UserError(f"{output} holds faces of spec {held}, and this run's spec is {spec.spec_id}: an "
                            "--incremental run adds to them, and a collection holds one spec. Use another --output, "
                            "run without --incremental to replace them, or `facebeam reindex` to move an index")
        run_id = shards.new_run_id()
    erased = shards.tombstones(output)
    if not (incremental or erased):
        return None, None
    # A run without --incremental writes flat shards and no manifest: their images are done too, or the first
    # incremental run into its output would embed them all again, each face a second time.
    done, flat = (shards.files(output, "manifest"), shards.flat_files(output)) if incremental else ([], [])
    return run_id, manifest.SkipDone(spec.spec_id, done, erased, max_file_bytes, flat)


def follow_changes(output: str, run_id, connect, named=None) -> dict:
    """The photos this run found moved or changed in place (moves.py): their faces follow, in the shards and in every
    store the collection was loaded into (`named` too). The summary's fields: faces_moved, faces_replaced, changes (a
    line per store)."""
    from facebeam.transforms import moves, stores

    moved, replaced = moves.changes_in_run(output, run_id)
    if not (moved or replaced):
        return {}
    return moves.follow(output, moved, replaced, stores.recorded_stores(output, connect, named))


def finish_run(output: str, run_id, summary: dict) -> JobSummary:
    """summary.json from the typed summary (the same one the result line is built from); commits the run."""
    if "://" not in output and not os.path.exists(os.path.join(output, locks.OUTPUT_LOCK_FILE)):
        raise shards.output_gone(os.path.abspath(output))  # deleted mid-run (Beam made it again): do not commit
    shards.drop_temp(output, run_id)
    # A run without --incremental replaces the output: its flat shards are rewritten, and the incremental runs
    # committed there before would keep their faces beside the new ones, twice. They go once this run is in.
    earlier = [] if run_id else shards.committed_runs(output)
    summary.update(run_id=run_id, output=output, **({"runs_replaced": len(earlier)} if earlier else {}))
    typed = JobSummary.build("embed", summary)
    write_summary(FileSystems.join(output, "summary.json"), typed)
    if run_id:
        shards.commit(output, run_id, summary)  # the run counts from here on
    elif earlier:
        shards.drop_runs(output)
    return typed


def write_summary(path: str, summary) -> None:
    from facebeam.transforms import summary as summaries

    summaries.write(path, summary if isinstance(summary, JobSummary) else JobSummary.build("job", summary))


def embed_summary(result, elapsed: float, spec, opts, turns: str = None, closer: str = None) -> dict:
    from facebeam.transforms.faces import DEFAULT_CLOSER, DEFAULT_TURNS, detection_summary

    counters, notes = metrics.read_counters(result), metrics.read_notes(result)
    counts = metrics.image_counts(counters, notes)
    return {
        **counts,
        # Files listed but not read (not images by extension, symlinks out of the input) and TIFF pages (sources.py).
        **sources.input_counts(counters, counts["images_seen"], notes),
        # Photos an incremental run skipped because their content is already done for this spec (or erased).
        "faces_labeled": counters.get(metrics.FACES_LABELED, 0),  # by --label-from
        "images_done": counters.get(metrics.IMAGES_DONE, 0),
        "images_moved": counters.get(metrics.IMAGES_MOVED, 0),  # of those, found only under a new path (moves.py)
        "images_replaced": counters.get(metrics.IMAGES_REPLACED, 0),  # done content its path no longer holds
        "stages_core_s": metrics.stage_totals(counters),  # CPU per stage, all workers together
        "spec": spec.identity(), "spec_id": spec.spec_id, "dim": spec.dim,
        # detector, onnxruntime providers used, orientations tried, closer looks (not part of the spec: the
        # vectors of a face do not change)
        "detection": detection_summary(counters, spec, turns or DEFAULT_TURNS, closer or DEFAULT_CLOSER),
        "runner": runner_name(opts),
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
    return "".join(f"; skipped {words}" for words in skipped_words(summary.get("files_skipped")))
