"""Probes that fail a job in seconds, before submission, when its cluster cannot run it.

`check_cluster(opts)` asks the cluster the options name (Flink REST `/overview`, the Spark
master's port and web UI), the facebeam-local cluster's job server, and, for an EXTERNAL
environment on this machine, the worker pool (`check_worker_pool`). Anything wrong raises
`RunnerSetupError` with what to do. Each probe waits at most `probe_timeout_s()` seconds
($FACEBEAM_CLUSTER_PROBE_TIMEOUT, default 5).
"""
from __future__ import annotations

import os
import re
import urllib.parse

from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions, SparkRunnerOptions

from facebeam.pipelines.local import job_server, toolkit
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner.kinds import is_embedded_flink, runner_kind
from facebeam.pipelines.runner.local_clusters import local_job_server


def probe_timeout_s() -> float:
    """Seconds a named cluster gets to answer before `RunnerSetupError`."""
    return float(os.environ.get("FACEBEAM_CLUSTER_PROBE_TIMEOUT", "5"))


def spark_webui_port() -> int:
    """The Spark master web UI port the probe reads the live workers from."""
    return int(os.environ.get("FACEBEAM_SPARK_WEBUI_PORT", "8080"))


def check_cluster(opts: PipelineOptions, timeout: float | None = None) -> None:
    """RunnerSetupError unless the cluster named in `opts` answers (within `timeout`)."""
    timeout = probe_timeout_s() if timeout is None else timeout
    kind = runner_kind(opts)
    endpoint = opts.view_as(PortableOptions).job_endpoint
    if endpoint:
        served = local_job_server(opts, kind)
        if not served or endpoint != f"localhost:{served['port']}":
            return  # somebody else's job service: nothing here to probe
        job_server.check(kind, served, timeout)
    if kind == "flink":
        flink = opts.view_as(FlinkRunnerOptions)
        if not is_embedded_flink(flink.flink_master):
            check_flink(flink.flink_master, flink.flink_version, timeout)
    elif kind == "spark":
        url = opts.view_as(SparkRunnerOptions).spark_master_url
        if url.startswith("spark://"):
            check_spark(url, timeout)
    check_worker_pool(opts, timeout)


def runs_here(opts: PipelineOptions, kind: str) -> bool:
    """Does the cluster `opts` name run on this machine (embedded, local[N] or localhost)?"""
    if kind == "flink":
        master = opts.view_as(FlinkRunnerOptions).flink_master or "[local]"
        if is_embedded_flink(master):
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
    timeout = probe_timeout_s() if timeout is None else timeout
    kind = runner_kind(opts)
    portable = opts.view_as(PortableOptions)
    if kind not in ("flink", "spark") or (portable.environment_type or "").upper() != "EXTERNAL":
        return None
    if not runs_here(opts, kind):
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


def _why(e: BaseException) -> str:
    """`Connection refused`, not urllib3's pool, URL and object reprs around it."""
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
    return m.group(1).strip() if m else (str(e).splitlines()[0][:200] if str(e) else type(e).__name__)


def check_flink(master: str, flink_version: str, timeout: float) -> None:
    """RunnerSetupError unless a Flink of `flink_version` with free slots answers at `master`."""
    base = master if "://" in master else f"http://{master}"
    base = base.rstrip("/")
    deadline = toolkit.Deadline(timeout)
    errors = []

    def overview():
        try:
            return {"answer": toolkit.http_json(f"{base}/overview", timeout=deadline.left(lo=0.5, hi=3.0))}
        except Exception as e:  # noqa: BLE001 - anything but an answer: ask again until the deadline
            errors.append(e)
            return None

    answered = toolkit.poll(overview, timeout)
    if answered is None:
        raise RunnerSetupError(
            f"No Flink cluster answers at {base} (--flink_master={master}) after {timeout:.0f} s"
            f"{': ' + _why(errors[-1]) if errors else ''}. "
            f"Start one with `facebeam flink up`, or use --flink_master=[local] for an embedded mini-cluster."
        )
    overview = answered["answer"]
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


def check_spark(url: str, timeout: float) -> None:
    """RunnerSetupError unless a Spark master with a live worker answers at `url` (spark://...)."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname or "localhost", parsed.port or 7077
    deadline = toolkit.Deadline(timeout)
    if not toolkit.poll(lambda: toolkit.port_open(host, port, timeout=deadline.left(lo=0.5, hi=2.0)), timeout):
        raise RunnerSetupError(
            f"No Spark master answers at {url} (nothing listens on {host}:{port}) after {timeout:.0f} s. "
            f"Start one with `facebeam spark up`, or use --spark_master_url=local[N]."
        )
    try:  # the master's web UI tells whether a worker is there; without one a job waits forever
        info = toolkit.http_json(f"http://{host}:{spark_webui_port()}/json/", timeout=3)
    except Exception:  # noqa: BLE001 - UI elsewhere or disabled: the port check has to do
        return
    if isinstance(info, dict) and info.get("url", url).endswith(f":{port}") and info.get("aliveworkers", 1) < 1:
        raise RunnerSetupError(
            f"The Spark master at {url} has no live worker, so a job would wait forever for executors. "
            f"Restart it with `facebeam spark down && facebeam spark up`."
        )
