"""Workers that die mid-job: an SDK harness on Flink, an executor on Spark, a local run stopped by SIGTERM.

Each kill happens while the job embeds the sample (an `--incremental` run, launched as `facebeam embed` would
be, in its own process). The job must end within a bound: complete (the engine retried, the worker pool
started a new harness), or fail with one line naming what died and what to run; then an `--incremental`
re-run completes it. Either way the output holds exactly Direct's faces (`sample_run`), once each, no
`beam-temp-*` folder, half-written file or uncommitted partition is left, the lock is free, and
`summary.json` adds up. An index load killed the same way ends with Elasticsearch's exact doc count.
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import filelock
import psutil
import pyarrow.parquet as pq
import pytest

from facebeam.pipelines import embed, index
from facebeam.pipelines.bench import phases
from facebeam.pipelines.local import flink as flink_local
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.runner.presets import RUNNER_PRESETS
from facebeam.transforms import locks, shards
from facebeam.transforms.spec import EmbeddingSpec
from tests.es_fixtures import SESSION_HOME
from tests.helpers import SAMPLE, drop_versions, job, read_rows, synthetic_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2
#: Seconds a killed job may take to end: a Flink restart waits 15 s, the whole embed takes 20-90 s here.
BOUND_S = 300


@pytest.fixture(scope="module")
def direct(sample_run):
    out, summary = sample_run
    return summary, {r["face_id"] for r in read_rows(os.path.join(out, "embeddings"))}


def _launch(out, *beam_args, module="embed", args=None):
    argv = [sys.executable, "-m", f"facebeam.pipelines.{module}",
            *(args or ["--input", SAMPLE, "--output", str(out), "--incremental"]), *beam_args]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(find, proc, what, timeout=180):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, f"the job ended before its {what} started: {proc.communicate()}"
        found = find()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def _harnesses(which, since):
    """This job's live SDK harness processes: children of the cluster's worker pool started after `since`,
    or spare harnesses (started before, waiting) that the pool handed to a job after `since`."""
    handed = {int(m.group(1)) for t, line in phases.pool_lines(which)
              if t >= since and (m := re.search(r"Starting worker with command .*: spare harness pid (\d+)", line))}
    pool = psutil.Process(int(pools.pool_info(which)["pid"]))
    out = []
    for p in pool.children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and " harness " in " ".join(p.cmdline()) + " " \
                    and (p.create_time() >= since or p.pid in handed):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _executors():
    return [p for p in psutil.process_iter(["cmdline"])
            if "CoarseGrainedExecutorBackend" in " ".join(p.info["cmdline"] or [])]


def _end(proc, killed_at):
    try:
        stdout, stderr = proc.communicate(timeout=BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the job still ran {BOUND_S} s after the kill: it hangs")
    return proc.returncode, stdout, stderr, time.monotonic() - killed_at


def _one_line(stderr):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def assert_nothing_stray(out):
    committed = set(shards.committed_runs(str(out)))
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            assert not name.startswith("beam-temp-") and ".tmp-" not in name, os.path.join(root, name)
        m = re.search(r"run=([^/]+)$", root)
        assert m is None or m.group(1) in committed, f"uncommitted partition {root}"
    lock = filelock.FileLock(str(out / locks.OUTPUT_LOCK_FILE), blocking=False)
    lock.acquire()  # raises filelock.Timeout if a job still held it
    lock.release()


def assert_like_direct(out, direct):
    direct_summary, direct_ids = direct
    assert_nothing_stray(out)
    ids = [fid for f in shards.files(str(out)) for fid in pq.read_table(f, columns=["face_id"]).column(0).to_pylist()]
    assert len(ids) == len(set(ids)), "duplicate faces"
    assert set(ids) == direct_ids
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_seen"] == direct_summary["images_seen"]
    assert summary["images_embedded"] + sum(summary["images_failed"].values()) == summary["images_seen"]
    assert summary["faces"] == len(ids) == direct_summary["faces"]


def finish(out, direct, rc, stderr, beam_args, died):
    """Completed, or one line naming what died and a re-run that completes; then Direct's faces exactly."""
    if rc != 0:
        assert rc == 2, stderr[-3000:]
        line = _one_line(stderr)
        assert died in line and "run the same command again" in line, line
        assert_nothing_stray(out)
        job(embed, ["--input", SAMPLE, "--output", str(out), "--incremental", *beam_args])
    assert_like_direct(out, direct)


@pytest.fixture(scope="module", params=["flink", "spark"])
def cluster(request, local_cluster):
    local_cluster(request.param, WORKERS)
    return request.param, RUNNER_PRESETS[f"{request.param}-cluster"]


def test_a_killed_worker_is_survived_or_named(cluster, direct, tmp_path):
    """Flink: SIGKILL one SDK harness mid-embed. Spark: SIGKILL the executor mid-embed."""
    which, preset = cluster
    out = tmp_path / "out"
    since = time.time() - 1
    proc = _launch(out, *preset)
    harnesses = _wait_for(lambda: _harnesses(which, since), proc, "SDK harness")
    time.sleep(2)  # into the embed (a fresh harness's start-up, when no spare was ready: both must be survived)
    if which == "flink":
        victim, died = harnesses[0], "SDK harness"
    else:
        victim, died = _wait_for(_executors, proc, "executor")[0], "executor"
    assert proc.poll() is None, "the job ended before the kill"
    victim.kill()
    killed_at = time.monotonic()
    rc, _, stderr, took = _end(proc, killed_at)
    print(f"{which}: {died} pid {victim.pid} killed; the job ended with {rc} {took:.1f} s later")
    finish(out, direct, rc, stderr, preset, died)


def test_a_killed_worker_mid_load_still_lands_every_doc(cluster, es_client, tmp_path):
    """The same kills during `facebeam index` (synthetic shards, so that the load outlasts the kill): the job
    completes or names what died in one line, and after a re-run the index holds every doc exactly once."""
    which, preset = cluster
    rows = synthetic_shards(str(tmp_path), 12_000, EmbeddingSpec(), files=8, seed=25)
    alias = f"killed-load-{which}"
    drop_versions(es_client, alias)
    args = ["--shards", str(tmp_path), "--index", alias, "--es-conn", str(SESSION_HOME / "connection.json"),
            "--chunk-docs", "200"]

    def loading():
        stats = es_client.indices.stats(index=f"{alias}-*", metric="indexing").body["_all"]["primaries"]
        return (stats.get("indexing") or {}).get("index_total", 0) > 1_500

    try:
        since = time.time() - 1
        proc = _launch(None, *preset, module="index", args=args)
        _wait_for(loading, proc, "load")
        if which == "flink":
            victim, died = _wait_for(lambda: _harnesses(which, since), proc, "SDK harness")[0], "SDK harness"
        else:
            victim, died = _wait_for(_executors, proc, "executor")[0], "executor"
        assert proc.poll() is None, "the load ended before the kill"
        victim.kill()
        rc, _, stderr, took = _end(proc, time.monotonic())
        print(f"{which}: {died} pid {victim.pid} killed mid-load; the job ended with {rc} {took:.1f} s later")
        if rc != 0:
            assert rc == 2, stderr[-3000:]
            line = _one_line(stderr)
            assert died in line and "run the same command again" in line, line
            summary = job(index, [*args, *preset])
        else:
            summary = json.loads((tmp_path / "index-summary.json").read_text())
        assert summary["failed"] == 0 and read_rows(summary["index_errors"]) == []
        es_client.indices.refresh(index=alias)
        assert es_client.count(index=alias).body["count"] == len(rows)
        ids = [r["face_id"] for r in rows[::600]]
        hits = es_client.search(index=alias, query={"ids": {"values": ids}}, size=len(ids), _source=False).body
        assert sorted(h["_id"] for h in hits["hits"]["hits"]) == sorted(ids)
    finally:
        drop_versions(es_client, alias)


def test_a_small_local_run_in_process_stopped_says_one_line(tmp_path):
    """The same for a job small enough to run in the launcher's process (job_options.IN_PROCESS_MAX_PHOTOS): the
    signal arrives inside a DoFn, which Beam reports as a RuntimeError; still one line, exit 130, nothing left."""
    from facebeam.pipelines.runner import job_options

    photos = tmp_path / "in"
    photos.mkdir()
    for name in sorted(n for n in os.listdir(SAMPLE) if n.lower().endswith(".jpg"))[:job_options.IN_PROCESS_MAX_PHOTOS]:
        shutil.copy(os.path.join(SAMPLE, name), photos / name)
    out = tmp_path / "out"
    proc = _launch(out, args=["--input", str(photos), "--output", str(out)])
    _wait_for(lambda: glob.glob(str(out / "embeddings" / "beam-temp-*")), proc, "write")  # the job has begun
    assert not [p for p in psutil.Process(proc.pid).children(recursive=True)
                if "runner.worker" in " ".join(p.cmdline())], "a worker process: the job is not in-process"
    proc.send_signal(signal.SIGTERM)
    rc, _, stderr, _ = _end(proc, time.monotonic())
    assert rc == 130, stderr[-3000:]
    assert "interrupted" in _one_line(stderr)
    assert_nothing_stray(out)
    summary = job(embed, ["--input", str(photos), "--output", str(out), "--incremental"])
    assert summary["images_seen"] == job_options.IN_PROCESS_MAX_PHOTOS and summary["runner"].endswith("in_memory)")
    assert_nothing_stray(out)


def test_a_local_run_stopped_says_one_line(direct, tmp_path):
    """SIGTERM to a local (Direct) run mid-embed: one line, exit 130, nothing left; the re-run completes."""
    out = tmp_path / "out"
    proc = _launch(out)
    _wait_for(lambda: [p for p in psutil.Process(proc.pid).children(recursive=True)
                       if "runner.worker" in " ".join(p.cmdline())], proc, "local worker")
    time.sleep(3)
    assert proc.poll() is None, "the job ended before the kill"
    proc.send_signal(signal.SIGTERM)
    rc, _, stderr, _ = _end(proc, time.monotonic())
    assert rc == 130, stderr[-3000:]
    assert "interrupted" in _one_line(stderr)
    assert_nothing_stray(out)
    job(embed, ["--input", SAMPLE, "--output", str(out), "--incremental"])
    assert_like_direct(out, direct)


def test_a_killed_taskmanager_is_survived_or_named(direct, tmp_path, local_cluster):
    """The Flink TaskManager SIGKILLed mid-embed, and started again at once by `flink up`, as an operator or
    Kubernetes would: the restarted job gets its slots and completes (or, if it failed, one line naming the
    TaskManager, and the `--incremental` re-run completes); Direct's faces either way."""
    local_cluster("flink", WORKERS)
    try:
        preset = RUNNER_PRESETS["flink-cluster"]
        out = tmp_path / "out"
        since = time.time() - 1
        proc = _launch(out, *preset)
        _wait_for(lambda: _harnesses("flink", since), proc, "SDK harness")
        time.sleep(3)
        assert proc.poll() is None, "the job ended before the kill"
        tm = flink_local.live_pids()["taskexecutor"]
        assert tm
        os.kill(tm[0], signal.SIGKILL)
        killed_at = time.monotonic()
        assert pools.toolkit.wait_gone(tm, timeout=30)
        flink_local.up(workers=WORKERS)  # a new TaskManager
        rc, _, stderr, took = _end(proc, killed_at)
        print(f"flink: TaskManager pid {tm[0]} killed; the job ended with {rc} {took:.1f} s later")
        finish(out, direct, rc, stderr, preset, "TaskManager")
    finally:
        flink_local.up(workers=WORKERS)  # whole again for the tests after
