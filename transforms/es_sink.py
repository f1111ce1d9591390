"""Bulk-index face rows into Elasticsearch: chunks by count and bytes, retries, dead letters.

elasticsearch-py's `streaming_bulk` cuts and sends the chunks. It retries only
429s and lets a connection error escape, so the retry policy is here:

- 429, 408 and 5xx answers are retried with exponential backoff and jitter, at most
  `max_retries` times; what still fails then, and any other refusal of a document (400 ...),
  goes to a dead-letter output with Elasticsearch's reason, carrying the original row.
- No answer at all (refused, reset, timed out) is retried until the cluster answers again:
  such docs were never looked at, so they are never dead-lettered.
- A cluster or index block (a write block, read-only, the flood-stage disk watermark; Elasticsearch's
  `cluster_block_exception`, answered with a 403 or a 429) stops the job at once with `EsBlocked`,
  naming the block and how to lift it; nothing is dead-lettered. Any other 401 / 403 stops it with
  `EsAuthError` (the credentials or permissions changed, e.g. a restarted cluster). Either way nothing
  is wrong with the documents, so none is dead-lettered.
- A whole-job deadline for a cluster that stays down (`down_deadline_s`, `--es-down-deadline`):
  each worker process keeps, per cluster, the time of its first failed bulk since its last
  successful one (`ClusterWatch`); once that is `down_deadline_s` ago it raises `EsDownDeadline`
  naming the cluster and the deadline. Unsent docs are not dead-lettered: a re-run finishes the
  load (`_id` = face_id, so it is idempotent).
"""
import dataclasses
import logging
import random
import threading
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from facebeam.transforms import es_index, metrics
from facebeam.transforms.errors import UserError
from facebeam.transforms.es_conn import (
    EsAuthError,
    EsConnection,
    EsError,
    EsUnavailable,
    block_of,
    blocked_error,
    client_url,
)
from facebeam.transforms.progress import INDEX

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BulkConfig:
    index: str
    chunk_docs: int = 500
    chunk_bytes: int = 10 * 1024 * 1024
    max_retries: int = 8
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    down_deadline_s: float = 300.0  # stop once the cluster has not answered a bulk for this long

    def __post_init__(self):
        if self.chunk_docs < 1 or self.chunk_bytes < 1024:
            raise UserError("chunk_docs must be >= 1 and chunk_bytes >= 1024")
        if self.max_retries < 0 or self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise UserError("retries and backoff must be non-negative, max_backoff >= initial_backoff")
        if not self.down_deadline_s > 0:
            raise UserError("the es-down deadline must be a positive number of seconds")

    def backoff(self, attempt: int, rng=random) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * (2 ** attempt))
        return cap / 2 + rng.uniform(0, cap / 2)


class EsDownDeadline(EsError):
    """The cluster stayed unreachable for longer than the down deadline; raised on a worker."""


AUTH_STATUSES = (401, 403)


def retryable(status) -> bool:
    # 'N/A' or None: no HTTP answer at all (refused, reset, timed out).
    return status in (None, "N/A", 408, 429) or (isinstance(status, int) and status >= 500)


def unanswered(status) -> bool:
    return status in (None, "N/A")


def down(status) -> bool:
    """A status that means the cluster is not serving writes: no answer, or a 5xx."""
    return unanswered(status) or (isinstance(status, int) and status >= 500)


class ClusterWatch:
    """Since when a cluster has failed every bulk (None while it answers); shared by a worker's threads."""

    def __init__(self, deadline_s: float, clock=time.monotonic):
        self.deadline_s, self.clock = deadline_s, clock
        self.down_since = None
        self._lock = threading.Lock()

    def ok(self) -> None:
        with self._lock:
            self.down_since = None

    def failed(self) -> float:
        """Record a failed attempt; returns for how long the cluster has been down."""
        with self._lock:
            now = self.clock()
            if self.down_since is None:
                self.down_since = now
            return now - self.down_since

    def remaining(self) -> float:
        with self._lock:
            if self.down_since is None:
                return self.deadline_s
            return self.deadline_s - (self.clock() - self.down_since)





@dataclasses.dataclass
class BulkOutcome:
    indexed: int = 0
    retried: int = 0
    failed: list = dataclasses.field(default_factory=list)  # (row, status, error)


def bulk_index(client, rows, cfg: BulkConfig, sleep=time.sleep, on_retry=None, watch=None, url=None) -> BulkOutcome:
    """Index rows with the bulk `index` op (`_id` = face_id, so a replay overwrites).

    Raises `EsBlocked` on a cluster/index block, `EsAuthError` on any other 401/403, and `EsDownDeadline`
    once `watch` (default: one for this call) has seen the cluster fail every bulk for `cfg.down_deadline_s`;
    see the module docstring.
    """
    from elasticsearch import helpers
    from elasticsearch.exceptions import ConnectionError as EsConnectionError
    from elasticsearch.exceptions import ConnectionTimeout

    watch = watch or ClusterWatch(cfg.down_deadline_s)
    out = BulkOutcome()
    pending = list(rows)
    answered_tries = 0  # retries of docs the cluster answered with a retryable error (bounded by max_retries)
    attempt = 0  # backoff exponent
    while pending:
        retry, done, last_error, indexed_now, was_down, answered_retry = [], 0, None, 0, False, False
        actions = [{"_op_type": "index", "_index": cfg.index, "_id": r["face_id"], "_source": es_index.document(r)}
                   for r in pending]
        try:
            results = helpers.streaming_bulk(
                client, actions, chunk_size=cfg.chunk_docs, max_chunk_bytes=cfg.chunk_bytes,
                raise_on_error=False, raise_on_exception=False, max_retries=0, refresh=False)
            for row, (ok, info) in zip(pending, results):
                done += 1
                if ok:
                    out.indexed += 1
                    indexed_now += 1
                    continue
                item = next(iter(info.values()))
                status = item.get("status")
                if block_of(item.get("error")):  # a 403 or 429 that no retry and no credentials can fix
                    raise blocked_error(url or client_url(client), cfg.index, item.get("error"),
                                        f" (this worker had indexed {out.indexed} docs of its batch)")
                if status in AUTH_STATUSES:
                    raise _auth_error(url or client_url(client), status, item.get("error"), out.indexed)
                was_down = was_down or down(status)
                if unanswered(status):
                    retry.append(row)
                elif retryable(status) and answered_tries < cfg.max_retries:
                    retry.append(row)
                    answered_retry = True
                else:
                    out.failed.append((row, status, _reason(item.get("error"))))
        except (EsConnectionError, ConnectionTimeout) as e:
            if _cert_refused(e):  # e.g. a cluster restarted with new certificates: retrying cannot help
                raise EsUnavailable(f"Elasticsearch at {url or client_url(client)}: TLS certificate verification "
                                    "failed in the middle of the load (did the cluster get new certificates?). Nothing "
                                    "was dead-lettered; fix --es-ca-certs and run the same command again") from None
            # The chunk in flight and everything after it were not answered: never dead-lettered.
            last_error, was_down = e, True
            retry.extend(pending[done:])
        if indexed_now:
            watch.ok()
        elif was_down:
            down_for = watch.failed()
            if down_for >= watch.deadline_s:
                raise _down_error(url or client_url(client), watch.deadline_s, down_for, len(retry), last_error)
        if not retry:
            break
        answered_tries += answered_retry
        out.retried += len(retry)
        delay = cfg.backoff(attempt)
        if watch.down_since is not None:
            delay = min(delay, max(watch.remaining(), 0.0) + 0.05)
        log.warning("bulk: %d docs to retry (attempt %d, %s), waiting %.1fs",
                    len(retry), attempt + 1, type(last_error).__name__ if last_error else "item errors", delay)
        if on_retry:
            on_retry(len(retry))
        sleep(delay)
        attempt += 1
        pending = retry
    return out


def _cert_refused(error) -> bool:
    import ssl

    seen, cause = 0, error
    while cause is not None and seen < 8:
        if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cause):
            return True
        nxt = getattr(cause, "errors", None) or ()
        cause = nxt[0] if nxt else (cause.__cause__ or cause.__context__)
        seen += 1
    return False


def _auth_error(url: str, status, error, indexed: int) -> EsAuthError:
    return EsAuthError(
        f"Elasticsearch at {url} refused the load with HTTP {status} ({_reason(error)[:200]}) after this worker "
        f"indexed {indexed} docs of its batch: the credentials or their permissions changed (e.g. a restarted cluster "
        "with new ones). Nothing was dead-lettered; fix the credentials and run the same command again "
        "(writes are idempotent by face_id)")


def _down_error(url: str, deadline: float, down_for: float, pending: int, error) -> EsDownDeadline:
    cause = f": {type(error).__name__}" if error is not None else ""
    return EsDownDeadline(
        f"Elasticsearch at {url} has been unreachable for {down_for:.0f} s, past the deadline of {deadline:g} s "
        f"(--es-down-deadline){cause}. Stopped; {pending} unsent docs of the batch in flight were not dead-lettered: "
        "run the same command again once the cluster is back (writes are idempotent by face_id)")


def _reason(error) -> str:
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error)


class IndexBatches(beam.DoFn):
    """A batch of face rows -> Elasticsearch; yields dead-letter rows for what failed for good."""

    def __init__(self, conn: EsConnection, cfg: BulkConfig):
        self._conn, self._cfg = conn, cfg
        self._indexed = metrics.counter(metrics.DOCS_INDEXED)
        self._failed = metrics.counter(metrics.DOCS_FAILED)
        self._retried = metrics.counter(metrics.DOCS_RETRIED)
        self._requests = Metrics.distribution(metrics.NAMESPACE, "bulk_batch_ms")
        self._watches = shared.Shared()

    def setup(self):
        self._client = self._conn.client()
        # One watch per worker process and cluster (Beam runs DoFns in several threads of a process).
        self._watch = self._watches.acquire(lambda: ClusterWatch(self._cfg.down_deadline_s),
                                            tag=f"{self._conn.url}|{self._cfg.down_deadline_s}")

    def process(self, batch):
        started = time.perf_counter()
        outcome = bulk_index(self._client, batch, self._cfg, watch=self._watch, url=self._conn.url)
        self._requests.update(int((time.perf_counter() - started) * 1000))
        self._indexed.inc(outcome.indexed)
        self._retried.inc(outcome.retried)
        self._failed.inc(len(outcome.failed))
        INDEX.add(docs=outcome.indexed, failed=len(outcome.failed), retried=outcome.retried)
        for row, status, error in outcome.failed:
            yield {**row, "es_status": str(status), "es_error": error}

    def teardown(self):
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()


class IndexFaces(beam.PTransform):
    """Face rows -> Elasticsearch; returns the dead-letter rows (face row + es_status, es_error)."""

    def __init__(self, conn: EsConnection, cfg: BulkConfig):
        super().__init__()
        self._conn, self._cfg = conn, cfg

    def expand(self, rows):
        return (rows
                | "Batch" >> beam.BatchElements(min_batch_size=min(50, self._cfg.chunk_docs),
                                                max_batch_size=self._cfg.chunk_docs * 4)
                | "Bulk" >> beam.ParDo(IndexBatches(self._conn, self._cfg)))


def dead_letter_schema(face_schema):
    import pyarrow as pa

    return face_schema.append(pa.field("es_status", pa.string())).append(pa.field("es_error", pa.string()))
