"""Where shards live, and which of them count.

A plain run writes DIR/embeddings/*.parquet. An incremental run writes its own
partition, DIR/{embeddings,errors,manifest}/run=<id>/, and is committed only when
DIR/runs/<id>.json exists (written after the pipeline finished). Readers take the
flat files plus committed partitions, so a run killed mid-way leaves nothing that counts.
"""
import logging
import posixpath
import time
import uuid

from apache_beam.io.filesystems import FileSystems

log = logging.getLogger(__name__)
PARTITIONED = ("embeddings", "errors", "manifest", "index-errors")
DETERMINISTIC_REASONS = ("empty", "not_an_image", "truncated", "corrupt", "too_large", "no_face")


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _match(pattern: str) -> list:
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def committed_runs(folder: str) -> list:
    return [posixpath.basename(p)[:-len(".json")] for p in _match(FileSystems.join(folder, "runs", "*.json"))]


def files(folder: str, kind: str = "embeddings") -> list:
    """Flat shards plus those of committed runs; Beam's temp folders and killed runs are skipped."""
    out = _match(FileSystems.join(folder, kind, "*.parquet"))
    for run in committed_runs(folder):
        out += _match(FileSystems.join(folder, kind, f"run={run}", "*.parquet"))
    return out


def partition(folder: str, kind: str, run_id=None) -> str:
    """The file prefix a job writes `kind` shards to."""
    if run_id:
        return FileSystems.join(folder, kind, f"run={run_id}", "part")
    return FileSystems.join(folder, kind, "part")


def commit(folder: str, run_id: str, summary: dict) -> None:
    from facebeam.pipelines.jobs import write_json

    write_json(FileSystems.join(folder, "runs", f"{run_id}.json"), summary)


def drop_uncommitted(folder: str) -> list:
    """Delete partitions of runs that never committed (killed mid-way); returns what went."""
    keep = set(committed_runs(folder))
    gone = []
    for kind in PARTITIONED:
        for m in FileSystems.match([FileSystems.join(folder, kind, "run=*")])[0].metadata_list:
            run = posixpath.basename(m.path.rstrip("/"))[len("run="):]
            if run not in keep:
                gone.append(m.path)
    dirs = sorted({posixpath.dirname(p) if p.endswith(".parquet") else p for p in gone})
    if dirs:
        FileSystems.delete(dirs)
        log.warning("removed %d partition(s) of runs that did not finish: %s", len(dirs), dirs)
    return dirs


def tombstones(folder: str) -> list:
    return _match(FileSystems.join(folder, "tombstones", "*.parquet"))
