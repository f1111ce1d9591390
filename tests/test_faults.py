"""Faults that must neither lose work nor tell lies: refused credentials, a cluster that stays down or
restarts, two runs into one folder, killed runs' leftovers, damaged shards, stale dead letters, files
that are not images, and where hits point."""
import glob
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facebeam.pipelines import embed, index, jobs
from facebeam.pipelines import run as run_cmd
from facebeam.transforms import es_index, es_load, records, shards
from facebeam.transforms.es_conn import EsAuthError
from facebeam.transforms.es_sink import BulkConfig, ClusterWatch, EsDownDeadline, bulk_index
from facebeam.transforms.spec import EmbeddingSpec
from tests.es_fixtures import SESSION_HOME
from tests.helpers import ROOT, SAMPLE, drop_versions, job, read_rows, synthetic_shards
from tests.test_bulk_retries import FlakyClient

CONN = str(SESSION_HOME / "connection.json")
PYTHON = sys.executable


def count(client, name):
    client.indices.refresh(index=name)
    return client.count(index=name).body["count"]


def parquet_rows_under(folder) -> list:
    return [r for f in sorted(glob.glob(os.path.join(str(folder), "**", "*.parquet"), recursive=True))
            for r in pq.read_table(f).to_pylist()]


def error_lines(caplog) -> list:
    """What the command printed as errors (Beam's own worker-error log is off on the command line)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("facebeam")]


@pytest.fixture
def alias(es_client, es_index):
    drop_versions(es_client, es_index)
    yield es_index
    drop_versions(es_client, es_index)


# --- 1. a 401/403 mid-load stops the job; nothing is dead-lettered; the restore says how -----------------
@pytest.mark.parametrize("status", [401, 403])
def test_auth_refusal_in_a_bulk_raises_and_dead_letters_nothing(es_client, alias, tmp_path, status):
    spec = EmbeddingSpec()
    rows = synthetic_shards(str(tmp_path), 120, spec)
    concrete, _ = es_index.prepare_load(es_client, alias, spec)
    flaky = FlakyClient(es_client, {2: status})
    with pytest.raises(EsAuthError, match=f"refused the load with HTTP {status}.*Nothing was dead-lettered"):
        bulk_index(flaky, rows, BulkConfig(index=concrete, chunk_docs=40), sleep=lambda s: None)
    assert flaky.calls == 2  # not retried


class Blocking:
    """Wraps a real client: just before its `at`-th bulk it sets a real block on the index (`settings`)."""

    def __init__(self, client, index, settings, at):
        self._client, self._index, self._settings, self._at, self.bulks = client, index, settings, at, 0

    def options(self, **kw):
        return self

    def bulk(self, *args, **kwargs):
        self.bulks += 1
        if self.bulks == self._at:
            self._client.indices.put_settings(index=self._index, settings=self._settings)
        return self._client.bulk(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


BLOCKS = {  # the setting -> what the message must name
    "index.blocks.write": "index.blocks.write",
    "index.blocks.read_only": "index.blocks.read_only",
    "index.blocks.read_only_allow_delete": "flood-stage disk watermark",
}


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_a_block_set_mid_load_is_named_with_how_to_lift_it_and_a_rerun_is_exact(
        tmp_path, es_client, alias, monkeypatch, caplog, block):
    """A real block, set on the index by the worker's client before its 4th bulk: one line naming the
    block and how to lift it, never the credentials; after lifting it, the same command loads every doc."""
    from facebeam.transforms import es_sink

    rows = synthetic_shards(str(tmp_path), 3000, EmbeddingSpec(), files=4)
    setup = es_sink.IndexBatches.setup

    def blocking_setup(self):
        setup(self)
        self._client = Blocking(self._client, self._cfg.index, {block: True}, at=4)

    monkeypatch.setattr(es_sink.IndexBatches, "setup", blocking_setup)
    argv = ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN, "--chunk-docs", "100",
            "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    concrete = None
    try:
        with caplog.at_level(logging.ERROR):
            code = index.main(argv)
        errors = error_lines(caplog)
        concrete = es_index.alias_target(es_client, alias)
        assert code == 2 and len(errors) == 1, errors
        assert BLOCKS[block] in errors[0] and f"PUT /{concrete}/_settings" in errors[0], errors[0]
        assert "credential" not in errors[0].lower() and "401" not in errors[0], errors[0]
        assert "Nothing was dead-lettered" in errors[0]
        assert parquet_rows_under(tmp_path / "index-errors") == []
        assert 0 < count(es_client, concrete) < len(rows)
    finally:
        monkeypatch.undo()
        concrete = concrete or es_index.alias_target(es_client, alias)
        es_client.indices.put_settings(index=concrete, settings={block: None})
    again = job(index, argv)
    assert again["failed"] == 0 and again["indexed"] == len(rows)
    assert count(es_client, alias) == len(rows)
    settings = es_client.indices.get_settings(index=concrete).body[concrete]["settings"]["index"]
    assert "refresh_interval" not in settings and "blocks" not in settings


class Refusing:
    """Wraps a real client: from the `after`-th bulk on (and for settings), the cluster answers 401."""

    def __init__(self, client, after=None):
        self._client, self._after, self.bulks = client, after, 0

    @staticmethod
    def _401():
        import elastic_transport
        from elasticsearch import AuthenticationException

        meta = elastic_transport.ApiResponseMeta(
            status=401, http_version="1.1", headers=elastic_transport.HttpHeaders(), duration=0.0,
            node=elastic_transport.NodeConfig("https", "127.0.0.1", 9250))
        return AuthenticationException("injected: unable to authenticate user", meta=meta,
                                       body={"error": {"type": "security_exception", "reason": "unable to authenticate"}})

    def options(self, **kw):
        return self

    def bulk(self, *args, **kwargs):
        self.bulks += 1
        if self._after is not None and self.bulks >= self._after:
            raise self._401()
        return self._client.bulk(*args, **kwargs)

    @property
    def indices(self):
        refusing = self

        class Indices:
            def put_settings(self, **kw):
                raise refusing._401()

            def __getattr__(self, name):
                return getattr(refusing._client.indices, name)
        return Indices()

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_credentials_refused_mid_load_stop_the_job_in_one_line_and_a_rerun_completes(
        tmp_path, es_client, alias, monkeypatch, caplog):
    """The worker's 5th bulk and the final settings restore get a 401 (in-memory runner, so the fault reaches it)."""
    from facebeam.transforms import es_sink

    rows = synthetic_shards(str(tmp_path), 3000, EmbeddingSpec(), files=4)
    setup = es_sink.IndexBatches.setup

    def refusing_setup(self):
        setup(self)
        self._client = Refusing(self._client, after=5)

    opened = es_load.open_target

    def refusing_target(conn, load, spec):
        target = opened(conn, load, spec)
        target.client = Refusing(target.client)
        return target

    monkeypatch.setattr(es_sink.IndexBatches, "setup", refusing_setup)
    monkeypatch.setattr(es_load, "open_target", refusing_target)
    argv = ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN, "--chunk-docs", "100",
            "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    with caplog.at_level(logging.ERROR):
        code = index.main(argv)
    errors = error_lines(caplog)
    assert code == 2 and len(errors) == 1, errors
    concrete = es_index.alias_target(es_client, alias)
    assert "refused the load with HTTP 401" in errors[0] and "Nothing was dead-lettered" in errors[0]
    # The restore was refused too: the message gives the exact call.
    assert (f'PUT /{concrete}/_settings {{"index": {{"refresh_interval": null, "number_of_replicas": 0, '
            '"translog": {"durability": null}, "merge": {"scheduler": {"max_thread_count": null}}}}') in errors[0]
    assert parquet_rows_under(tmp_path / "index-errors") == []
    assert 0 < count(es_client, alias) < len(rows)

    monkeypatch.undo()
    again = job(index, argv)
    assert again["failed"] == 0 and again["indexed"] == len(rows)
    assert count(es_client, alias) == len(rows)
    assert parquet_rows_under(tmp_path / "index-errors") == []
    settings = es_client.indices.get_settings(index=concrete).body[concrete]["settings"]["index"]
    assert "refresh_interval" not in settings


def test_node_restarted_mid_load_lands_every_doc_or_stops_in_one_line(tmp_path, es_cluster_factory, caplog):
    """A 1-node cluster killed and started again mid-load: the load survives, or it stops with one line
    (e.g. the restarted cluster has new credentials) and a re-run completes. No doc is dead-lettered."""
    from facebeam.pipelines.local import elasticsearch as es_local
    from tests.es_fixtures import _cache

    conn = es_cluster_factory(nodes=1)
    home = es_cluster_factory.home(conn)
    conn_file = str(home / "connection.json")
    rows = synthetic_shards(str(tmp_path), 8000, EmbeddingSpec(), files=8)
    client = conn.client()
    port = int(conn.url.rsplit(":", 1)[1])
    restarted = {}

    def restart_mid_load():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                done = client.indices.stats(index="faces", metric="indexing").body["_all"]["primaries"]["indexing"]["index_total"]
            except Exception:  # noqa: BLE001 - the index may not exist yet, or the node is gone
                done = 0
            if done > 3000:
                es_cluster_factory.kill_node(conn, 0)
                restarted["killed_at"] = done
                try:
                    es_local.start_cluster(home, nodes=1, port=port, security=True, fresh=False, cache=_cache(),
                                           timeout=300)
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    restarted["error"] = repr(exc)
                    return
                restarted["up"] = True
                return
            time.sleep(0.1)

    t = threading.Thread(target=restart_mid_load)
    t.start()
    argv = ["--shards", str(tmp_path), "--index", "faces", "--es-conn", conn_file, "--chunk-docs", "100",
            "--es-down-deadline", "400"]
    with caplog.at_level(logging.ERROR):
        code = index.main(argv)
    t.join()
    assert restarted.get("up"), f"the node was not restarted during the load: {restarted}"
    assert restarted["killed_at"] < len(rows), "the load had finished before the kill"
    assert parquet_rows_under(tmp_path / "index-errors") == []
    new_client = es_local.connection(home).client()
    if code != 0:
        errors = error_lines(caplog)
        assert code == 2 and len(errors) == 1, errors
        again = job(index, argv)
        assert again["failed"] == 0
        assert parquet_rows_under(tmp_path / "index-errors") == []
    assert count(new_client, "faces") == len(rows)


# --- 2. a cluster that stays down: a whole-job deadline ------------------------------------------------
def test_cluster_down_deadline_stops_the_job_naming_cluster_and_deadline(tmp_path, es_conn, alias, monkeypatch,
                                                                        caplog):
    """The index is made on the real cluster; the workers then find no cluster (a dead port) and stop."""
    import dataclasses

    synthetic_shards(str(tmp_path), 400, EmbeddingSpec())
    dead = dataclasses.replace(es_conn, hosts=("https://127.0.0.1:9",), request_timeout=5)
    opened = es_load.open_target

    def open_then_lose_the_cluster(conn, load, spec):
        target = opened(conn, load, spec)
        return dataclasses.replace(target, conn=dead)

    monkeypatch.setattr(es_load, "open_target", open_then_lose_the_cluster)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        code = index.main(["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN,
                           "--es-down-deadline", "10", "--initial-backoff", "1"])
    elapsed = time.monotonic() - started
    errors = error_lines(caplog)
    assert code == 2 and len(errors) == 1, errors
    assert "https://127.0.0.1:9 has been unreachable" in errors[0] and "deadline of 10 s" in errors[0]
    assert "not dead-lettered" in errors[0]
    # Deadline + one retry cycle (+ Beam's own start-up of two workers on this 2-core machine).
    assert elapsed < 10 + 5 + 45, elapsed
    assert parquet_rows_under(tmp_path / "index-errors") == []
    assert count(es_conn.client(), alias) == 0


def test_cluster_down_on_the_command_line_is_one_line_and_exit_2(tmp_path, es_conn, alias):
    """The same through `facebeam index`: Beam's wrapped worker error becomes one line on stderr."""
    synthetic_shards(str(tmp_path / "shards"), 200, EmbeddingSpec())
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import dataclasses, sys\n"
        "from facebeam.transforms import es_load\n"
        "opened = es_load.open_target\n"
        "def lose(conn, load, spec):\n"
        "    t = opened(conn, load, spec)\n"
        "    return dataclasses.replace(t, conn=dataclasses.replace(t.conn, hosts=('https://127.0.0.1:9',)))\n"
        "es_load.open_target = lose\n"
        "from facebeam.pipelines.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([PYTHON, str(prog), "index", "--shards", str(tmp_path / "shards"), "--index", alias,
                           "--es-conn", CONN, "--es-down-deadline", "5"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    # The launcher says one plain line, last (no logger prefix); quiet workers print no tracebacks.
    launcher = [ln for ln in lines if ln.startswith("error: ")]
    assert "Traceback" not in done.stderr
    assert done.returncode == 2 and launcher == lines[-1:], done.stderr[-3000:]
    assert "https://127.0.0.1:9 has been unreachable" in lines[-1] and "deadline of 5 s" in lines[-1]
    assert "RuntimeError" not in done.stderr  # Beam's wrapper exception never reaches the user


def test_down_clock_runs_from_the_first_failure_since_the_last_success():
    now = [100.0]
    watch = ClusterWatch(30, clock=lambda: now[0])
    assert watch.failed() == 0 and watch.remaining() == 30
    now[0] += 20
    assert watch.failed() == 20
    watch.ok()  # one answered bulk resets the clock
    now[0] += 100
    assert watch.remaining() == 30 and watch.failed() == 0
    now[0] += 31
    assert watch.failed() == 31


def test_connection_errors_are_retried_past_max_retries_until_the_deadline(es_client, alias, tmp_path):
    spec = EmbeddingSpec()
    rows = synthetic_shards(str(tmp_path), 20, spec)
    concrete, _ = es_index.prepare_load(es_client, alias, spec)
    now = [0.0]
    flaky = FlakyClient(es_client, dict.fromkeys(range(1, 100), "connection"))

    def sleep(s):
        now[0] += s

    watch = ClusterWatch(12, clock=lambda: now[0])
    with pytest.raises(EsDownDeadline, match="unreachable for 12 s, past the deadline of 12 s"):
        bulk_index(flaky, rows, BulkConfig(index=concrete, max_retries=1, initial_backoff_s=1), sleep=sleep,
                   watch=watch, url="https://example:9200")
    assert flaky.calls > 2  # more than max_retries + 1: unanswered docs are never dead-lettered
    assert now[0] <= 12 + 0.1  # the last wait is cut to the deadline


# --- 3. one job per output folder; a concurrent index creator is joined --------------------------------
def test_a_second_run_into_a_busy_folder_refuses_at_once_and_faces_stay_unique(tmp_path, es_client, alias, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("img1.jpg", "img2.jpg", "img3.jpg", "couple.jpg"):
        shutil.copy(os.path.join(SAMPLE, name), photos)
    out = tmp_path / "out"
    argv = ["--input", str(photos), "--output", str(out), "--index", alias, "--incremental", "--es-conn", CONN]
    first = subprocess.Popen([PYTHON, "-m", "facebeam.pipelines.cli", "run", *argv, "--batch-size", "1"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lock = out / ".facebeam.lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.1)
    assert lock.read_text().strip() == str(first.pid)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        code = run_cmd.main(argv)
    assert code == 2 and time.monotonic() - started < 10
    (line,) = error_lines(caplog)
    assert f"output folder {out} is in use" in line and f"pid {first.pid}" in line
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]

    second = job(run_cmd, argv)  # the same photos again, now that the folder is free
    assert second["faces"] == 0
    ids = [r["face_id"] for f in shards.files(str(out)) for r in pq.read_table(f).to_pylist()]
    assert ids and len(ids) == len(set(ids))
    assert count(es_client, alias) == len(ids)
    assert len(shards.committed_runs(str(out))) == 2


def test_index_creation_joins_a_concurrent_creator(es_client, alias, monkeypatch):
    spec = EmbeddingSpec()
    theirs, _ = es_index.prepare_load(es_client, alias, spec)  # the other job got there first
    real = es_index.alias_target
    calls = []

    def stale_alias_target(client, name):
        calls.append(name)
        return None if len(calls) == 1 else real(client, name)  # we looked before it existed

    monkeypatch.setattr(es_index, "alias_target", stale_alias_target)
    monkeypatch.setattr(es_index, "next_version", lambda client, a, s: 1)  # and picked the same name
    ours, _ = es_index.prepare_load(es_client, alias, spec)
    assert ours == theirs
    assert sorted(es_client.indices.get_alias(name=alias).body) == [theirs]


def test_a_version_made_beside_a_concurrent_one_is_withdrawn(es_client, alias, monkeypatch):
    spec = EmbeddingSpec()
    theirs, _ = es_index.prepare_load(es_client, alias, spec)
    monkeypatch.setattr(es_index, "alias_target", lambda client, name: None)  # stale read
    ours, _ = es_index.prepare_load(es_client, alias, spec)  # created v2 behind the alias, then saw v1
    assert ours == theirs
    assert sorted(es_client.indices.get_alias(name=alias).body) == [theirs]
    assert not es_client.indices.exists(index=es_index.concrete_name(alias, spec, 2))


# --- 4. partitions of killed runs are removed on local disk ----------------------------------------------
def test_uncommitted_partitions_are_removed_on_local_disk(tmp_path):
    spec = EmbeddingSpec()
    out = tmp_path / "out"
    kept, killed = "20261101T000000Z-aaaaaa", "20261102T000000Z-bbbbbb"
    for run_id in (kept, killed):
        for kind in ("embeddings", "errors", "manifest", "index-errors"):
            d = out / kind / f"run={run_id}"
            d.mkdir(parents=True)
            synthetic_shards(str(tmp_path / "src"), 3, spec, files=1)
            shutil.copy(tmp_path / "src" / "embeddings" / "part-00000.parquet", d / "part-00000-of-00001.parquet")
            (d / "beam-temp-part-1234").mkdir()
            (d / "beam-temp-part-1234" / "half-written").write_bytes(b"x" * 10)
    (out / "embeddings" / f"run={killed}-empty").mkdir()  # killed before any file was written
    shards.commit(str(out), kept, {"run_id": kept})
    gone = shards.drop_uncommitted(str(out))
    assert len(gone) == 5
    for kind in ("embeddings", "errors", "manifest", "index-errors"):
        assert sorted(os.listdir(out / kind)) == [f"run={kept}"]
    assert len(shards.files(str(out))) == 1


# --- 5. damaged shards are named and nothing is written ------------------------------------------------
def corrupt_middle(path, n=20000, seed=3):
    import numpy as np

    data = bytearray(Path(path).read_bytes())
    mid = len(data) // 2 - n // 2
    data[mid:mid + n] = np.random.default_rng(seed).bytes(n)
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["random-bytes", "truncated"])
def test_a_damaged_shard_is_named_and_the_alias_count_is_unchanged(tmp_path, es_client, alias, caplog, damage):
    spec = EmbeddingSpec()
    good = tmp_path / "good"
    synthetic_shards(str(good), 300, spec)
    assert index.main(["--shards", str(good), "--index", alias, "--es-conn", CONN]) == 0
    before = count(es_client, alias)
    bad = tmp_path / "bad"
    synthetic_shards(str(bad), 10000, spec, files=4, seed=5)
    victim = str(bad / "embeddings" / "part-00002.parquet")
    pq.write_table(pq.read_table(victim), victim, compression="zstd")  # as the embed job writes them
    if damage == "random-bytes":
        corrupt_middle(victim)
    else:
        data = Path(victim).read_bytes()
        Path(victim).write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.ERROR):
        code = index.main(["--shards", str(bad), "--index", alias, "--es-conn", CONN])
    (line,) = error_lines(caplog)
    assert code == 2 and f"shard {victim}" in line
    assert ("damaged: row group" in line) if damage == "random-bytes" else ("not a readable Parquet file" in line)
    assert count(es_client, alias) == before == 300
    assert not (bad / "index-errors").exists()


def test_reading_a_damaged_shard_on_a_worker_names_it(tmp_path):
    synthetic_shards(str(tmp_path), 4000, EmbeddingSpec(), files=1)
    victim = str(tmp_path / "embeddings" / "part-00000.parquet")
    pq.write_table(pq.read_table(victim), victim, compression="zstd")
    corrupt_middle(victim)
    with pytest.raises(shards.ShardError, match=f"shard {victim} cannot be read"):
        list(shards.ReadShardRows().process(victim))
    err = RuntimeError(f"Traceback ...\nfacebeam.transforms.shards.ShardError: shard {victim} cannot be read: x "
                       "[while running 'ReadShards']\n\nDuring handling ...")
    rebuilt = jobs.worker_user_error(err)
    assert isinstance(rebuilt, shards.ShardError) and str(rebuilt) == f"shard {victim} cannot be read: x"


# --- 6. dead letters of older loads do not linger --------------------------------------------------------
def test_a_successful_reload_leaves_only_its_own_dead_letters(tmp_path, es_client, alias):
    spec = EmbeddingSpec(metric="cosine")  # cosine refuses an all-zero vector: a real per-document 400
    rows = synthetic_shards(str(tmp_path), 50, spec, files=1)
    path = tmp_path / "embeddings" / "part-00000.parquet"
    broken = [dict(r, embedding=[0.0] * spec.dim) if i < 3 else r for i, r in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(broken, schema=records.face_schema(spec.dim)), path)
    argv = ["--shards", str(tmp_path), "--index", alias, "--es-conn", CONN]
    first = job(index, argv)
    assert first["failed"] == 3 and first["indexed"] == 47
    assert sorted(r["face_id"] for r in read_rows(first["index_errors"])) == sorted(r["face_id"] for r in rows[:3])
    assert "zero magnitude" in read_rows(first["index_errors"])[0]["es_error"]

    pq.write_table(pa.Table.from_pylist(rows, schema=records.face_schema(spec.dim)), path)  # fixed
    second = job(index, argv)
    assert second["failed"] == 0 and count(es_client, alias) == 50
    assert os.listdir(tmp_path / "index-errors") == [os.path.basename(second["index_errors"])]
    assert read_rows(second["index_errors"]) == []
    assert shards.read_json(str(tmp_path / "index-summary.json"))["index_errors"] == second["index_errors"]


# --- 7 and 8. every file of a folder walk is accounted for; paths are absolute ---------------------------
@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("mixed")
    d = base / "photos"
    d.mkdir()
    shutil.copy(os.path.join(SAMPLE, "img1.jpg"), d / "img1.jpg")
    shutil.copy(os.path.join(SAMPLE, "img2.jpg"), d / "no-extension-photo")
    (d / "notes-no-extension").write_text("not a photo\n")
    for i in range(3):
        (d / f"caption-{i}.txt").write_text("a caption\n")
    (d / "table.csv").write_text("a,b\n")
    return base


def test_a_folder_walk_counts_every_file_and_stores_absolute_paths(mixed_folder, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(mixed_folder)  # the input is typed relative to here
    with caplog.at_level(logging.INFO):
        summary = job(embed, ["--input", "photos", "--output", str(tmp_path / "out")])
    d = str(mixed_folder / "photos")
    assert summary["images_seen"] == 3 == summary["images_embedded"] + sum(summary["images_failed"].values())
    assert summary["images_failed"] == {"not_an_image": 1}
    assert summary["files_skipped"] == {"not_image": 4} and summary["files_seen"] == 7
    assert "skipped 4 non-image file(s)" in caplog.text  # the log says it as the result line does
    faces = read_rows(str(tmp_path / "out" / "embeddings"))
    assert {r["image_path"] for r in faces} == {os.path.join(d, "img1.jpg"), os.path.join(d, "no-extension-photo")}
    (err,) = read_rows(str(tmp_path / "out" / "errors"))
    assert err["image_path"] == os.path.join(d, "notes-no-extension") and err["reason"] == "not_an_image"


@pytest.mark.parametrize("content, says", [({"a.txt": "x", "b.md": "y"}, "holds no image files"), ({}, "holds no files"),
                                           ({"a.jpg": None, "2019/b.jpg": None},
                                            "holds no files, only 2 symlink(s) to nothing (e.g. ")])
def test_a_folder_without_images_is_one_line_and_exit_2(tmp_path, content, says):
    d = tmp_path / "in"
    d.mkdir()
    for name, text in content.items():
        (d / name).parent.mkdir(exist_ok=True)
        if text is None:  # a link into a drive that is not mounted
            os.symlink(tmp_path / "unmounted" / name, d / name)
        else:
            (d / name).write_text(text)
    prog = "import sys; from facebeam.pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([PYTHON, "-c", prog, "embed", "--input", str(d), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "apitools" not in ln]
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0] and str(d) in lines[0], done.stderr[-2000:]
    assert not (tmp_path / "out").exists()
