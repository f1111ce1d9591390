"""The retry policy against a real cluster, with faults injected on chosen bulk calls."""
import elastic_transport
import pytest
from elasticsearch import ApiError
from elasticsearch.exceptions import ConnectionError as EsConnectionError

from facebeam.transforms import es_index as indices
from facebeam.transforms.es_sink import BulkConfig, bulk_index
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import drop_versions, synthetic_shards


class FlakyClient:
    """A real client whose N-th bulk call fails the way we choose; counts bulk calls."""

    def __init__(self, client, faults):
        self._client, self._faults, self.calls = client, faults, 0

    def options(self, **kw):
        return FlakyClient(self._client.options(**kw), self._faults) if kw else self

    def bulk(self, *args, **kwargs):
        self.calls += 1
        fault = self._faults.get(self.calls)
        if fault == "connection":
            raise EsConnectionError("injected: connection reset")
        if isinstance(fault, int):
            meta = elastic_transport.ApiResponseMeta(
                status=fault, http_version="1.1", headers=elastic_transport.HttpHeaders(), duration=0.0,
                node=elastic_transport.NodeConfig("https", "127.0.0.1", 9250))
            raise ApiError(f"injected HTTP {fault}", meta=meta, body={"error": {"type": "injected", "reason": str(fault)}})
        return self._client.bulk(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


@pytest.fixture
def target(es_client, es_index, tmp_path):
    spec = EmbeddingSpec()
    rows = synthetic_shards(str(tmp_path), 120, spec)
    concrete, _ = indices.prepare_load(es_client, es_index, spec)
    yield concrete, rows
    drop_versions(es_client, es_index)


def test_connection_errors_and_5xx_are_retried_with_growing_backoff(es_client, target):
    concrete, rows = target
    flaky = FlakyClient(es_client, {2: "connection", 3: 503, 5: 502})
    sleeps = []
    out = bulk_index(flaky, rows, BulkConfig(index=concrete, chunk_docs=40, initial_backoff_s=0.1), sleep=sleeps.append)
    assert out.indexed == len(rows) and out.failed == []
    assert out.retried > 0 and flaky.calls > 3
    assert len(sleeps) >= 2 and sleeps[1] >= 0.1  # the second wait is on the doubled scale
    es_client.indices.refresh(index=concrete)
    assert es_client.count(index=concrete).body["count"] == len(rows)


def test_client_errors_go_to_dead_letters_with_the_reason(es_client, target):
    concrete, rows = target
    bad = dict(rows[0], embedding=[0.0] * 3)  # wrong dimension: Elasticsearch refuses it
    out = bulk_index(es_client, [bad] + rows[1:10], BulkConfig(index=concrete), sleep=lambda s: None)
    assert out.indexed == 9 and len(out.failed) == 1
    row, status, reason = out.failed[0]
    assert row["face_id"] == bad["face_id"] and status == 400 and "dimensions" in reason


def test_retries_give_up_after_max_retries(es_client, target):
    concrete, rows = target
    flaky = FlakyClient(es_client, dict.fromkeys(range(1, 100), 503))
    out = bulk_index(flaky, rows[:10], BulkConfig(index=concrete, max_retries=3), sleep=lambda s: None)
    assert out.indexed == 0 and len(out.failed) == 10 and flaky.calls == 4
    assert all(status == 503 for _, status, _ in out.failed)
