"""`facebeam flink up|down|status`: a standalone Flink session cluster on this machine.

Flink comes from the PyPI wheels `apache-flink` (bin/ scripts, conf/) and
`apache-flink-libraries` (lib/flink-dist and friends) at the Flink version of the Beam
job server (`pipelines.local.jars.FLINK_VERSION`). They declare `apache-beam<=2.61`, so they
are installed with `pip install --no-deps --target <cache>/flink-dist/<version>`,
outside the project environment (<cache>: `facebeam.transforms.home.cache_dir()`).
The JobManager and one TaskManager are started with the wheel's `bin/jobmanager.sh` /
`bin/taskmanager.sh` (what `start-cluster.sh` runs for a localhost worker, without its ssh logic), bound to localhost, with
configuration, logs and pid files under `<facebeam home>/flink/` ($FACEBEAM_HOME, else
./.facebeam; see `facebeam.transforms.home`).

`--workers N` (default: the number of cores) gives the TaskManager N slots and starts
a Beam worker pool beside it (`pipelines/local/workers.py`, localhost:50000), as
deploy/ runs one beside every TaskManager. Jobs submitted with
`--runner=FlinkRunner --flink_master=localhost:8081` then get
`--environment_type=EXTERNAL --environment_config=localhost:50000
--sdk_worker_parallelism=N` filled in (`runner/job_options.py`): one Python SDK harness
process per slot. The JobManager and TaskManager run with Beam's runner jars in their
lib/ (`FLINK_LIB_DIR=<facebeam home>/flink/beam-lib`), and `up` starts one Beam job server
for the cluster (localhost:8099), which jobs are sent to: see `pipelines/local/job_server.py`.
`down` stops the job server and the pool too.
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

REST_PORT = 8081
RPC_PORT = 6123
#: Default task slots = harness processes (`--workers`): one per core.
SLOTS = max(2, os.cpu_count() or 2)
POOL_PORT = pools.POOL_PORTS["flink"]
UP_TIMEOUT_S = 120
DOWN_TIMEOUT_S = 30
#: A task that fails (its SDK harness or its TaskManager died) restarts its region up to 3 times,
#: 15 s apart (longer than the 10 s environment cache: a retry gets fresh harnesses, not the dead one's client);
#: Flink's default without checkpoints is never, so one dead harness failed the job.
RESTART_STRATEGY = {"type": "fixed-delay", "fixed-delay": {"attempts": 3, "delay": "15 s"}}
SLOT_REQUEST_TIMEOUT = 60_000  # ms: a Long in Flink 1.19, not a duration
_DAEMONS = {  # pid-file daemon name -> main class (to recognise our processes)
    "standalonesession": "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint",
    "taskexecutor": "org.apache.flink.runtime.taskexecutor.TaskManagerRunner",
}


def state_dir() -> Path:
    return toolkit.facebeam_home() / "flink"


def dist_dir(version: str = jars.FLINK_VERSION) -> Path:
    return toolkit.cache_dir() / "flink-dist" / version


def flink_home(version: str = jars.FLINK_VERSION, install: bool = True) -> Path:
    target = dist_dir(version)
    if install:
        toolkit.pip_install_target([f"apache-flink=={version}", f"apache-flink-libraries=={version}"], target)
    home = target / "pyflink"
    if not (home / "bin" / "jobmanager.sh").is_file() or not list((home / "lib").glob("flink-dist*.jar")):
        raise RunnerSetupError(f"{target} holds no runnable Flink (bin/jobmanager.sh, lib/flink-dist-*.jar)")
    return home


def rest_url(port: int = REST_PORT) -> str:
    return f"http://localhost:{port}"


def cluster_info(port: int = REST_PORT, timeout: float = 3.0) -> dict | None:
    """{'flink-version', 'taskmanagers', 'slots-total', 'slots-available'} or None if no Flink answers."""
    try:
        overview = toolkit.http_json(f"{rest_url(port)}/overview", timeout=timeout)
    except Exception:  # noqa: BLE001 - anything but a Flink answer means "not running"
        return None
    if not isinstance(overview, dict) or "slots-total" not in overview:
        return None
    return overview


def started_from(port: int = REST_PORT, timeout: float = 3.0) -> Path | None:
    """The facebeam home whose `flink up` started the Flink answering on `port` (its pid folder is
    <home>/flink), or None: no Flink there, or one facebeam did not start."""
    try:
        config = toolkit.http_json(f"{rest_url(port)}/jobmanager/config", timeout=timeout)
    except Exception:  # noqa: BLE001 - anything but a Flink answer: not known
        return None
    pid_dir = next((e.get("value") for e in config if isinstance(e, dict) and e.get("key") == "env.pid.dir"), None) \
        if isinstance(config, list) else None
    return Path(pid_dir).parent if pid_dir and Path(pid_dir).name == "flink" else None


def _pid_files(name: str) -> list[Path]:
    # flink-daemon.sh names it flink-$USER-<daemon>.pid ($USER may be empty)
    return sorted(state_dir().glob(f"flink-*{name}.pid"))


def _pids() -> dict[str, list[int]]:
    out = {}
    for name in _DAEMONS:
        out[name] = toolkit.read_pids(_pid_files(name))
    return out


def live_pids() -> dict[str, list[int]]:
    """{'standalonesession': [pid], 'taskexecutor': [pid]}: the live JobManager / TaskManager processes."""
    return {n: [p for p in ps if toolkit.alive(p, _DAEMONS[n])] for n, ps in _pids().items()}


def is_running() -> bool:
    """Is the JobManager of the cluster `up` started running?"""
    return bool(live_pids()["standalonesession"])


def _write_conf(home: Path, slots: int, port: int, rpc_port: int = RPC_PORT, agent: Path | None = None) -> Path:
    import yaml

    conf_dir = state_dir() / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    for f in (home / "conf").iterdir():
        if f.is_file() and f.name != "config.yaml":
            (conf_dir / f.name).write_bytes(f.read_bytes())
    conf = yaml.safe_load((home / "conf" / "config.yaml").read_text()) or {}
    tmp = state_dir() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    conf.setdefault("env", {}).update({"log": {"dir": str(state_dir() / "log")}, "pid": {"dir": str(state_dir())}})
    opts = conf["env"].setdefault("java", {}).setdefault("opts", {})
    opts["all"] = " ".join([opts.get("all") or "", *toolkit.cluster_jvm_flags()]).strip()
    if agent:  # Beam's fn-API servers in the TaskManager bind loopback (pipelines/local/listening.py)
        opts["taskmanager"] = f"-javaagent:{agent}"
    conf["jobmanager"] = {
        "bind-host": "localhost",
        "rpc": {"address": "localhost", "port": rpc_port},
        "memory": {"process": {"size": "1024m"}},
        "execution": {"failover-strategy": "region"},
    }
    network_mb = max(512, 128 * slots)
    conf["taskmanager"] = {
        "bind-host": "localhost",
        "host": "localhost",
        "numberOfTaskSlots": slots,
        # Beam's batch jobs run many exchanges at once, each blocking one holding 512 buffers (16 MiB,
        # sort-shuffle's minimum): with the default (~10% of 1.5g) a job at parallelism 2 fails with
        # "Insufficient number of network buffers", and 256 MiB ran out when a restarted job's
        # tasks landed on one TaskManager (512 needed, 492 left). 128 MiB per slot, at least 512 MiB.
        "memory": {"process": {"size": f"{1536 + network_mb}m"},
                   "network": {"min": f"{network_mb}m", "max": f"{network_mb}m"}},
    }
    # Beam and its dependencies are in the cluster's lib (FLINK_LIB_DIR, job_server.cluster_lib). A job that ships
    # Beam's jars all the same (a job server of its own: another folder's job, or no javac) loaded them
    # child-first, and from then on every job of the cluster's job server failed in the TaskManager with a
    # LinkageError (Beam's vendored gRPC loaded by two classloaders) until a restart. Parent-first, every job
    # uses lib's classes; Beam's alone (parent-first-patterns) left joda-time to the job, a ClassCastException.
    conf["classloader"] = {"resolve-order": "parent-first"}
    conf["parallelism"] = {"default": min(slots, max(2, os.cpu_count() or 2))}
    conf["restart-strategy"] = RESTART_STRATEGY
    # A job whose TaskManager died waits this long for slots before the attempt fails (default 300 s per
    # attempt: with 3 restarts, 20 minutes that look like a hang); a new TaskManager within it picks the job up.
    conf["slot"] = {"request": {"timeout": SLOT_REQUEST_TIMEOUT}}
    conf["rest"] = {"address": "localhost", "bind-address": "localhost", "port": port}
    conf["io"] = {"tmp": {"dirs": str(tmp)}}
    conf["web"] = {"tmpdir": str(tmp)}
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, default_flow_style=False, sort_keys=False))
    (conf_dir / "workers").write_text("localhost\n")
    (conf_dir / "masters").write_text(f"localhost:{port}\n")
    return conf_dir


def _env(home: Path, conf_dir: Path, java: toolkit.Java) -> dict:
    env = dict(os.environ)
    env.update(
        FLINK_HOME=str(home),
        FLINK_CONF_DIR=str(conf_dir),
        FLINK_LOG_DIR=str(state_dir() / "log"),
        FLINK_PID_DIR=str(state_dir()),
        JAVA_HOME=java.home,
    )
    env.pop("PYTHONPATH", None)
    return env


def _script(home: Path, env: dict, script: str, *args: str, timeout: float = 60) -> None:
    toolkit.run_script(home / "bin" / script, *args, env=env, timeout=timeout)


def up(slots: int | None = None, port: int = REST_PORT, timeout: float = UP_TIMEOUT_S,
       version: str = jars.FLINK_VERSION, rpc_port: int = RPC_PORT, workers: int | None = None,
       pool_port: int | None = None, allow_exposed: bool = False) -> dict:
    """Start the cluster and its worker pool (if not already running); wait until a
    TaskManager offers slots. `workers` SDK harness processes (default: `slots`, else one
    per core); `workers=0` starts no pool (jobs then need an explicit environment).
    Then every port it listens on must be on loopback (`listening.check`; `allow_exposed`: warn)."""
    slots = slots or workers or SLOTS
    workers = slots if workers is None else workers
    agent = job_server.loopback_agent(jars.flink_spec())
    info = _up_cluster(slots, port, timeout, version, rpc_port, agent)
    if workers:
        info["worker_pool"] = pools.start_pool("flink", workers, pool_port)
        _record_cluster(port, int(info.get("slots-total") or slots), workers, int(info["worker_pool"]["port"]))
    info["job_server"] = job_server.start("flink", f"localhost:{port}", stages_jars=not _beam_in_lib(), agent=agent,
                                          results_jar=job_server.result_agent(jars.flink_spec()))
    info["exposed"] = [str(x) for x in listening.check("flink", cluster_pids(), beam_pids(), agent, allow_exposed,
                                                      down)]
    return info


def cluster_pids() -> list[int]:
    """Every process `up` started that is alive: JobManager, TaskManager, job server, worker pool
    (their children, such as SDK harnesses, are theirs)."""
    return [p for ps in live_pids().values() for p in ps] + [
        int(st["pid"]) for st in (job_server.info("flink"), pools.pool_info("flink")) if st]


def beam_pids() -> list[int]:
    """The JVMs that open Beam's servers: the TaskManager (fn-API, per job) and the job server."""
    st = job_server.info("flink")
    return live_pids()["taskexecutor"] + ([int(st["pid"])] if st else [])


def _beam_in_lib() -> bool:
    """Do the running JobManager and TaskManager have facebeam's beam-lib (Beam + the
    stage-nothing detector) as their lib/? Not when they were started by an older `up`."""
    lib = job_server.lib_dir("flink")
    pids = [p for ps in live_pids().values() for p in ps]
    return bool(pids) and (lib / "facebeam-cluster-lib.jar").exists() and all(
        str(lib) in toolkit.cmdline(p) for p in pids)


def _record_cluster(port: int, slots: int, workers: int, pool_port: int) -> None:
    pools.update_state("flink", cluster_port=port, slots=slots, workers=workers, port=pool_port)


def _up_cluster(slots, port, timeout, version, rpc_port, agent) -> dict:
    info = cluster_info(port)
    live = live_pids()
    if info and live["standalonesession"]:
        if info.get("taskmanagers", 0) >= 1 and live["taskexecutor"]:  # the JobManager may not know it died yet
            log.info("Flink %s already running at %s (%s slots)", info.get("flink-version"), rest_url(port),
                     info.get("slots-total"))
            return info
    elif info or toolkit.port_open("localhost", port):
        raise RunnerSetupError(f"port {port} is taken by something that is not this project's Flink "
                               f"({state_dir()} has no live JobManager); stop it or use another --port")
    java = toolkit.find_java(purpose="the Flink cluster")
    home = flink_home(version)
    (state_dir() / "log").mkdir(parents=True, exist_ok=True)
    conf_dir = _write_conf(home, slots, port, rpc_port, agent)
    env = _env(home, conf_dir, java)
    env["FLINK_LIB_DIR"] = str(job_server.cluster_lib("flink", home / "lib")[0])
    t0 = time.monotonic()
    if not live["standalonesession"]:
        for f in _pid_files("standalonesession"):
            f.unlink(missing_ok=True)
        _script(home, env, "jobmanager.sh", "start")
    if not live["taskexecutor"]:
        for f in _pid_files("taskexecutor"):
            f.unlink(missing_ok=True)
        _script(home, env, "taskmanager.sh", "start")
    ready, info = toolkit.wait_ready(
        lambda: cluster_info(port), lambda: any(live_pids().values()), max(0.0, t0 + timeout - time.monotonic()),
        ready=lambda i: bool(i and i.get("taskmanagers", 0) >= 1 and i.get("slots-total", 0) >= 1))
    if ready:
        log.info("Flink %s up at %s: %d task manager(s), %d slots (%.1f s); logs in %s",
                 info.get("flink-version"), rest_url(port), info["taskmanagers"], info["slots-total"],
                 time.monotonic() - t0, state_dir() / "log")
        return info
    logs = "\n".join(f"--- {f.name}\n{toolkit.log_tail(f, 20)}" for f in sorted((state_dir() / "log").glob("*.log")))
    down()
    raise RunnerSetupError(
        f"Flink cluster did not report a task manager with slots at {rest_url(port)} within {timeout:.0f} s "
        f"(last answer: {info}). Logs under {state_dir() / 'log'}:\n{logs[-4000:]}"
    )


def down(timeout: float = DOWN_TIMEOUT_S) -> bool:
    """Stop the worker pool, TaskManager and JobManager started by `up`. True if something was stopped."""
    pids = _pids()
    return service.stop_cluster("flink", [(pids[name], _DAEMONS[name], _pid_files(name))
                                          for name in ("taskexecutor", "standalonesession")], timeout)


def status(port: int = REST_PORT) -> dict:
    return {"rest": rest_url(port), "cluster": cluster_info(port), "pids": live_pids(),
            "worker_pool": pools.pool_info("flink"), "job_server": job_server.info("flink"),
            "logs": str(state_dir() / "log")}


def running(**kwargs):
    """Context manager for tests and jobs: start the cluster if needed, stop it after if we started it."""
    return service.running(cluster_info(kwargs.get("port", REST_PORT)) is not None, up, down, **kwargs)


BEAM = False


@dataclasses.dataclass(frozen=True)
class FlinkLocalConfig:
    action: str  # up | down | status
    port: int = REST_PORT
    workers: int = None
    slots: int = None
    pool_port: int = None
    rpc_port: int = RPC_PORT
    timeout: float = UP_TIMEOUT_S
    allow_exposed: bool = False
    version: str = jars.FLINK_VERSION


def build_parser():
    ap = options.parser("facebeam flink", __doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="action", required=True)
    up_p = sub.add_parser("up", help="start the session cluster and its worker pool")
    up_p.add_argument("--workers", type=options.COUNT, default=None,
                      help=f"SDK harness processes = task slots (default: --slots, else {SLOTS}, one per core); "
                           f"0: no worker pool")
    up_p.add_argument("--slots", type=options.COUNT, default=None, help="task slots of the task manager (default: --workers)")
    up_p.add_argument("--pool-port", type=options.PORT, default=None,
                      help=f"worker pool port (default {POOL_PORT}, or a free one when another cluster holds it)")
    up_p.add_argument("--rpc-port", type=options.PORT, default=RPC_PORT, help="JobManager RPC port (default %(default)s)")
    up_p.add_argument("--timeout", type=options.POSITIVE, default=UP_TIMEOUT_S, help="seconds to wait (default %(default)s)")
    up_p.add_argument("--version", default=jars.FLINK_VERSION, help="apache-flink wheel version (default %(default)s)")
    up_p.add_argument("--allow-exposed-ports", action="store_true",
                      help="warn, instead of stopping, when a port of the cluster listens beyond loopback")
    sub.add_parser("down", help="stop the cluster and its worker pool")
    status_p = sub.add_parser("status", help="is it running, slots, pool")
    for sp in (up_p, status_p):
        sp.add_argument("--port", type=options.PORT, default=REST_PORT, help="REST/web port (default %(default)s)")
    return ap


def configure(a, beam_args=()) -> FlinkLocalConfig:
    if a.action == "up":
        return FlinkLocalConfig("up", port=a.port, workers=a.workers, slots=a.slots, pool_port=a.pool_port,
                                rpc_port=a.rpc_port, timeout=a.timeout, version=a.version,
                                allow_exposed=a.allow_exposed_ports)
    return FlinkLocalConfig("status", port=a.port) if a.action == "status" else FlinkLocalConfig("down")


def _up_line(port: int, info: dict) -> str:
    return (f"Flink {info.get('flink-version')} running at {rest_url(port)}: "
            f"{info.get('taskmanagers')} task manager(s), {info.get('slots-total')} slots"
            f"{service.pool_where(info.get('worker_pool'))}; {job_server.describe(info.get('job_server'))}. "
            f"Submit with --runner=FlinkRunner --flink_master=localhost:{port}")


def _status_line(st: dict) -> str:
    c = st["cluster"]
    if not c:
        return f"not running (no Flink at {st['rest']}; {service.pids_words(st['pids'])})"
    return (f"running: Flink {c.get('flink-version')} at {st['rest']}, {c.get('taskmanagers')} task manager(s), "
            f"{c.get('slots-available')}/{c.get('slots-total')} slots free, {service.pids_words(st['pids'])}, "
            f"worker pool {service.pool_line(st['worker_pool'], versions=True)}, "
            f"{job_server.describe(st['job_server'])}, logs {st['logs']}")


def run(args: FlinkLocalConfig, pipeline=None) -> dict:
    return service.run_action("flink", args.action, {
        "up": service.Action(lambda: up(slots=args.slots, port=args.port, timeout=args.timeout, version=args.version,
                                        rpc_port=args.rpc_port, workers=args.workers, pool_port=args.pool_port,
                                        allow_exposed=args.allow_exposed),
                             lambda info: _up_line(args.port, info)),
        "down": service.Action(down, lambda stopped: "stopped" if stopped else "not running"),
        "status": service.Action(lambda: status(args.port), _status_line, ok=lambda st: bool(st["cluster"])),
    })


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: not s["ok"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
