"""The sample end to end on each store: the embedded HNSW index, Redis, and Elasticsearch without vectors in _source."""
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from facebeam.pipelines import forget, index, query, run
from facebeam.transforms import ann, knn, redis_store, shards
from facebeam.transforms.spec import EmbeddingSpec
from tests.es_fixtures import SESSION_HOME
from tests.helpers import drop_versions, job, read_rows, sample_images, synthetic_shards
from tests.test_verify import label_by_file

CONN = str(SESSION_HOME / "connection.json")
SPEC = EmbeddingSpec()


def top5_overlap(found, exact) -> float:
    a = [{h["face_id"] for h in hits[:5]} for hits in found]
    b = [{h["face_id"] for h in hits[:5]} for hits in exact]
    return sum(len(x & y) for x, y in zip(a, b)) / sum(len(y) for y in b)


@pytest.fixture
def no_cluster(tmp_path, monkeypatch):
    """No Elasticsearch configured anywhere: a fresh FACEBEAM_HOME, no FACEBEAM_ES_* variables."""
    for var in ("FACEBEAM_ES_URL", "FACEBEAM_ES_CONN", "FACEBEAM_ES_USER", "FACEBEAM_ES_PASSWORD",
                "FACEBEAM_ES_API_KEY", "FACEBEAM_ES_CA_CERTS"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("FACEBEAM_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def sample_rows(sample_run):
    return read_rows(os.path.join(sample_run[0], "embeddings"))


@pytest.fixture(scope="module")
def local_index(sample_run, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("ann") / "faces")
    summary = job(index, ["--shards", sample_run[0], "--store", f"local:{folder}"])
    return folder, summary


# --- the embedded index --------------------------------------------------------------------------
def test_local_index_finds_each_face_first_and_agrees_with_exact(local_index, sample_run, sample_rows):
    folder, summary = local_index
    assert summary["backend"] == "local" and summary["indexed"] == summary["doc_count"] == len(sample_rows)
    info = json.loads(Path(folder, "spec.json").read_text())
    assert info["spec_id"] == sample_rows[0]["spec_id"] and info["library"].startswith("faiss-cpu")
    assert EmbeddingSpec.from_dict(info["spec"]).spec_id == info["spec_id"]
    idx = ann.AnnIndex.open(folder, SPEC)  # read-only: memory-mapped
    search = knn.SearchSpec(k=5, num_candidates=100)
    found = idx.search(sample_rows, search)
    assert [h[0]["face_id"] for h in found] == [r["face_id"] for r in sample_rows]
    assert all(h[0]["distance"] < 1e-3 for h in found)
    exact = knn.exact_search(shards.files(sample_run[0]), sample_rows, search, SPEC)
    assert top5_overlap(found, exact) >= 0.99
    again = job(index, ["--shards", sample_run[0], "--store", f"local:{folder}"])
    assert again["indexed"] == 0 and again["doc_count"] == len(sample_rows), "a replay adds nothing"


def test_local_index_refuses_shards_of_another_spec(local_index, tmp_path):
    folder, _ = local_index
    before = Path(folder, "spec.json").read_text()
    synthetic_shards(str(tmp_path), 10, EmbeddingSpec(detect_max_side=320))
    with pytest.raises(Exception, match="embedding spec mismatch.*detect_max_side"):
        job(index, ["--shards", str(tmp_path), "--store", f"local:{folder}"])
    assert index.main(["--shards", str(tmp_path), "--store", f"local:{folder}"]) == 2
    assert Path(folder, "spec.json").read_text() == before


def test_without_a_cluster_index_and_query_use_the_embedded_index(sample_run, no_cluster, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        built = job(index, ["--shards", sample_run[0], "--index", "zero"])
    assert built["backend"] == "local" and built["ann_dir"] == str(no_cluster / "ann" / "zero")
    assert "no Elasticsearch configured" in caplog.text
    probes = tmp_path / "probes"
    probes.mkdir()
    for p in sample_images()[:3]:
        shutil.copy(p, probes)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        summary = job(query, ["--probes", str(probes), "--index", "zero", "--k", "5", "--output", str(tmp_path / "q")])
    assert summary["backend"] == "local" and "embedded" in caplog.text
    rows = query.read_results(str(tmp_path / "q"))
    firsts = [r for r in rows if r["rank"] == 1]
    assert firsts and all(r["hit_image_sha256"] == r["probe_sha256"] and r["distance"] < 1e-3 for r in firsts)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("store-photos")
    for p in sample_images()[:8]:
        shutil.copy(p, d)
    return d


def test_incremental_runs_add_exactly_the_new_faces_and_forget_removes_a_photo(photos, tmp_path, capsys):
    out, folder = tmp_path / "out", str(tmp_path / "ann")
    argv = ["--output", str(out), "--incremental", "--store", f"local:{folder}"]
    first = job(run, ["--input", str(photos), *argv])
    assert first["backend"] == "local" and first["faces"] > 0
    assert ann.AnnIndex.open(folder).count == first["faces"]
    second = job(run, ["--input", str(photos), *argv])
    assert second["faces"] == 0 and ann.AnnIndex.open(folder).count == first["faces"]

    more = tmp_path / "more"
    more.mkdir()
    src = Image.open(sample_images()[10]).convert("RGB")
    ImageOps.mirror(src).save(more / "flipped.jpg", quality=90)
    src.resize((src.width // 2, src.height // 2)).save(more / "half.jpg", quality=70)
    third = job(run, ["--input", str(more), *argv])
    added = [r for f in shards.files(str(out)) if third["run_id"] in f for r in read_rows_of(f)]
    assert third["faces"] == len(added) >= 2
    idx = ann.AnnIndex.open(folder)
    assert idx.count == first["faces"] + len(added)
    assert idx.info["generation"] == 2 and idx.total == idx.count, "appended (the no-op run wrote nothing), never rebuilt"

    victim = sorted(str(p) for p in photos.iterdir())[0]
    faces = [r for f in shards.files(str(out)) for r in read_rows_of(f) if r["image_path"] == victim]
    assert faces
    assert forget.main(["--image", victim, "--shards", str(out), "--store", f"local:{folder}"]) == 0
    assert f"{len(faces)} face doc(s)" in capsys.readouterr().out
    idx = ann.AnnIndex.open(folder)
    assert idx.count == first["faces"] + len(added) - len(faces)
    hits = idx.search(faces, knn.SearchSpec(k=5, num_candidates=100))
    assert not {h["face_id"] for hs in hits for h in hs} & {r["face_id"] for r in faces}
    again = job(run, ["--input", str(photos), *argv])
    assert again["faces"] == 0 and ann.AnnIndex.open(folder).count == idx.count, "forgotten stays forgotten"


def read_rows_of(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# --- Redis ----------------------------------------------------------------------------------------
def test_redis_store_each_face_is_closest_to_itself(sample_run, tmp_path, redis_conn_args):
    rows = label_by_file(sample_run[0], str(tmp_path / "labeled"))
    summary = job(index, ["--shards", str(tmp_path / "labeled"), "--store", "redis", "--index", "stores-redis",
                          *redis_conn_args])
    assert summary["backend"] == "redis" and summary["doc_count"] == len(rows)
    client = redis_store.RedisConn.resolve(conn_file=redis_conn_args[1]).check()
    try:
        v = redis_store.Verifier(client, "stores-redis", SPEC)
        for r in rows:
            face_id, d, n = v.closest(r["embedding"], r["label"])
            assert face_id == r["face_id"] and d < 1e-4 and n >= 1
        other = EmbeddingSpec(detect_max_side=320)
        with pytest.raises(Exception, match="embedding spec mismatch"):
            redis_store.check_spec(client, "stores-redis", other, create=True)
    finally:
        for key in client.scan_iter(redis_store.prefix("stores-redis") + "*"):
            client.delete(key)


def test_run_into_redis_adds_each_run_s_labeled_faces(tmp_path, redis_conn_args):
    photos = tmp_path / "photos"
    (photos / "bob").mkdir(parents=True)
    for p in sample_images()[20:23]:
        shutil.copy(p, photos / "bob")
    argv = ["--input", str(photos), "--output", str(tmp_path / "out"), "--store", "redis", "--index", "stores-run",
            "--label-from", "parent-dir", "--incremental", *redis_conn_args]
    first = job(run, argv)
    client = redis_store.RedisConn.resolve(conn_file=redis_conn_args[1]).check()
    try:
        assert first["backend"] == "redis" and first["docs_indexed"] == first["faces"] > 0
        assert redis_store.count(client, "stores-run") == first["faces"]
        assert client.smembers(redis_store.prefix("stores-run") + "labels") == {b"bob"}
        second = job(run, argv)
        assert second["faces"] == second["docs_indexed"] == 0
        assert redis_store.count(client, "stores-run") == first["faces"]
    finally:
        for key in client.scan_iter(redis_store.prefix("stores-run") + "*"):
            client.delete(key)


# --- Elasticsearch, lean --------------------------------------------------------------------------
def test_elasticsearch_keeps_no_vector_in_source_and_still_searches_and_forgets(sample_run, sample_rows, es_client,
                                                                                 tmp_path):
    alias = "stores-lean"
    drop_versions(es_client, alias)
    work = tmp_path / "shards"
    shutil.copytree(sample_run[0], work)
    try:
        job(index, ["--shards", str(work), "--index", alias, "--es-conn", CONN])
        doc = es_client.search(index=alias, size=1, query={"match_all": {}}).body["hits"]["hits"][0]
        assert "embedding" not in doc["_source"] and doc["_source"]["face_id"]
        concrete = list(es_client.indices.get_alias(name=alias).body)[0]
        mapping = es_client.indices.get_mapping(index=concrete).body[concrete]["mappings"]
        assert mapping["_source"]["excludes"] == ["embedding"]
        search = knn.SearchSpec(k=5, num_candidates=100)
        found = knn.es_search(es_client, alias, sample_rows, search, SPEC)
        assert [h[0]["face_id"] for h in found] == [r["face_id"] for r in sample_rows]
        exact = knn.exact_search(shards.files(str(work)), sample_rows, search, SPEC)
        assert top5_overlap(found, exact) >= 0.99
        dv = es_client.search(index=alias, size=1, query={"term": {"face_id": sample_rows[0]["face_id"]}},
                              _source=False, docvalue_fields=["embedding"]).body["hits"]["hits"][0]
        assert max(abs(a - b) for a, b in zip(dv["fields"]["embedding"][0], sample_rows[0]["embedding"])) < 1e-6
        victim = sample_rows[0]["image_path"]
        gone = [r for r in sample_rows if r["image_path"] == victim]
        assert forget.main(["--image", victim, "--shards", str(work), "--index", alias, "--es-conn", CONN]) == 0
        es_client.indices.refresh(index=alias)
        assert es_client.count(index=alias).body["count"] == len(sample_rows) - len(gone)
    finally:
        drop_versions(es_client, alias)


def test_reindex_switches_the_embedded_index_to_the_new_spec(tmp_path, capsys):
    from facebeam.pipelines import reindex

    photos = tmp_path / "photos"
    (photos / "alice").mkdir(parents=True)
    for p in sample_images()[:5]:
        shutil.copy(p, photos / "alice")
    folder = str(tmp_path / "ann")
    first = job(run, ["--input", str(photos), "--output", str(tmp_path / "v1"), "--store", f"local:{folder}",
                      "--label-from", "parent-dir"])
    old = ann.AnnIndex.open(folder)
    summary = job(reindex, ["--index", "faces", "--store", f"local:{folder}", "--output", str(tmp_path / "v2"),
                            "--detect-max-side", "480", "--compare", "4"])
    assert "same-person agreement" in capsys.readouterr().out
    new = ann.AnnIndex.open(folder)
    assert new.spec.detect_max_side == 480 and new.spec.spec_id != old.spec.spec_id
    assert new.count == summary["doc_count"] == summary["faces"] > 0 and first["faces"] > 0
    assert summary["comparison"]["probes"] > 0
    assert {lab for lab, gone in zip(old.meta["label"], old.meta["deleted"]) if not gone} == {"alice"}
    assert {lab for lab, gone in zip(new.meta["label"], new.meta["deleted"]) if not gone} == {"alice"}
    previous = json.loads(Path(folder, "previous.json").read_text())
    assert previous["spec_id"] == old.spec.spec_id and Path(folder, previous["index_file"]).exists()
    # the old generation is still readable (memory-mapped readers keep working through the switch)
    assert old.search(old_rows := [{"embedding": old.index.reconstruct(0), "image_sha256": "x"}],
                      knn.SearchSpec(k=1, num_candidates=10))[0] and old_rows
    with pytest.raises(Exception, match="embedding spec mismatch"):
        job(index, ["--shards", str(tmp_path / "v1"), "--store", f"local:{folder}"])
