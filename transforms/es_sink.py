"""Bulk-index face rows into Elasticsearch: chunks by count and bytes, retries, dead letters.

elasticsearch-py's `streaming_bulk` cuts and sends the chunks. It retries only
429s and lets a connection error escape, so the retry policy is here: 429, 5xx and
connection errors are retried with exponential backoff and jitter; anything else,
or what is still failing after the last try, goes to a dead-letter output with
Elasticsearch's reason, carrying the original row.
"""
import dataclasses
import logging
import random
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from facebeam.transforms import es_index
from facebeam.transforms import metrics
from facebeam.transforms.es_conn import EsConnection
from facebeam.transforms.errors import UserError
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

    def __post_init__(self):
        if self.chunk_docs < 1 or self.chunk_bytes < 1024:
            raise UserError("chunk_docs must be >= 1 and chunk_bytes >= 1024")
        if self.max_retries < 0 or self.initial_backoff_s < 0 or self.max_backoff_s < self.initial_backoff_s:
            raise UserError("retries and backoff must be non-negative, max_backoff >= initial_backoff")

    def backoff(self, attempt: int, rng=random) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * (2 ** attempt))
        return cap / 2 + rng.uniform(0, cap / 2)


def retryable(status) -> bool:
    # 'N/A' or None: no HTTP answer at all (refused, reset, timed out).
    return status in (None, "N/A", 408, 429) or (isinstance(status, int) and status >= 500)


@dataclasses.dataclass
class BulkOutcome:
    indexed: int = 0
    retried: int = 0
    failed: list = dataclasses.field(default_factory=list)  # (row, status, error)


def bulk_index(client, rows, cfg: BulkConfig, sleep=time.sleep, on_retry=None) -> BulkOutcome:
    """Index rows with the bulk `index` op (`_id` = face_id, so a replay overwrites)."""
    from elasticsearch import helpers
    from elasticsearch.exceptions import ConnectionError as EsConnectionError, ConnectionTimeout

    out = BulkOutcome()
    pending = list(rows)
    for attempt in range(cfg.max_retries + 1):
        retry, done, last_error = [], 0, None
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
                    continue
                item = next(iter(info.values()))
                status = item.get("status")
                if retryable(status) and attempt < cfg.max_retries:
                    retry.append(row)
                else:
                    out.failed.append((row, status, _reason(item.get("error"))))
        except (EsConnectionError, ConnectionTimeout) as e:
            # The chunk in flight and everything after it were not answered.
            last_error = e
            if attempt < cfg.max_retries:
                retry.extend(pending[done:])
            else:
                out.failed.extend((row, "N/A", f"{type(e).__name__}: {e}") for row in pending[done:])
        if not retry:
            break
        out.retried += len(retry)
        delay = cfg.backoff(attempt)
        log.warning("bulk: %d docs to retry (attempt %d/%d, %s), waiting %.1fs",
                    len(retry), attempt + 1, cfg.max_retries, type(last_error).__name__ if last_error else "item errors", delay)
        if on_retry:
            on_retry(len(retry))
        sleep(delay)
        pending = retry
    return out


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

    def setup(self):
        self._client = self._conn.client()

    def process(self, batch):
        started = time.perf_counter()
        outcome = bulk_index(self._client, batch, self._cfg)
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
