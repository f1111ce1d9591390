"""Local Flink and Spark clusters run the production harness: a Beam worker pool, EXTERNAL.

`facebeam flink|spark up --workers 2` starts a worker pool beside the TaskManager /
Spark worker (pipelines/local/workers.py); jobs submitted to those clusters get
`--environment_type=EXTERNAL --environment_config=localhost:<pool> --sdk_worker_parallelism=2`,
as deploy/ submits them. The real embed and index jobs must give what Direct gives,
and a pool that is down or stale must fail the job within seconds.
"""
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from facebeam.pipelines import embed, index
from facebeam.pipelines.local import flink as flink_local
from facebeam.pipelines.local import job_server, toolkit
from facebeam.pipelines.local import spark as spark_local
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.presets import PRESET_CLUSTERS, RUNNER_PRESETS
from tests.helpers import SAMPLE, drop_versions, job, read_rows

PHOTOS = ["couple.jpg", "img1.jpg", "img2.jpg", "img5.jpg", "img8.jpg", "img12.jpg", "img17.jpg", "img25.jpg",
          "img33.jpg", "img40.jpg", "img50.jpg", "img58.jpg"]
WORKERS = 2
MODULES = {"flink": flink_local, "spark": spark_local}


@pytest.fixture(scope="module")
def photo_list(tmp_path_factory):
    names = [p for p in PHOTOS if os.path.isfile(os.path.join(SAMPLE, p))]
    assert len(names) >= 10, names
    listing = tmp_path_factory.mktemp("pool-photos") / "photos.txt"
    listing.write_text("\n".join(os.path.join(SAMPLE, p) for p in names) + "\n")
    return str(listing), len(names)


@pytest.fixture(scope="module")
def direct(photo_list, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool-direct")
    summary = job(embed, ["--input", photo_list[0], "--output", str(out)])
    return str(out), summary, {r["face_id"]: r for r in read_rows(str(out / "embeddings"))}


@pytest.fixture(scope="module", params=["flink-cluster", "spark-cluster"])
def cluster(request, local_cluster):
    key = request.param
    which = PRESET_CLUSTERS[key]
    module = MODULES[which]
    local_cluster(which, WORKERS)
    try:
        yield key, which, module
    finally:
        module.up(workers=WORKERS)  # as found, with its pool, for the modules after


def _pool_starts(which) -> int:
    log = pools.state_dir(which) / "log" / "worker-pool.log"
    return len(re.findall(r"Starting worker with command", log.read_text())) if log.is_file() else 0


def test_cluster_jobs_default_to_the_worker_pool(cluster):
    key, which, _ = cluster
    o = pipeline_options(RUNNER_PRESETS[key]).get_all_options()
    assert o["environment_type"] == "EXTERNAL"
    # the default port, or the free one `up` took when a client's local end held it
    assert o["environment_config"] == f"localhost:{pools.pool_info(which)['port']}"
    assert int(o["sdk_worker_parallelism"]) == WORKERS
    if which == "flink":  # every slot busy, not Beam's default of 1 for a remote cluster
        assert int(o["parallelism"]) == WORKERS
    # explicit flags win; embedded presets stay LOOPBACK
    o = pipeline_options(RUNNER_PRESETS[key] + ["--environment_type=LOOPBACK"]).get_all_options()
    assert o["environment_type"] == "LOOPBACK"
    o = pipeline_options(RUNNER_PRESETS[key] + ["--sdk_worker_parallelism=1"]).get_all_options()
    assert int(o["sdk_worker_parallelism"]) == 1
    emb = "flink-embedded" if which == "flink" else "spark-local"
    assert pipeline_options(RUNNER_PRESETS[emb]).get_all_options()["environment_type"] == "LOOPBACK"
    st = pools.pool_info(which)
    assert st and st["workers"] == WORKERS and st["beam_version"] == pools.beam_version()


def test_embed_on_the_pool_matches_direct(cluster, photo_list, direct, tmp_path):
    key, which, _ = cluster
    starts = _pool_starts(which)
    summary = job(embed, ["--input", photo_list[0], "--output", str(tmp_path), *RUNNER_PRESETS[key]])
    assert "EXTERNAL" in summary["runner"], summary["runner"]
    served = job_server.info(which)
    assert f"job server localhost:{served['port']}" in summary["runner"]
    # The pool started one harness per slot, once for the whole job: the runner reuses them from
    # stage to stage, which Beam does only when its classes come from the cluster's classpath
    # (beam-lib), not from jars shipped with the job.
    assert not served["stages_jars"]
    assert _pool_starts(which) - starts == WORKERS
    rows = {r["face_id"]: r for r in read_rows(str(tmp_path / "embeddings"))}
    _, direct_summary, direct_rows = direct
    assert rows.keys() == direct_rows.keys() and len(rows) >= photo_list[1]
    for fid, row in rows.items():
        np.testing.assert_allclose(row["embedding"], direct_rows[fid]["embedding"], rtol=0, atol=1e-6)
    assert summary["images_seen"] == photo_list[1] == summary["images_embedded"]
    assert summary["faces"] == direct_summary["faces"]


def test_index_on_the_pool_matches_direct(cluster, direct, es_conn, es_home, es_client):
    key, which, _ = cluster
    conn = str(es_home / "connection.json")
    shards = direct[0]
    a, b = f"pool-direct-{which}", f"pool-{which}"
    try:
        d = job(index, ["--shards", shards, "--index", a, "--es-conn", conn])
        starts = _pool_starts(which)
        c = job(index, ["--shards", shards, "--index", b, "--es-conn", conn, *RUNNER_PRESETS[key]])
        assert _pool_starts(which) - starts >= 1
        assert c["failed"] == d["failed"] == 0
        assert c["doc_count"] == d["doc_count"] == d["rows_read"] == len(direct[2])
    finally:
        drop_versions(es_client, a)
        drop_versions(es_client, b)


def test_stale_pool_fails_fast(cluster, monkeypatch):
    key, which, _ = cluster
    monkeypatch.setattr(pools, "facebeam_version", lambda: "9.9.9")
    t0 = time.monotonic()
    with pytest.raises(RunnerSetupError) as err:
        pipeline_options(RUNNER_PRESETS[key])
    msg = str(err.value)
    assert "facebeam version 0.1.0" in msg or "facebeam version" in msg
    assert "9.9.9" in msg and f"localhost:{pools.POOL_PORTS[which]}" in msg
    assert f"facebeam {which} down && facebeam {which} up" in msg
    assert time.monotonic() - t0 < 30


def test_pool_down_fails_fast(cluster):
    key, which, module = cluster
    assert pools.stop_pool(which)
    port = pools.POOL_PORTS[which]
    assert not pools.toolkit.port_open("localhost", port), subprocess.run(
        ["ss", "-ltnp"], capture_output=True, text=True).stdout
    try:
        t0 = time.monotonic()
        with pytest.raises(RunnerSetupError) as err:
            pipeline_options(RUNNER_PRESETS[key])
        elapsed = time.monotonic() - t0
        msg = str(err.value)
        assert f"No Beam worker pool answers at localhost:{pools.POOL_PORTS[which]}" in msg
        assert f"facebeam {which} up" in msg
        assert elapsed < 30, elapsed
    finally:
        module.up(workers=WORKERS)  # the pool again, for the next tests
    assert pools.pool_info(which)


def test_job_server_down_fails_fast(cluster):
    key, which, module = cluster
    served = job_server.info(which)
    assert served
    os.kill(served["pid"], signal.SIGKILL)  # it dies; its state file stays
    assert pools.toolkit.wait_gone([served["pid"]], timeout=30)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunnerSetupError) as err:
            pipeline_options(RUNNER_PRESETS[key])
        msg = str(err.value)
        assert "job server" in msg and f"localhost:{served['port']}" in msg, msg
        assert f"facebeam {which} down && facebeam {which} up" in msg
        assert time.monotonic() - t0 < 30
    finally:
        module.up(workers=WORKERS)
    assert job_server.info(which)["pid"] != served["pid"]


def test_pool_listens_on_loopback_only(cluster):
    """The pool starts processes for whoever asks; Beam's own pool would listen on [::]."""
    _, which, _ = cluster
    listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    pool_port = pools.pool_info(which)["port"]
    local = [ln.split()[3] for ln in listening.splitlines() if ln.split()[3].endswith(f":{pool_port}")]
    assert local and all(a.rsplit(":", 1)[0] in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in local), local


def test_unreachable_external_pool_fails_fast():
    t0 = time.monotonic()
    with pytest.raises(RunnerSetupError) as err:
        pipeline_options(["--runner=FlinkRunner", "--environment_type=EXTERNAL", "--environment_config=localhost:1"])
    assert "No Beam worker pool answers at localhost:1" in str(err.value)
    assert time.monotonic() - t0 < 30


def test_bench_cpu_accounting_counts_descendants():
    """`facebeam bench runners` reads CPU with psutil: a child's CPU counts, live or reaped."""
    import sys

    from facebeam.pipelines.bench.runners import tree_cpu_s

    before = tree_cpu_s([os.getpid()])
    busy = "import time\nwhile time.process_time() < 0.5: pass\n"
    subprocess.run([sys.executable, "-c", busy], check=True)
    assert tree_cpu_s([os.getpid()]) - before >= 0.45


def test_bench_splits_a_cluster_jobs_fixed_cost_by_phase(cluster, photo_list, tmp_path):
    """`facebeam bench runners` on a cluster preset: the job's fixed cost by phase, read from the
    cluster's logs, each phase found, in order, and together no longer than the job. On Flink, the
    job server runs with the agent that polls job results promptly, and it took effect."""
    from facebeam.pipelines.bench import phases
    from facebeam.pipelines.bench.runners import run_one

    key, which, _ = cluster
    photos = tmp_path / "photos"
    photos.mkdir()
    for line in Path(photo_list[0]).read_text().split():
        shutil.copyfile(line, photos / os.path.basename(line))  # a symlink out of the input is not read
    r = run_one(key, str(photos), str(tmp_path / "out"))
    assert r["images"] == photo_list[1] and r["faces"] >= photo_list[1], r
    got = r["phases"]
    assert list(got) == list(phases.PHASES)
    measured = {k: v for k, v in got.items() if v is not None}
    assert set(measured) >= {"job submission", "stage set-up", "harness start", "model load", "job end"}, got
    assert ("scheduling" in measured) == (which == "spark"), got
    steps = [got[k] for k in phases.PHASES[:4] if got[k] is not None]
    assert all(v >= 0 for v in steps) and sum(steps) <= r["elapsed_s"] + 2, (got, r["elapsed_s"])
    assert phases.describe(got).startswith(f"job submission {got['job submission']:.1f} s, stage set-up ")
    if which == "flink":  # its job server's Flink client polled the job's result through the agent
        served = job_server.info("flink")
        assert served["result_agent"] and f"-javaagent:{served['result_agent']}" in toolkit.cmdline(served["pid"])
        log_text = (pools.state_dir("flink") / "log" / "job-server.log").read_text(errors="replace")
        assert "PromptJobResults agent: capped org.apache.flink.client.program.rest.retry.ExponentialWaitStrategy" \
            in log_text
        # embed asks for blocking exchanges (job_options.BLOCKING_EXCHANGES): Flink ran the job so, and its listing
        # ran while the writes set up, not after them as in one pipelined region.
        rest = flink_local.rest_url()
        jid = max(toolkit.http_json(f"{rest}/jobs/overview")["jobs"], key=lambda j: j["start-time"])["jid"]
        assert toolkit.http_json(f"{rest}/jobs/{jid}/config")["execution-config"]["execution-mode"] == "BATCH"
        vertices = toolkit.http_json(f"{rest}/jobs/{jid}")["vertices"]
        listing = next(v for v in vertices if "Embed/{Inputs, Expand" in v["name"])
        set_up = [v for v in vertices if "WriteImpl/InitializeWrite" in v["name"]]
        assert len(set_up) == 2 and all(listing["start-time"] < v["end-time"] for v in set_up), (listing, set_up)


def test_a_job_on_an_idle_pool_runs_on_its_spare_harnesses(cluster, photo_list, direct, tmp_path):
    """An idle pool keeps a spare harness per worker, Beam and facebeam imported and the default spec's
    models loaded: a job's harnesses are those spares (no Python start, no model load), its faces are
    Direct's, and the pool starts new spares once the job's harnesses are idle."""
    from facebeam.pipelines.bench import phases

    key, which, _ = cluster
    assert pools.wait_spares(which, WORKERS, timeout=90) >= WORKERS
    waiting = set(toolkit.read_json(pools.spares_file(pools.state_file(which)))["pids"])
    t0 = time.time()
    out = tmp_path / "out"
    summary = job(embed, ["--input", photo_list[0], "--output", str(out), *RUNNER_PRESETS[key]])
    starts = [line for t, line in phases.pool_lines(which) if t >= t0 and "Starting worker with command" in line]
    used = {int(m.group(1)) for line in starts if (m := re.search(r"spare harness pid (\d+)", line))}
    assert len(starts) >= WORKERS and used and used <= waiting, (starts, waiting)
    assert summary["images_embedded"] == photo_list[1]
    assert {r["face_id"] for r in read_rows(str(out / "embeddings"))} == set(direct[2]), "not Direct's faces"
    assert pools.wait_spares(which, WORKERS, timeout=90) >= WORKERS
    again = set(toolkit.read_json(pools.spares_file(pools.state_file(which)))["pids"])
    assert again and not again & used, (again, used)  # new processes: a harness is never reused


def test_cluster_jvms_run_light(cluster):
    """Every JVM of a local cluster (engine daemons, job server; executors are the Spark worker's children)
    runs with toolkit.LIGHT_JVM_FLAGS: C1 only and the serial collector (README, "Nightly-size jobs")."""
    import psutil

    _, _, module = cluster
    jvms = []
    for pid in module.cluster_pids():
        for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.name().startswith("java"):
                    jvms.append(p.cmdline())
    assert len(jvms) >= 3, jvms  # Flink: JobManager, TaskManager, job server; Spark: master, worker, job server
    for cmdline in jvms:
        assert set(toolkit.LIGHT_JVM_FLAGS) <= set(cmdline), cmdline[:12]


def test_a_spare_harness_says_ready_then_waits_for_its_endpoints():
    """The pool's side of a spare (workers._run_spare): it loads, writes "ready" on stdout, and waits for its
    endpoints on stdin; a pool that closes its stdin (stopping) ends it cleanly."""
    import sys

    spare = subprocess.Popen([sys.executable, "-m", "facebeam.pipelines.local.workers", "harness", "--spare"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert spare.stdout.readline() == b"ready\n"
        time.sleep(0.5)
        assert spare.poll() is None  # waiting, not running a harness
        spare.stdin.close()
        assert spare.wait(timeout=30) == 0
        assert b"preloads no models" not in spare.stderr.read()  # the default spec's models were loaded
    finally:
        spare.kill()


def test_a_pool_port_held_as_a_clients_local_end_is_passed_over(tmp_path, monkeypatch):
    """The pools' ports lie in Linux's ephemeral range, so any client may hold one as its local end:
    no connect sees it, and the pool's bind failed ("Address already in use", a CI set-up error)."""
    import socket

    monkeypatch.setenv("FACEBEAM_HOME", str(tmp_path))
    with socket.create_server(("127.0.0.1", 0)) as server, socket.socket() as client:
        client.bind(("127.0.0.1", 0))
        client.connect(server.getsockname())
        held = client.getsockname()[1]
        assert not toolkit.port_open("localhost", held) and not toolkit.port_bindable(held)
        with pytest.raises(RunnerSetupError, match=f"port {held} .* cannot be bound now"):
            pools.start_pool("flink", 1, port=held)  # asked for by --pool-port: refused at once, not after 60 s
        monkeypatch.setitem(pools.POOL_PORTS, "flink", held)
        try:
            st = pools.start_pool("flink", 1)
            assert int(st["port"]) != held and toolkit.port_open("localhost", int(st["port"]))
        finally:
            pools.stop_pool("flink")
