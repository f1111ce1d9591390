"""Where shards live, and which of them count.

A plain run writes DIR/embeddings/*.parquet. An incremental run writes its own
partition, DIR/{embeddings,errors,manifest}/run=<id>/, and is committed only when
DIR/runs/<id>.json exists (written after the pipeline finished). Readers take the
flat files plus committed partitions, so a run killed mid-way leaves nothing that counts;
the next incremental run deletes its partitions (`drop_uncommitted`, on local disk and on
any Beam filesystem).

Index dead letters are kept per load: `DIR/index-errors/run=<id>/` for an incremental run
(committed, or dropped, with the run), `DIR/index-errors/load=<id>/` for `facebeam index` and a
plain `facebeam run`; the job summary's `index_errors` names the folder of its load. A finished
`facebeam index` re-sent every shard, so it removes every older dead letter under
`index-errors/`; a finished plain `run` removes the older flat and `load=` ones (incremental runs'
own partitions stay with their runs).

Faults of the output's own filesystem (`OutputFault`): a job checks for room before it starts
(`check_room`: at least `MIN_FREE_BYTES` free), and a full disk, a read-only or unwritable folder, or
a folder deleted while the job ran is one line naming the folder and what to do (`output_fault`
recognises them in an exception, also in a worker's traceback text). What the failed run wrote is
then removed (`discard_partial`: Beam's `beam-temp-*` folders, this run's partitions and its flat
files), so nothing incomplete is left to count.

Shards are verified before a load writes anything (`verify`: every file's footer and every row
group decoded); a damaged file is a `ShardError` naming it, and reading on the workers
(`ReadShardRows`) names the file too.
"""
import contextlib
import errno
import json
import logging
import os
import posixpath
import re
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms import privacy
from facebeam.transforms.errors import UserError
from facebeam.transforms.locks import OUTPUT_LOCK_FILE

log = logging.getLogger(__name__)


class ShardError(UserError):
    """A shard file that cannot be read; the message names the file and what is wrong."""

# The folders a job writes with Beam's sinks: a collection's, and a query's results.
PARTITIONED = ("embeddings", "errors", "manifest", "index-errors", "results")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _match(pattern: str) -> list:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def committed_runs(folder: str) -> list:
    return [posixpath.basename(p)[:-len(".json")] for p in _match(FileSystems.join(folder, "runs", "*.json"))]


def files(folder: str, kind: str = "embeddings") -> list:
    """Flat shards plus those of committed runs; Beam's temp folders and killed runs are skipped."""
    out = flat_files(folder, kind)
    for run in committed_runs(folder):
        out += _match(FileSystems.join(folder, kind, f"run={run}", "*.parquet"))
    return out


def flat_files(folder: str, kind: str = "embeddings") -> list:
    """The shards a run without --incremental wrote (no run partition)."""
    return _match(FileSystems.join(folder, kind, "*.parquet"))


def partition(folder: str, kind: str, run_id=None) -> str:
    """The file prefix a job writes `kind` shards to."""
    if run_id:
        return FileSystems.join(folder, kind, f"run={run_id}", "part")
    return FileSystems.join(folder, kind, "part")


def write_json(path: str, obj) -> None:
    """Whole or not at all on local disk (a full disk leaves no half-written summary or commit); 0600 unless
    FACEBEAM_SHARED_FILES (privacy.py)."""
    write_whole(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_whole(path: str, data: bytes) -> None:
    """`data` into `path` whole or not at all on local disk (beside it, then renamed over it); 0600 unless
    FACEBEAM_SHARED_FILES (privacy.py)."""
    if not _local(path):
        with FileSystems.create(path) as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    mode = 0o666 if privacy.shared() else privacy.FILE_MODE  # summaries name photos: private by default
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno:  # a failed write names no file: name it
            raise OSError(e.errno, e.strerror, path) from None
        raise


def read_json(path: str):
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode())


def commit(folder: str, run_id: str, summary: dict) -> None:
    write_json(FileSystems.join(folder, "runs", f"{run_id}.json"), summary)


def _local(folder: str) -> bool:
    return "://" not in folder


def partition_dirs(folder: str, kind: str, prefix: str = "run=") -> list:
    """The partition folders `folder/kind/<prefix>*`, on local disk (where `match` lists no folders) or any filesystem."""
    base = FileSystems.join(folder, kind)
    if _local(folder):
        if not os.path.isdir(base):
            return []
        return sorted(os.path.join(base, n) for n in os.listdir(base)
                      if n.startswith(prefix) and os.path.isdir(os.path.join(base, n)))
    dirs = set()
    for m in FileSystems.match([FileSystems.join(base, prefix + "*", "**")])[0].metadata_list:
        rel = m.path[len(base.rstrip("/")):].lstrip("/")
        dirs.add(FileSystems.join(base, rel.split("/", 1)[0]))
    return sorted(dirs)


def delete_tree(path: str) -> None:
    """A folder and all under it (local), or every object under the prefix (object stores)."""
    if _local(path):
        if os.path.isdir(path):
            FileSystems.delete([path])
        return
    found = [m.path for m in FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list]
    if found:
        FileSystems.delete(found)


def drop_uncommitted(folder: str, warn: bool = True) -> list:
    """Delete partitions of runs that never committed (killed mid-way); returns what went. `warn`: say so in a
    warning (found at a run's start); a run cleaning up after itself has its own line and logs it at info."""
    keep = set(committed_runs(folder))
    dirs = sorted(d for kind in PARTITIONED for d in partition_dirs(folder, kind)
                  if posixpath.basename(d.rstrip("/"))[len("run="):] not in keep)
    for d in dirs:
        delete_tree(d)
    if dirs:
        (log.warning if warn else log.info)("removed %d partition(s) of runs that did not finish: %s", len(dirs), dirs)
    return dirs


def drop_runs(folder: str) -> list:
    """Every committed run: its record first (so a stop midway leaves partitions the next run drops as
    uncommitted), then its partitions. For a run without --incremental, which replaces the output."""
    records = _match(FileSystems.join(folder, "runs", "*.json"))
    if records:
        FileSystems.delete(records)
    return drop_uncommitted(folder, warn=False)


def drop_temp(folder: str, run_id: str | None = None) -> list:
    """Beam's `beam-temp-*` folders under the shard kinds and this run's partitions; returns what went.

    A sink's finalize removes the temp folder of the attempt that finished. One that an engine restarted
    (a TaskManager lost mid-write) left its own behind, with part files in it, so a finished run removes
    them before it commits. The output is locked while a job runs: no one else's temp folder is there."""
    dirs = []
    for kind in PARTITIONED:
        dirs += partition_dirs(folder, kind, prefix="beam-temp-")
        if run_id:
            dirs += partition_dirs(FileSystems.join(folder, kind), f"run={run_id}", prefix="beam-temp-")
    for d in dirs:
        delete_tree(d)
    if dirs:
        log.info("removed %d temp folder(s) of restarted attempts: %s", len(dirs), dirs)
    return dirs


MIN_FREE_BYTES = 16 * 1024 * 1024  # a job refuses to start with less free on its output's filesystem
OUTPUT_ERRNOS = {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EROFS: "read-only", errno.EACCES: "denied",
                 errno.EPERM: "denied", errno.ENOENT: "gone"}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] [^:'\n]*(?::\s*'([^'\n]*)')?|\b\w*Error\((\d+), '")  # str() and repr()


def disk_full(e: BaseException) -> bool:
    """Whether an error is a full disk or quota: by errno, or by its text where a library (faiss) raised it."""
    return OUTPUT_ERRNOS.get(getattr(e, "errno", None)) == "full" or os.strerror(errno.ENOSPC) in str(e)


class OutputFault(UserError):
    """The output folder's filesystem refused the job: full, read-only, not writable, or the folder went away."""


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def free_bytes(folder: str) -> int:
    st = os.statvfs(_existing(folder))
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def check_room(folder: str, need: int = MIN_FREE_BYTES) -> None:
    """Refuse before the job when the output's filesystem has less than `need` bytes free (local disk only)."""
    if not _local(folder):
        return
    free = free_bytes(folder)
    if free < need:
        raise OutputFault(f"output folder {os.path.abspath(folder)} has only {_mib(free)} free on its filesystem, "
                          f"less than the {_mib(need)} a job needs to start: free some space or choose another "
                          "--output")


def output_fault(folder: str, exc: BaseException):
    """The `OutputFault` for an exception caused by the output's filesystem, else None.

    Looks at the exception chain and at the text of a worker's traceback (Beam re-raises worker
    errors as text). Full disks count wherever the path was; permission, read-only and missing-path
    errors only when the path lies under `folder` (or `folder` itself is gone).
    """
    if not _local(folder):
        return None
    top = os.path.abspath(folder)
    found, seen, cause = [], 0, exc
    while cause is not None and seen < 10:
        if isinstance(cause, OSError) and cause.errno in OUTPUT_ERRNOS:
            found.append((cause.errno, cause.filename))
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    found += [(int(n or m), p or None) for n, p, m in _ERRNO_TEXT.findall(str(exc)) if int(n or m) in OUTPUT_ERRNOS]
    gone = not os.path.isdir(top) or not os.path.exists(os.path.join(top, OUTPUT_LOCK_FILE))
    for code, path in found:
        kind = OUTPUT_ERRNOS[code]
        inside = path is not None and os.path.abspath(str(path)).startswith(top)
        if kind == "full":  # a path elsewhere (e.g. a worker's temp folder) is named as such
            full = top if path is None or inside else str(path)
            where = f"output folder {top}" if full == top else full
            return OutputFault(f"no space left on the filesystem of {where} ({_mib(free_bytes(full))} "
                               f"free now): free some space or choose another --output, then run the same command "
                               "again; nothing of this run was kept")
        if kind == "gone" and (inside or gone):
            return output_gone(top)
        if kind == "read-only" and (inside or path is None):
            return OutputFault(f"output folder {top} is on a read-only filesystem: choose another --output "
                               "(nothing of this run was kept)")
        if kind == "denied" and inside:
            return OutputFault(f"cannot write into output folder {top}: permission denied on {path}; make it "
                               "writable for this user or choose another --output (nothing of this run was kept)")
    return output_gone(top) if gone and found else None


def output_gone(folder: str) -> OutputFault:
    return OutputFault(f"output folder {folder} was deleted or moved while the job ran: nothing of this run was kept; "
                       "run the same command again")


def discard_partial(folder: str, since: float) -> list:
    """Remove what a run that failed on its output wrote: Beam's temp folders, uncommitted partitions and
    flat shard files written since `since` (epoch seconds). Local disk; returns what went."""
    if not _local(folder) or not os.path.isdir(folder):
        return []
    gone = list(drop_uncommitted(folder, warn=False))
    try:
        gone += drop_temp(folder)
    except OSError as e:
        log.warning("could not remove Beam's temp folders under %s: %s", folder, e)
    for kind in PARTITIONED:
        base = os.path.join(folder, kind)
        if not os.path.isdir(base):
            continue
        for name in os.listdir(base):
            path = os.path.join(base, name)
            try:
                if not (name.endswith(".parquet") and os.path.getmtime(path) >= since):
                    continue
                os.remove(path)
            except OSError as e:
                log.warning("could not remove %s: %s", path, e)
                continue
            gone.append(path)
    for name in os.listdir(folder):
        if ".tmp-" in name:  # a half-written summary (write_json)
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))
    if gone:
        log.info("removed %d partial file(s)/folder(s) of the failed run under %s", len(gone), folder)
    return gone


def index_errors(folder: str, run_id=None, load_id=None) -> str:
    """The folder one load writes its dead letters to: `index-errors/run=<id>` or `index-errors/load=<id>`."""
    name = f"run={run_id}" if run_id else f"load={load_id or new_run_id()}"
    return FileSystems.join(folder, "index-errors", name)


def clear_index_errors(folder: str, keep: str, runs_too: bool) -> list:
    """Remove older index dead letters: flat files, other `load=` partitions and, with `runs_too`, `run=` ones."""
    base = FileSystems.join(folder, "index-errors")
    gone = [d for d in partition_dirs(folder, "index-errors", "load=") + (
        partition_dirs(folder, "index-errors", "run=") if runs_too else []) if d.rstrip("/") != keep.rstrip("/")]
    for d in gone:
        delete_tree(d)
    flat = _match(FileSystems.join(base, "*.parquet"))
    if flat:
        FileSystems.delete(flat)
    if gone or flat:
        log.info("removed %d older index dead-letter file(s)/partition(s) under %s", len(gone) + len(flat), base)
    return gone + flat


def verify(paths, threads: int = 4) -> int:
    """Read every shard's footer and decode each row group fully; a damaged file is a `ShardError` naming it.
    Returns the rows (faces) of all the shards."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        found = list(pool.map(_problem, paths))
    problems = [p for p in found if isinstance(p, str)]
    if problems:
        more = f" (and {len(problems) - 1} more damaged shard(s))" if len(problems) > 1 else ""
        raise ShardError(problems[0] + more)
    return sum(found)


def _problem(path: str):
    """What is wrong with the shard at `path` (a message), or its row count."""
    import pyarrow.parquet as pq

    rows = 0
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            pf = pq.ParquetFile(f)
            groups = pf.num_row_groups
            for i in range(groups):
                try:
                    table = pf.read_row_group(i)
                except Exception as e:  # noqa: BLE001 - any decoding failure names the file
                    return f"shard {path} is damaged: row group {i + 1} of {groups} cannot be decoded ({_short(e)})"
                bad = _implausible_vectors(table)
                if bad:
                    return f"shard {path} is damaged: row group {i + 1} of {groups} {bad}"
                rows += table.num_rows
    except ShardError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a footer that cannot be read
        return f"shard {path} is not a readable Parquet file (truncated or overwritten?): {_short(e)}"
    return rows


MAX_ABS_COMPONENT = 1e6  # no model's embedding comes near; random bytes read as float32 mostly do


def _implausible_vectors(table):
    """Why a row group's embeddings cannot be real (NaN/inf or absurd components), or None.

    Parquet pages carry no checksum here, and zstd stores incompressible float data raw, so
    bytes overwritten inside a vector page decode without an error: their values give them away.
    """
    import numpy as np

    if "embedding" not in table.column_names or table.num_rows == 0:
        return None
    col = table.column("embedding").combine_chunks()
    with np.errstate(invalid="ignore"):  # NaN/inf from damaged bytes is what this looks for
        values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if finite.all() and (np.abs(values) <= MAX_ABS_COMPONENT).all():
        return None
    width = max(1, len(values) // max(1, len(col)))
    bad = np.flatnonzero(~finite | (np.abs(np.where(finite, values, 0)) > MAX_ABS_COMPONENT))
    rows = np.unique(bad // width)
    return (f"holds {len(rows)} embedding(s) with impossible values (NaN/inf or beyond +-{MAX_ABS_COMPONENT:g}), "
            f"first at row {int(rows[0])} of the row group: the file was overwritten or corrupted")


def _short(e) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


class ReadShardRows(beam.DoFn):
    """Shard path -> its face rows, one row group at a time; a read error names the file."""

    def process(self, path):
        import pyarrow.parquet as pq

        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                pf = pq.ParquetFile(f)
                for i in range(pf.num_row_groups):
                    yield from pf.read_row_group(i).to_pylist()
        except Exception as e:  # noqa: BLE001 - re-raised as a ShardError naming the file
            raise ShardError(f"shard {path} cannot be read: {_short(e)}") from None


def tombstones(folder: str) -> list:
    return _match(FileSystems.join(folder, "tombstones", "*.parquet"))


# What each kind of output writes that the other's would replace: a collection's dead letters and summary.json
# went when a query wrote its own into the same folder.
OUTPUT_KINDS = {"collection": "embeddings", "query": "results"}


def check_output_kind(folder: str, kind: str) -> None:
    """Refuse an output folder that holds the other kind of output (a collection's shards, a query's results)."""
    for other, marks in OUTPUT_KINDS.items():
        if other == kind:
            continue
        where = FileSystems.join(folder, marks)
        held = (os.path.isdir(where) and bool(os.listdir(where))) if _local(folder) else bool(
            FileSystems.match([FileSystems.join(where, "**")])[0].metadata_list)
        if held:
            raise UserError(f"{folder} holds a {other}'s output ({marks}/): a {kind}'s files (errors/, summary.json) "
                            "would replace its own; choose another --output")


def collection_hint(folder: str) -> str:
    """`--shards out/embeddings` or a shard file named where the collection's folder goes: name that folder."""
    path = folder.rstrip("/")
    for _ in range(3):  # out/embeddings, out/embeddings/part-0.parquet, out/embeddings/run=X/part-0.parquet
        path, name = posixpath.split(path)
        if name in PARTITIONED:
            return f" (--shards is the collection's folder, the one `embed` or `run` wrote: {path or '.'})"
    return ""


def read_columns(path: str, columns: list):
    """Some columns of one shard (any Beam filesystem); a read error is a ShardError naming the file."""
    import pyarrow.parquet as pq

    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            return pq.read_table(f, columns=columns)
    except Exception as e:  # noqa: BLE001 - names the file
        raise ShardError(f"shard {path} cannot be read: {_short(e)}") from None


def spec_id_held(folder: str) -> str | None:
    """The spec id of the faces under `folder` (None when it holds none), from the first shard with a row: an
    incremental run into it must share it (jobs.plan_backfill), so one shard speaks for all."""
    for path in files(folder):
        ids = read_columns(path, ["spec_id"]).column("spec_id")
        if len(ids):
            return ids[0].as_py()
    return None


def spec_of(folder: str):
    """The one embedding spec all shards under `folder` share; refuses mixed specs or none."""
    from facebeam.transforms.spec import EmbeddingSpec, SpecError

    found = files(folder)
    if not found:
        raise UserError(f"no Parquet shards under {FileSystems.join(folder, 'embeddings')}{collection_hint(folder)}")
    specs = {}
    for path in found:
        table = read_columns(path, ["spec_id", "spec"])
        for spec_id, text in set(zip(table.column("spec_id").to_pylist(), table.column("spec").to_pylist())):
            specs[spec_id] = text
    if len(specs) > 1:
        raise SpecError(f"shards under {folder} mix {len(specs)} embedding specs: {sorted(specs)}")
    if not specs:
        raise UserError(f"the shards under {folder} hold no faces")
    return EmbeddingSpec.from_json(next(iter(specs.values())))


class WriteShards(beam.PTransform):
    """{'faces', 'errors'} -> Parquet shards under `folder` (and, for a backfill run, its manifest)."""

    def __init__(self, folder: str, spec, run_id=None):
        super().__init__()
        self._folder, self._spec, self._run_id = folder, spec, run_id

    def expand(self, out):
        from apache_beam.io.parquetio import WriteToParquet

        from facebeam.transforms import manifest, records

        folder, spec, run_id = self._folder, self._spec, self._run_id
        is_shared = privacy.shared()  # the launcher's rule, carried to the workers (privacy.py)
        kinds = ["embeddings", "errors"] + (["manifest"] if run_id else [])
        for kind in kinds:  # 0700 before any worker writes into them (Beam would make them with its umask)
            privacy.make_dirs(posixpath.dirname(partition(folder, kind, run_id)), is_shared)
        out["faces"] | "PrivateFaces" >> beam.ParDo(privacy.PrivateWrites(is_shared)) | "WriteFaces" >> WriteToParquet(
            partition(folder, "embeddings", run_id), records.face_schema(spec.dim), codec="zstd",
            file_name_suffix=".parquet")
        out["errors"] | "PrivateErrors" >> beam.ParDo(privacy.PrivateWrites(is_shared)) | "WriteErrors" >> WriteToParquet(
            partition(folder, "errors", run_id), records.ERROR_SCHEMA, codec="zstd", file_name_suffix=".parquet")
        if run_id:
            (manifest.manifest_rows(out["faces"], out["errors"], spec.spec_id, out.get("moved"), out.get("replaced"))
             | "PrivateManifest" >> beam.ParDo(privacy.PrivateWrites(is_shared))
             | "WriteManifest" >> WriteToParquet(partition(folder, "manifest", run_id), manifest.MANIFEST_SCHEMA,
                                                 codec="zstd", file_name_suffix=".parquet"))
        return beam.pvalue.PDone(out["faces"].pipeline)
