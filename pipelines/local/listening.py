"""What the local Flink and Spark clusters listen on: loopback only, or `up` refuses.

None of a cluster's ports has authentication, and whoever reaches Beam's job server, its
artifact service, a worker pool or an fn-API server can run code on the cluster. The engines'
own ports are bound to localhost by their configuration (flink.py, spark.py) and the worker
pool by facebeam (workers.py). Beam's Java servers (job and artifact ports, and the fn-API
servers a TaskManager or executor opens for its SDK harnesses during a job) bind every
interface whatever the flags say; the JVMs that run them carry `runner/LoopbackServers.java`
as a -javaagent (job_server.loopback_agent), which binds them to loopback.

`check` runs at the end of `facebeam flink|spark up`: every listening socket of the cluster's
processes and their children (psutil), and the Java agent on the processes that open Beam's
servers. What is reachable elsewhere stops the cluster and fails `up` with one line, unless
`--allow-exposed-ports` was given (then it is one warning line).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging

import psutil

from facebeam.pipelines.local import toolkit
from facebeam.pipelines.local.toolkit import RunnerSetupError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Listener:
    """One listening TCP socket: its address, port and owning process."""
    host: str
    port: int
    pid: int
    process: str

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.host.split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)  # [::ffff:127.0.0.1], as a dual-stack JVM shows it
        return (mapped or ip).is_loopback

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port} ({self.process} pid {self.pid})"


def processes(pids) -> dict[int, str]:
    """{pid: short name} of the live `pids` and all their descendants (a Spark worker's executors,
    a worker pool's harnesses)."""
    out = {}
    for pid in pids:
        try:
            proc = psutil.Process(int(pid))
            for p in [proc, *proc.children(recursive=True)]:
                out[p.pid] = _name(p)
        except psutil.Error:
            continue
    return out


def _name(proc: psutil.Process) -> str:
    """The main class of a JVM, the module of a Python process, else the executable's name."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    for i, arg in enumerate(cmd):
        if arg == "-m" and i + 1 < len(cmd):
            return cmd[i + 1].rsplit(".", 1)[-1]
        if arg.startswith(("org.apache.", "dev.facebeam.")):
            return arg.rsplit(".", 1)[-1]
    return proc.name()


def listeners(pids) -> list[Listener]:
    """Every listening TCP socket (IPv4 and IPv6) of `pids` and their descendants."""
    owners = processes(pids)
    found = {Listener(c.laddr.ip, c.laddr.port, c.pid, owners[c.pid])
             for c in psutil.net_connections(kind="tcp")
             if c.status == psutil.CONN_LISTEN and c.pid in owners}
    return sorted(found, key=lambda x: (x.port, x.host))


def exposed(pids) -> list[Listener]:
    """The listening sockets of `pids` (and descendants) that are not bound to a loopback address."""
    return [x for x in listeners(pids) if not x.loopback]


def without_agent(pids, agent) -> list[int]:
    """Those of `pids` that run without `-javaagent:<agent>` (all of them when there is no agent)."""
    return [p for p in pids if not agent or f"-javaagent:{agent}" not in toolkit.cmdline(p)]


def check(kind: str, pids, beam_pids, agent, allow: bool, stop) -> list[Listener]:
    """After `facebeam <kind> up`: what of the cluster (`pids` and their descendants) listens on
    a non-loopback address, and which of `beam_pids` (JVMs that open Beam's servers for jobs)
    lack the loopback agent. Unless `allow`, `stop()` the cluster and raise RunnerSetupError
    naming them; with `allow`, one warning line. Returns the exposed listeners."""
    bad = exposed(pids)
    bare = without_agent(beam_pids, agent)
    if not bad and not bare:
        log.info("%s: all %d listening ports of the cluster are on loopback", kind, len(listeners(pids)))
        return bad
    what = []
    if bad:
        what.append(f"{len(bad)} port(s) listen beyond loopback: {', '.join(map(str, bad))}")
    if bare:
        what.append(f"pid(s) {', '.join(map(str, bare))} run without the loopback agent "
                    f"({agent or 'no javac to compile it'}), so Beam's fn-API ports they open for each job "
                    f"would listen on every interface")
    line = f"The local {kind} cluster is reachable from other hosts, without authentication: {'; '.join(what)}."
    if allow:
        log.warning("%s (kept: --allow-exposed-ports)", line)
        return bad
    stop()
    raise RunnerSetupError(f"{line} Stopped it. Restart with `facebeam {kind} down && facebeam {kind} up`, "
                           f"or pass --allow-exposed-ports behind a firewall (deploy/README.md).")
