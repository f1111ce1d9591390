"""Flink and Spark runners, for real: embedded, local and standalone clusters.

A small pure-Beam job (Create -> Reshuffle -> sha256 DoFn -> Parquet) runs on every
runner set-up in `RUNNER_MATRIX` and must write exactly what the local default runner
writes. The standalone clusters come from the session's `local_cluster` fixture
(tests/conftest.py): started once, kept up for every module that needs them, stopped at the
session's end. The cluster presets run the SDK harness in the cluster's Beam worker pool
(EXTERNAL, one process per slot, as deploy/ does); the embedded ones in this process (LOOPBACK).
`test_every_transform_kind_across_the_version_gap` runs each transform kind facebeam's jobs
use on every set-up (job server Beam Java 2.62, SDK 2.77).

Other test modules reuse the matrix with
`pipeline_options(RUNNER_PRESETS[key] + args)` / `create_pipeline(opts)` once
`local_cluster(which)` has it up, or with `run_on(key, pipeline_fn, tmp_path)` below.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.runners.runner import PipelineState

from facebeam.pipelines.local import flink as flink_local
from facebeam.pipelines.local import jars, job_server, toolkit
from facebeam.pipelines.local import spark as spark_local
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.kinds import runner_name
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.pipelines.runner.managed import live_job_servers
from facebeam.pipelines.runner.presets import PRESET_CLUSTERS, RUNNER_PRESETS, preset_options
from facebeam.pipelines.runner.probes import check_cluster

# Beam's LOOPBACK data-plane reader thread raises "Multiplexer hanging up" when the runner
# closes a finished bundle's channel; harmless, but pytest reports it as a thread exception.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

RUNNER_MATRIX = ["flink-embedded", "flink-cluster", "spark-local", "spark-cluster"]
N = 100
SCHEMA = pa.schema([("n", pa.int64()), ("sha256", pa.string())])


class Sha256(beam.DoFn):
    def process(self, n):
        yield {"n": n, "sha256": hashlib.sha256(str(n).encode()).hexdigest()}


def sha_pipeline(p, out_dir):
    (
        p
        | "Numbers" >> beam.Create(list(range(N)))
        | beam.Reshuffle()
        | beam.ParDo(Sha256())
        | beam.io.WriteToParquet(os.path.join(out_dir, "part"), SCHEMA, file_name_suffix=".parquet")
    )


class Halve(beam.DoFn):
    def process(self, n):
        if n % 7 == 0:
            raise ValueError(f"bad {n}")  # goes to the exception-handling output
        yield n // 2


class ModHandler(ModelHandler):
    """A trivial RunInference model (pure Python): x -> x mod 5."""

    def load_model(self):
        return _Mod()

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(x, x % model.m) for x in batch]


class _Mod:  # RunInference shares models through weak references: not a bare int
    m = 5


def gap_pipeline(p, out_dir, files):
    """Every transform kind facebeam's jobs use, on the Java job server / Python SDK version gap:
    ReadAllFromParquet, BatchElements, ParDo.with_exception_handling, RunInference (with
    exception handling), Flatten, Distinct, GroupByKey, CoGroupByKey, WriteToParquet."""
    rows = p | "Files" >> beam.Create(files) | "Read" >> beam.io.ReadAllFromParquet(columns=["n"])
    nums = rows | "N" >> beam.Map(lambda r: r["n"])
    halves, bad = nums | "Halve" >> beam.ParDo(Halve()).with_exception_handling()
    preds, failed = halves | "Infer" >> RunInference(ModHandler()).with_exception_handling()
    distinct = ((halves, halves) | "Both" >> beam.Flatten() | "Distinct" >> beam.Distinct()
                | "Batch" >> beam.BatchElements(min_batch_size=3, max_batch_size=7) | "Unbatch" >> beam.FlatMap(list))
    mods = preds | "KeyMod" >> beam.Map(lambda r: (r.inference, r.example)) | "ByMod" >> beam.GroupByKey() \
        | "CountMod" >> beam.MapTuple(lambda k, v: (k, len(list(v))))
    joined = ({"d": distinct | "KD" >> beam.Map(lambda n: (n % 5, 1)), "m": mods}
              | "Join" >> beam.CoGroupByKey()
              | "Row" >> beam.MapTuple(lambda k, g: {"n": k, "sha256": f"{sum(g['d'])}/{list(g['m'])}"}))
    errors = ((bad | "BadN" >> beam.Map(lambda e: {"n": -e[0], "sha256": "error"})),
              (failed.failed_inferences | "Failed" >> beam.Map(lambda e: {"n": -1000, "sha256": "failed"})))
    ((joined, *errors) | "All" >> beam.Flatten()
     | beam.io.WriteToParquet(os.path.join(out_dir, "part"), SCHEMA, file_name_suffix=".parquet"))


def read_rows(out_dir):
    files = sorted(glob.glob(os.path.join(out_dir, "part*.parquet")))
    assert files, f"no output in {out_dir}"
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return sorted((r["n"], r["sha256"]) for r in rows)


def run_on(runner_key, pipeline_fn, tmp_path, extra_args=(), timeout_s=300):
    """Runs `pipeline_fn(p, out_dir)` on a preset; returns (result, out_dir, seconds).

    For cluster presets the cluster must be up (the `local_cluster` fixture). A job
    still running after `timeout_s` is cancelled and fails the test."""
    out_dir = str(tmp_path / runner_key)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.monotonic()
    opts = pipeline_options(RUNNER_PRESETS[runner_key] + list(extra_args))
    p = create_pipeline(opts)
    pipeline_fn(p, out_dir)
    result = p.run()
    state = result.wait_until_finish(duration=timeout_s * 1000)
    if not PipelineState.is_terminal(state):
        result.cancel()
        pytest.fail(f"{runner_key}: pipeline still {state} after {timeout_s} s; cancelled")
    return result, out_dir, time.monotonic() - t0


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    result, out_dir, _ = run_on("direct", sha_pipeline, tmp_path_factory.mktemp("direct"))
    rows = read_rows(out_dir)
    assert rows == [(n, hashlib.sha256(str(n).encode()).hexdigest()) for n in range(N)]
    return rows


@pytest.fixture(scope="module", params=RUNNER_MATRIX)
def runner_key(request, local_cluster):
    if PRESET_CLUSTERS.get(request.param):
        local_cluster(PRESET_CLUSTERS[request.param])
    return request.param


@pytest.fixture(scope="module")
def gap_input(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gap-input")
    files = []
    for k in range(3):
        path = str(folder / f"in-{k}.parquet")
        pq.write_table(pa.table({"n": pa.array(list(range(k, N, 3)), pa.int64())}), path)
        files.append(path)
    return files


@pytest.fixture(scope="module")
def gap_expected(tmp_path_factory, gap_input):
    _, out_dir, _ = run_on("direct", lambda p, o: gap_pipeline(p, o, gap_input), tmp_path_factory.mktemp("gap"))
    rows = read_rows(out_dir)
    assert ("error" in {r[1] for r in rows}) and len(rows) == 5 + len([n for n in range(N) if n % 7 == 0])
    return rows


def test_every_transform_kind_across_the_version_gap(runner_key, gap_input, gap_expected, tmp_path):
    """The job server is Beam Java jars.ASSEMBLED_BEAM_VERSION (2.62), the SDK 2.77: every transform
    kind facebeam uses runs on each runner set-up and gives Direct's rows."""
    result, out_dir, _ = run_on(runner_key, lambda p, o: gap_pipeline(p, o, gap_input), tmp_path)
    assert result.state == PipelineState.DONE
    assert read_rows(out_dir) == gap_expected


def test_flink_minor_is_one_constant():
    """The local Flink, the job server's Flink and deploy/'s Flink are one minor: jars.FLINK_MINOR."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    minor = jars.FLINK_MINOR
    assert jars.FLINK_VERSION.startswith(minor + ".")
    assert jars.flink_spec().runner_artifact == f"beam-runners-flink-{minor}"
    deploy = os.path.join(root, "deploy")
    named = {}
    for dirpath, _, files in os.walk(deploy):
        for f in files:
            if f.endswith((".yaml", ".yml", ".sh", ".py", "Dockerfile", "crontab", ".md")) and "crd" not in dirpath:
                text = Path(dirpath, f).read_text()
                for m in re.finditer(r"(?:flink_version=|FLINK_MINOR=|flink-|flink:|FLINK_VERSION:-)(1\.\d+)", text):
                    named.setdefault(m.group(1), set()).add(os.path.relpath(os.path.join(dirpath, f), root))
    assert set(named) == {minor}, named
    assert f"flinkVersion: v{minor.replace('.', '_')}" in Path(deploy, "flink", "flinkdeployment.yaml").read_text()


def _cluster_jobs(key):
    """Flink: jobs the cluster has seen. Spark (one application for all jobs): harnesses its pool started."""
    if PRESET_CLUSTERS.get(key) == "flink":
        return len(toolkit.http_json(f"{flink_local.rest_url()}/jobs/overview")["jobs"])
    if PRESET_CLUSTERS.get(key) == "spark":
        log = pools.state_dir("spark") / "log" / "worker-pool.log"
        return len(re.findall(r"Starting worker with command", log.read_text()))
    return None


def test_runner_matches_direct(runner_key, expected, tmp_path):
    jobs_before = _cluster_jobs(runner_key)
    which = PRESET_CLUSTERS.get(runner_key)
    served = job_server.info(which) if which else None
    result, out_dir, seconds = run_on(runner_key, sha_pipeline, tmp_path)
    print(f"\n{runner_key}: {seconds:.1f} s on {runner_name(pipeline_options(RUNNER_PRESETS[runner_key]))}")
    assert result.state == PipelineState.DONE
    assert read_rows(out_dir) == expected
    assert live_job_servers() == []
    if which:
        # the job really ran on the cluster, through the cluster's own job server (no JVM of its own)
        after = _cluster_jobs(runner_key)
        assert after == jobs_before + 1 if which == "flink" else after > jobs_before
        assert served and not hasattr(result, "job_server_pids")
        assert job_server.info(which)["pid"] == served["pid"]
        return
    # an embedded runner's job-server JVM is gone as soon as the pipeline finished
    assert result.job_server_pids
    for pid in result.job_server_pids:
        assert not toolkit.alive(pid), f"job server pid {pid} still running"


@pytest.mark.parametrize("key", ["flink-cluster", "spark-cluster"])
def test_a_job_from_another_home_says_so_and_leaves_the_cluster_working(key, local_cluster, expected, tmp_path,
                                                                        monkeypatch, caplog):
    """A job run from a folder other than the one `flink|spark up` ran in finds no job server recorded in its
    .facebeam. On Flink it starts one of its own (which ships Beam's jars) and says why it costs 20 s more; the
    cluster's own jobs after it still run (once Flink had loaded a shipped Beam child-first, every one of them
    failed in the TaskManager with a LinkageError until the cluster was restarted). On Spark it is refused: its
    second application waited for ever for the cores of the job server's."""
    from facebeam.transforms import home as fb_home

    which = PRESET_CLUSTERS[key]
    local_cluster(which)
    cluster_home = fb_home.facebeam_home()
    with monkeypatch.context() as m:
        m.setenv(fb_home.ENV_HOME, str(tmp_path / "elsewhere" / ".facebeam"))
        caplog.set_level("WARNING", logger="facebeam")
        if which == "spark":  # a second application would wait for the job server's cores for ever: refused
            with pytest.raises(RunnerSetupError, match=f"started from {cluster_home.parent}, whose .facebeam holds "
                                                       "its job server; .* waits for the cores the first one holds: "
                                                       f"run from {cluster_home.parent}, or set FACEBEAM_HOME="):
                pipeline_options(RUNNER_PRESETS[key])
            return
        result, out_dir, _ = run_on(key, sha_pipeline, tmp_path / "elsewhere")
        assert result.state == PipelineState.DONE and read_rows(out_dir) == expected
        assert result.job_server_pids  # a job server of its own
        said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(f"local {which.capitalize()} cluster was started from {cluster_home.parent}, whose .facebeam" in w and
                   w.endswith(f"or set FACEBEAM_HOME={cluster_home}") for w in said), said
    served = job_server.info(which)
    result, out_dir, _ = run_on(key, sha_pipeline, tmp_path / "here")
    assert result.state == PipelineState.DONE and read_rows(out_dir) == expected
    assert not hasattr(result, "job_server_pids") and job_server.info(which)["pid"] == served["pid"]


def test_cluster_cli_status(runner_key, capsys):
    which = PRESET_CLUSTERS.get(runner_key)
    if which is None:
        # Embedded presets need no cluster: the check passes with nothing listening.
        assert check_cluster(preset_options(runner_key)) is None
        return
    module = flink_local if which == "flink" else spark_local
    assert module.main(["status"]) == 0
    assert "running" in capsys.readouterr().out


def test_preset_defaults():
    o = pipeline_options(["--runner", "FlinkRunner"]).get_all_options(drop_default=True)
    assert o["flink_master"] == "[local]"
    assert o["environment_type"] == "LOOPBACK"
    assert o["flink_version"] == jars.FLINK_MINOR
    assert os.path.isfile(o["flink_job_server_jar"])
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in o["job_server_jvm_properties"]
    s = pipeline_options(["--runner=SparkRunner"]).get_all_options(drop_default=True)
    assert s["spark_master_url"] == f"local[{os.cpu_count()}]"
    assert os.path.isfile(s["spark_job_server_jar"])
    assert jars.bundled_spark_version(s["spark_job_server_jar"]) == jars.SPARK_VERSION
    # explicit flags win; list-valued JVM flags are merged, the explicit one first
    e = pipeline_options(
        ["--runner=FlinkRunner", "--flink_master=[auto]", "--environment_type=PROCESS",
         '--environment_config={"command": "/bin/true"}', "--job_server_jvm_properties=-Xmx1g"]
    ).get_all_options()
    assert e["flink_master"] == "[auto]" and e["environment_type"] == "PROCESS"
    assert e["job_server_jvm_properties"][0] == "-Xmx1g"
    assert pipeline_options([]).get_all_options()["direct_running_mode"] == "multi_processing"
    # Python log level names the Java job server rejects are rewritten (it would fail the job at Run)
    q = pipeline_options(["--runner=SparkRunner", "--default_sdk_harness_log_level=CRITICAL",
                          '--sdk_harness_log_level_overrides={"a": "CRITICAL", "b": "WARNING", "c": "INFO"}'])
    q = q.get_all_options()
    assert q["default_sdk_harness_log_level"] == "ERROR"
    assert q["sdk_harness_log_level_overrides"] == {"a": "ERROR", "b": "WARN", "c": "INFO"}


@pytest.mark.parametrize("args,hint", [
    (["--runner=FlinkRunner", "--flink_master=localhost:18081"], "facebeam flink up"),
    (["--runner=SparkRunner", "--spark_master_url=spark://localhost:17077"], "facebeam spark up"),
])
def test_cluster_not_running_fails_fast(args, hint):
    t0 = time.monotonic()
    with pytest.raises(RunnerSetupError) as err:
        pipeline_options(args)
    elapsed = time.monotonic() - t0
    assert hint in str(err.value)
    assert "localhost:1" in str(err.value)
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("runner", ["FlinkRunner", "SparkRunner"])
def test_wrong_java_is_a_clear_error(runner, tmp_path, monkeypatch):
    fake = tmp_path / "jdk11"
    (fake / "bin").mkdir(parents=True)
    java = fake / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n'
                    'echo "OpenJDK Runtime Environment (build 11.0.22+7)" >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(fake))
    monkeypatch.setenv("PATH", f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RunnerSetupError) as err:
        pipeline_options([f"--runner={runner}"])
    msg = str(err.value)
    assert "Java 17" in msg and "Java 11" in msg and str(java) in msg


def test_unpublished_job_server_names_coordinates(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEBEAM_JAR_CACHE", str(tmp_path / "jars"))
    monkeypatch.setenv("FACEBEAM_JOB_SERVER_VERSION", "2.999.0")
    with pytest.raises(RunnerSetupError) as err:
        pipeline_options(["--runner=FlinkRunner"])
    msg = str(err.value)
    assert "org.apache.beam:beam-runners-flink-1.19-job-server:2.999.0" in msg
    assert "org.apache.beam:beam-runners-flink-1.19:2.999.0" in msg
    assert str(tmp_path / "jars") in msg
    assert not list((tmp_path / "jars").glob("*.jar"))


def test_a_flink_master_that_is_not_there_is_named_in_one_short_line():
    """The line carried urllib3's pool, URL and connection reprs around `Connection refused`."""
    from facebeam.pipelines.local.toolkit import RunnerSetupError
    from facebeam.pipelines.runner import probes

    with pytest.raises(RunnerSetupError) as e:
        probes.check_flink("localhost:1", "1.19", timeout=0.5)
    said = str(e.value)
    assert said.startswith("No Flink cluster answers at http://localhost:1 (--flink_master=localhost:1) after 0 s: "
                           "Connection refused. Start one with `facebeam flink up`"), said
    assert "HTTPConnectionPool" not in said and len(said.splitlines()) == 1
