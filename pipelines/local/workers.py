"""Beam SDK worker pools beside the local Flink TaskManager / Spark worker, as in deploy/.

On a real cluster every TaskManager (Flink) or Spark worker has a Beam *worker pool*
next to it (deploy/: the `beam-worker-pool` sidecar, port 50000), and jobs are
submitted with `--environment_type=EXTERNAL --environment_config=localhost:50000`.
The runner asks the pool for SDK harnesses (`StartWorker`); the pool starts one
Python process per request, so a job with `--sdk_worker_parallelism=N` gets N
harness processes per worker node: one per slot, each with its own GIL.

`facebeam flink up --workers N` / `facebeam spark up --workers N` start such a pool
here: `python -m facebeam.pipelines.local.workers pool --service_port=P` from the
project's environment (this module wraps Beam's `worker_pool_main` servicer), with
the environment of the `up` command (DEEPFACE_HOME, FACEBEAM_*, PATH with the
venv's bin first). Each harness it starts runs `harness` below, which does what
Beam's container boot does (provision info -> pipeline options -> SDK worker main),
with its stdout sent to the pool's log (Beam's pool pipes a harness's stdout and
never reads it: a chatty harness would block). A harness killed by a signal is started again with the
same worker id (`keeping_servicer`): Beam's runner would wait for it for ever.

The pool writes `<cluster state>/worker-pool.json` once it serves: port, pid,
workers, facebeam and Beam versions, Python, DEEPFACE_HOME. `check_pool` (run by
`runner.probes.check_cluster` before a job is submitted to a facebeam-local
cluster) probes the port and compares those versions with the launcher's, so a pool
that is down or stale fails the job within seconds with `RunnerSetupError`.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from facebeam.pipelines.local import toolkit
from facebeam.pipelines.local.toolkit import RunnerSetupError

log = logging.getLogger(__name__)

#: Pool ports of the local clusters (deploy/ uses 50000 for both; here both clusters
#: may be up at once).
POOL_PORTS = {"flink": 50000, "spark": 50001}
STATE_FILE = "worker-pool.json"
SPARES_FILE = "worker-pool-spares.json"
_MODULE = "facebeam.pipelines.local.workers"


def facebeam_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("facebeam")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def beam_version() -> str:
    import apache_beam

    return apache_beam.__version__


def versions() -> dict:
    """What a pool and a launcher must agree on."""
    return {"facebeam_version": facebeam_version(), "beam_version": beam_version(),
            "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def state_dir(kind: str) -> Path:
    """The cluster's state folder (the same as `flink.state_dir()` / `spark.state_dir()`)."""
    return toolkit.facebeam_home() / kind


def state_file(kind: str) -> Path:
    return state_dir(kind) / STATE_FILE


def read_state(kind: str) -> dict | None:
    return toolkit.read_json(state_file(kind))


def spares_file(state: Path) -> Path:
    """Where a pool writes how many spare harnesses wait ready (`keeping_servicer`)."""
    return state.with_name(SPARES_FILE)


def spares_ready(kind: str) -> int:
    """Spare harnesses `kind`'s pool has ready now: loaded, waiting for a job."""
    st = toolkit.read_json(spares_file(state_file(kind))) or {}
    return int(st.get("ready") or 0)


def wait_spares(kind: str, want: int, timeout: float = 60.0) -> int:
    """Wait until `kind`'s pool has `want` spare harnesses ready (a job then finds the pool as a nightly
    job does), at most `timeout` s; how many it has."""
    toolkit.poll(lambda: spares_ready(kind) >= want, timeout, interval=0.25)
    return spares_ready(kind)


def pool_info(kind: str) -> dict | None:
    """The state of `kind`'s pool if its process is alive, else None."""
    st = read_state(kind)
    if st and toolkit.alive(int(st.get("pid", 0)), _MODULE):
        return st
    return None


def pool_env() -> dict:
    """The environment of the pool and its harnesses: this process's, venv bin first on PATH."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    for k in ("PYTHONPATH", "PYTHONHOME"):
        env.pop(k, None)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_timeout_s() -> float:
    """Seconds a new pool gets to serve ($FACEBEAM_WORKER_POOL_TIMEOUT, default 60)."""
    return float(os.environ.get("FACEBEAM_WORKER_POOL_TIMEOUT", "60"))


def start_pool(kind: str, workers: int, port: int | None = None, timeout: float | None = None) -> dict:
    """Start `kind`'s worker pool (unless one with the same versions already serves); its state.
    Without an explicit `port`, the default port (POOL_PORTS) is used when free, else a free
    one (another facebeam home's cluster may hold it); jobs find it in the state file."""
    timeout = start_timeout_s() if timeout is None else timeout
    strict = port is not None and port != POOL_PORTS[kind]
    port = port or POOL_PORTS[kind]
    live = pool_info(kind)
    if live:
        mismatch = _mismatch(live)
        if not mismatch and int(live["port"]) == port and toolkit.port_open("localhost", port):
            if int(live.get("workers", 0)) != workers:
                update_state(kind, workers=workers)
                live["workers"] = workers
            log.info("worker pool already serving on localhost:%d (pid %s)", port, live["pid"])
            return live
        if not mismatch and not strict and toolkit.port_open("localhost", int(live["port"])):
            update_state(kind, workers=workers)
            return {**live, "workers": workers}
        log.info("restarting the worker pool (pid %s): %s", live["pid"], mismatch or "other port")
        stop_pool(kind)
    if not strict and not toolkit.port_bindable(port):
        taken, port = port, free_port()
        log.warning("port %d is taken (another cluster's worker pool, or a client's local end); the %s worker pool "
                    "uses %d", taken, kind, port)
    if toolkit.port_open("localhost", port):
        raise RunnerSetupError(f"port {port} (the {kind} worker pool's) is taken by something that is not this "
                               f"project's pool ({state_file(kind)} names no live pool); stop it or pass --pool-port")
    if not toolkit.port_bindable(port):
        raise RunnerSetupError(f"port {port} (the {kind} worker pool's) cannot be bound now: a connection's local "
                               f"end holds it (`ss -tn sport = :{port}` shows which); pass another --pool-port")
    folder = state_dir(kind)
    (folder / "log").mkdir(parents=True, exist_ok=True)
    state_file(kind).unlink(missing_ok=True)
    console = folder / "log" / "worker-pool.log"
    cmd = [sys.executable, "-m", _MODULE, "pool", f"--service_port={port}", f"--kind={kind}",
           f"--workers={workers}", f"--state-file={state_file(kind)}"]
    proc = toolkit.spawn_detached(cmd, console, env=pool_env(), cwd=os.getcwd())
    def serving():
        st = read_state(kind)
        return st if st and st.get("pid") == proc.pid and toolkit.port_open("localhost", port, timeout=1) else None

    ready, st = toolkit.wait_ready(serving, lambda: proc.poll() is None, timeout, interval=0.3)
    if ready:
        log.info("worker pool pid %d serving localhost:%d (%d workers); log %s", proc.pid, port, workers, console)
        return st
    tail = toolkit.log_tail(console, 30)
    toolkit.stop_processes([proc.pid], group=True, timeout=5)
    raise RunnerSetupError(f"the {kind} worker pool did not serve localhost:{port} within {timeout:.0f} s "
                           f"(exit {proc.poll()}); log {console}:\n{tail}")


def update_state(kind: str, **changes) -> None:
    """Change some fields of `kind`'s pool state file (the cluster's `up` records its size there)."""
    st = read_state(kind) or {}
    st.update(changes)
    toolkit.write_json(state_file(kind), st)


def stop_pool(kind: str, timeout: float = 15) -> bool:
    """Stop `kind`'s pool and the harnesses it started (its process group)."""
    st = read_state(kind)
    stopped = []
    if st and st.get("pid"):
        pid = int(st["pid"])
        if toolkit.alive(pid, _MODULE):
            stopped = toolkit.stop_processes([pid], group=True, timeout=timeout)
        port = int(st.get("port", 0))  # gone means its port is free, not only its pid
        if stopped and not toolkit.poll(lambda: not toolkit.port_open("localhost", port, timeout=0.5), timeout,
                                        interval=0.2):
            log.warning("the %s worker pool (pid %d) is gone but localhost:%s still answers", kind, pid, st.get("port"))
    state_file(kind).unlink(missing_ok=True)
    if stopped:
        log.info("stopped the %s worker pool %s", kind, stopped)
    return bool(stopped)


def _mismatch(st: dict) -> str:
    """'' when the pool's recorded versions are the launcher's, else what differs."""
    mine = versions()
    diffs = [f"{k.replace('_', ' ')} {st.get(k)!s} (launcher: {v})" for k, v in mine.items() if str(st.get(k)) != v]
    return ", ".join(diffs)


def local_host(host: str | None) -> bool:
    return (host or "localhost") in ("localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0")


def split_address(address: str) -> tuple:
    addr = address.split("://", 1)[-1]
    host, _, port = addr.rpartition(":")
    return (host.strip("[]") or "localhost"), int(port)


def check_pool(kind: str, address: str, timeout: float = 5.0) -> dict | None:
    """RunnerSetupError unless the worker pool at `address` (EXTERNAL environment_config)
    answers within `timeout` and, where it is `kind`'s local pool, runs the launcher's
    facebeam and Beam versions. Returns its state (None for a pool facebeam did not start)."""
    try:
        host, port = split_address(address)
    except ValueError:
        raise RunnerSetupError(f"--environment_config={address!r} is not host:port (the worker pool's address)"
                               ) from None
    hint = f"Start it with `facebeam {kind} up` (it starts the pool beside the cluster)"
    deadline = toolkit.Deadline(timeout)
    if not toolkit.poll(lambda: toolkit.port_open(host, port, timeout=deadline.left(lo=0.2, hi=1.0)), timeout,
                        interval=0.3):
        st = read_state(kind)
        known = f"; {state_file(kind)} names pid {st.get('pid')} on port {st.get('port')}" if st else ""
        raise RunnerSetupError(
            f"No Beam worker pool answers at {host}:{port} (--environment_type=EXTERNAL "
            f"--environment_config={address}) after {timeout:.0f} s{known}: the job's SDK harnesses could not "
            f"start and it would hang. {hint}, or restart it with `facebeam {kind} down && facebeam {kind} up`."
        )
    st = next((s for k in POOL_PORTS if (s := read_state(k)) and int(s.get("port", -1)) == port), None)
    if not st or not local_host(host):
        return None
    mismatch = _mismatch(st)
    if mismatch:
        raise RunnerSetupError(
            f"The Beam worker pool at {host}:{port} (pid {st.get('pid')}, {state_file(st.get('kind', kind))}) runs "
            f"{mismatch}: its harnesses would run other code than this launcher. Restart it: "
            f"`facebeam {st.get('kind', kind)} down && facebeam {st.get('kind', kind)} up`."
        )
    dh = os.environ.get("DEEPFACE_HOME")
    if dh and st.get("deepface_home") and st["deepface_home"] != dh:
        log.warning("the %s worker pool uses DEEPFACE_HOME=%s, this launcher %s", kind, st["deepface_home"], dh)
    return st


# --------------------------------------------------------------------------------------
# The pool process and the harness it starts
# --------------------------------------------------------------------------------------

def _serve_pool(ns) -> int:
    from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer

    from facebeam.pipelines.local import loopback_grpc

    state = Path(ns.state_file)
    launcher = state.parent / "harness.sh"
    tmp = launcher.with_suffix(".tmp")
    tmp.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {_MODULE} harness "$@"\n')
    tmp.chmod(0o755)
    os.replace(tmp, launcher)
    loopback_grpc.install("127.0.0.1")  # Beam binds every interface; anyone who reaches it can start processes
    address, server = keeping_servicer(BeamFnExternalWorkerPoolServicer, launcher, state).start(
        use_process=True, port=ns.service_port, container_executable=str(launcher))
    logging.getLogger().setLevel(logging.INFO)
    info = {"kind": ns.kind, "port": ns.service_port, "address": address, "pid": os.getpid(), "workers": ns.workers,
            **versions(), "executable": sys.executable, "cwd": os.getcwd(),
            "deepface_home": os.environ.get("DEEPFACE_HOME"), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    toolkit.write_json(state, info)
    log.info("worker pool serving %s: %s", address, info)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop(0)
    return 0


#: How often the pool starts a killed SDK harness again (per worker id and job).
HARNESS_RESTARTS = 2
#: Seconds the pool must have run no harness before it starts spares again, so that starting them
#: never takes the cores from a job.
SPARE_REFILL_IDLE_S = 3.0
SPARE_IDLE_CPU_S = 0.05  # harness CPU per check (0.5 s) below which the harnesses count as idle
SPARE_DEATHS = 3  # spares that exit unused before the pool stops starting them
_ENDPOINTS = ("id", "logging_endpoint", "artifact_endpoint", "provision_endpoint", "control_endpoint")


def _spare_command() -> list:
    return [sys.executable, "-m", _MODULE, "harness", "--spare"]


def keeping_servicer(servicer_cls, launcher: Path, state: Path):
    """Beam's pool servicer that starts a harness again, with the same worker id and endpoints, when a signal
    killed it (SIGKILL, the OOM killer) before the runner asked the pool to stop it.

    By hand: Beam's Java ExternalEnvironmentFactory waits for an EXTERNAL harness to connect with no deadline
    ("Still waiting for startup of environment ... for worker id ...", every 2 minutes), and only the pool can
    see the process: a harness killed during its start-up hung the job for ever. Started again, it connects
    and the job goes on. One killed after it connected fails its task (the runner retries it, see
    flink.RESTART_STRATEGY); its replacement then waits unused until the runner stops the worker id.

    It also keeps spare harnesses, as many as the pool's `workers` (its state file): processes that have
    imported Beam and facebeam and loaded the default spec's models (`_run_spare`), waiting for a
    runner's StartWorker to hand them their endpoints on stdin. A nightly job then pays neither a Python
    start nor a model load per harness (`facebeam bench runners`: phases "harness start", "model load").
    Spent spares are replaced once the pool has run no harness for SPARE_REFILL_IDLE_S."""
    import json
    import select
    import subprocess
    import threading

    import psutil
    from apache_beam.portability.api import beam_fn_api_pb2

    class KeepingPool(servicer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._lock = threading.Lock()
            self._restarts: dict = {}
            self._commands: dict = {}  # worker id -> the harness command a restart runs
            self._spares: list = []
            self._ready: set = set()  # pids of spares that said they are ready
            self._busy_at, self._cpu_seen, self._ready_written, self._spare_deaths = 0.0, 0.0, -1, 0
            threading.Thread(target=self._keep, name="keep-harnesses", daemon=True).start()

        def StartWorker(self, request, context):
            with self._lock:
                self._busy_at = time.monotonic()
                endpoints = {"id": request.worker_id, "logging_endpoint": request.logging_endpoint.url,
                             "artifact_endpoint": request.artifact_endpoint.url,
                             "provision_endpoint": request.provision_endpoint.url,
                             "control_endpoint": request.control_endpoint.url}
                command = [str(launcher), *(f"--{k}={v}" for k, v in endpoints.items())]
                self._commands[request.worker_id] = command
                while self._spares:
                    spare = self._spares.pop(0)
                    try:
                        spare.stdin.write(json.dumps(endpoints).encode() + b"\n")
                        spare.stdin.close()
                    except OSError:  # it died while it waited
                        continue
                    self._worker_processes[request.worker_id] = spare
                    self._ready.discard(spare.pid)
                    log.info("Starting worker with command %s: spare harness pid %d", command, spare.pid)
                    return beam_fn_api_pb2.StartWorkerResponse()
                return super().StartWorker(request, context)

        def StopWorker(self, request, context):
            with self._lock:
                self._restarts.pop(request.worker_id, None)
                self._commands.pop(request.worker_id, None)
                return super().StopWorker(request, context)

        def _harness_cpu_s(self) -> float:
            total = 0.0
            for proc in self._worker_processes.values():
                with contextlib.suppress(psutil.Error):
                    t = psutil.Process(proc.pid).cpu_times()
                    total += t.user + t.system
            return total

        def _refill(self):
            """Start spares up to the pool's `workers` once no harness has worked for SPARE_REFILL_IDLE_S.
            A runner may keep a finished job's harnesses for a while (Flink: seconds), idle: their CPU
            time says so."""
            died = [p for p in self._spares if p.poll() is not None]
            if died:
                self._spare_deaths += len(died)
                self._spares = [p for p in self._spares if p not in died]
                log.warning("%d spare harness(es) exited before a job took them (exit %s)%s", len(died),
                            ", ".join(str(p.returncode) for p in died),
                            "; no more spares are started" if self._spare_deaths >= SPARE_DEATHS else "")
            waiting = [p for p in self._spares if p.pid not in self._ready]
            said = select.select([p.stdout for p in waiting], [], [], 0)[0] if waiting else []
            self._ready |= {p.pid for p in waiting if p.stdout in said}
            ready = len([p for p in self._spares if p.pid in self._ready])
            if ready != self._ready_written:
                toolkit.write_json(spares_file(state), {"ready": ready, "pids": [p.pid for p in self._spares]})
                self._ready_written = ready
            cpu = self._harness_cpu_s()
            if cpu - self._cpu_seen > SPARE_IDLE_CPU_S:
                self._busy_at = time.monotonic()
            self._cpu_seen = cpu
            if time.monotonic() - self._busy_at < SPARE_REFILL_IDLE_S:
                return
            try:
                want = int(json.loads(state.read_text()).get("workers") or 0)
            except (OSError, ValueError):
                return
            if self._spare_deaths >= SPARE_DEATHS:  # e.g. a broken environment: no spawn loop
                return
            for _ in range(want - len(self._spares)):
                self._spares.append(subprocess.Popen(_spare_command(), stdin=subprocess.PIPE,
                                                     stdout=subprocess.PIPE, close_fds=True))

        def _keep(self):
            while True:
                time.sleep(0.5)
                with self._lock:
                    self._refill()
                    for wid, proc in list(self._worker_processes.items()):
                        code = proc.poll()  # also reaps it: no zombie harnesses
                        if code is None:
                            continue
                        done = self._restarts.get(wid, 0)
                        if code >= 0 or done >= HARNESS_RESTARTS:
                            log.warning("SDK harness %s (pid %d) exited with %d%s", wid, proc.pid, code,
                                        "" if code >= 0 else f" after {done} restart(s); not started again")
                            del self._worker_processes[wid]
                            continue
                        again = subprocess.Popen(self._commands.get(wid, proc.args), stdout=subprocess.PIPE,
                                                 close_fds=True)
                        self._worker_processes[wid] = again
                        self._restarts[wid] = done + 1
                        log.warning("SDK harness %s (pid %d) was killed by signal %d; started it again as pid %d "
                                    "(%d of %d)", wid, proc.pid, -code, again.pid, done + 1, HARNESS_RESTARTS)

    KeepingPool.__name__ = KeepingPool.__qualname__ = f"Keeping{servicer_cls.__name__}"
    return KeepingPool


def _run_harness(ns) -> int:
    """Beam's container boot, in Python: provision info -> env -> sdk_worker_main."""
    os.dup2(2, 1)  # the pool pipes our stdout and never reads it
    sys.stdout = sys.stderr
    import runpy

    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc, endpoints_pb2
    from google.protobuf import json_format, text_format


    env = os.environ
    env["WORKER_ID"] = ns.id
    options_json = "{}"
    logging_url, control_url = ns.logging_endpoint, ns.control_endpoint
    if ns.provision_endpoint:
        with grpc.insecure_channel(ns.provision_endpoint) as ch:
            stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(ch)
            info = stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                         metadata=[("worker_id", ns.id)], timeout=60).info
        options_json = json_format.MessageToJson(info.pipeline_options)
        if info.logging_endpoint.url:
            logging_url = info.logging_endpoint.url
        if info.control_endpoint.url:
            control_url = info.control_endpoint.url
        env["RUNNER_CAPABILITIES"] = " ".join(info.runner_capabilities)
        if info.status_endpoint.url:
            env["STATUS_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(info.status_endpoint)
    env["PIPELINE_OPTIONS"] = options_json
    if logging_url:
        env["LOGGING_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(
            endpoints_pb2.ApiServiceDescriptor(url=logging_url))
    env["CONTROL_API_SERVICE_DESCRIPTOR"] = text_format.MessageToString(
        endpoints_pb2.ApiServiceDescriptor(url=control_url))
    sys.argv = [sys.argv[0]]
    runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__", alter_sys=True)
    return 0


def _run_spare(ns) -> int:
    """A spare harness: import what every harness imports, load the default spec's models, then wait for
    the pool to write this harness's endpoints (a JSON line) on stdin, and run it (`_run_harness`)."""
    import json

    started = time.perf_counter()
    import apache_beam.runners.worker.sdk_worker_main  # noqa: F401  (a harness's own imports)

    from facebeam.transforms import embed, faces, images, spec  # noqa: F401  (what the job's DoFns unpickle into)

    images.warm()
    imported = time.perf_counter()
    try:
        faces.preload(spec.EmbeddingSpec())
    except Exception as e:  # noqa: BLE001  (a missing weight: the job's own model load says it, in one line)
        log.warning("spare harness pid %d preloads no models: %s", os.getpid(), e)
    log.info("spare harness pid %d ready in %.2f s (models %.2f s)", os.getpid(), time.perf_counter() - started,
             time.perf_counter() - imported)
    os.write(1, b"ready\n")  # to the pool (_run_harness then points stdout at the log)
    line = sys.stdin.readline()
    if not line:  # the pool closed our stdin: it is stopping
        return 0
    given = json.loads(line)
    return _run_harness(argparse.Namespace(**{k: given.get(k, "") for k in _ENDPOINTS}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pool", help="serve a Beam worker pool (what `facebeam flink|spark up` starts)")
    p.add_argument("--service_port", type=int, required=True)
    p.add_argument("--kind", default="flink")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--state-file", required=True)
    h = sub.add_parser("harness", help="one SDK harness (started by the pool)")
    for flag in _ENDPOINTS:
        h.add_argument(f"--{flag}", default="")
    h.add_argument("--spare", action="store_true", help="start, load the models, then read the endpoints on stdin")
    ns, _ = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ns.cmd == "pool":
        return _serve_pool(ns)
    return _run_spare(ns) if ns.spare else _run_harness(ns)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
