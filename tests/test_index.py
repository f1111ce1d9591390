"""Bulk indexing into a real Elasticsearch: counts, replays, kNN, spec checks, failures."""
import logging
import os
import re
import threading
import time

import numpy as np
import pytest
from elasticsearch import helpers

from facebeam.pipelines import index
from facebeam.transforms import es_index as es_mapping
from facebeam.transforms.spec import EmbeddingSpec
from facebeam.transforms.summary import JobSummary
from tests.es_fixtures import SESSION_HOME
from tests.helpers import drop_versions, job, on_a_terminal, read_rows, synthetic_shards

CONN = str(SESSION_HOME / "connection.json")


def count(client, name):
    client.indices.refresh(index=name)
    return client.count(index=name).body["count"]


@pytest.fixture
def alias(es_client, es_index):
    yield es_index
    drop_versions(es_client, es_index)


def test_sample_lands_once_and_each_face_finds_itself(sample_run, es_conn, es_client, alias):
    shards, _ = sample_run
    rows = read_rows(os.path.join(shards, "embeddings"))
    first = job(index, ["--shards", shards, "--index", alias, "--es-conn", CONN])
    assert first["rows_read"] == first["indexed"] == len(rows) and first["failed"] == 0
    assert count(es_client, alias) == len(rows) == first["doc_count"]
    again = job(index, ["--shards", shards, "--index", alias, "--es-conn", CONN])
    assert again["concrete_index"] == first["concrete_index"]
    assert count(es_client, alias) == len(rows)
    assert read_rows(again["index_errors"]) == []
    assert os.listdir(os.path.join(shards, "index-errors")) == [os.path.basename(again["index_errors"])]
    searches = []
    for r in rows:
        searches += [{"index": alias}, {"knn": {"field": "embedding", "query_vector": r["embedding"], "k": 1,
                                                "num_candidates": 50}, "_source": False, "size": 1}]
    answers = es_client.msearch(searches=searches).body["responses"]
    assert [a["hits"]["hits"][0]["_id"] for a in answers] == [r["face_id"] for r in rows]
    settings = es_client.indices.get_settings(index=first["concrete_index"]).body[first["concrete_index"]]["settings"]["index"]
    assert "refresh_interval" not in settings  # restored to the default after the load


@pytest.mark.parametrize("index_type", es_mapping.INDEX_TYPES)
def test_every_index_type_is_accepted_and_finds_each_face(index_type, sample_run, es_client, es_index):
    """The mapping of each --index-type is valid on the real server; quantized ones rescore on floats."""
    rows = read_rows(os.path.join(sample_run[0], "embeddings"))
    spec = EmbeddingSpec()
    es_client.indices.create(index=es_index, **es_mapping.index_body(spec, index_type))
    ok, errors = helpers.bulk(es_client, ({"_index": es_index, "_id": r["face_id"], **es_mapping.document(r)}
                                          for r in rows), refresh=True, raise_on_error=False)
    assert ok == len(rows) and not errors
    knn = {"field": "embedding", "k": 1, "num_candidates": 50}
    if es_mapping.quantized(index_type):
        knn["rescore_vector"] = {"oversample": 3.0}
    searches = []
    for r in rows:
        searches += [{"index": es_index}, {"knn": {**knn, "query_vector": r["embedding"]}, "_source": False}]
    answers = es_client.msearch(searches=searches).body["responses"]
    assert [a["hits"]["hits"][0]["_id"] for a in answers] == [r["face_id"] for r in rows]


def test_shards_of_another_spec_are_refused_before_any_write(tmp_path, es_client, alias):
    synthetic_shards(str(tmp_path / "a"), 20, EmbeddingSpec())
    assert index.main(["--shards", str(tmp_path / "a"), "--index", alias, "--es-conn", CONN]) == 0
    other = EmbeddingSpec(detect_max_side=320)
    synthetic_shards(str(tmp_path / "b"), 30, other, seed=1)
    with pytest.raises(Exception, match="embedding spec mismatch.*detect_max_side"):
        job(index, ["--shards", str(tmp_path / "b"), "--index", alias, "--es-conn", CONN])
    assert index.main(["--shards", str(tmp_path / "b"), "--index", alias, "--es-conn", CONN]) == 2
    assert count(es_client, alias) == 20
    assert not (tmp_path / "b" / "index-errors").exists()


def test_unreachable_cluster_fails_fast_and_writes_nothing(tmp_path, caplog):
    synthetic_shards(str(tmp_path), 10, EmbeddingSpec())
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        code = index.main(["--shards", str(tmp_path), "--index", "faces", "--es-url", "https://127.0.0.1:9"])
    assert code == 2 and time.monotonic() - started < 15
    assert "unreachable" in caplog.text and "127.0.0.1:9" in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["embeddings"]


def test_wrong_password_is_a_clear_error_and_never_printed(tmp_path, monkeypatch, caplog, capsys):
    synthetic_shards(str(tmp_path), 10, EmbeddingSpec())
    secret = "wrong-Secret-4711"
    monkeypatch.setenv("FACEBEAM_ES_PASSWORD", secret)
    with caplog.at_level(logging.DEBUG):
        code = index.main(["--shards", str(tmp_path), "--index", "faces", "--es-conn", CONN])
    printed = capsys.readouterr()
    assert code == 2
    assert "authentication failed" in caplog.text
    assert secret not in caplog.text + printed.out + printed.err


def test_throttled_cluster_rejects_bulks_and_retries_land_every_doc(tmp_path, es_cluster_factory):
    conn = es_cluster_factory(settings={"thread_pool.write.size": 1, "thread_pool.write.queue_size": 1})
    conn_file = str(es_cluster_factory.home(conn) / "connection.json")
    rows = synthetic_shards(str(tmp_path), 3000, EmbeddingSpec(), files=4)
    summary = job(index, ["--shards", str(tmp_path), "--index", "throttled", "--es-conn", conn_file,
                         "--chunk-docs", "25", "--initial-backoff", "0.05", "--max-retries", "12",
                         "--direct_num_workers=4"])
    client = conn.client()
    stats = client.nodes.stats(metric="thread_pool").body["nodes"]
    rejected = sum(n["thread_pool"]["write"]["rejected"] for n in stats.values())
    assert rejected > 0, "the tiny write queue never rejected a bulk: the test did not throttle"
    assert summary["retried"] > 0
    assert summary["failed"] == 0 and summary["indexed"] == len(rows)
    assert count(client, "throttled") == len(rows)


def test_node_killed_mid_load_loses_nothing(tmp_path, es_cluster_factory):
    conn = es_cluster_factory(nodes=3)
    conn_file = str(es_cluster_factory.home(conn) / "connection.json")
    rows = synthetic_shards(str(tmp_path), 8000, EmbeddingSpec(), files=8)
    client = conn.client()
    # The job waits for green at the end: let the lost node's replicas be rebuilt at once rather than after
    # Elasticsearch's one-minute grace for a node that may come back (this cluster's own template).
    client.indices.put_index_template(name="reallocate-at-once", index_patterns=["faces-*"],
                                      template={"settings": {"index.unassigned.node_left.delayed_timeout": "0s"}})
    killed = {}

    def kill_primary_mid_load():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                stats = client.indices.stats(index="faces", metric="indexing").body["_all"]["primaries"]
                done = stats["indexing"]["index_total"]
            except Exception:  # noqa: BLE001 - a node being killed may not answer: nothing yet
                done = 0
            if done > 3000:
                shard = next(s for s in client.cat.shards(index="faces", format="json").body if s["prirep"] == "p")
                killed["node"] = shard["node"]
                killed["at"] = done
                es_cluster_factory.kill_node(conn, shard["node"])
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_primary_mid_load)
    killer.start()
    summary = job(index, ["--shards", str(tmp_path), "--index", "faces", "--es-conn", conn_file,
                         "--replicas", "1", "--load-replicas", "1", "--chunk-docs", "200"])
    killer.join()
    assert killed.get("node"), "no node was killed during the load"
    assert killed["at"] < len(rows), "the load had finished before the kill"
    assert summary["failed"] == 0 and summary["indexed"] >= len(rows)
    assert count(client, "faces") == len(rows)
    assert read_rows(summary["index_errors"]) == []


def test_default_load_restores_the_settings_and_every_doc_is_searchable(tmp_path, es_client, alias):
    """The measured-best load (es_index.DEFAULT_TUNING: a new index has two shards, flat during the load, then
    HNSW built by a merge per shard; DEFAULT_INDEX_TYPE: the graph on int8 copies, hits re-ranked on the floats):
    afterwards the settings are as before the load, every shard holds one segment searched through its graph,
    every doc answers, by id and by its vector, and a kNN search's scores are the float vectors' own. Run
    twice: a new index, then a re-load into it."""
    rows = synthetic_shards(str(tmp_path), 3000, EmbeddingSpec(), files=4)
    ids = [r["face_id"] for r in rows]
    for attempt in range(2):
        summary = job(index, ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN])
        assert summary["failed"] == 0 and summary["indexed"] == summary["doc_count"] == len(rows)
        concrete = summary["concrete_index"]
        settings = es_client.indices.get_settings(index=concrete, flat_settings=True).body[concrete]["settings"]
        assert settings["index.number_of_replicas"] == "0"  # as a new index has it on one node
        for key in ("index.refresh_interval", "index.translog.durability", "index.merge.scheduler.max_thread_count"):
            assert key not in settings, (attempt, key, settings[key])  # back to Elasticsearch's defaults
        field = es_mapping.vector_field(es_client, concrete)
        assert field["index_options"] == {"type": "int8_hnsw", "m": 16, "ef_construction": 100,
                                          "rescore_vector": {"oversample": 3.0}}
        assert summary["vector_type"] == "int8_hnsw"  # and the result line says it
        assert f"into the Elasticsearch index {alias} ({concrete}, int8_hnsw)" in JobSummary.build("index", summary).line()
        assert settings["index.number_of_shards"] == "2"
        if attempt == 0:  # the re-load adds segments; a merge is only for the index a load creates
            assert es_mapping.segments_per_shard(es_client, concrete) == {"0": 1, "1": 1}
            assert graph_search_ops(es_client, alias, rows[0]["embedding"]) < len(rows) / 2
        assert count(es_client, alias) == len(rows)
        hits = es_client.search(index=alias, query={"ids": {"values": ids}}, size=len(ids), _source=False).body
        assert sorted(h["_id"] for h in hits["hits"]["hits"]) == sorted(ids)
        assert self_scores(es_client, alias, rows) == [(i, 1.0) for i in ids]
        assert_float_scores(es_client, alias, rows, rows[::150])


def assert_float_scores(client, alias, rows, probes) -> None:
    """Each probe's top 10 by a plain kNN search carry the scores of their float vectors (l2_norm: 1 / (1 + d^2)),
    not of their int8 copies, which differ in the third or fourth digit."""
    vectors = {r["face_id"]: np.asarray(r["embedding"], np.float32) for r in rows}
    for p in probes:
        hits = client.search(index=alias, knn={"field": "embedding", "query_vector": p["embedding"], "k": 10,
                                               "num_candidates": 100}, size=10, _source=False).body["hits"]["hits"]
        assert len(hits) == 10
        q = np.asarray(p["embedding"], np.float32)
        for h in hits:
            d2 = float(np.sum((vectors[h["_id"]] - q) ** 2))
            assert h["_score"] == pytest.approx(1.0 / (1.0 + d2), rel=1e-5), (h["_id"], h["_score"], d2)


def graph_search_ops(client, alias, vector) -> int:
    """Vectors a kNN search compared, over all shards: far fewer than the docs when each searches a graph
    (a flat segment compares every vector)."""
    profile = client.search(index=alias, knn={"field": "embedding", "query_vector": vector, "k": 10,
                                              "num_candidates": 10}, profile=True, _source=False).body["profile"]
    return sum(s["dfs"]["knn"][0]["vector_operations_count"] for s in profile["shards"])


def test_a_load_killed_before_its_graph_is_built_is_finished_by_the_next_load(tmp_path, es_client, alias):
    """A two-phase load that died mid-bulk leaves its new index flat (no graph, an exact scan). The next
    `facebeam index` into it switches it to HNSW and merges it, like the load that made it would have."""
    from facebeam.transforms.es_index import DEFAULT_TUNING, plan_load

    rows = synthetic_shards(str(tmp_path), 3000, EmbeddingSpec(), files=3)
    plan = plan_load(es_client, alias, EmbeddingSpec(), "hnsw", tuning=DEFAULT_TUNING)
    ok, _ = helpers.bulk(es_client, ({"_index": plan.concrete, "_id": r["face_id"], **es_mapping.document(r)}
                                     for r in rows[:1000]), raise_on_error=False)
    assert ok == 1000  # ... and the job dies here: no switch, no merge
    summary = job(index, ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN])
    assert summary["concrete_index"] == plan.concrete and summary["doc_count"] == len(rows)
    field = es_mapping.vector_field(es_client, plan.concrete)
    assert field["index_options"] == {"type": "hnsw", "m": 16, "ef_construction": 100}
    assert es_mapping.segments_per_shard(es_client, plan.concrete) == {"0": 1, "1": 1}
    assert graph_search_ops(es_client, alias, rows[0]["embedding"]) < len(rows) / 2
    assert self_scores(es_client, alias, rows) == [(r["face_id"], 1.0) for r in rows]


def test_a_flat_index_made_so_stays_flat_when_loaded_again(tmp_path, es_client, alias):
    """An index made `--index-type flat` (an exact scan, no graph) keeps that type through a later plain load: the
    type a new index was made for is in its `_meta`, and only an unfinished two-phase load is finished."""
    rows = synthetic_shards(str(tmp_path), 600, EmbeddingSpec(), files=2)
    first = job(index, ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN, "--index-type", "flat"])
    again = job(index, ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN])
    assert again["concrete_index"] == first["concrete_index"] and again["doc_count"] == len(rows)
    assert es_mapping.vector_field(es_client, first["concrete_index"])["index_options"] == {"type": "flat"}
    assert es_mapping.intended_type(es_client, first["concrete_index"]) == "flat"


def test_a_server_that_cannot_rescore_gets_the_float_graph(tmp_path, es_client, alias, monkeypatch):
    """Before Elasticsearch 8.18 a mapping takes no `rescore_vector`, so a quantized graph would answer with int8
    distances. There the default type becomes the float graph it quantizes (hnsw), made and merged the default way.
    The injected fault: the cluster reports 8.15 (this one is 8.19)."""
    monkeypatch.setattr(es_mapping, "server_version", lambda client: (8, 15))
    assert [es_mapping.type_for_server(t, (8, 15)) for t in ("int8_hnsw", "bbq_flat", "hnsw", "flat")] == [
        "hnsw", "flat", "hnsw", "flat"]
    assert es_mapping.type_for_server("int8_hnsw", (8, 18)) == "int8_hnsw"
    rows = synthetic_shards(str(tmp_path), 600, EmbeddingSpec(), files=2)
    summary = job(index, ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN])
    assert summary["failed"] == 0 and summary["doc_count"] == len(rows)
    concrete = summary["concrete_index"]
    assert es_mapping.vector_field(es_client, concrete)["index_options"] == {"type": "hnsw", "m": 16,
                                                                             "ef_construction": 100}
    assert es_mapping.intended_type(es_client, concrete) == summary["vector_type"] == "hnsw"
    assert self_scores(es_client, alias, rows[:50]) == [(r["face_id"], 1.0) for r in rows[:50]]


def self_scores(client, alias, rows) -> list:
    """(id, score) of a kNN search by each row's vector, filtered to its own face (an exact search over the
    filter): 1.0, distance 0, when the vector is intact and searchable. The graph's own answers are checked on
    the real sample above: random 128-d vectors are HNSW's hard case, where ~1% of self-queries miss even at
    1,000 candidates, merged or not."""
    scores = []
    for start in range(0, len(rows), 500):
        searches = []
        for r in rows[start:start + 500]:
            searches += [{"index": alias}, {"knn": {"field": "embedding", "query_vector": r["embedding"], "k": 1,
                                                    "num_candidates": 10, "filter": {"ids": {"values": [r["face_id"]]}}},
                                            "_source": False, "size": 1}]
        scores += [(a["hits"]["hits"][0]["_id"], a["hits"]["hits"][0]["_score"])
                   for a in client.msearch(searches=searches).body["responses"]]
    return scores


def test_two_phase_load_ends_with_one_graph_even_from_one_flat_segment(tmp_path, es_client, alias):
    """The two-phase lever (bench index): flat during the load, then HNSW and a force merge. A load that left
    a single flat segment is still rewritten with its graph (a lone segment is one a merge would skip)."""
    from facebeam.transforms.es_index import LoadTuning, finish_plan, plan_load

    rows = synthetic_shards(str(tmp_path), 3000, EmbeddingSpec(), files=1)
    plan = plan_load(es_client, alias, EmbeddingSpec(), "hnsw", tuning=LoadTuning(two_phase=True, force_merge=True))
    concrete = plan.concrete
    field = es_mapping.vector_field(es_client, concrete)
    assert field["index_options"]["type"] == "flat" and plan.merge
    ok, errors = helpers.bulk(es_client, ({"_index": concrete, "_id": r["face_id"], **es_mapping.document(r)}
                                          for r in rows), chunk_size=len(rows), raise_on_error=False)
    assert ok == len(rows) and not errors
    es_client.indices.refresh(index=concrete)
    assert es_mapping.lone_segments(es_client, concrete) == ["0"]  # one flat segment
    assert finish_plan(es_client, plan) == len(rows)
    field = es_mapping.vector_field(es_client, concrete)
    assert field["index_options"] == {"type": "hnsw", "m": 16, "ef_construction": 100}
    stats = es_client.indices.stats(index=concrete, metric="segments").body["indices"][concrete]
    assert stats["primaries"]["segments"]["count"] == 1
    settings = es_client.indices.get_settings(index=concrete, flat_settings=True).body[concrete]["settings"]
    assert not {"index.refresh_interval", "index.translog.durability"} & set(settings)
    # The segment searches through a graph now: a kNN search compares far fewer vectors than the 3,000 a
    # flat (exact) segment compares.
    assert 0 < graph_search_ops(es_client, alias, rows[0]["embedding"]) < len(rows) / 2
    assert self_scores(es_client, alias, rows) == [(r["face_id"], 1.0) for r in rows]


def test_on_a_terminal_the_merge_that_builds_the_graph_shows_its_time(tmp_path, alias):
    """The final merge of a new index (minutes at 1M faces) has no count to show: on a terminal a line names
    it with the time so far, and the command still ends with its one-line summary."""
    synthetic_shards(str(tmp_path), 1500, EmbeddingSpec(), files=2)
    shown = on_a_terminal("index", "--shards", str(tmp_path), "--index", alias, "--es-conn", CONN)
    frames = [f.strip() for f in shown.replace("\n", "\r").split("\r")]
    merge = [f for f in frames if f.startswith("merge: ")]
    assert merge and re.fullmatch(rf"merge: {alias}-\S+ into 1 segment\(s\) per shard: \d\d:\d\d", merge[-1]), shown
    assert re.search(rf"indexed 1500 faces? .*{alias}", shown), shown[-2000:]
