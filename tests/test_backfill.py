"""Scheduled backfills: incremental runs, a killed run, erasure and a model upgrade under live queries."""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageOps

from facebeam.pipelines import forget, reindex, run
from facebeam.transforms import shards
from tests.es_fixtures import SESSION_HOME
from tests.helpers import ROOT, drop_versions, job, sample_images

CONN = str(SESSION_HOME / "connection.json")


def faces_in(out):
    return sorted(r["face_id"] for f in shards.files(str(out)) for r in read_rows_file(f))


def read_rows_file(path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def index_ids(client, alias):
    client.indices.refresh(index=alias)
    hits = client.search(index=alias, size=1000, _source=False, query={"match_all": {}}).body["hits"]["hits"]
    return sorted(h["_id"] for h in hits)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for p in sample_images()[:12]:
        shutil.copy(p, d)
    return d


@pytest.fixture
def alias(es_client, request):
    name = f"backfill-{request.node.name[5:20].replace('_', '-')}"
    drop_versions(es_client, name)
    yield name
    drop_versions(es_client, name)


def incremental(photos, out, alias, *extra):
    return job(run, ["--input", str(photos), "--output", str(out), "--index", alias, "--incremental",
                    "--es-conn", CONN, *extra])


def test_rerun_is_a_noop_and_new_photos_add_exactly_their_faces(photos, tmp_path, es_client, alias):
    out = tmp_path / "out"
    first = incremental(photos, out, alias)
    assert first["faces"] > 0 and first["images_seen"] == 12
    count = es_client.count(index=alias).body["count"]
    assert count == first["faces"] == len(faces_in(out))

    second = incremental(photos, out, alias)
    assert second["faces"] == 0 and second["images_seen"] == 0
    assert es_client.count(index=alias).body["count"] == count
    assert len(shards.committed_runs(str(out))) == 2

    more = tmp_path / "more"
    more.mkdir()
    src = Image.open(sample_images()[13]).convert("RGB")
    ImageOps.mirror(src).save(more / "flipped.jpg", quality=90)
    src.crop((0, 0, src.width, int(src.height * 0.9))).save(more / "cropped.jpg", quality=90)
    src.resize((src.width // 2, src.height // 2)).save(more / "half.jpg", quality=70)
    third = incremental(more, out, alias)
    added = [r for f in shards.files(str(out)) if third["run_id"] in f for r in read_rows_file(f)]
    assert third["images_seen"] == 3 and third["faces"] == len(added) >= 3
    assert {os.path.basename(r["image_path"]) for r in added} == {"flipped.jpg", "cropped.jpg", "half.jpg"}
    assert es_client.count(index=alias).body["count"] == count + len(added)


def test_an_incremental_run_after_a_full_one_embeds_only_the_new_photos(photos, tmp_path):
    """A nightly --incremental into an output that a run without it made: the photos of the flat shards are done
    (they have no manifest), so none is embedded again and no face is written twice; a run without it again
    replaces them all."""
    from facebeam.pipelines import embed
    from facebeam.transforms.summary import JobSummary

    out, some = tmp_path / "out", tmp_path / "some"
    some.mkdir()
    for p in sorted(photos.iterdir())[:4]:
        shutil.copy(p, some)
    first = job(embed, ["--input", str(some), "--output", str(out)])
    assert first["images_embedded"] == 4 and not shards.committed_runs(str(out))
    later = job(embed, ["--input", str(photos), "--output", str(out), "--incremental"])
    assert later["images_done"] == 4 and later["images_seen"] == 8
    ids = faces_in(out)
    assert len(ids) == len(set(ids)) == first["faces"] + later["faces"]
    # And back: a run without --incremental replaces the output. The incremental run's partition kept its faces
    # beside the rewritten flat shards, each of them twice.
    full = job(embed, ["--input", str(photos), "--output", str(out)])
    assert full["images_seen"] == 12 and full["runs_replaced"] == 1 and not shards.committed_runs(str(out))
    assert faces_in(out) == sorted(ids) and not list((out / "embeddings").glob("run=*"))
    assert "replaced the output's 1 earlier run(s); --incremental adds to them" in JobSummary.build("embed", full).line()
    # An --incremental run of another spec would add another embedding space to the collection, which index,
    # cluster and calibrate then refuse: it is refused before any work, and the output stays as it was.
    assert embed.main(["--input", str(some), "--output", str(out), "--incremental", "--detect-max-side", "320"]) == 2
    assert faces_in(out) == sorted(ids) and not shards.committed_runs(str(out))


def test_a_moved_photo_keeps_its_faces_under_its_new_path_and_one_edited_in_place_replaces_them(
        photos, tmp_path, es_client, alias):
    """A library reorganised between nightly runs. A photo moved (its old path gone) is not embedded again: its faces
    name the new path in the shards, Elasticsearch and the embedded index. A copy beside its original is only a
    duplicate. A photo edited in place is embedded again, and the faces of its old version go from every copy."""
    from facebeam.pipelines import index
    from facebeam.transforms import ann
    from facebeam.transforms.stores.exact import ShardsStore

    lib, out, local = tmp_path / "lib", tmp_path / "out", tmp_path / "ann"
    shutil.copytree(photos, lib / "2024")
    incremental(lib, out, alias)
    job(index, ["--shards", str(out), "--store", f"local:{local}"])  # the collection's second store
    rows = [r for f in shards.files(str(out)) for r in read_rows_file(f)]
    by_path = {}
    for r in rows:
        by_path.setdefault(r["image_path"], []).append(r["face_id"])
    old, kept, edited = sorted(by_path)[:3]
    (lib / "trips").mkdir()
    new = str(lib / "trips" / "renamed.jpg")
    shutil.move(old, new)
    shutil.copy(kept, lib / "trips" / "copy.jpg")  # its original is still there
    ImageOps.mirror(Image.open(edited).convert("RGB")).save(edited, quality=90)  # the same file, new content
    shutil.copytree(local, tmp_path / "away")  # a store the next run cannot reach (not in the collection's record)

    def paths_of(face_ids):
        es_client.indices.refresh(index=alias)
        docs = es_client.mget(index=alias, ids=sorted(face_ids), source_includes=["image_path"]).body["docs"]
        idx = ann.AnnIndex.open(str(local))
        return ({r["image_path"] for f in shards.files(str(out)) for r in read_rows_file(f) if r["face_id"] in face_ids},
                {d["_source"]["image_path"] for d in docs if d["found"]},
                {p for f, p in zip(idx.meta["face_id"], idx.meta["image_path"]) if f in face_ids})

    later = incremental(lib, out, alias)
    assert later["images_seen"] == 1 and later["images_done"] == len(by_path)  # the edit; the rest, the copy too
    assert later["images_moved"] == 1 and later["faces_moved"] == len(by_path[old])
    assert later["images_replaced"] == 1 and later["faces_replaced"] == len(by_path[edited])
    assert paths_of(set(by_path[old])) == ({new}, {new}, {new})
    assert paths_of(set(by_path[kept])) == ({kept}, {kept}, {kept})
    assert paths_of(set(by_path[edited])) == (set(), set(), set()), "the old version's faces are gone everywhere"
    now = [r for f in shards.files(str(out)) for r in read_rows_file(f)]
    redone = {r["face_id"] for r in now if r["image_path"] == edited}
    assert len(redone) == later["faces"] > 0 and paths_of(redone)[:2] == ({edited}, {edited})
    assert es_client.count(index=alias).body["count"] == len(now) == len(rows) - len(by_path[edited]) + len(redone)
    again = incremental(lib, out, alias)
    assert again["images_seen"] == again["images_moved"] == again["images_replaced"] == 0

    # The store that missed the changes follows them at its next load: new paths, the old version's faces dropped.
    back = job(index, ["--shards", str(out), "--store", f"local:{tmp_path / 'away'}"])
    assert back["replaced_late"] == len(by_path[edited]) and back["doc_count"] == len(now)
    idx = ann.AnnIndex.open(str(tmp_path / "away"))
    assert {f: p for f, p, gone in zip(idx.meta["face_id"], idx.meta["image_path"], idx.meta["deleted"]) if not gone} \
        == {r["face_id"]: r["image_path"] for r in now}

    # A store that missed a move (down at the time) takes the new path at its next load from the shards.
    elsewhere = str(lib / "elsewhere.jpg")
    assert ShardsStore(str(out)).relocate([{**r, "image_path": elsewhere} for r in now if r["image_path"] == new])
    job(index, ["--shards", str(out), "--store", f"local:{local}"])
    job(index, ["--shards", str(out), "--index", alias, "--es-conn", CONN])
    assert paths_of(set(by_path[old])) == ({elsewhere}, {elsewhere}, {elsewhere})
    assert ann.AnnIndex.open(str(local)).count == len(now)


def test_killed_run_then_rerun_matches_a_clean_run(photos, tmp_path, es_client, alias):
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "facebeam.pipelines.cli", "run", "--input", str(photos), "--output", str(killed_out),
           "--index", alias, "--incremental", "--es-conn", CONN, "--batch-size", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    indexed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            indexed = es_client.indices.stats(index=alias, metric="indexing").body["_all"]["primaries"]["indexing"]["index_total"]
        except Exception:  # noqa: BLE001 - the node may be down right now: count as nothing yet
            indexed = 0
        if indexed > 0:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert indexed > 0 and shards.committed_runs(str(killed_out)) == []

    rerun = incremental(photos, killed_out, alias)
    committed = {f"run={r}" for r in shards.committed_runs(str(killed_out))}
    for kind in shards.PARTITIONED:  # the killed run's partitions were removed, on local disk too
        assert {os.path.basename(d) for d in shards.partition_dirs(str(killed_out), kind)} <= committed
    clean = job(run, ["--input", str(photos), "--output", str(clean_out), "--index", alias + "-clean", "--es-conn", CONN])
    try:
        assert faces_in(killed_out) == faces_in(clean_out)
        assert rerun["faces"] == clean["faces"]
        assert index_ids(es_client, alias) == index_ids(es_client, alias + "-clean") == faces_in(clean_out)
    finally:
        drop_versions(es_client, alias + "-clean")


def test_forget_erases_everywhere_and_stays_erased(photos, tmp_path, es_client, alias, capsys):
    out = tmp_path / "out"
    first = incremental(photos, out, alias)
    victim = sorted(str(p) for p in photos.iterdir())[0]
    victim_rows = [r for r in (read_rows_file(f) for f in shards.files(str(out))) for r in r if r["image_path"] == victim]
    assert victim_rows
    code = forget.main(["--image", victim, "--shards", str(out), "--index", alias, "--es-conn", CONN])
    printed = capsys.readouterr().out
    assert code == 0 and victim in printed and "tombstone" in printed
    assert [r for f in shards.files(str(out)) for r in read_rows_file(f) if r["image_path"] == victim] == []
    ids = index_ids(es_client, alias)
    assert len(ids) == first["faces"] - len(victim_rows)
    assert not set(ids) & {r["face_id"] for r in victim_rows}

    again = incremental(photos, out, alias)
    assert again["faces"] == 0
    assert index_ids(es_client, alias) == ids


def test_reindex_swaps_the_alias_under_live_queries(photos, tmp_path, es_client, alias, capsys):
    out = tmp_path / "v1"
    # parent-dir labels come from a folder below the input root: people/<photos.name>/img.jpg
    people = tmp_path / "people"
    shutil.copytree(photos, people / photos.name)
    first = job(run, ["--input", str(people), "--output", str(out), "--index", alias, "--es-conn", CONN,
                     "--label-from", "parent-dir"])
    old = list(es_client.indices.get_alias(name=alias).body)[0]
    stop, failures, answered = threading.Event(), [], [0]
    rng = np.random.default_rng(0)

    def live_queries():
        client = es_client.options(request_timeout=10)
        while not stop.is_set():
            try:
                client.search(index=alias, knn={"field": "embedding", "k": 3, "num_candidates": 20,
                                                "query_vector": rng.normal(0, 0.1, 128).tolist()}, size=3)
                answered[0] += 1
            except Exception as e:  # noqa: BLE001 - any failure during the swap is a test failure
                failures.append(repr(e))
            time.sleep(0.05)

    t = threading.Thread(target=live_queries)
    t.start()
    try:
        summary = job(reindex, ["--index", alias, "--output", str(tmp_path / "v2"), "--detect-max-side", "480",
                               "--compare", "8", "--es-conn", CONN])
        time.sleep(1.0)
    finally:
        stop.set()
        t.join()
    printed = capsys.readouterr().out
    assert failures == [] and answered[0] > 20
    new = list(es_client.indices.get_alias(name=alias).body)[0]
    assert new != old and new == summary["new_index"] and es_client.indices.exists(index=old)
    assert "same-person agreement" in printed and summary["comparison"]["probes"] > 0
    assert es_client.count(index=alias).body["count"] == summary["doc_count"] > 0
    labels = {h["_source"]["label"] for h in es_client.search(index=alias, size=100, _source=["label"]).body["hits"]["hits"]}
    assert labels == {photos.name} and first["faces"] > 0

    # The old index is kept for a rollback: a forget through the first collection erases there too, and from the
    # reindex's new shards (a collection of the same alias).
    victim = sorted(str(p) for p in (people / photos.name).iterdir())[0]
    query = {"term": {"image_path": victim}}
    held = {i: es_client.count(index=i, query=query).body["count"] for i in (old, new)}
    assert held[old] > 0 and held[new] > 0
    assert forget.main(["--image", victim, "--shards", str(out), "--es-conn", CONN]) == 0
    es_client.indices.refresh(index=f"{old},{new}")
    assert {i: es_client.count(index=i, query=query).body["count"] for i in (old, new)} == {old: 0, new: 0}
    assert victim not in {r["image_path"] for f in shards.files(str(tmp_path / "v2")) for r in read_rows_file(f)}
