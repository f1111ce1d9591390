"""Where faces are stored: Elasticsearch, the embedded HNSW index (`transforms/ann.py`) or Redis.

`--store es|local|local:DIR|redis` picks one; without it a job uses Elasticsearch when a
cluster is configured (flags, environment or the connection file) and the embedded index
otherwise, and says so. The embedded index of alias NAME lives in `<FACEBEAM_HOME>/ann/NAME`
unless `local:DIR` names the folder.

Elasticsearch loads are Beam transforms (`es_load`); the embedded index and Redis are loaded
from the shards once the pipeline has written them (`load_shards`), skipping faces already
present, so a re-run or an incremental run only adds what is new.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

from facebeam.transforms.errors import UserError
from facebeam.transforms.home import facebeam_home

log = logging.getLogger(__name__)
KINDS = ("es", "local", "redis")


@dataclasses.dataclass(frozen=True)
class StoreChoice:
    """What the user asked for: kind None = automatic (Elasticsearch when configured, else local)."""

    kind: str | None = None
    folder: str | None = None  # local:DIR
    redis_url: str | None = None
    redis_conn: str | None = None

    @classmethod
    def parse(cls, text: str | None, redis_url=None, redis_conn=None, allowed=KINDS) -> StoreChoice:
        if text in (None, "", "auto"):
            return cls(None, None, redis_url, redis_conn)
        kind, _, folder = text.partition(":")
        if kind not in allowed or (folder and kind != "local"):
            raise UserError(f"--store must be one of {', '.join(k + ('[:DIR]' if k == 'local' else '') for k in allowed)}"
                            f", got {text!r}")
        return cls(kind, folder or None, redis_url, redis_conn)

    def redis(self):
        from facebeam.transforms.redis_store import RedisConn

        return RedisConn.resolve(self.redis_url, self.redis_conn)


@dataclasses.dataclass(frozen=True)
class Store:
    """A resolved store: kind, and for `local` its folder; `name` is the alias / key prefix."""

    kind: str
    name: str
    folder: str | None = None
    choice: StoreChoice = StoreChoice()

    @property
    def label(self) -> str:
        return {"es": "elasticsearch", "local": "local", "redis": "redis"}[self.kind]

    def describe(self) -> str:
        if self.kind == "local":
            return f"embedded HNSW index at {self.folder}"
        if self.kind == "redis":
            return f"Redis store {self.name!r}"
        return f"Elasticsearch alias {self.name!r}"


@contextlib.contextmanager
def ann_lock(folder: str):
    """`<folder>/.facebeam.lock`, exclusive and non-blocking: one writer of an embedded index at a time."""
    import fcntl

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".facebeam.lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"embedded index {folder} is being written by another facebeam job; "
                            "wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ann_folder(name: str) -> str:
    return str(facebeam_home() / "ann" / name)


def es_configured(connect) -> bool:
    """Is a cluster configured? `connect()` resolves the connection (EsConfigError when there is none)."""
    from facebeam.transforms.es_conn import EsConfigError

    try:
        connect()
    except EsConfigError:
        return False
    return True


def resolve(choice: StoreChoice, connect, name: str) -> Store:
    """The store a job uses; automatic: Elasticsearch when configured, else the embedded index (logged)."""
    kind = choice.kind
    if kind is None:
        kind = "es" if es_configured(connect) else "local"
        if kind == "local":
            folder = choice.folder or ann_folder(name)
            log.info("no Elasticsearch configured: using the embedded HNSW index at %s (backend local)", folder)
    if kind == "local":
        return Store("local", name, os.path.abspath(choice.folder or ann_folder(name)), choice)
    return Store(kind, name, None, choice)


def run_files(output: str, run_id=None) -> list:
    """The shard files that count once `run_id` commits: committed ones plus the run's own partition."""
    from apache_beam.io.filesystems import FileSystems

    from facebeam.transforms import shards

    found = shards.files(output)
    if run_id:
        found += sorted(m.path for m in FileSystems.match(
            [FileSystems.join(output, "embeddings", f"run={run_id}", "*.parquet")])[0].metadata_list)
    return found


def run_shards(store: Store, output: str, run_id=None) -> list:
    """The shards a `run` loads into a local or Redis store once its pipeline finished.

    The embedded index reads every shard that counts (those it already holds cost one face_id
    column read); Redis, after an incremental run, only the run's own partition (a plain run
    re-sends everything: writes are idempotent by face_id).
    """
    from apache_beam.io.filesystems import FileSystems

    if store.kind == "redis" and run_id:
        return sorted(m.path for m in FileSystems.match(
            [FileSystems.join(output, "embeddings", f"run={run_id}", "*.parquet")])[0].metadata_list)
    return run_files(output, run_id)


def load_shards(store: Store, shard_files, spec, m: int = 16, ef_construction: int = 100, chunk: int = 1000,
                max_retries: int = 8) -> dict:
    """Shard files -> the local or Redis store (faces already there are skipped or overwritten); a summary."""
    if store.kind == "local":
        from facebeam.transforms import ann

        with ann_lock(store.folder):
            summary = ann.load_shards(store.folder, shard_files, spec, m, ef_construction)
        log.info("embedded index %s: %d faces added (%d already there), %d in all, %.0f vectors/s, %d bytes on disk",
                 store.folder, summary["indexed"], summary["skipped_present"], summary["doc_count"],
                 summary["docs_per_s"], summary["bytes_on_disk"])
        return summary
    if store.kind == "redis":
        return load_redis(store, shard_files, spec, chunk=chunk, max_retries=max_retries)
    raise ValueError(f"load_shards does not load {store.kind}; Elasticsearch loads are Beam jobs (es_load)")


def load_redis(store: Store, shard_files, spec, chunk: int = 1000, max_retries: int = 8) -> dict:
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    from facebeam.transforms import redis_store

    conn = store.choice.redis()
    client = conn.check()
    redis_store.check_spec(client, store.name, spec, create=True)
    started = time.perf_counter()
    total = redis_store.LoadOutcome()
    rows_read = 0
    for path in shard_files:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            pf = pq.ParquetFile(f)
            for i in range(pf.num_row_groups):
                rows = pf.read_row_group(i, columns=["face_id", "image_sha256", "label", "spec_id", "embedding"]).to_pylist()
                rows_read += len(rows)
                for r in rows:
                    if r["spec_id"] != spec.spec_id:
                        from facebeam.transforms.spec import SpecError

                        raise SpecError(f"shard {path} holds spec {r['spec_id']}; the Redis store holds {spec.spec_id}")
                out = redis_store.load_rows(client, store.name, rows, chunk=chunk, max_retries=max_retries)
                total.loaded += out.loaded
                total.skipped_unlabeled += out.skipped_unlabeled
                total.retried_chunks += out.retried_chunks
                total.chunks += out.chunks
    elapsed = time.perf_counter() - started
    summary = {"backend": "redis", "store": "redis", "redis_url": conn.url, "key_prefix": redis_store.prefix(store.name),
               "rows_read": rows_read, "indexed": total.loaded, "skipped_unlabeled": total.skipped_unlabeled,
               "retried": total.retried_chunks, "failed": 0, "chunks": total.chunks,
               "doc_count": redis_store.count(client, store.name), "spec_id": spec.spec_id,
               "elapsed_s": round(elapsed, 3), "docs_per_s": round(total.loaded / elapsed, 1) if elapsed else 0.0}
    log.info("redis %s: %d labeled faces loaded in %d chunks (%d unlabeled skipped, %d chunk retries); %d faces in "
             "the store", conn.url, total.loaded, total.chunks, total.skipped_unlabeled, total.retried_chunks,
             summary["doc_count"])
    client.close()
    return summary


def forget(store: Store, shas, dry_run: bool = False) -> int:
    """Remove the faces of those images from a local or Redis store; returns how many faces (would) go."""
    if store.kind == "local":
        from facebeam.transforms import ann

        if not ann.exists(store.folder):
            raise UserError(f"no embedded index at {store.folder}")
        if dry_run:
            idx, shas = ann.AnnIndex.open(store.folder), set(shas)
            return sum(1 for s, d in zip(idx.meta["image_sha256"], idx.meta["deleted"]) if s in shas and not d)
        with ann_lock(store.folder):
            idx = ann.AnnIndex.open(store.folder, writable=True)
            n = idx.remove_images(shas)
            if n:
                idx.save()
        return n
    if store.kind == "redis":
        from facebeam.transforms import redis_store

        client = store.choice.redis().check()
        return redis_store.forget_images(client, store.name, shas, dry_run)
    raise ValueError(store.kind)


def check(store: Store, spec) -> None:
    """Before a job embeds anything: the store is reachable and holds this spec (or nothing yet)."""
    if store.kind == "local":
        from facebeam.transforms import ann

        if ann.exists(store.folder):
            spec.require_same(ann.spec_of(store.folder), what=f"embedded index {store.folder}")
    elif store.kind == "redis":
        from facebeam.transforms import redis_store

        client = store.choice.redis().check()
        try:
            redis_store.check_spec(client, store.name, spec, create=True)
        finally:
            client.close()


def index_job(store: Store, shards_dir: str, shard_files, spec, m: int = 16, ef_construction: int = 100,
              chunk: int = 1000, max_retries: int = 8) -> dict:
    """`facebeam index --store local|redis`: the shards into the store, summary in DIR/index-summary.json."""
    from apache_beam.io.filesystems import FileSystems

    from facebeam.transforms import shards

    check(store, spec)
    summary = load_shards(store, shard_files, spec, m, ef_construction, chunk=chunk, max_retries=max_retries)
    summary.update(index=store.name, retried=summary.get("retried", 0))
    shards.write_json(FileSystems.join(shards_dir, "index-summary.json"), summary)
    log.info("index done (%s): %d rows read, %d loaded; %s holds %d faces", summary["backend"], summary["rows_read"],
             summary["indexed"], store.describe(), summary["doc_count"])
    return summary


def query_folder(choice: StoreChoice, name: str):
    """The embedded index `query`/`search` use: --store local[:DIR], or without --store the default folder
    when it exists; None otherwise (Elasticsearch, or the exact scan)."""
    from facebeam.transforms import ann

    if choice is None or choice.kind not in (None, "local"):
        return None
    folder = os.path.abspath(choice.folder or ann_folder(name))
    if choice.kind == "local" and not ann.exists(folder):
        raise UserError(f"no embedded index at {folder}: build one with `facebeam index --store local:{folder}` "
                        "or `facebeam run`")
    return folder if ann.exists(folder) else None


def search_folder(connect, choice, name: str, exact: bool = False):
    """The embedded index a search uses, or None (Elasticsearch or the exact scan).

    --store local[:DIR]: that folder (it must exist). No --store: when no cluster is configured
    and `<FACEBEAM_HOME>/ann/NAME` exists, that one (logged). --store es or --exact: None.
    """
    if exact or (choice is not None and choice.kind == "es"):
        return None
    if choice is not None and choice.kind == "local":
        return query_folder(choice, name)
    if es_configured(connect):
        return None
    folder = query_folder(choice or StoreChoice(), name)
    if folder:
        log.info("no Elasticsearch configured: searching the embedded HNSW index at %s (backend local)", folder)
    return folder
