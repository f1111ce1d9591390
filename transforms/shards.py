"""Where shards live, and which of them count.

A plain run writes DIR/embeddings/*.parquet. An incremental run writes its own
partition, DIR/{embeddings,errors,manifest}/run=<id>/, and is committed only when
DIR/runs/<id>.json exists (written after the pipeline finished). Readers take the
flat files plus committed partitions, so a run killed mid-way leaves nothing that counts.
"""
import json
import logging
import posixpath
import time
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms.errors import UserError

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


def write_json(path: str, obj) -> None:
    with FileSystems.create(path) as f:
        f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str):
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode())


def commit(folder: str, run_id: str, summary: dict) -> None:
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


def spec_of(folder: str):
    """The one embedding spec all shards under `folder` share; refuses mixed specs or none."""
    import pyarrow.parquet as pq

    from facebeam.transforms.spec import EmbeddingSpec, SpecError

    found = files(folder)
    if not found:
        raise UserError(f"no Parquet shards under {FileSystems.join(folder, 'embeddings')}")
    specs = {}
    for path in found:
        with FileSystems.open(path) as f:
            table = pq.read_table(f, columns=["spec_id", "spec"])
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
        out["faces"] | "WriteFaces" >> WriteToParquet(
            partition(folder, "embeddings", run_id), records.face_schema(spec.dim), codec="zstd",
            file_name_suffix=".parquet")
        out["errors"] | "WriteErrors" >> WriteToParquet(
            partition(folder, "errors", run_id), records.ERROR_SCHEMA, codec="zstd", file_name_suffix=".parquet")
        if run_id:
            manifest.manifest_rows(out["faces"], out["errors"], spec.spec_id) | "WriteManifest" >> WriteToParquet(
                partition(folder, "manifest", run_id), manifest.MANIFEST_SCHEMA, codec="zstd",
                file_name_suffix=".parquet")
        return beam.pvalue.PDone(out["faces"].pipeline)
