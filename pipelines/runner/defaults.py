"""Runner defaults: a bare `--runner` flag (or none) is enough to get a working job.

Local runs use Beam's FnApiRunner (what DirectRunner runs on) in multi-process mode
on all cores. Naming it directly keeps Beam 2.77's DirectRunner from first trying to
download the Prism runner, which hangs on a machine without internet.

`--runner=FlinkRunner` alone runs on an embedded Flink mini-cluster
(`--flink_master=[local]`), `--runner=SparkRunner` alone on Spark `local[<cores>]`.
For both, `pipeline_options` fills in the SDK harness environment: on a facebeam-local
standalone cluster (`facebeam flink|spark up`, named by `--flink_master=localhost:8081` /
`--spark_master_url=spark://localhost:7077`) the production set-up of deploy/:
`--environment_type=EXTERNAL --environment_config=localhost:<its worker pool's port>
--sdk_worker_parallelism=<its workers>` (one Python harness process per slot, see
`pipelines/local/workers.py`); otherwise (embedded, local[N], a cluster facebeam did not
start) `--environment_type=LOOPBACK` (the SDK harness runs in this process: no Docker,
local paths work). It also fills in the Beam job-server jar staged
through Maven into `~/.apache_beam/cache/jars/` (see `pipelines.jars`),
`--flink_version`, the Java launcher, and the JVM flags Java 17 needs
(`--job_server_jvm_properties`). It also checks up front, with timeouts, that Java is
17+, that the jar can be had, that a named cluster (`--flink_master=host:port`,
`--spark_master_url=spark://...`) answers and, for EXTERNAL on this machine, that the
worker pool answers and runs this facebeam/Beam version; anything wrong raises
`RunnerSetupError`.

Explicit Beam flags always win over these defaults (list-valued JVM flags are merged:
yours first, the needed ones added when missing).

`create_pipeline` runs Flink/Spark jobs through a job server whose start has a
timeout and which is stopped as soon as the pipeline finishes (Beam's own keeps one
JVM per pipeline until the process exits).

`RUNNER_PRESETS` names the runner set-ups the project supports, for tests and jobs:
`pipeline_options(RUNNER_PRESETS["flink-cluster"] + other_args)`; `preset_cluster(key)`
starts (and afterwards stops) the standalone cluster a preset needs.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    FlinkRunnerOptions,
    JobServerOptions,
    PipelineOptions,
    PortableOptions,
    SparkRunnerOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineResult, PipelineState

from facebeam.pipelines.local import job_server, toolkit
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.runner import jars
from facebeam.pipelines.runner.jars import RunnerSetupError

log = logging.getLogger(__name__)

_LOCAL_NAMES = (None, "", "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner")
_FLINK_MAGIC = ("[local]", "[auto]", "[collection]")

#: Seconds a named cluster gets to answer before `RunnerSetupError`.
CLUSTER_PROBE_TIMEOUT_S = float(os.environ.get("FACEBEAM_CLUSTER_PROBE_TIMEOUT", "5"))
#: Seconds the job-server JVM gets to open its gRPC port.
JOB_SERVER_START_TIMEOUT_S = float(os.environ.get("FACEBEAM_JOB_SERVER_TIMEOUT", "120"))
SPARK_WEBUI_PORT = int(os.environ.get("FACEBEAM_SPARK_WEBUI_PORT", "8080"))

#: What Flink's own config.yaml passes to its JVMs on Java 17 (env.java.opts.all).
FLINK_JAVA17_FLAGS = [
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
]
#: Spark 3.5's JavaModuleOptions (what spark-submit adds on Java 17).
SPARK_JAVA17_FLAGS = [
    "-XX:+IgnoreUnrecognizedVMOptions",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.invoke=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.action=ALL-UNNAMED",
    "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED",
    "-Djdk.reflect.useDirectMethodHandle=false",
]
_FLINK_LOG_FLAGS = ["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]

#: Runner set-ups, as Beam flags. `pipeline_options(RUNNER_PRESETS[key] + args)` turns
#: one into complete options; `preset_cluster(key)` brings up what it needs.
RUNNER_PRESETS: dict[str, list[str]] = {
    "direct": [],
    "flink-embedded": ["--runner=FlinkRunner", "--flink_master=[local]"],
    "flink-cluster": ["--runner=FlinkRunner", "--flink_master=localhost:8081"],
    "spark-local": ["--runner=SparkRunner", "--spark_master_url=local[2]"],
    "spark-cluster": ["--runner=SparkRunner", "--spark_master_url=spark://localhost:7077"],
}
#: Presets that need a standalone cluster, and the facebeam command that starts it.
PRESET_CLUSTERS = {"flink-cluster": "flink", "spark-cluster": "spark"}


def _flag_given(args, name):
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def runner_kind(opts_or_name) -> str:
    """'direct', 'flink', 'spark' or 'other'."""
    runner = opts_or_name
    if isinstance(opts_or_name, PipelineOptions):
        runner = opts_or_name.view_as(StandardOptions).runner
    if runner in _LOCAL_NAMES:
        return "direct"
    if not isinstance(runner, str):
        runner = type(runner).__name__
    name = runner.rsplit(".", 1)[-1].lower()
    name = name[: -len("runner")] if name.endswith("runner") else name
    name = name.removeprefix("managed")
    return name if name in ("flink", "spark") else "other"


def pipeline_options(beam_args, **overrides) -> PipelineOptions:
    """PipelineOptions from command-line Beam flags plus facebeam's runner defaults."""
    args = list(beam_args or [])
    opts = PipelineOptions(args, **overrides)

    def given(name):
        return _flag_given(args, name) or name in overrides

    kind = runner_kind(opts)
    if kind == "direct":
        direct = opts.view_as(DirectOptions)
        if not given("direct_running_mode"):
            direct.direct_running_mode = "multi_processing"
        if not given("direct_num_workers"):
            direct.direct_num_workers = 0  # 0 = one worker per core
    elif kind in ("flink", "spark"):
        _java_log_levels(opts)
        _portable_defaults(opts, kind, given)
    return opts


#: Python log level names the Java job server's SdkHarnessOptions (Beam 2.62) rejects
#: ("Must be one of [OFF, ERROR, WARN, INFO, DEBUG, TRACE]"), and what both sides accept.
_JAVA_LEVELS = {"CRITICAL": "ERROR", "FATAL": "ERROR", "WARNING": "WARN", "NOTSET": "DEBUG"}


def _java_log_levels(opts: PipelineOptions) -> None:
    """Rewrite harness log levels the Java job server cannot parse (it fails the job at Run
    with INTERNAL otherwise). CRITICAL becomes ERROR: Python's "OFF" does not exist."""
    from apache_beam.options.pipeline_options import WorkerOptions

    worker = opts.view_as(WorkerOptions)
    level = (worker.default_sdk_harness_log_level or "").upper()
    if level in _JAVA_LEVELS:
        worker.default_sdk_harness_log_level = _JAVA_LEVELS[level]
    overrides = worker.sdk_harness_log_level_overrides
    if isinstance(overrides, dict):
        worker.sdk_harness_log_level_overrides = {
            k: _JAVA_LEVELS.get(str(v).upper(), v) for k, v in overrides.items()}


#: The port a cluster address without one means (Flink REST, Spark master).
_CLUSTER_PORTS = {"flink": 8081, "spark": 7077}

#: How long a TaskManager / executor keeps a job's SDK harnesses after a stage releases them:
#: long enough to reach the job's next stage region, so each slot starts its harness once.
ENVIRONMENT_CACHE_MS = 10_000


class ClusterLibOptions(PipelineOptions):
    """Beam Java's --pipelineResourcesDetectorFactoryClass. The Python SDK does not declare it,
    and undeclared flags never reach the job server; declared here, it does."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--pipeline_resources_detector_factory_class", default=None,
                            help="Java class naming the jars a job server ships with a job (facebeam sets "
                                 f"{job_server.DETECTOR_CLASS} for its local clusters, which have Beam in lib/)")


def local_job_server(opts: PipelineOptions, kind: str | None = None) -> dict | None:
    """The long-lived job server of the facebeam-local cluster that `opts` name, or None.
    RunnerSetupError when that cluster recorded one that is no longer running."""
    kind = kind or runner_kind(opts)
    port = _local_cluster_port(opts, kind)
    st = job_server.read_state(kind) if port else None
    if not st or not str(st.get("master", "")).endswith(f"localhost:{port}") or not _local_cluster_alive(kind):
        return None  # (a cluster that is down is reported as such by check_cluster)
    if not job_server.info(kind):
        raise RunnerSetupError(
            f"The local {kind} cluster's Beam job server (pid {st.get('pid')}, localhost:{st.get('port')}, "
            f"{job_server.state_file(kind)}) is not running, so the job could not be submitted. Restart it: "
            f"`facebeam {kind} down && facebeam {kind} up`.")
    return st


def _local_cluster_port(opts: PipelineOptions, kind: str) -> int | None:
    """The port of the cluster on this machine that `opts` name (Flink REST / Spark master), or None."""
    if kind == "flink":
        master = opts.view_as(FlinkRunnerOptions).flink_master or "[local]"
        if master in _FLINK_MAGIC:
            return None
        parsed = urllib.parse.urlparse(master if "://" in master else f"http://{master}")
    elif kind == "spark":
        url = opts.view_as(SparkRunnerOptions).spark_master_url or ""
        if not url.startswith("spark://"):
            return None
        parsed = urllib.parse.urlparse(url)
    else:
        return None
    try:
        host, port = parsed.hostname, parsed.port or _CLUSTER_PORTS[kind]
    except ValueError:
        return None
    return port if pools.local_host(host) else None


def local_cluster_pool(opts: PipelineOptions, kind: str | None = None) -> dict | None:
    """The worker pool of the facebeam-local cluster that `opts` name (`facebeam flink|spark up`),
    as recorded in its state file; {'port': <default>, 'workers': 1, 'missing': True} when that
    cluster runs without a recorded pool; None when `opts` name no facebeam-local cluster."""
    kind = kind or runner_kind(opts)
    port = _local_cluster_port(opts, kind)
    if port is None:
        return None
    default_port = _CLUSTER_PORTS[kind]
    state = pools.read_state(kind)
    if state and int(state.get("cluster_port", default_port)) == port:
        return state
    if port == default_port and _local_cluster_alive(kind):
        return {"kind": kind, "port": pools.POOL_PORTS[kind], "workers": 1, "missing": True}
    return None


def _local_cluster_alive(kind: str) -> bool:
    if kind == "flink":
        from facebeam.pipelines.local import flink as flink_local

        return bool(flink_local._live_pids()["standalonesession"])
    from facebeam.pipelines.local import spark as spark_local

    return bool(spark_local._live(spark_local._MASTER))


def _environment_defaults(opts: PipelineOptions, kind: str, given) -> None:
    """LOOPBACK for embedded / unknown clusters; EXTERNAL on the local cluster's worker pool."""
    portable = opts.view_as(PortableOptions)
    pool = None if portable.job_endpoint else local_cluster_pool(opts, kind)
    if not given("environment_type"):
        portable.environment_type = "EXTERNAL" if pool else "LOOPBACK"
    if pool and portable.environment_type == "EXTERNAL":
        if not given("environment_config") and not portable.environment_config:
            portable.environment_config = f"localhost:{pool['port']}"
        if not given("sdk_worker_parallelism"):
            portable.sdk_worker_parallelism = int(pool.get("workers") or 1)
    if pool and kind == "flink" and not given("parallelism"):
        # Beam's Flink runner takes the job's parallelism from the *job server's* Flink
        # config (1 without one), not from the cluster: one slot would do all the work.
        opts.view_as(FlinkRunnerOptions).parallelism = int(pool.get("slots") or pool.get("workers") or 1)


def _portable_defaults(opts: PipelineOptions, kind: str, given) -> None:
    portable = opts.view_as(PortableOptions)
    jobsrv = opts.view_as(JobServerOptions)
    if portable.job_endpoint:  # an already running job service: nothing to launch here
        if not given("environment_type"):
            portable.environment_type = "LOOPBACK"
        return
    if kind == "flink" and not given("flink_master"):
        opts.view_as(FlinkRunnerOptions).flink_master = "[local]"
    if kind == "spark" and not given("spark_master_url"):
        opts.view_as(SparkRunnerOptions).spark_master_url = f"local[{os.cpu_count() or 2}]"
    _environment_defaults(opts, kind, given)
    served = local_job_server(opts, kind)
    if served:  # the cluster's own job server: no JVM to start, no jars to ship
        portable.job_endpoint = f"localhost:{served['port']}"
        if not served.get("stages_jars"):
            opts.view_as(ClusterLibOptions).pipeline_resources_detector_factory_class = job_server.DETECTOR_CLASS
        if not given("environment_cache_millis"):
            portable.environment_cache_millis = ENVIRONMENT_CACHE_MS
        if kind == "flink" and not given("flink_version"):
            opts.view_as(FlinkRunnerOptions).flink_version = jars.FLINK_MINOR
        check_cluster(opts)
        return
    java = toolkit.find_java(
        purpose=f"the Beam {kind.capitalize()} job server", launcher=jobsrv.job_server_java_launcher,
        hint=f"Point JAVA_HOME/PATH at a Java {toolkit.MIN_JAVA}+ (e.g. /usr/lib/jvm/java-17-openjdk-amd64) "
             "or pass --job_server_java_launcher=/path/to/java",
    ).path
    if not given("job_server_java_launcher"):
        jobsrv.job_server_java_launcher = java
    if kind == "flink":
        flink = opts.view_as(FlinkRunnerOptions)
        if not given("flink_version"):
            flink.flink_version = jars.FLINK_MINOR
        flags = FLINK_JAVA17_FLAGS + _FLINK_LOG_FLAGS
        if given("flink_job_server_jar"):
            _check_given_jar(flink.flink_job_server_jar, "flink")
        else:
            flink.flink_job_server_jar = str(jars.job_server_jar(jars.flink_spec(flink.flink_version)))
    else:
        spark = opts.view_as(SparkRunnerOptions)
        flags = SPARK_JAVA17_FLAGS
        if given("spark_job_server_jar"):
            _check_given_jar(spark.spark_job_server_jar, "spark")
        else:
            spark.spark_job_server_jar = str(jars.job_server_jar(jars.spark_spec()))
    props = list(jobsrv.job_server_jvm_properties or [])
    jobsrv.job_server_jvm_properties = props + [f for f in flags if f not in props]
    check_cluster(opts)


def _check_given_jar(jar: str, kind: str) -> None:
    if jar and not os.path.exists(jar) and not urllib.parse.urlparse(jar).scheme:
        raise RunnerSetupError(f"--{kind}_job_server_jar={jar} does not exist")


# --------------------------------------------------------------------------------------
# Cluster checks
# --------------------------------------------------------------------------------------

def check_cluster(opts: PipelineOptions, timeout: float | None = None) -> None:
    """RunnerSetupError unless the cluster named in `opts` answers (within `timeout`)."""
    timeout = CLUSTER_PROBE_TIMEOUT_S if timeout is None else timeout
    kind = runner_kind(opts)
    endpoint = opts.view_as(PortableOptions).job_endpoint
    if endpoint:
        served = local_job_server(opts, kind)
        if not served or endpoint != f"localhost:{served['port']}":
            return  # somebody else's job service: nothing here to probe
        job_server.check(kind, served, timeout)
    if kind == "flink":
        flink = opts.view_as(FlinkRunnerOptions)
        if flink.flink_master not in _FLINK_MAGIC:
            _check_flink(flink.flink_master, flink.flink_version, timeout)
    elif kind == "spark":
        url = opts.view_as(SparkRunnerOptions).spark_master_url
        if url.startswith("spark://"):
            _check_spark(url, timeout)
    check_worker_pool(opts, timeout)


def _runs_here(opts: PipelineOptions, kind: str) -> bool:
    """Does the cluster `opts` name run on this machine (embedded, local[N] or localhost)?"""
    if kind == "flink":
        master = opts.view_as(FlinkRunnerOptions).flink_master or "[local]"
        if master in _FLINK_MAGIC:
            return True
        return pools.local_host(urllib.parse.urlparse(master if "://" in master else f"http://{master}").hostname)
    if kind == "spark":
        url = opts.view_as(SparkRunnerOptions).spark_master_url or "local"
        return url.startswith("local") or pools.local_host(urllib.parse.urlparse(url).hostname)
    return False


def check_worker_pool(opts: PipelineOptions, timeout: float | None = None) -> dict | None:
    """For an EXTERNAL environment on a cluster that runs on this machine: RunnerSetupError
    unless the worker pool answers within `timeout` and (for a facebeam-started pool) runs
    this launcher's facebeam and Beam versions. A remote cluster's pool (`localhost:50000`
    as seen from its TaskManagers) cannot be probed from here and is not."""
    timeout = CLUSTER_PROBE_TIMEOUT_S if timeout is None else timeout
    kind = runner_kind(opts)
    portable = opts.view_as(PortableOptions)
    if kind not in ("flink", "spark") or (portable.environment_type or "").upper() != "EXTERNAL":
        return None
    if not _runs_here(opts, kind):
        return None
    address = portable.environment_config or ""
    if not address:
        for o in portable.environment_options or []:
            if o.startswith("external_service_address="):
                address = o.split("=", 1)[1]
    if not address:
        raise RunnerSetupError("--environment_type=EXTERNAL needs --environment_config=HOST:PORT (the Beam worker "
                               f"pool's address; `facebeam {kind} up` starts one on localhost:{pools.POOL_PORTS[kind]})")
    return pools.check_pool(kind, address, timeout)


def _check_flink(master: str, flink_version: str, timeout: float) -> None:
    base = master if "://" in master else f"http://{master}"
    base = base.rstrip("/")
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            overview = toolkit.http_json(f"{base}/overview", timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            break
        except Exception as e:  # noqa: BLE001
            last = e
        if time.monotonic() >= deadline:
            raise RunnerSetupError(
                f"No Flink cluster answers at {base} (--flink_master={master}) after {timeout:.0f} s: {last}. "
                f"Start one with `facebeam flink up`, or use --flink_master=[local] for an embedded mini-cluster."
            )
        time.sleep(0.5)
    if not isinstance(overview, dict) or "slots-total" not in overview:
        raise RunnerSetupError(f"{base}/overview did not answer like a Flink REST API: {str(overview)[:200]}")
    if overview.get("taskmanagers", 0) < 1 or overview.get("slots-total", 0) < 1:
        raise RunnerSetupError(
            f"The Flink cluster at {base} has no task manager with slots ({overview.get('taskmanagers')} task "
            f"managers, {overview.get('slots-total')} slots): a job would wait for slots. "
            f"Restart it with `facebeam flink down && facebeam flink up`."
        )
    version = str(overview.get("flink-version", ""))
    if version and flink_version and not (version == flink_version or version.startswith(flink_version + ".")):
        raise RunnerSetupError(
            f"The Flink cluster at {base} runs Flink {version}, but the job server is for Flink {flink_version} "
            f"(--flink_version). Use a {flink_version}.x cluster (`facebeam flink up`) or a matching --flink_version."
        )


def _check_spark(url: str, timeout: float) -> None:
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname or "localhost", parsed.port or 7077
    deadline = time.monotonic() + timeout
    while not toolkit.port_open(host, port, timeout=min(2.0, max(0.5, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            raise RunnerSetupError(
                f"No Spark master answers at {url} (nothing listens on {host}:{port}) after {timeout:.0f} s. "
                f"Start one with `facebeam spark up`, or use --spark_master_url=local[N]."
            )
        time.sleep(0.5)
    try:  # the master's web UI tells whether a worker is there; without one a job waits forever
        info = toolkit.http_json(f"http://{host}:{SPARK_WEBUI_PORT}/json/", timeout=3)
    except Exception:  # noqa: BLE001 - UI elsewhere or disabled: the port check has to do
        return
    if isinstance(info, dict) and info.get("url", url).endswith(f":{port}") and info.get("aliveworkers", 1) < 1:
        raise RunnerSetupError(
            f"The Spark master at {url} has no live worker, so a job would wait forever for executors. "
            f"Restart it with `facebeam spark down && facebeam spark up`."
        )


# --------------------------------------------------------------------------------------
# Job servers that start with a timeout and stop when the pipeline is done
# --------------------------------------------------------------------------------------

_LIVE_SERVERS: set = set()
_LIVE_LOCK = threading.Lock()


def _stop_all_servers():
    with _LIVE_LOCK:
        servers = list(_LIVE_SERVERS)
    for s in servers:
        with contextlib.suppress(Exception):
            s.stop()


atexit.register(_stop_all_servers)


def live_job_servers() -> list:
    """Job servers started by `create_pipeline` pipelines that are still running."""
    with _LIVE_LOCK:
        return list(_LIVE_SERVERS)


class _ManagedJobServerMixin:
    """Replaces SubprocessJobServer.start/stop: own process, start timeout, log file."""

    _proc = None
    _channel = None
    _stub = None

    def start(self):
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2_grpc

        if self._stub is not None:
            return self._stub
        for attempt in (1, 2):
            self._local_temp_root = tempfile.mkdtemp(prefix="beam-temp")
            cmd, endpoint = self.subprocess_cmd_and_endpoint()
            cmd = [str(c) for c in cmd]
            self._log_path = Path(self._local_temp_root) / "job-server.log"
            with open(self._log_path, "wb") as logf:
                self._proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            with _LIVE_LOCK:
                _LIVE_SERVERS.add(self)
            log.info("job server pid %d at %s: %s", self._proc.pid, endpoint, " ".join(cmd))
            channel = grpc.insecure_channel(
                endpoint, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
            )
            deadline = time.monotonic() + JOB_SERVER_START_TIMEOUT_S
            ready = grpc.channel_ready_future(channel)
            while True:
                if self._proc.poll() is not None:
                    tail = toolkit.log_tail(self._log_path, 40)
                    channel.close()
                    self.stop(keep_log=True)
                    if attempt == 1 and "Address already in use" in tail:
                        break  # the port picked by Beam was taken meanwhile: once more
                    raise RunnerSetupError(
                        f"The Beam job server exited with code {self._proc.returncode} before it served "
                        f"{endpoint}.\ncommand: {' '.join(cmd)}\nlog ({self._saved_log}):\n{tail}"
                    )
                try:
                    ready.result(timeout=1)
                    self._channel = channel
                    self._stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
                    return self._stub
                except grpc.FutureTimeoutError:
                    if time.monotonic() > deadline:
                        channel.close()
                        self.stop(keep_log=True)
                        raise RunnerSetupError(
                            f"The Beam job server did not serve {endpoint} within {JOB_SERVER_START_TIMEOUT_S:.0f} s "
                            f"(FACEBEAM_JOB_SERVER_TIMEOUT); stopped it.\ncommand: {' '.join(cmd)}\n"
                            f"log ({self._saved_log}):\n{toolkit.log_tail(self._saved_log, 40)}"
                        ) from None
        raise RunnerSetupError("the Beam job server could not bind a port")  # pragma: no cover

    _saved_log = None

    def stop(self, keep_log: bool = False):
        proc, self._proc = self._proc, None
        if self._channel is not None:
            with contextlib.suppress(Exception):
                self._channel.close()
            self._channel = None
        self._stub = None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("job server pid %d ignored SIGTERM for 15 s; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=15)
        with _LIVE_LOCK:
            _LIVE_SERVERS.discard(self)
        root, self._local_temp_root = getattr(self, "_local_temp_root", None), None
        if root:
            if keep_log:
                self.keep_log()
            shutil.rmtree(root, ignore_errors=True)

    def keep_log(self):
        """Copy the job server's log to <facebeam home>/logs/ (before stop removes it)."""
        if self._saved_log is None and getattr(self, "_log_path", None) and self._log_path.is_file():
            logs = toolkit.facebeam_home() / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            self._saved_log = logs / f"job-server-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            shutil.copyfile(self._log_path, self._saved_log)
            log.warning("job server log kept in %s", self._saved_log)
        return self._saved_log


class ManagedPipelineResult(PipelineResult):
    """Delegates to Beam's portable result; stops the job server once the job is over."""

    def __init__(self, inner, servers):
        super().__init__(getattr(inner, "_state", PipelineState.UNKNOWN))
        self._inner = inner
        self._servers = servers
        #: pids of the job-server JVMs this job used (gone once the job is over)
        self.job_server_pids = [s._proc.pid for s in servers if s._proc is not None]
        self._final_state = None

    def _finish(self, state=None, failed=False):
        if not self._servers:
            return
        with contextlib.suppress(Exception):
            self._inner.metrics()  # fetch now: the job service goes away below
        self._final_state = state or getattr(self._inner, "_state", None)
        servers, self._servers = self._servers, []
        for s in servers:
            if failed:
                with contextlib.suppress(Exception):
                    s.keep_log()
            s.stop()

    @property
    def state(self):
        if self._final_state is not None:
            return self._final_state
        return self._inner.state

    def wait_until_finish(self, duration=None):
        try:
            state = self._inner.wait_until_finish(duration)
        except BaseException:
            self._finish(getattr(self._inner, "_state", PipelineState.FAILED), failed=True)
            raise
        if state is not None and PipelineState.is_terminal(state):
            self._finish(state, failed=state != PipelineState.DONE)
        return state

    def cancel(self):
        try:
            return self._inner.cancel()
        finally:
            self._finish(PipelineState.CANCELLED)

    def metrics(self):
        return self._inner.metrics()

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _managed_runner(base, server_cls):
    class Managed(base):
        def default_job_server(self, options):
            server = None
            if base.__name__ == "FlinkRunner":
                fo = options.view_as(FlinkRunnerOptions)
                if fo.flink_submit_uber_jar and fo.flink_master not in _FLINK_MAGIC:
                    return super().default_job_server(options)
                fo.flink_master = self.add_http_scheme(fo.flink_master)
            elif options.view_as(SparkRunnerOptions).spark_submit_uber_jar:
                return super().default_job_server(options)
            server = server_cls(options)
            self._facebeam_servers.append(server)
            return server

        def run_portable_pipeline(self, pipeline, options):
            check_cluster(options)
            self._facebeam_servers = []
            try:
                inner = super().run_portable_pipeline(pipeline, options)
            except BaseException:
                for s in self._facebeam_servers:
                    with contextlib.suppress(Exception):
                        s.keep_log()
                    s.stop()
                raise
            return ManagedPipelineResult(inner, list(self._facebeam_servers))

    Managed.__name__ = Managed.__qualname__ = f"Managed{base.__name__}"
    return Managed


def _flink_runner_cls():
    from apache_beam.runners.portability.flink_runner import FlinkJarJobServer, FlinkRunner

    server = type("ManagedFlinkJobServer", (_ManagedJobServerMixin, FlinkJarJobServer), {})
    return _managed_runner(FlinkRunner, server)


def _spark_runner_cls():
    from apache_beam.runners.portability.spark_runner import SparkJarJobServer, SparkRunner

    server = type("ManagedSparkJobServer", (_ManagedJobServerMixin, SparkJarJobServer), {})
    return _managed_runner(SparkRunner, server)


def runner_name(opts: PipelineOptions) -> str:
    kind = runner_kind(opts)
    if kind == "direct":
        return "DirectRunner(FnApiRunner)"
    portable = opts.view_as(PortableOptions)
    env = ""
    if (portable.environment_type or "").upper() == "EXTERNAL":
        env = f", EXTERNAL {portable.environment_config} x{portable.sdk_worker_parallelism}"
    if portable.job_endpoint:
        env += f", job server {portable.job_endpoint}"
    if kind == "flink":
        master = opts.view_as(FlinkRunnerOptions).flink_master
        return f"FlinkRunner({'embedded' if master in _FLINK_MAGIC else master}{env})"
    if kind == "spark":
        return f"SparkRunner({opts.view_as(SparkRunnerOptions).spark_master_url}{env})"
    return str(opts.view_as(StandardOptions).runner)


def local_provision_info(opts):
    """Provision info that hands the worker log levels to FnApiRunner's subprocess workers.

    FnApiRunner starts its multi-process workers without the pipeline options, so
    `--default_sdk_harness_log_level` never reaches them; this passes those two options.
    """
    from apache_beam.options.pipeline_options import WorkerOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.job import utils as job_utils
    from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo

    worker = opts.view_as(WorkerOptions)
    levels = {"beam:option:default_sdk_harness_log_level:v1": worker.default_sdk_harness_log_level or "INFO"}
    if worker.sdk_harness_log_level_overrides:
        levels["beam:option:sdk_harness_log_level_overrides:v1"] = dict(worker.sdk_harness_log_level_overrides)
    return ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(
        retrieval_token="unused-retrieval-token", pipeline_options=job_utils.dict_to_struct(levels)))


def _quiet_fn_api_runner(**kwargs):
    """FnApiRunner whose multi-process workers start as `python -m facebeam.pipelines.runner.worker`
    (Beam's own worker main behind facebeam's import-noise filter) instead of Beam's module directly."""
    import sys

    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms import environments

    class QuietWorkersRunner(FnApiRunner):
        @property
        def _default_environment(self):
            return self.__dict__["_facebeam_env"]

        @_default_environment.setter
        def _default_environment(self, env):
            if isinstance(env, environments.SubprocessSDKEnvironment) and \
                    env.command_string.endswith("-m apache_beam.runners.worker.sdk_worker_main"):
                env = environments.SubprocessSDKEnvironment.from_command_string(
                    f"{sys.executable} -m facebeam.pipelines.runner.worker")
            self.__dict__["_facebeam_env"] = env

    return QuietWorkersRunner(**kwargs)


def create_pipeline(opts: PipelineOptions, test_pipeline=None) -> beam.Pipeline:
    if test_pipeline is not None:
        return test_pipeline
    kind = runner_kind(opts)
    if kind == "direct":
        return beam.Pipeline(runner=_quiet_fn_api_runner(provision_info=local_provision_info(opts)), options=opts)
    if kind == "flink" and not opts.view_as(PortableOptions).job_endpoint:
        return beam.Pipeline(runner=_flink_runner_cls()(), options=opts)
    if kind == "spark" and not opts.view_as(PortableOptions).job_endpoint:
        return beam.Pipeline(runner=_spark_runner_cls()(), options=opts)
    return beam.Pipeline(options=opts)


# --------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------

def preset_options(key: str, extra_args=(), **overrides) -> PipelineOptions:
    """`pipeline_options(RUNNER_PRESETS[key] + extra_args)`."""
    if key not in RUNNER_PRESETS:
        raise KeyError(f"unknown runner preset {key!r}; known: {', '.join(RUNNER_PRESETS)}")
    return pipeline_options(RUNNER_PRESETS[key] + list(extra_args), **overrides)


@contextlib.contextmanager
def preset_cluster(key: str):
    """Brings up the standalone cluster a preset needs (if not running) and stops it after."""
    which = PRESET_CLUSTERS.get(key)
    if which == "flink":
        from facebeam.pipelines.local import flink as flink_local

        with flink_local.running() as info:
            yield info
    elif which == "spark":
        from facebeam.pipelines.local import spark as spark_local

        with spark_local.running() as info:
            yield info
    else:
        yield None
