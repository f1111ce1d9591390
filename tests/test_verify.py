"""Identity verification on Redis (server-side Lua) and on Elasticsearch (kNN filtered by label)."""
import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facebeam.pipelines import index, verify
from facebeam.pipelines.local import redis as redis_local
from facebeam.transforms import redis_store
from facebeam.transforms.spec import EmbeddingSpec
from tests.es_fixtures import SESSION_HOME
from tests.helpers import PAIRS, ROOT, SAMPLE, drop_versions, job, labeled_pairs

CONN = str(SESSION_HOME / "connection.json")
NAME = "verify-sample"


def label_by_file(src: str, dst: str) -> list:
    """A copy of the shards whose faces are labeled with their photo's file name (one identity per photo)."""
    os.makedirs(os.path.join(dst, "embeddings"), exist_ok=True)
    rows = []
    for name in sorted(os.listdir(os.path.join(src, "embeddings"))):
        if not name.endswith(".parquet"):
            continue
        t = pq.read_table(os.path.join(src, "embeddings", name))
        labels = pa.array([os.path.basename(p) for p in t.column("image_path").to_pylist()], pa.string())
        t = t.set_column(t.schema.get_field_index("label"), "label", labels)
        pq.write_table(t, os.path.join(dst, "embeddings", name))
        rows += t.to_pylist()
    return rows


@pytest.fixture(scope="module")
def labeled(sample_run, tmp_path_factory):
    shards = str(tmp_path_factory.mktemp("verify") / "shards")
    return shards, label_by_file(sample_run[0], shards)


def exact_verdicts(rows, spec):
    """(x, y) -> (distance, same?) with the exact numpy distances: x's largest face vs y's closest face."""
    by_file = {}
    for r in rows:
        by_file.setdefault(os.path.basename(r["image_path"]), []).append(r)
    out = {}
    for x, y, _ in labeled_pairs():
        if x not in by_file or y not in by_file:
            continue
        probe = max(by_file[x], key=lambda r: r["box_w"] * r["box_h"])["embedding"]
        d = float(min(spec.distance(np.asarray(probe), np.asarray(r["embedding"])) for r in by_file[y]))
        out[(x, y)] = (d, d <= spec.threshold)
    return out


def check_against_exact(summary, rows):
    spec = EmbeddingSpec()
    exact = exact_verdicts(rows, spec)
    truth = {(x, y): same for x, y, same in labeled_pairs()}
    got = {(os.path.basename(r["photo"]), r["identity"]): r for r in summary["results"]}
    assert summary["unknown"] == 0 and set(got) == set(exact), "every pair's identity is in the store"
    for key, (d, same) in exact.items():
        assert abs(got[key]["distance"] - d) < 1e-3, (key, got[key]["distance"], d)
        assert (got[key]["verdict"] == "same") == same, key
    exact_acc = sum(same == truth[k] for k, (_, same) in exact.items()) / len(exact)
    assert summary["accuracy"] == pytest.approx(exact_acc, abs=1e-4)
    assert summary["accuracy"] >= 0.9
    return exact_acc


def test_verify_pairs_on_redis_match_exact_distances(labeled, redis_conn_args, capsys):
    shards, rows = labeled
    loaded = job(index, ["--shards", shards, "--store", "redis", "--index", NAME, *redis_conn_args])
    assert loaded["backend"] == "redis" and loaded["indexed"] == len(rows) and loaded["failed"] == 0
    again = job(index, ["--shards", shards, "--store", "redis", "--index", NAME, *redis_conn_args])
    assert again["doc_count"] == loaded["doc_count"] == len(rows), "a replay overwrites, adds nothing"
    summary = job(verify, ["--pairs", PAIRS, "--store", "redis", "--index", NAME, *redis_conn_args])
    assert summary["backend"] == "redis" and summary["pairs"] == len(labeled_pairs())
    check_against_exact(summary, rows)
    assert "accuracy" in capsys.readouterr().out


def test_verify_pairs_on_elasticsearch_match_exact_distances(labeled, es_client):
    shards, rows = labeled
    drop_versions(es_client, NAME)
    try:
        job(index, ["--shards", shards, "--index", NAME, "--es-conn", CONN])
        summary = job(verify, ["--pairs", PAIRS, "--store", "es", "--index", NAME, "--es-conn", CONN])
        assert summary["backend"] == "elasticsearch"
        check_against_exact(summary, rows)
    finally:
        drop_versions(es_client, NAME)


def test_verify_one_photo_prints_the_verdict(labeled, redis_conn_args, capsys):
    shards, _ = labeled
    job(index, ["--shards", shards, "--store", "redis", "--index", NAME, *redis_conn_args])
    same_pair = next((x, y) for x, y, same in labeled_pairs() if same)
    photo = os.path.join(SAMPLE, same_pair[0])
    assert verify.main([photo, "--as", same_pair[1], "--store", "redis", "--index", NAME, *redis_conn_args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("same:") and "distance" in out
    assert verify.main([photo, "--as", "nobody-like-this", "--store", "redis", "--index", NAME, *redis_conn_args]) == 2


def test_wrong_password_and_unreachable_server_fail_fast_without_the_secret(labeled, redis_home, monkeypatch, caplog,
                                                                            capsys):
    home, port = redis_home
    photo = os.path.join(SAMPLE, "img1.jpg")
    secret = "wrong-Redis-Secret-4711"
    monkeypatch.setenv(redis_store.ENV_PASSWORD, secret)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        code = verify.main([photo, "--as", "x", "--store", "redis", "--redis-conn", str(home / "connection.json")])
        code2 = index.main(["--shards", labeled[0], "--store", "redis", "--index", NAME,
                            "--redis-conn", str(home / "connection.json")])
    printed = capsys.readouterr()
    assert code == code2 == 2 and time.monotonic() - started < 15
    assert "refused the password" in caplog.text
    assert secret not in caplog.text + printed.out + printed.err
    monkeypatch.delenv(redis_store.ENV_PASSWORD)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        code = verify.main([photo, "--as", "x", "--store", "redis", "--redis-url", "127.0.0.1:9"])
    assert code == 2 and time.monotonic() - started < 10
    assert "unreachable" in caplog.text and "127.0.0.1:9" in caplog.text


def test_redis_up_keeps_password_and_data_across_restarts(redis_home):
    home, port = redis_home
    conn_file = home / "connection.json"
    assert stat.S_IMODE(conn_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "redis.conf").stat().st_mode) == 0o600
    before = json.loads(conn_file.read_text())
    client = redis_store.RedisConn.resolve(conn_file=str(conn_file)).check()
    client.set("facebeam:restart-probe", b"kept")
    client.close()
    pid = redis_local.running_pid(home)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert before["password"] not in cmdline
    assert redis_local.down(home)
    assert redis_local.status(home)["running"] is False
    redis_local.up(home, port)
    assert json.loads(conn_file.read_text())["password"] == before["password"]
    client = redis_store.RedisConn.resolve(conn_file=str(conn_file)).check()
    assert client.get("facebeam:restart-probe") == b"kept"  # AOF/RDB persistence
    assert redis_local.status(home)["aof"] is True
    client.delete("facebeam:restart-probe")
    client.close()
    out = subprocess.run([sys.executable, "-m", "facebeam.pipelines.cli", "redis", "status", "--home", str(home)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("running: Redis 7")
    assert before["password"] not in out.stdout + out.stderr


def test_forget_removes_a_photo_from_redis(labeled, redis_conn_args, tmp_path, capsys):
    from facebeam.pipelines import forget

    shards, rows = labeled
    mine = str(tmp_path / "shards")
    label_by_file(shards, mine)
    name = NAME + "-forget"
    job(index, ["--shards", mine, "--store", "redis", "--index", name, *redis_conn_args])
    victim = sorted({r["image_path"] for r in rows})[0]
    faces = [r for r in rows if r["image_path"] == victim]
    assert forget.main(["--image", victim, "--shards", mine, "--store", "redis", "--index", name, *redis_conn_args]) == 0
    assert f"{len(faces)} face doc(s)" in capsys.readouterr().out
    client = redis_store.RedisConn.resolve(conn_file=redis_conn_args[1]).check()
    assert redis_store.count(client, name) == len(rows) - len(faces)
    label = os.path.basename(victim)
    assert not client.exists(redis_store.prefix(name) + "id:" + label)
    for key in client.scan_iter(redis_store.prefix(name) + "*"):
        client.delete(key)


def test_a_pair_whose_photo_cannot_be_read_is_its_row_and_the_others_are_judged(tmp_path, capsys):
    """`verify --pairs` stopped at the first photo it could not read (one line, every other pair lost): now that
    pair is a failed row, the others are judged, and the exit status says something failed."""
    import shutil

    from facebeam.pipelines import run

    people = tmp_path / "people"
    (people / "a").mkdir(parents=True)
    shutil.copy(os.path.join(SAMPLE, "img1.jpg"), people / "a" / "img1.jpg")
    folder = str(tmp_path / "ann")
    job(run, ["--input", str(people), "--output", str(tmp_path / "out"), "--store", f"local:{folder}",
              "--label-from", "parent-dir"])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"photo,identity,decision\n{SAMPLE}/img1.jpg,a,yes\n{tmp_path}/gone.jpg,a,yes\n")
    capsys.readouterr()
    assert verify.main(["--pairs", str(pairs), "--store", f"local:{folder}", "--json"]) == 1
    s = json.loads(capsys.readouterr().out)
    assert (s["pairs"], s["failed"], s["judged"], s["right"]) == (2, 1, 1, 1)
    failed = [r for r in s["results"] if r["verdict"] == "failed"]
    assert len(failed) == 1 and "gone.jpg" in failed[0]["error"] and failed[0]["photo"].endswith("gone.jpg")
