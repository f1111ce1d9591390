"""The sample end to end on each store: the embedded HNSW index, Redis, and Elasticsearch without vectors in _source."""
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from facebeam.pipelines import forget, index, options, query, run
from facebeam.transforms import ann, knn, redis_store, shards
from facebeam.transforms.errors import UserError
from facebeam.transforms.spec import EmbeddingSpec
from tests.es_fixtures import SESSION_HOME
from tests.helpers import drop_versions, fresh_collection, job, read_rows, sample_images, synthetic_shards
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


def test_forget_missing_erases_the_photos_deleted_from_the_library_and_keeps_one_with_a_copy_left(
        photos, tmp_path, capsys, caplog):
    lib, out, folder = tmp_path / "lib", tmp_path / "out", str(tmp_path / "ann")
    shutil.copytree(photos, lib)
    gone, kept = sorted(str(p) for p in lib.iterdir())[:2]
    shutil.copy(kept, lib / "copy-of-kept.jpg")  # the same content, still in the library after `kept` is deleted
    job(run, ["--input", str(lib), "--output", str(out), "--incremental", "--store", f"local:{folder}"])
    rows = [r for f in shards.files(str(out)) for r in read_rows_of(f)]
    gone_ids = {r["face_id"] for r in rows if r["image_path"] == gone}
    assert gone_ids and any(r["image_path"] == kept for r in rows)
    before = ann.AnnIndex.open(folder).count
    os.remove(gone), os.remove(kept)

    argv = ["--missing", "--shards", str(out)]
    dry = job(forget, [*argv, "--dry-run"])
    assert dry["images"] == 1 and dry["docs"] == len(gone_ids) and ann.AnnIndex.open(folder).count == before
    assert f"would erase 1 image(s): {gone}\n" in capsys.readouterr().out
    done = job(forget, argv)
    assert done["images"] == 1 and done["docs"] == len(gone_ids)
    left = [r for f in shards.files(str(out)) for r in read_rows_of(f)]
    assert not gone_ids & {r["face_id"] for r in left} and any(r["image_path"] == kept for r in left)
    assert ann.AnnIndex.open(folder).count == before - len(gone_ids)
    capsys.readouterr()
    assert forget.main(argv) == 0, "nothing missing is an answer, not a failure"
    assert "no photo of the collection is missing" in capsys.readouterr().out

    shutil.move(lib, tmp_path / "unmounted")  # every photo missing at once: a drive not mounted, not a deletion
    assert forget.main(argv) == 2
    assert "exists now (is their drive or bucket mounted?); nothing erased" in caplog.text
    assert ann.AnnIndex.open(folder).count == before - len(gone_ids)


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
    fresh_collection(sample_run[0], work)
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
    # Into the old collection's own folder, the new shards sat beside the old spec's and the load failed halfway:
    # refused before any work, and the index stays as it was.
    with pytest.raises(UserError, match="v1 already holds a collection's shards: reindex writes the new spec's"):
        reindex.run(reindex.configure(*options.parse(reindex.build_parser(), [
            "--index", "faces", "--store", f"local:{folder}", "--output", str(tmp_path / "v1"),
            "--detect-max-side", "480"])))
    assert ann.AnnIndex.open(folder).spec.spec_id == old.spec.spec_id
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

    # The reindex's shards are a collection of the same store: a forget through the first collection reaches them,
    # and tombstones them, or their next load would bring the faces back.
    v2 = str(tmp_path / "v2")
    victim = sorted(str(p) for p in (photos / "alice").iterdir())[0]
    held = [r for r in read_rows(os.path.join(v2, "embeddings")) if r["image_path"] == victim]
    assert held
    assert forget.main(["--image", victim, "--shards", str(tmp_path / "v1")]) == 0
    assert f"shards {v2}: removed {len(held)} row(s)" in capsys.readouterr().out
    assert not [r for r in read_rows(os.path.join(v2, "embeddings")) if r["image_path"] == victim]
    assert shards.tombstones(v2) and ann.AnnIndex.open(folder).count == new.count - len(held)
    # the generation kept for a rollback (previous.json) lost that photo too: no row names it, its vectors are zeros
    kept = ann.AnnIndex.open(folder, info=json.loads(Path(folder, "previous.json").read_text()))
    assert kept.spec.spec_id == old.spec.spec_id and victim not in kept.meta["image_path"]
    zeroed = [i for i, gone in enumerate(kept.meta["deleted"]) if gone]
    assert zeroed and not kept.index.reconstruct_batch(np.asarray(zeroed, dtype=np.int64)).any()


# --- erasure everywhere: one collection, every store it was loaded into ------------------------------
def labeled_subset(sample_run, folder, photos: int = 6) -> list:
    """The faces of the sample's first photos, labeled with their file name, as a shards folder."""
    import pyarrow.parquet as pq

    every = str(Path(folder).parent / (Path(folder).name + "-all"))
    label_by_file(sample_run[0], every)
    keep = sorted({os.path.basename(r["image_path"]) for r in read_rows(os.path.join(every, "embeddings"))})[:photos]
    os.makedirs(os.path.join(folder, "embeddings"))
    rows = []
    for name in sorted(os.listdir(os.path.join(every, "embeddings"))):
        t = pq.read_table(os.path.join(every, "embeddings", name))
        t = t.filter([os.path.basename(p) in keep for p in t.column("image_path").to_pylist()])
        if t.num_rows:
            pq.write_table(t, os.path.join(folder, "embeddings", name))
            rows += t.to_pylist()
    return rows


def answers(store, faces, label) -> list:
    """What of `faces` (or their label) a store still answers: by verification, and by search where it ranks."""
    found = []
    face_id, _, _ = store.closest(faces[0]["embedding"], label)
    if face_id is not None:
        found.append(f"{store.describe()} verifies {label} as {face_id}")
    if store.capabilities.search:
        searcher = store.searcher()
        try:
            hits = searcher.search(faces, knn.SearchSpec(k=10, num_candidates=100))
        finally:
            searcher.close()
        found += [f"{store.describe()} ranks {h['face_id']} ({h['label']})" for hs in hits for h in hs
                  if h["label"] == label or h["face_id"] in {f["face_id"] for f in faces}]
    return found


def test_one_forget_erases_a_label_from_every_store_and_a_second_says_already_erased(
        sample_run, tmp_path, es_conn, es_client, redis_conn_args, capsys):
    from facebeam.transforms import stores
    from facebeam.transforms.stores import registry

    out, folder, alias, name = str(tmp_path / "shards"), str(tmp_path / "ann"), "stores-erase", "stores-erase"
    rows = labeled_subset(sample_run, out)
    label = rows[0]["label"]
    faces = [r for r in rows if r["label"] == label]
    drop_versions(es_client, alias)
    try:
        job(index, ["--shards", out, "--index", alias, "--es-conn", CONN])
        job(index, ["--shards", out, "--store", f"local:{folder}"])
        job(index, ["--shards", out, "--store", "redis", "--index", name, *redis_conn_args])
        recorded = registry.recorded(out)
        assert sorted(r["kind"] for r in recorded) == ["es", "local", "redis"]
        text = Path(registry.path(out)).read_text()
        secret = json.loads(Path(redis_conn_args[1]).read_text())["password"]
        assert secret not in text and "password" not in text.lower(), "the record holds no secret"
        every = [stores.from_record(r, lambda: es_conn) for r in recorded]
        assert all(answers(s, faces, label) for s in every), "before: every store answers with the label"

        assert forget.main(["--label", label, "--shards", out, "--es-conn", CONN]) == 0
        printed = capsys.readouterr().out
        for s in every:
            assert f"{s.describe()}: removed {len(faces)} face doc(s)" in printed
        assert f"shards {out}: removed {len(faces)} row(s)" in printed and "tombstone:" in printed
        for s in every:
            assert answers(s, faces, label) == [], s.describe()
            assert s.count() == len(rows) - len(faces)
        assert all(r["label"] != label for r in read_rows(os.path.join(out, "embeddings")))

        assert forget.main(["--label", label, "--shards", out, "--es-conn", CONN]) == 0
        printed = capsys.readouterr().out
        assert "already erased everywhere" in printed and "tombstone:" not in printed
        for s in every:
            assert f"{s.describe()}: removed 0 face doc(s)" in printed
            s.close()
    finally:
        drop_versions(es_client, alias)
        client = redis_store.RedisConn.resolve(conn_file=redis_conn_args[1]).check()
        for key in client.scan_iter(redis_store.prefix(name) + "*"):
            client.delete(key)


@pytest.fixture
def own_redis(tmp_path):
    """A Redis of this test alone (it is stopped and started again)."""
    from facebeam.pipelines.local import redis as redis_local
    from tests.redis_fixtures import free_port

    home, port = tmp_path / "redis", free_port()
    redis_local.up(home, port)
    yield home, port
    redis_local.down(home)


def test_forget_with_redis_down_exits_2_naming_it_and_a_later_load_finishes_the_erasure(
        sample_run, tmp_path, own_redis, caplog, capsys):
    from facebeam.pipelines.local import redis as redis_local
    from facebeam.transforms.stores import embedded
    from facebeam.transforms.stores import redis as redis_faces

    home, port = own_redis
    conn_args = ["--redis-conn", str(home / "connection.json")]
    out, folder, name = str(tmp_path / "shards"), str(tmp_path / "ann"), "stores-down"
    rows = labeled_subset(sample_run, out)
    label = rows[-1]["label"]
    faces = [r for r in rows if r["label"] == label]
    job(index, ["--shards", out, "--store", f"local:{folder}"])
    job(index, ["--shards", out, "--store", "redis", "--index", name, *conn_args])
    local = embedded.EmbeddedStore("faces", folder)
    red = redis_faces.RedisStore(name, redis_store.RedisConn.resolve(conn_file=conn_args[1]))
    assert answers(red, faces, label)
    red.close()

    assert redis_local.down(home)
    assert forget.main(["--label", label, "--shards", out, "--dry-run"]) == 2  # says so, and writes nothing
    assert "were not counted; nothing was changed (dry run)" in caplog.text and not shards.tombstones(out)
    assert answers(local, faces, label)
    caplog.clear()
    capsys.readouterr()
    assert forget.main(["--label", label, "--shards", out]) == 2
    printed, error = capsys.readouterr().out, caplog.text
    assert f"could not reach Redis store {name!r} at redis://127.0.0.1:{port}" in error
    assert f"{local.describe()}: removed {len(faces)} face doc(s)" in printed
    assert "NOT reached" in printed and "tombstone:" in printed and shards.tombstones(out)
    assert answers(local, faces, label) == []

    redis_local.up(home, port)
    assert answers(red, faces, label), "Redis was down: it still holds the faces"
    red.close()
    loaded = job(index, ["--shards", out, "--store", "redis", "--index", name, *conn_args])
    assert loaded["erased_late"] == len(faces) and loaded["doc_count"] == len(rows) - len(faces)  # counted after
    assert answers(red, faces, label) == [] and red.count() == len(rows) - len(faces)
    assert forget.main(["--label", label, "--shards", out]) == 0
    assert "already erased everywhere" in capsys.readouterr().out
    red.close()


def test_search_on_redis_says_it_verifies_and_does_not_rank(redis_conn_args, caplog):
    """A capability a store lacks is declared and said in one line (exit 2), never silently skipped."""
    from facebeam.pipelines import search

    photo = sample_images()[0]
    assert search.main([photo, "--store", "redis", "--index", "nothing-here", *redis_conn_args]) == 2
    assert "verifies by identity and does not rank the whole collection: use `facebeam verify`" in caplog.text


def test_commands_never_branch_on_a_store_kind_and_stores_import_no_loop():
    """Commands hold a FaceStore and read its capabilities; ann, knn and stores import one way (with local imports)."""
    import ast
    import re

    root = Path(__file__).resolve().parents[1]
    branches = [f"{p.name}:{n}" for p in sorted((root / "pipelines").glob("*.py"))
                for n, line in enumerate(p.read_text().splitlines(), 1)
                if re.search(r"(\.kind|\bkind|\.mode|\bmode)\s*(==|!=|\bin\b)|\.kind\s*\]", line)]
    assert branches == []

    def imports(path: Path) -> set:
        out = set()
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module:
                names = [n.module] + [f"{n.module}.{a.name}" for a in n.names]
                out |= {x.removeprefix("facebeam.transforms.").split(".")[0] for x in names
                        if x.startswith("facebeam.transforms.")}
        return out

    t = root / "transforms"
    graph = {"ann": imports(t / "ann.py"), "knn": imports(t / "knn.py"),
             "stores": set().union(*(imports(p) for p in (t / "stores").glob("*.py"))) - {"stores"}}
    assert "stores" not in graph["ann"] | graph["knn"] and "ann" not in graph["knn"]


def test_forget_person_erases_the_named_person_s_photos_from_every_store(sample_run, tmp_path, capsys):
    """Persons' names kept with the faces (as `persons name --shards` pushes them) resolve `forget --person`."""
    from facebeam.transforms import stores
    from facebeam.transforms.stores import registry

    out, folder = str(tmp_path / "shards"), str(tmp_path / "ann")
    rows = labeled_subset(sample_run, out)
    job(index, ["--shards", out, "--store", f"local:{folder}"])
    local = stores.from_record(registry.recorded(out)[0], None)
    faces = [r for r in rows if r["image_sha256"] == rows[0]["image_sha256"]]
    assert local.set_persons({r["face_id"]: ("p-1", "Grace Hopper") for r in faces}) == len(faces)
    assert forget.main(["--person", "Grace Hopper", "--shards", out]) == 0
    printed = capsys.readouterr().out
    assert f"{local.describe()}: removed {len(faces)} face doc(s)" in printed
    assert answers(local, faces, faces[0]["label"]) == [] and local.persons() == {}
    assert forget.main(["--person", "Grace Hopper", "--shards", out]) == 0
    assert "already erased everywhere" in capsys.readouterr().out


def test_naming_persons_on_elasticsearch_keeps_every_vector_and_the_store_carries_the_name(
        sample_run, sample_rows, es_conn, es_client, tmp_path):
    """`cluster --index` and `persons name --index` reach Elasticsearch through the store contract: every face
    still has its vector afterwards (an in-place update of a doc whose vector is not in _source would drop it)."""
    from facebeam.pipelines import cluster
    from facebeam.pipelines import persons as persons_cmd
    from facebeam.transforms import persons, stores
    from facebeam.transforms.stores.base import person_faces

    alias = "stores-persons"
    drop_versions(es_client, alias)
    work, clusters = tmp_path / "shards", str(tmp_path / "persons")
    fresh_collection(sample_run[0], work)
    try:
        job(index, ["--shards", str(work), "--index", alias, "--es-conn", CONN])
        job(cluster, ["--shards", str(work), "--output", clusters, "--index", alias, "--es-conn", CONN])
        biggest = persons.read_table(clusters)[0]
        job(persons_cmd, ["--clusters", clusters, "name", biggest["person_id"], "someone", "--index", alias,
                          "--es-conn", CONN])
        es_client.indices.refresh(index=alias)
        found = knn.es_search(es_client, alias, sample_rows, knn.SearchSpec(k=5, num_candidates=100), SPEC)
        assert [h[0]["face_id"] for h in found] == [r["face_id"] for r in sample_rows]
        theirs = {f for f, (pid, _) in persons.lookup(clusters).items() if pid == biggest["person_id"]}
        store = stores.make(stores.StoreChoice("es"), lambda: es_conn, alias)
        try:
            assert theirs and person_faces(store.persons(), "someone") == theirs
        finally:
            store.close()
    finally:
        drop_versions(es_client, alias)


def test_forget_reaches_the_query_results_reports_and_persons_made_from_the_collection(
        sample_run, tmp_path, es_conn, es_client, capsys):
    """Outputs facebeam wrote from a store are copies of its faces: a query's results and report (through the store
    searched: here the embedded index and Elasticsearch) and a cluster folder and its contact sheet (through the
    collection). `forget` erases from each of them, and a dry run changes none."""
    from facebeam.pipelines import cluster
    from facebeam.transforms import copies, persons

    out, folder, alias = str(tmp_path / "shards"), str(tmp_path / "ann"), "stores-copies"
    rows = labeled_subset(sample_run, out, photos=8)
    drop_versions(es_client, alias)
    try:
        job(index, ["--shards", out, "--store", f"local:{folder}"])
        job(index, ["--shards", out, "--index", alias, "--es-conn", CONN])
        clusters, sheet, report = tmp_path / "persons", tmp_path / "sheet.html", tmp_path / "report.html"
        job(cluster, ["--shards", out, "--output", str(clusters), "--contact-sheet", str(sheet)])
        probes = sorted({r["image_path"] for r in rows})[:3]
        queried = {"local": ["--store", f"local:{folder}", "--report", str(report)],
                   "es": ["--index", alias, "--es-conn", CONN, "--format", "jsonl"]}
        for name, extra in queried.items():
            job(query, ["--probes", *probes, "--output", str(tmp_path / name), "--k", "4", *extra])
        fmt = {"local": "parquet", "es": "jsonl"}
        # The photo to forget: the best hit of the first probe that is another photo (so every copy holds it).
        hit = next(r for r in copies.read_results(str(tmp_path / "local")) if r["hit_image_sha256"] != r["probe_sha256"])
        victim, name = hit["hit_image_sha256"], os.path.basename(hit["hit_image_path"])
        gone = {r["face_id"] for r in rows if r["image_sha256"] == victim}
        assert name in report.read_text() and name in sheet.read_text()
        assert gone <= {a["face_id"] for a in persons.read_assignments(str(clusters))}

        held = [p for p in Path(out, "embeddings").iterdir()
                if victim in {r["image_sha256"] for r in read_rows_of(str(p))}]
        pages = {p: p.read_bytes() for p in (report, sheet)}
        assert forget.main(["--sha256", victim, "--shards", out, "--es-conn", CONN, "--dry-run"]) == 0
        printed = capsys.readouterr().out
        assert f"query output {tmp_path / 'local'}: would remove" in printed and f"{report} would render again" in printed
        assert {p: p.read_bytes() for p in pages} == pages
        assert any(r["hit_image_sha256"] == victim for r in copies.read_results(str(tmp_path / "es"), "jsonl"))

        assert forget.main(["--sha256", victim, "--shards", out, "--es-conn", CONN]) == 0
        printed = capsys.readouterr().out
        for q in queried:
            assert f"query output {tmp_path / q}: removed " in printed
            left = copies.read_results(str(tmp_path / q), fmt[q])
            assert left and not [r for r in left if victim in (r["hit_image_sha256"], r["probe_sha256"])]
            ranks = {}
            for r in left:
                ranks.setdefault((r["probe_path"], r["probe_face_index"]), []).append(r["rank"])
            assert all(rs == list(range(1, len(rs) + 1)) for rs in ranks.values()), "the ranks close up"
        assert f"cluster output {clusters}: removed {len(gone)} face(s)" in printed
        assert f"{report} rendered again" in printed and f"{sheet} rendered again" in printed
        assert name not in report.read_text() and name not in sheet.read_text()
        rewritten = [*held, *Path(out, "tombstones").iterdir(), *(tmp_path / "local").rglob("*.parquet"),
                     *clusters.rglob("*.parquet"), report, sheet]
        assert {oct(p.stat().st_mode & 0o777) for p in rewritten} == {"0o600"}, "as private as facebeam writes"
        assert oct(Path(out, "tombstones").stat().st_mode & 0o777) == "0o700"

        # The persons: no erased face, and every centre the mean of the vectors of the faces it still holds.
        assigned = persons.read_assignments(str(clusters))
        assert not gone & {a["face_id"] for a in assigned}
        table = persons.read_table(str(clusters))
        assert sum(p["size"] for p in table) == sum(1 for a in assigned if a["person_id"] is not None)
        vectors = {r["face_id"]: r["embedding"] for r in read_rows(os.path.join(out, "embeddings"))}
        for p in table:
            members = [vectors[a["face_id"]] for a in assigned if a["person_id"] == p["person_id"]]
            centre = knn.prepare(members, SPEC.metric).mean(axis=0)
            assert np.allclose(p["centre"], centre, atol=1e-5), p["person_id"]

        assert forget.main(["--sha256", victim, "--shards", out, "--es-conn", CONN]) == 0
        printed = capsys.readouterr().out
        assert "already erased everywhere" in printed and "output" not in printed
    finally:
        drop_versions(es_client, alias)
