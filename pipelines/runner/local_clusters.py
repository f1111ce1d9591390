"""The facebeam-local cluster a job's options name, if any: its worker pool and its job server.

`facebeam flink|spark up` records its worker pool and job server in state files
(`local/workers.py`, `local/job_server.py`); a job whose options name that cluster
(`--flink_master=localhost:8081`, `--spark_master_url=spark://localhost:7077`) reads them
here to fill in its environment and job endpoint (`job_options.py`) and to probe them
(`probes.py`).
"""
from __future__ import annotations

import urllib.parse

from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, SparkRunnerOptions

from facebeam.pipelines.local import flink, job_server, spark
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner.kinds import CLUSTER_PORTS, is_embedded_flink, runner_kind
from facebeam.transforms.home import facebeam_home


def cluster_is_running(kind: str) -> bool:
    """Is `kind`'s facebeam-local cluster (`facebeam flink|spark up`) running?"""
    return flink.is_running() if kind == "flink" else spark.is_running()


def cluster_port(opts: PipelineOptions, kind: str) -> int | None:
    """The port of the cluster on this machine that `opts` name (Flink REST / Spark master), or None."""
    if kind == "flink":
        master = opts.view_as(FlinkRunnerOptions).flink_master or "[local]"
        if is_embedded_flink(master):
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
        host, port = parsed.hostname, parsed.port or CLUSTER_PORTS[kind]
    except ValueError:
        return None
    return port if pools.local_host(host) else None


def local_job_server(opts: PipelineOptions, kind: str | None = None) -> dict | None:
    """The long-lived job server of the facebeam-local cluster that `opts` name, or None.
    RunnerSetupError when that cluster recorded one that is no longer running."""
    kind = kind or runner_kind(opts)
    port = cluster_port(opts, kind)
    st = job_server.read_state(kind) if port else None
    if not st or not str(st.get("master", "")).endswith(f"localhost:{port}") or not cluster_is_running(kind):
        return None  # (a cluster that is down is reported as such by check_cluster)
    if not job_server.info(kind):
        raise RunnerSetupError(
            f"The local {kind} cluster's Beam job server (pid {st.get('pid')}, localhost:{st.get('port')}, "
            f"{job_server.state_file(kind)}) is not running, so the job could not be submitted. Restart it: "
            f"`facebeam {kind} down && facebeam {kind} up`.")
    return st


def started_elsewhere(opts: PipelineOptions, kind: str | None = None) -> str | None:
    """When the local cluster that `opts` name was started by `facebeam flink|spark up` from another facebeam
    home than this one, that home: its job server and worker pool are recorded there, not here."""
    kind = kind or runner_kind(opts)
    port = cluster_port(opts, kind)
    if port is None or cluster_is_running(kind):
        return None
    home = flink.started_from(port) if kind == "flink" else spark.started_from(port)
    return str(home) if home and home != facebeam_home() else None


def local_cluster_pool(opts: PipelineOptions, kind: str | None = None) -> dict | None:
    """The worker pool of the facebeam-local cluster that `opts` name (`facebeam flink|spark up`),
    as recorded in its state file; {'port': <default>, 'workers': 1, 'missing': True} when that
    cluster runs without a recorded pool; None when `opts` name no facebeam-local cluster."""
    kind = kind or runner_kind(opts)
    port = cluster_port(opts, kind)
    if port is None:
        return None
    default_port = CLUSTER_PORTS[kind]
    state = pools.read_state(kind)
    if state and int(state.get("cluster_port", default_port)) == port:
        return state
    if port == default_port and cluster_is_running(kind):
        return {"kind": kind, "port": pools.POOL_PORTS[kind], "workers": 1, "missing": True}
    return None
