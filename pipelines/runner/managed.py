"""Per-job Flink / Spark job servers that start with a timeout and stop when the job is done.

Beam's own `SubprocessJobServer` keeps one job-server JVM per pipeline until the
Python process exits and waits for its port without a deadline. `ManagedFlinkRunner` /
`ManagedSparkRunner` (made by `flink_runner()` / `spark_runner()`) give each job's
job server its own process, log file and start timeout (`FACEBEAM_JOB_SERVER_TIMEOUT`,
default 120 s), probe the cluster first (`probes.check_cluster`), and hand back a
`ManagedPipelineResult` that stops the job server as soon as the job is over (keeping
its log under `<facebeam home>/logs/` when the job failed). Job servers still running
when the process exits are stopped then (`live_job_servers`).

Runs against a cluster's own long-lived job server (`--job_endpoint`, set by
`job_options.py` for facebeam-local clusters) start nothing here.
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
from pathlib import Path

from apache_beam.options.pipeline_options import FlinkRunnerOptions, SparkRunnerOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from facebeam.pipelines.local import toolkit
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner.kinds import is_embedded_flink
from facebeam.pipelines.runner.probes import check_cluster

log = logging.getLogger(__name__)


def start_timeout_s() -> float:
    """Seconds a job-server JVM gets to open its gRPC port."""
    return float(os.environ.get("FACEBEAM_JOB_SERVER_TIMEOUT", "120"))


class _LiveServers:
    """The job servers this process started and has not stopped; stopped at exit."""

    def __init__(self):
        self._servers: set = set()
        self._lock = threading.Lock()
        self._at_exit = False

    def add(self, server) -> None:
        with self._lock:
            if not self._at_exit:  # registered on first use, not on import
                atexit.register(self.stop_all)
                self._at_exit = True
            self._servers.add(server)

    def discard(self, server) -> None:
        with self._lock:
            self._servers.discard(server)

    def list(self) -> list:
        with self._lock:
            return list(self._servers)

    def stop_all(self) -> None:
        for s in self.list():
            with contextlib.suppress(Exception):
                s.stop()


# One per process: atexit, like Beam's own job servers, is the only owner that sees the exit.
_LIVE = _LiveServers()


def live_job_servers() -> list:
    """Job servers started by `create_pipeline` pipelines that are still running."""
    return _LIVE.list()


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
            _LIVE.add(self)
            log.info("job server pid %d at %s: %s", self._proc.pid, endpoint, " ".join(cmd))
            channel = grpc.insecure_channel(
                endpoint, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
            )
            timeout = start_timeout_s()
            ready = grpc.channel_ready_future(channel)

            def serving(ready=ready) -> bool:
                try:
                    ready.result(timeout=1)  # waits up to 1 s itself: no sleep between asks
                except grpc.FutureTimeoutError:
                    return False
                return True

            proc = self._proc
            if toolkit.wait_ready(serving, lambda proc=proc: proc.poll() is None, timeout, interval=0)[0]:
                self._channel = channel
                self._stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
                return self._stub
            channel.close()
            if proc.poll() is not None:
                tail = toolkit.log_tail(self._log_path, 40)
                self.stop(keep_log=True)
                if attempt == 1 and "Address already in use" in tail:
                    continue  # the port picked by Beam was taken meanwhile: once more
                raise RunnerSetupError(
                    f"The Beam job server exited with code {proc.returncode} before it served "
                    f"{endpoint}.\ncommand: {' '.join(cmd)}\nlog ({self._saved_log}):\n{tail}"
                )
            self.stop(keep_log=True)
            raise RunnerSetupError(
                f"The Beam job server did not serve {endpoint} within {timeout:.0f} s "
                f"(FACEBEAM_JOB_SERVER_TIMEOUT); stopped it.\ncommand: {' '.join(cmd)}\n"
                f"log ({self._saved_log}):\n{toolkit.log_tail(self._saved_log, 40)}"
            )
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
        _LIVE.discard(self)
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
                if fo.flink_submit_uber_jar and not is_embedded_flink(fo.flink_master):
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


def flink_runner():
    """The ManagedFlinkRunner class (Beam's FlinkRunner with a managed per-job job server)."""
    from apache_beam.runners.portability.flink_runner import FlinkJarJobServer, FlinkRunner

    server = type("ManagedFlinkJobServer", (_ManagedJobServerMixin, FlinkJarJobServer), {})
    return _managed_runner(FlinkRunner, server)


def spark_runner():
    """The ManagedSparkRunner class (Beam's SparkRunner with a managed per-job job server)."""
    from apache_beam.runners.portability.spark_runner import SparkJarJobServer, SparkRunner

    server = type("ManagedSparkJobServer", (_ManagedJobServerMixin, SparkJarJobServer), {})
    return _managed_runner(SparkRunner, server)
