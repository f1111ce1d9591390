"""Redis as an identity store: labeled face vectors keyed by identity, verified on the server.

Layout under a key prefix `facebeam:<name>:` (`--index NAME`, default "faces"):

    <prefix>spec          hash: spec (JSON), spec_id, dim, metric    (refuses faces of another spec)
    <prefix>labels        set of the identity labels loaded
    <prefix>id:<label>    hash: face_id -> float32 little-endian bytes of the embedding
    <prefix>img:<sha256>  set of "<label>\\t<face_id>" of that image (so `forget` finds its faces)

Loads send pipelined chunks (`HSET` per face, keyed by face_id, so a replay overwrites
and is idempotent) and retry a chunk on connection errors and timeouts with backoff.
`verify` runs one Lua script (EVALSHA, loaded once) over the label's hash on the server:
it decodes each float32 vector with `struct.unpack` and returns the face closest to the
probe and its distance under the spec's metric, so only the probe and one answer cross
the network.

Secrets: the password comes from `FACEBEAM_REDIS_PASSWORD` or the connection file
(`<FACEBEAM_HOME>/redis/connection.json`, 0600, written by `facebeam redis up`), is read
only when a client is made, and is never part of a pickled `RedisConn` nor of any message.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np

from facebeam.transforms.errors import UserError
from facebeam.transforms.home import facebeam_home
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)
ENV_PASSWORD = "FACEBEAM_REDIS_PASSWORD"
ENV_URL = "FACEBEAM_REDIS_URL"
ENV_CONN = "FACEBEAM_REDIS_CONN"
DEFAULT_PORT = 6390


class RedisError(UserError):
    """Redis is unreachable, refuses the credentials, or holds something else than asked."""


class RedisNotConfigured(RedisError):
    """No Redis named anywhere (flag, environment or connection file): automatic choices look elsewhere."""


def conn_file_default() -> Path:
    return facebeam_home() / "redis" / "connection.json"


@dataclasses.dataclass(frozen=True)
class RedisConn:
    """Where Redis is; the password is looked up (env, then the connection file) only in `client()`."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    conn_file: str | None = None
    timeout_s: float = 5.0

    @classmethod
    def resolve(cls, url: str | None = None, conn_file: str | None = None) -> RedisConn:
        """--redis-url / FACEBEAM_REDIS_URL (host:port), else the connection file's host and port."""
        url = url or os.environ.get(ENV_URL)
        path = conn_file or os.environ.get(ENV_CONN)
        default = conn_file_default()
        if url:
            host, _, port = url.removeprefix("redis://").rstrip("/").rpartition(":")
            if not host or not port.isdigit():
                raise RedisError(f"Redis URL must be HOST:PORT (or redis://HOST:PORT), got {url!r}")
            return cls(host=host, port=int(port), conn_file=path or (str(default) if default.is_file() else None))
        path = path or str(default)
        info = _read_conn(path)
        if info is None:
            raise RedisNotConfigured(f"no Redis configured: run `facebeam redis up`, or pass --redis-url HOST:PORT with "
                             f"{ENV_PASSWORD} set (no connection file at {path})")
        return cls(host=info.get("host", "127.0.0.1"), port=int(info["port"]), conn_file=path)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def password(self):
        env = os.environ.get(ENV_PASSWORD)
        if env:
            return env
        info = _read_conn(self.conn_file) if self.conn_file else None
        return (info or {}).get("password")

    def client(self):
        import redis

        return redis.Redis(host=self.host, port=self.port, password=self.password(), socket_timeout=self.timeout_s,
                           socket_connect_timeout=min(self.timeout_s, 3.0), decode_responses=False)

    def check(self, client=None):
        """One PING with a short timeout; a clear RedisError (no secret in it) when it fails."""
        import redis

        client = client or self.client()
        try:
            client.ping()
        except redis.AuthenticationError:
            raise RedisError(f"Redis at {self.url} refused the password (from {self._secret_source()}); "
                             "check it, or run `facebeam redis status`") from None
        except redis.ResponseError as e:
            text = str(e)
            if "NOAUTH" in text or "WRONGPASS" in text or "invalid password" in text:
                raise RedisError(f"Redis at {self.url} refused the password (from {self._secret_source()}); "
                                 "check it, or run `facebeam redis status`") from None
            raise RedisError(f"Redis at {self.url} answered an error: {text[:200]}") from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise RedisError(f"Redis at {self.url} is unreachable: {type(e).__name__}: {str(e)[:200]} "
                             "(start one with `facebeam redis up`)") from None
        return client

    def _secret_source(self) -> str:
        if os.environ.get(ENV_PASSWORD):
            return ENV_PASSWORD
        return f"connection file {self.conn_file}" if self.conn_file else "nowhere: no password set"


def _read_conn(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# --- keys -----------------------------------------------------------------------------------
def prefix(name: str) -> str:
    return f"facebeam:{name}:"


def pack(vector) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def check_spec(client, name: str, spec: EmbeddingSpec, create: bool) -> None:
    """Refuse faces/probes of another spec (SpecError); with `create`, record this one on an empty store."""
    key = prefix(name) + "spec"
    stored = client.hgetall(key)
    if not stored:
        if not create:
            raise RedisError(f"no face store {name!r} in Redis: run `facebeam index --store redis --index {name}` first")
        client.hset(key, mapping={"spec": spec.to_json(), "spec_id": spec.spec_id, "dim": spec.dim,
                                  "metric": spec.metric})
        return
    spec.require_same(EmbeddingSpec.from_json(stored[b"spec"].decode()), what=f"Redis store {name!r}")


def stored_spec(client, name: str) -> EmbeddingSpec:
    stored = client.hgetall(prefix(name) + "spec")
    if not stored:
        raise RedisError(f"no face store {name!r} in Redis: run `facebeam index --store redis --index {name}` first")
    return EmbeddingSpec.from_json(stored[b"spec"].decode())


# --- loading --------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadOutcome:
    loaded: int = 0
    skipped_unlabeled: int = 0
    retried_chunks: int = 0
    chunks: int = 0


def load_rows(client, name: str, rows, chunk: int = 1000, max_retries: int = 8, initial_backoff_s: float = 0.2,
              sleep=time.sleep) -> LoadOutcome:
    """Labeled face rows -> one hash per label (face_id -> float32 bytes), in pipelined chunks with retries.

    Unlabeled faces are skipped (verification needs an identity). Replays overwrite the same fields.
    """
    import redis

    p = prefix(name)
    out = LoadOutcome()
    batch = []

    def send(items):
        attempt = 0
        while True:
            try:
                pipe = client.pipeline(transaction=False)
                for r in items:
                    label = r["label"]
                    pipe.hset(p + "id:" + label, r["face_id"], pack(r["embedding"]))
                    pipe.sadd(p + "img:" + r["image_sha256"], f"{label}\t{r['face_id']}")
                    pipe.sadd(p + "labels", label)
                pipe.execute()
                return
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if attempt >= max_retries:
                    raise RedisError(f"Redis stayed unreachable while loading ({type(e).__name__}) after "
                                     f"{max_retries} retries; run the same command again (loads are idempotent)") from None
                delay = min(10.0, initial_backoff_s * 2 ** attempt)
                out.retried_chunks += 1
                log.warning("redis load: chunk of %d faces failed (%s), retry %d in %.1fs",
                            len(items), type(e).__name__, attempt + 1, delay)
                sleep(delay / 2 + random.uniform(0, delay / 2))
                attempt += 1

    for r in rows:
        if not r.get("label"):
            out.skipped_unlabeled += 1
            continue
        batch.append(r)
        if len(batch) >= chunk:
            send(batch)
            out.loaded += len(batch)
            out.chunks += 1
            batch = []
    if batch:
        send(batch)
        out.loaded += len(batch)
        out.chunks += 1
    return out


def count(client, name: str) -> int:
    p = prefix(name)
    labels = client.smembers(p + "labels")
    pipe = client.pipeline(transaction=False)
    for lab in labels:
        pipe.hlen(p.encode() + b"id:" + lab)
    return int(sum(pipe.execute())) if labels else 0


def forget_images(client, name: str, shas, dry_run: bool = False) -> int:
    """Remove every face of those images; returns how many faces went (or would go)."""
    p = prefix(name)
    removed = 0
    for sha in shas:
        members = client.smembers(p + "img:" + sha)
        removed += len(members)
        if dry_run or not members:
            continue
        pipe = client.pipeline(transaction=True)
        for m in members:
            label, _, face_id = m.decode().partition("\t")
            pipe.hdel(p + "id:" + label, face_id)
        pipe.delete(p + "img:" + sha)
        pipe.execute()
    if removed and not dry_run:
        # Labels left with no face leave the set, so `verify` says "unknown identity" for them.
        for lab in client.smembers(p + "labels"):
            if not client.exists(p.encode() + b"id:" + lab):
                client.srem(p + "labels", lab)
    return removed


# --- verification on the server ---------------------------------------------------------------
# KEYS[1]: the label's hash. ARGV: probe (float32 bytes), dim, metric. Returns {face_id, distance as text, n}.
# struct.unpack returns its values on the Lua stack: vectors are decoded 32 floats at a time.
VERIFY_LUA = """
local probe, dim, metric = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local step = dim <= 1024 and dim or 256
local function decode(blob)
  if step == dim then return {struct.unpack(string.rep('<f', dim), blob)} end
  local out, pos, i = {}, 1, 0
  while i < dim do
    local m = math.min(step, dim - i)
    local vals = {struct.unpack(string.rep('<f', m), blob, pos)}
    for j = 1, m do out[i + j] = vals[j] end
    pos = vals[m + 1]
    i = i + m
  end
  return out
end
local function norm(v)
  local s = 0
  for i = 1, dim do s = s + v[i] * v[i] end
  return math.sqrt(s)
end
local q = decode(probe)
local qn = norm(q)
if metric == 'euclidean_l2' then for i = 1, dim do q[i] = q[i] / qn end end
local all = redis.call('HGETALL', KEYS[1])
local best, best_sq, best_id = nil, math.huge, false
for k = 1, #all, 2 do
  local v = decode(all[k + 1])
  if metric == 'cosine' then
    local dot = 0
    for i = 1, dim do dot = dot + q[i] * v[i] end
    local d = 1 - dot / (qn * norm(v))
    if best == nil or d < best then best, best_id = d, all[k] end
  else
    local scale = 1
    if metric == 'euclidean_l2' then scale = 1 / norm(v) end
    -- squared distance, abandoned as soon as it passes the best so far
    local s, i = 0, 1
    while i <= dim and s < best_sq do
      local t = q[i] - v[i] * scale
      s = s + t * t
      i = i + 1
    end
    if s < best_sq then best_sq, best_id = s, all[k] end
    best = math.sqrt(best_sq)
  end
end
if best == nil or best_id == false then return {false, false, 0} end
return {best_id, string.format('%.9g', best), #all / 2}
"""


class Verifier:
    """EVALSHA of VERIFY_LUA (loaded once per client; re-loaded after a server restart)."""

    def __init__(self, client, name: str, spec: EmbeddingSpec):
        self.client, self.name, self.spec = client, name, spec
        self.sha = client.script_load(VERIFY_LUA)

    def closest(self, vector, label: str) -> tuple:
        """(face_id or None, distance or None, faces of that label) for one probe vector."""
        import redis

        key = prefix(self.name) + "id:" + label
        args = (pack(vector), self.spec.dim, self.spec.metric)
        try:
            face_id, dist, n = self.client.evalsha(self.sha, 1, key, *args)
        except redis.exceptions.NoScriptError:
            self.sha = self.client.script_load(VERIFY_LUA)
            face_id, dist, n = self.client.evalsha(self.sha, 1, key, *args)
        if not n:
            return None, None, 0
        return face_id.decode(), float(dist), int(n)

    def labels(self) -> set:
        return {x.decode() for x in self.client.smembers(prefix(self.name) + "labels")}
