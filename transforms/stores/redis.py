"""Redis (transforms/redis_store.py) as a FaceStore: labeled faces by identity, verified on the server.

It verifies by identity and does not rank the whole collection (`capabilities.search` is False).
Its metadata is `<prefix>meta` (calibration, JSON) and `<prefix>persons` (face_id -> [person_id, name]).
"""
from __future__ import annotations

import json
import logging
import time

from facebeam.transforms import redis_store
from facebeam.transforms.stores.base import Capabilities, FaceStore, Load, StoreError

log = logging.getLogger(__name__)


class RedisStore(FaceStore):
    kind = "redis"
    capabilities = Capabilities(search=False, labeled_only=True, paths=False)

    def __init__(self, name: str, conn: redis_store.RedisConn):
        super().__init__(name)
        self.conn = conn
        self._client = self._verifier = None

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_verifier": None}

    def describe(self) -> str:
        return f"Redis store {self.name!r} at {self.conn.url}"

    def location(self) -> str:
        return self.conn.url

    def record(self) -> dict:
        # The connection file's path (not its contents) lets `forget` reach it again; the password stays there.
        return {**super().record(), **({"conn_file": self.conn.conn_file} if self.conn.conn_file else {})}

    def client(self):
        if self._client is None:
            try:
                self._client = self.conn.check()
            except redis_store.RedisError as e:
                raise StoreError(str(e)) from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = self._verifier = None

    def exists(self) -> bool:
        return bool(self.client().exists(redis_store.prefix(self.name) + "spec"))

    def spec(self):
        return redis_store.stored_spec(self.client(), self.name)

    def check(self, spec) -> None:
        if self.exists():
            spec.require_same(self.spec(), what=f"Redis store {self.name!r}")

    def begin_load(self, spec, load, output, shard_files=None, run_id=None) -> Load:
        return _RedisLoad(self, spec, load, output, shard_files, run_id)

    def load_shards(self, shard_files, spec, chunk: int = 1000, max_retries: int = 8) -> dict:
        import pyarrow.parquet as pq
        from apache_beam.io.filesystems import FileSystems

        from facebeam.transforms.spec import SpecError

        client = self.client()
        redis_store.check_spec(client, self.name, spec, create=True)
        started = time.perf_counter()
        total = redis_store.LoadOutcome()
        rows_read = 0
        for path in shard_files:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                pf = pq.ParquetFile(f)
                for i in range(pf.num_row_groups):
                    rows = pf.read_row_group(i, columns=["face_id", "image_sha256", "label", "spec_id",
                                                         "embedding"]).to_pylist()
                    rows_read += len(rows)
                    for r in rows:
                        if r["spec_id"] != spec.spec_id:
                            raise SpecError(f"shard {path} holds spec {r['spec_id']}; the Redis store holds "
                                            f"{spec.spec_id}")
                    out = redis_store.load_rows(client, self.name, rows, chunk=chunk, max_retries=max_retries)
                    total.loaded += out.loaded
                    total.skipped_unlabeled += out.skipped_unlabeled
                    total.retried_chunks += out.retried_chunks
                    total.chunks += out.chunks
        elapsed = time.perf_counter() - started
        summary = {"backend": "redis", "store": "redis", "redis_url": self.conn.url,
                   "key_prefix": redis_store.prefix(self.name), "rows_read": rows_read, "indexed": total.loaded,
                   "skipped_unlabeled": total.skipped_unlabeled, "retried": total.retried_chunks, "failed": 0,
                   "chunks": total.chunks, "doc_count": redis_store.count(client, self.name), "spec_id": spec.spec_id,
                   "elapsed_s": round(elapsed, 3), "docs_per_s": round(total.loaded / elapsed, 1) if elapsed else 0.0}
        log.info("redis %s: %d labeled faces loaded in %d chunks (%d unlabeled skipped, %d chunk retries); %d faces "
                 "in the store", self.conn.url, total.loaded, total.chunks, total.skipped_unlabeled,
                 total.retried_chunks, summary["doc_count"])
        return summary

    def count(self) -> int:
        return redis_store.count(self.client(), self.name)

    def remove(self, shas, dry_run: bool = False, purge: bool = True) -> int:
        client, p = self.client(), redis_store.prefix(self.name)
        shas = list(shas)
        gone = [m.decode().partition("\t")[2] for sha in shas for m in client.smembers(p + "img:" + sha)]
        n = redis_store.forget_images(client, self.name, shas, dry_run)
        if gone and not dry_run:
            client.hdel(p + "persons", *gone)
            if purge:
                self._rewrite_files(client)
        return n

    def relocate(self, rows) -> int:
        return 0  # keyed by label, face and content hash: no photo's path is kept here

    def _rewrite_files(self, client) -> None:
        """The append-only file still holds the erased vectors' HSETs: have Redis rewrite it (and the snapshot)."""
        import redis

        for call in (client.bgrewriteaof, client.bgsave):
            try:
                call()
            except redis.ResponseError as e:  # one already in progress covers it; persistence off needs nothing
                log.info("redis %s: %s after an erasure: %s", self.conn.url, call.__name__, e)

    def closest(self, vector, label: str) -> tuple:
        if not self.exists():
            return None, None, 0
        if self.__dict__.get("_verifier") is None:  # the script is loaded once per client
            self._verifier = redis_store.Verifier(self.client(), self.name, self.spec())
        return self._verifier.closest(vector, label)

    def read_meta(self) -> dict:
        client, p = self.client(), redis_store.prefix(self.name)
        out = {}
        for key in ("calibration", "copies"):
            raw = client.hget(p + "meta", key)
            if raw:
                out[key] = json.loads(raw)
        persons = client.hgetall(p + "persons")
        if persons:
            out["persons"] = {k.decode(): json.loads(v) for k, v in persons.items()}
        return out

    def has_persons(self) -> bool:
        return bool(self.client().exists(redis_store.prefix(self.name) + "persons"))

    def _require(self) -> None:
        if not self.exists():
            raise StoreError(f"no face store {self.name!r} in Redis at {self.conn.url}: run `facebeam index --store "
                             f"redis --index {self.name}` first")

    def write_meta(self, **updates) -> None:
        client, p = self.client(), redis_store.prefix(self.name)
        self._require()
        for key, value in updates.items():
            if key == "persons":
                pipe = client.pipeline(transaction=True)
                pipe.delete(p + "persons")
                if value:
                    pipe.hset(p + "persons", mapping={f: json.dumps(list(v)) for f, v in value.items()})
                pipe.execute()
            elif value is None:
                client.hdel(p + "meta", key)
            else:
                client.hset(p + "meta", key, json.dumps(value))

    def update_copies(self, change) -> list:
        client, p = self.client(), redis_store.prefix(self.name)
        self._require()
        now = []

        def step(pipe) -> None:  # redis-py runs it again if the meta hash changed between WATCH and EXEC
            raw = pipe.hget(p + "meta", "copies")
            old = json.loads(raw) if raw else []
            now[:] = change(list(old))
            if now != old:
                pipe.multi()
                if now:
                    pipe.hset(p + "meta", "copies", json.dumps(now))
                else:
                    pipe.hdel(p + "meta", "copies")

        client.transaction(step, p + "meta")
        return list(now)

    def set_persons(self, found: dict) -> int:
        client, p = self.client(), redis_store.prefix(self.name)
        labels = client.smembers(p + "labels")
        pipe = client.pipeline(transaction=False)
        for lab in labels:
            pipe.hkeys(p.encode() + b"id:" + lab)
        have = {f.decode() for keys in (pipe.execute() if labels else []) for f in keys}
        mine = {f: list(v) for f, v in found.items() if f in have}
        self.write_meta(persons=mine)
        return len(mine)


class _RedisLoad(Load):
    def __init__(self, store: RedisStore, spec, load, output, shard_files, run_id):
        client = store.client()  # reachable and of this spec, before anything is embedded
        redis_store.check_spec(client, store.name, spec, create=True)
        self.store, self.spec, self.load, self.output, self.files, self.run_id = (store, spec, load, output,
                                                                                    shard_files, run_id)

    def finish(self, result) -> dict:
        from facebeam.transforms.stores import registry

        # After an incremental run only its own partition: a plain run re-sends everything (idempotent by face_id).
        files = self.files if self.files is not None else (
            registry.partition_files(self.output, self.run_id) if self.run_id else registry.run_files(self.output))
        return self.store.load_shards(files, self.spec, self.load.bulk.chunk_docs, self.load.bulk.max_retries)
