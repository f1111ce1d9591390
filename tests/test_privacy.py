"""Biometric data is private by default: shards, summaries, the embedded index, the persons a clustering
found and Redis's data are 0600 in 0700 folders whatever the umask; FACEBEAM_SHARED_FILES=1 keeps the user's
umask instead."""
import os
import shutil
import stat

import pytest

from facebeam.pipelines import cluster, embed, index, persons
from facebeam.transforms import privacy
from facebeam.transforms.redis_store import RedisConn
from tests.helpers import SAMPLE, job

PHOTOS = ("img1.jpg", "img5.jpg", "img19.jpg")


def modes(top) -> dict:
    """{relative path: permission bits} of `top` and everything under it."""
    out = {".": stat.S_IMODE(os.stat(top).st_mode)}
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, top)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


def assert_private(top):
    found = modes(top)
    for rel, mode in found.items():
        path = os.path.join(top, rel)
        want = privacy.DIR_MODE if os.path.isdir(path) else privacy.FILE_MODE
        assert mode == want, f"{path}: {oct(mode)}, want {oct(want)}"
    return found


@pytest.fixture
def open_umask():
    """The most open common umask (022) for the test: privacy must not depend on the user's."""
    before = os.umask(0o022)
    yield
    os.umask(before)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("privacy-photos")
    for name in PHOTOS:
        shutil.copy(os.path.join(SAMPLE, name), d / name)
    return d


def test_shards_summaries_and_the_embedded_index_are_private(photos, tmp_path, open_umask, monkeypatch):
    monkeypatch.delenv(privacy.ENV_SHARED, raising=False)
    out = tmp_path / "out"
    summary = job(embed, ["--input", str(photos), "--output", str(out), "--incremental"])  # workers in subprocesses
    assert summary["images_embedded"] == len(PHOTOS)
    found = assert_private(out)
    parquet = [p for p in found if p.endswith(".parquet")]
    assert any(p.startswith("embeddings/") for p in parquet) and any(p.startswith("manifest/") for p in parquet)
    assert "summary.json" in found and f"runs/{summary['run_id']}.json" in found

    ann = tmp_path / "home" / "ann" / "faces"
    loaded = job(index, ["--shards", str(out), "--store", f"local:{ann}"])
    assert loaded["doc_count"] == summary["faces"]
    # The index folder and its data; the writers' lock file (stores.ann_lock) and meta.json's (locks.held) hold no
    # face data, and the latter is private too.
    locks = (".facebeam.lock", ".meta.lock")
    data = {rel: mode for rel, mode in modes(ann).items() if rel not in locks}
    assert modes(ann)[".meta.lock"] == privacy.FILE_MODE and (ann / ".meta.lock").stat().st_size == 0
    assert data["."] == privacy.DIR_MODE
    assert {rel: mode for rel, mode in data.items() if rel != "."} == {
        "spec.json": privacy.FILE_MODE, "faces-1.faiss": privacy.FILE_MODE, "faces-1.parquet": privacy.FILE_MODE,
        "meta.json": privacy.FILE_MODE}  # the collections loaded into it (copies.py)


def test_cluster_outputs_are_private(photos, tmp_path, open_umask, monkeypatch):
    """The kNN graph (written by the workers), the persons table, its state and contact sheet, and a later
    `persons name`: all 0600 in 0700 folders under umask 022."""
    monkeypatch.delenv(privacy.ENV_SHARED, raising=False)
    out, found = tmp_path / "out", tmp_path / "persons"
    job(embed, ["--input", str(photos), "--output", str(out)])
    summary = job(cluster, ["--shards", str(out), "--output", str(found),
                            "--contact-sheet", str(found / "sheet.html")])
    assert summary["faces"] >= len(PHOTOS) and summary["persons"] >= 1
    first = assert_private(found)
    assert any(p.endswith(".parquet") for p in first) and "sheet.html" in first
    job(persons, ["--clusters", str(found), "name", _first_person(found), "Someone"])
    assert _first_person(found, "name") == "Someone"
    assert_private(found)


def _first_person(folder, field="person_id") -> str:
    from facebeam.transforms import persons as persons_table

    return persons_table.read_table(str(folder))[0][field]


def test_shared_files_keep_the_users_umask(photos, tmp_path, monkeypatch):
    """FACEBEAM_SHARED_FILES=1 with umask 027: a group may read the embedded index, others may not."""
    before = os.umask(0o027)
    try:
        monkeypatch.setenv(privacy.ENV_SHARED, "1")
        out = tmp_path / "out"
        job(embed, ["--input", str(photos / "img5.jpg"), "--output", str(out), "--direct_running_mode=in_memory"])
        ann = tmp_path / "ann"
        job(index, ["--shards", str(out), "--store", f"local:{ann}"])
    finally:
        os.umask(before)
    for top in (out, ann):
        for rel, mode in modes(top).items():
            want = 0o750 if os.path.isdir(os.path.join(top, rel)) else 0o640
            assert mode == want, f"{top}/{rel}: {oct(mode)}, want {oct(want)}"


def test_redis_data_is_private(redis_home):
    """The fixture ran `facebeam redis up` (AOF on); after a write and a SAVE, the AOF and RDB files are 0600 in 0700."""
    home, port = redis_home
    client = RedisConn(host="127.0.0.1", port=port, conn_file=str(home / "connection.json"), timeout_s=5.0).check()
    try:
        client.set("facebeam-test:privacy", "x")
        client.save()
    finally:
        client.delete("facebeam-test:privacy")
        client.close()
    found = assert_private(home / "data")
    assert "dump.rdb" in found and any(p.startswith("appendonlydir/") for p in found)
    assert stat.S_IMODE(os.stat(home / "connection.json").st_mode) == privacy.FILE_MODE


def test_secrets_are_private_whatever_the_rule(tmp_path, monkeypatch):
    monkeypatch.setenv(privacy.ENV_SHARED, "1")
    path = tmp_path / "conn" / "connection.json"
    privacy.write_private(path, '{"password": "x"}\n')
    privacy.write_private(path, b'{"password": "y"}\n')  # replaced whole, still 0600
    assert path.read_text() == '{"password": "y"}\n'
    assert stat.S_IMODE(os.stat(path).st_mode) == privacy.FILE_MODE
    assert os.listdir(path.parent) == ["connection.json"]
