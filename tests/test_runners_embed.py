"""The real embed and index jobs on Flink and Spark give what the local runner gives.

The cluster presets run EXTERNAL on the clusters' worker pools (tests/test_worker_pools.py
checks the pools themselves); the embedded ones LOOPBACK."""
import os

import numpy as np
import pytest

from facebeam.pipelines import embed, index
from facebeam.pipelines.runner.presets import PRESET_CLUSTERS, RUNNER_PRESETS
from tests.es_fixtures import SESSION_HOME
from tests.helpers import SAMPLE, drop_versions, job, read_rows

# Beam's LOOPBACK data-plane thread logs "Multiplexer hanging up" when a finished bundle's channel closes.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
CONN = str(SESSION_HOME / "connection.json")
PHOTOS = ["couple.jpg", "img1.jpg", "img5.jpg", "img12.jpg", "img25.jpg", "img33.jpg"]


@pytest.fixture(scope="module")
def photo_list(tmp_path_factory):
    listing = tmp_path_factory.mktemp("runner-photos") / "photos.txt"
    listing.write_text("\n".join(os.path.join(SAMPLE, p) for p in PHOTOS) + "\n")
    return str(listing)


@pytest.fixture(scope="module")
def direct_rows(photo_list, tmp_path_factory):
    out = tmp_path_factory.mktemp("direct")
    job(embed, ["--input", photo_list, "--output", str(out)])
    return {r["face_id"]: r for r in read_rows(str(out / "embeddings"))}


@pytest.mark.parametrize("runner", ["flink-embedded", "flink-cluster", "spark-local", "spark-cluster"])
def test_embed_matches_the_local_runner(runner, photo_list, direct_rows, tmp_path, local_cluster):
    if PRESET_CLUSTERS.get(runner):
        local_cluster(PRESET_CLUSTERS[runner])
    summary = job(embed, ["--input", photo_list, "--output", str(tmp_path), *RUNNER_PRESETS[runner]])
    rows = {r["face_id"]: r for r in read_rows(str(tmp_path / "embeddings"))}
    assert rows.keys() == direct_rows.keys() and len(rows) >= len(PHOTOS) + 1
    for fid, row in rows.items():
        np.testing.assert_allclose(row["embedding"], direct_rows[fid]["embedding"], rtol=0, atol=1e-6)
    assert summary["images_seen"] == len(PHOTOS) == summary["images_embedded"]
    assert summary["runner"] != "DirectRunner(FnApiRunner)"


def test_index_on_spark_lands_the_same_count_as_direct(sample_run, es_client):
    shards, _ = sample_run
    try:
        direct = job(index, ["--shards", shards, "--index", "runner-direct", "--es-conn", CONN])
        spark = job(index, ["--shards", shards, "--index", "runner-spark", "--es-conn", CONN,
                           *RUNNER_PRESETS["spark-local"]])
        assert spark["failed"] == direct["failed"] == 0
        assert spark["doc_count"] == direct["doc_count"] == direct["rows_read"] > 60
    finally:
        drop_versions(es_client, "runner-direct")
        drop_versions(es_client, "runner-spark")
