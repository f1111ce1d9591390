"""`facebeam spark up|down|status`: a standalone Spark master + worker on this machine.

Spark comes from the `pyspark` package at the Spark version bundled in the Beam Spark
job server (read from `spark-version-info.properties` inside the staged job-server
jar), installed with `pip install --no-deps --target <cache>/spark-dist/<version>`,
outside the project environment. The master and one worker are started with the
package's `sbin/spark-daemon.sh` and `SPARK_LOCAL_IP=127.0.0.1`; the master listens on
spark://localhost:7077 with its web UI on http://localhost:8080; logs, pid files and
the worker's scratch space live under `<facebeam home>/spark/` (see
`facebeam.transforms.home`).

`--workers N` (default: the number of cores) gives the worker N cores and starts a
Beam worker pool beside it (`pipelines/local/workers.py`, localhost:50001), as
deploy/ runs one on every Spark worker host. Jobs submitted with
`--runner=SparkRunner --spark_master_url=spark://localhost:7077` then get
`--environment_type=EXTERNAL --environment_config=localhost:50001
--sdk_worker_parallelism=N` filled in (`runner/job_options.py`): one Python SDK harness
process per executor core. `up` also starts one Beam job server for the cluster
(localhost:8097; the Spark driver of all jobs, see `_DRIVER_LOCAL`), whose executors take
Beam from `<facebeam home>/spark/beam-lib` (`pipelines/local/job_server.py`). `down` stops
the job server and the pool too.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from facebeam.pipelines import jobs, options
from facebeam.pipelines.local import jars, job_server, listening, service, toolkit
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.local.toolkit import RunnerSetupError

log = logging.getLogger(__name__)

MASTER_PORT = 7077
WEBUI_PORT = 8080
WORKER_WEBUI_PORT = 8091
POOL_PORT = pools.POOL_PORTS["spark"]
UP_TIMEOUT_S = 120
DOWN_TIMEOUT_S = 30
#: The job server is the Spark driver: it binds to loopback only, without a web UI on every
#: address, and its executors do the same. It keeps one Spark application (SparkContext) for
#: all jobs, as a shared long-lived cluster session does, so executors and their JVMs stay up
#: between jobs (~8 s per job otherwise, half the run on 300 photos). Beam names the switch
#: beam.spark.test.*: it is the path Beam's own Spark tests run every pipeline through.
_DRIVER_LOCAL = ("-Dspark.driver.host=localhost", "-Dspark.driver.bindAddress=127.0.0.1", "-Dspark.ui.enabled=false",
                 "-Dspark.executorEnv.SPARK_LOCAL_IP=127.0.0.1", "-Dbeam.spark.test.reuseSparkContext=true")
#: Retries, set deliberately (the job server is every job's driver): a task whose SDK harness or executor died
#: runs again, up to 4 attempts in all; a lost executor's tasks do not count, and the standalone master starts
#: the application a new executor (up to 10 times in a row, spark.deploy.maxExecutorRetries).
RETRIES = ("-Dspark.task.maxFailures=4",)
_MASTER = "org.apache.spark.deploy.master.Master"
_WORKER = "org.apache.spark.deploy.worker.Worker"


def state_dir() -> Path:
    return toolkit.facebeam_home() / "spark"


def spark_version() -> str:
    """The Spark version of the Beam Spark job server (staging the jar if needed)."""
    jar = jars.job_server_jar(jars.spark_spec())
    return jars.bundled_spark_version(jar)


def spark_home(version: str | None = None) -> Path:
    version = version or spark_version()
    target = toolkit.cache_dir() / "spark-dist" / version
    toolkit.pip_install_target([f"pyspark=={version}"], target)
    home = target / "pyspark"
    if not (home / "sbin" / "spark-daemon.sh").is_file() or not (home / "jars").is_dir():
        raise RunnerSetupError(f"{target} holds no runnable Spark (sbin/spark-daemon.sh, jars/)")
    return home


def master_url(port: int = MASTER_PORT) -> str:
    return f"spark://localhost:{port}"


def cluster_info(webui_port: int = WEBUI_PORT, timeout: float = 3.0) -> dict | None:
    """The master's /json/ answer (status, aliveworkers, cores, ...) or None if no master answers."""
    try:
        info = toolkit.http_json(f"http://localhost:{webui_port}/json/", timeout=timeout)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(info, dict) or "status" not in info:
        return None
    return info


def started_from(port: int = MASTER_PORT) -> Path | None:
    """The facebeam home whose `spark up` started the master listening on `port` (its SPARK_PID_DIR is
    <home>/spark), or None: no master there, or one facebeam did not start. Spark's master does not say."""
    import psutil

    try:
        pids = {c.pid for c in psutil.net_connections(kind="tcp")
                if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
        for pid in sorted(pids):
            pid_dir = psutil.Process(pid).environ().get("SPARK_PID_DIR")
            if pid_dir and Path(pid_dir).name == "spark":
                return Path(pid_dir).parent
    except (psutil.Error, OSError):  # another user's process: not known
        return None
    return None


def _pid_files(cls: str) -> list[Path]:
    return sorted(state_dir().glob(f"spark-*-{cls}-*.pid"))


def _pids(cls: str) -> list[int]:
    return toolkit.read_pids(_pid_files(cls))


def _live(cls: str) -> list[int]:
    return [p for p in _pids(cls) if toolkit.alive(p, cls)]


def live_pids() -> dict[str, list[int]]:
    """{'master': [pid], 'worker': [pid]}: the live master / worker processes of the cluster `up` started."""
    return {"master": _live(_MASTER), "worker": _live(_WORKER)}


def is_running() -> bool:
    """Is the master of the cluster `up` started running?"""
    return bool(_live(_MASTER))


def _env(home: Path, java: toolkit.Java) -> dict:
    env = dict(os.environ)
    for k in ("PYTHONPATH", "SPARK_CONF_DIR", "PYSPARK_PYTHON"):
        env.pop(k, None)
    conf = state_dir() / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    env.update(
        SPARK_HOME=str(home),
        SPARK_CONF_DIR=str(conf),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_MASTER_HOST="localhost",
        SPARK_LOG_DIR=str(state_dir() / "log"),
        SPARK_PID_DIR=str(state_dir()),
        SPARK_WORKER_DIR=str(state_dir() / "work"),
        SPARK_LOCAL_DIRS=str(state_dir() / "tmp"),
        SPARK_DAEMON_MEMORY="512m",
        SPARK_DAEMON_JAVA_OPTS=" ".join(toolkit.cluster_jvm_flags()),
        JAVA_HOME=java.home,
    )
    return env


def _daemon(home: Path, env: dict, *args: str, timeout: float = 60) -> None:
    toolkit.run_script(home / "sbin" / "spark-daemon.sh", *args, env=env, timeout=timeout)


def up(port: int = MASTER_PORT, webui_port: int = WEBUI_PORT, cores: int | None = None, memory: str = "2g",
       timeout: float = UP_TIMEOUT_S, version: str | None = None, workers: int | None = None,
       pool_port: int | None = None, allow_exposed: bool = False) -> dict:
    """Start master, worker and worker pool (if not already running); wait until the worker has
    registered. `workers` SDK harness processes (default: `cores`, else one per core);
    `workers=0` starts no pool. Then every port it listens on must be on loopback
    (`listening.check`; `allow_exposed`: warn)."""
    cores = cores or workers or max(2, os.cpu_count() or 2)
    workers = cores if workers is None else workers
    info = _up_cluster(port, webui_port, cores, memory, timeout, version)
    if workers:
        info["worker_pool"] = pools.start_pool("spark", workers, pool_port)
        pools.update_state("spark", cluster_port=port, webui_port=webui_port, cores=int(info.get("cores") or cores),
                             workers=workers, port=int(info["worker_pool"]["port"]))
    # Executors take Beam from beam-lib (the job server's JVM property reaches every
    # application's SparkConf), so jobs ship no jars.
    lib, detector = job_server.cluster_lib("spark", spark_home(version) / "jars")
    # The job server (the driver) and every executor carry the loopback agent: Beam's servers
    # in them (job, artifacts, fn-API for the harnesses) bind loopback (pipelines/local/listening.py).
    agent = job_server.loopback_agent(jars.spark_spec())
    executor_opts = " ".join([*toolkit.cluster_jvm_flags(), *([f"-javaagent:{agent}"] if agent else [])])
    executor_opts = (f"-Dspark.executor.extraJavaOptions={executor_opts}",) if executor_opts else ()
    info["job_server"] = job_server.start("spark", master_url(port), stages_jars=detector is None, agent=agent,
                                          extra_jvm=(f"-Dspark.executor.extraClassPath={lib}/*", *_DRIVER_LOCAL,
                                                     *RETRIES, *executor_opts))
    st = info["job_server"]
    info["exposed"] = [str(x) for x in listening.check("spark", cluster_pids(), [int(st["pid"])], agent,
                                                      allow_exposed, down)]
    return info


def cluster_pids() -> list[int]:
    """Every process `up` started that is alive: master, worker (its executors are its children),
    job server (the driver), worker pool."""
    return [p for ps in live_pids().values() for p in ps] + [
        int(st["pid"]) for st in (job_server.info("spark"), pools.pool_info("spark")) if st]


def _up_cluster(port, webui_port, cores, memory, timeout, version) -> dict:
    info = cluster_info(webui_port)
    if info and _live(_MASTER):
        if info.get("aliveworkers", 0) >= 1:
            log.info("Spark master already running at %s (%s worker(s))", master_url(port), info.get("aliveworkers"))
            return info
    elif info or toolkit.port_open("localhost", port) or toolkit.port_open("localhost", webui_port):
        raise RunnerSetupError(f"port {port} or {webui_port} is taken by something that is not this project's "
                               f"Spark ({state_dir()} has no live master); stop it or use other ports")
    java = toolkit.find_java(purpose="the Spark cluster")
    home = spark_home(version)
    for d in ("log", "work", "tmp"):
        (state_dir() / d).mkdir(parents=True, exist_ok=True)
    env = _env(home, java)
    t0 = time.monotonic()
    if not _live(_MASTER):
        for f in _pid_files(_MASTER):
            f.unlink(missing_ok=True)
        _daemon(home, env, "start", _MASTER, "1", "--host", "localhost", "--port", str(port),
                "--webui-port", str(webui_port))
    if not _live(_WORKER):
        for f in _pid_files(_WORKER):
            f.unlink(missing_ok=True)
        _daemon(home, env, "start", _WORKER, "1", "--host", "localhost", "--webui-port", str(WORKER_WEBUI_PORT),
                "--cores", str(cores), "--memory", memory, "--work-dir", str(state_dir() / "work"),
                master_url(port))
    ready, info = toolkit.wait_ready(
        lambda: cluster_info(webui_port), lambda: bool(_live(_MASTER) and _live(_WORKER)),
        max(0.0, t0 + timeout - time.monotonic()),
        ready=lambda i: bool(i and i.get("status") == "ALIVE" and i.get("aliveworkers", 0) >= 1))
    if ready:
        log.info("Spark master up at %s: %d worker(s), %d cores (%.1f s); logs in %s", master_url(port),
                 info["aliveworkers"], info.get("cores", 0), time.monotonic() - t0, state_dir() / "log")
        return info
    logs = "\n".join(f"--- {f.name}\n{toolkit.log_tail(f, 20)}" for f in sorted((state_dir() / "log").glob("*.out")))
    down()
    raise RunnerSetupError(
        f"Spark worker did not register with {master_url(port)} within {timeout:.0f} s (last answer: "
        f"{ {k: info.get(k) for k in ('status', 'aliveworkers')} if info else None}). Logs under "
        f"{state_dir() / 'log'}:\n{logs[-4000:]}"
    )


def down(timeout: float = DOWN_TIMEOUT_S) -> bool:
    """Stop the worker pool, worker and master started by `up`. True if something was stopped."""
    return service.stop_cluster("spark", [(_pids(cls), cls, _pid_files(cls)) for cls in (_WORKER, _MASTER)], timeout)


def status(webui_port: int = WEBUI_PORT) -> dict:
    return {"master": master_url(), "webui": f"http://localhost:{webui_port}", "cluster": cluster_info(webui_port),
            "pids": live_pids(), "worker_pool": pools.pool_info("spark"),
            "job_server": job_server.info("spark"), "logs": str(state_dir() / "log")}


def running(**kwargs):
    """Start the cluster if needed; stop it afterwards if this call started it."""
    return service.running(cluster_info(kwargs.get("webui_port", WEBUI_PORT)) is not None, up, down, **kwargs)


BEAM = False


@dataclasses.dataclass(frozen=True)
class SparkLocalConfig:
    action: str  # up | down | status
    port: int = MASTER_PORT
    webui_port: int = WEBUI_PORT
    workers: int = None
    cores: int = None
    pool_port: int = None
    memory: str = "2g"
    timeout: float = UP_TIMEOUT_S
    version: str = None
    allow_exposed: bool = False


def build_parser():
    ap = options.parser("facebeam spark", __doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    up_p = sub.add_parser("up", help="start the master, a worker and its worker pool")
    up_p.add_argument("--port", type=options.PORT, default=MASTER_PORT, help="master port (default %(default)s)")
    up_p.add_argument("--workers", type=options.COUNT, default=None,
                      help="SDK harness processes = worker cores (default: --cores, else max(2, nproc)); 0: no pool")
    up_p.add_argument("--cores", type=options.COUNT, default=None, help="worker cores (default: --workers)")
    up_p.add_argument("--pool-port", type=options.PORT, default=None,
                      help=f"worker pool port (default {POOL_PORT}, or a free one when another cluster holds it)")
    up_p.add_argument("--memory", default="2g", help="worker memory for executors (default %(default)s)")
    up_p.add_argument("--timeout", type=options.POSITIVE, default=UP_TIMEOUT_S, help="seconds to wait (default %(default)s)")
    up_p.add_argument("--version", default=None, help="pyspark version (default: the job server's Spark)")
    up_p.add_argument("--allow-exposed-ports", action="store_true",
                      help="warn, instead of stopping, when a port of the cluster listens beyond loopback")
    sub.add_parser("down", help="stop the master, the worker and the pool")
    status_p = sub.add_parser("status", help="is it running, cores, pool")
    for sp in (up_p, status_p):
        sp.add_argument("--webui-port", type=options.PORT, default=WEBUI_PORT, help="master web UI port (default %(default)s)")
    return ap


def configure(a, beam_args=()) -> SparkLocalConfig:
    if a.action == "up":
        return SparkLocalConfig("up", port=a.port, webui_port=a.webui_port, workers=a.workers, cores=a.cores,
                                pool_port=a.pool_port, memory=a.memory, timeout=a.timeout, version=a.version,
                                allow_exposed=a.allow_exposed_ports)
    return SparkLocalConfig("status", webui_port=a.webui_port) if a.action == "status" else SparkLocalConfig("down")


def _up_line(a: SparkLocalConfig, info: dict) -> str:
    return (f"Spark master running at {master_url(a.port)} (web UI http://localhost:{a.webui_port}): "
            f"{info.get('aliveworkers')} worker(s), {info.get('cores')} cores{service.pool_where(info.get('worker_pool'))}; "
            f"{job_server.describe(info.get('job_server'))}. "
            f"Submit with --runner=SparkRunner --spark_master_url={master_url(a.port)}")


def _status_line(st: dict) -> str:
    c = st["cluster"]
    if not c:
        return f"not running (no Spark master web UI at {st['webui']}; {service.pids_words(st['pids'])})"
    return (f"running: {st['master']} ({c.get('status')}), {c.get('aliveworkers')} worker(s), "
            f"{c.get('coresused')}/{c.get('cores')} cores used, {service.pids_words(st['pids'])}, worker pool "
            f"{service.pool_line(st['worker_pool'])}, {job_server.describe(st['job_server'])}, logs {st['logs']}")


def run(args: SparkLocalConfig, pipeline=None) -> dict:
    return service.run_action("spark", args.action, {
        "up": service.Action(lambda: up(port=args.port, webui_port=args.webui_port, cores=args.cores, memory=args.memory,
                                        timeout=args.timeout, version=args.version, workers=args.workers,
                                        pool_port=args.pool_port, allow_exposed=args.allow_exposed),
                             lambda info: _up_line(args, info)),
        "down": service.Action(down, lambda stopped: "stopped" if stopped else "not running"),
        "status": service.Action(lambda: status(args.webui_port), _status_line, ok=lambda st: bool(st["cluster"])),
    })


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: not s["ok"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
