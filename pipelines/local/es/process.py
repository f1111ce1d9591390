"""A node's process: started detached in its own process group, found by its pid file, stopped as a group."""
import json
import logging
import os
import pwd
import signal
import socket
import subprocess
from pathlib import Path
from typing import Optional

from facebeam.pipelines.local import toolkit
from facebeam.pipelines.local.es.layout import EsLocalError, Node, NodeProc, home_path, node_index

log = logging.getLogger(__name__)
STOP_TIMEOUT = 30.0


def launch(node: Node, es_home: Path, java_home: str, account: Optional[pwd.struct_passwd]) -> subprocess.Popen:
    env = {**os.environ, "ES_JAVA_HOME": java_home, "ES_PATH_CONF": str(node.config),
           "ES_TMPDIR": str(node.dir / "tmp")}
    for var in ("JAVA_HOME", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "ES_JAVA_OPTS"):
        env.pop(var, None)
    drop = {}
    if account:
        env.update(HOME=str(node.dir), USER=account.pw_name, LOGNAME=account.pw_name)
        drop = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    # own session: survives us, killable as a group
    proc = toolkit.spawn_detached([str(es_home / "bin" / "elasticsearch")], node.console, cwd=node.dir, env=env,
                                  **drop)
    node.pid_file.write_text(json.dumps({"name": node.name, "pid": proc.pid, "http_port": node.http_port,
                                         "transport_port": node.transport_port}))
    return proc


def _group_alive(pgid: int) -> bool:
    """Is the node's process group alive? (Some process in it must be Elasticsearch: a recycled pid is not.)"""
    return toolkit.alive(pgid, "elasticsearch", group=True)


def read_pid_files(home: Path) -> list:
    out = []
    for f in sorted((Path(home) / "nodes").glob("*/node.json")):
        try:
            d = json.loads(f.read_text())
            out.append((f, NodeProc(d["name"], int(d["pid"]), int(d["http_port"]))))
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable pid file %s", f)
    return sorted(out, key=lambda t: node_index(t[1].name))


def node_processes(home=None) -> list:
    """Running nodes under `home`: [NodeProc(name, pid, http_port)], pid = process-group id."""
    return [p for _, p in read_pid_files(home_path(home)) if _group_alive(p.pid)]


def kill_node(home, name_or_index, sig=signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> NodeProc:
    """Send `sig` to one node's process group (default SIGKILL: a crash) and wait until it is gone."""
    procs = node_processes(home)
    if isinstance(name_or_index, int):
        match = [p for p in procs if node_index(p.name) == name_or_index]
    else:
        match = [p for p in procs if p.name == name_or_index]
    if not match:
        raise EsLocalError(f"no running node {name_or_index!r} under {home} "
                           f"(running: {', '.join(p.name for p in procs) or 'none'})")
    node = match[0]
    log.info("sending %s to %s (pid %d)", signal.Signals(sig).name, node.name, node.pid)
    toolkit.signal_process(node.pid, sig, group=True)
    if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT) and \
            not toolkit.wait_gone([node.pid], timeout, group=True):
        raise EsLocalError(f"{node.name} (pid {node.pid}) still running {timeout:.0f} s after {sig!r}")
    return node


def stop_cluster(home=None, timeout: float = STOP_TIMEOUT) -> list:
    """SIGTERM every node under `home`, SIGKILL what is left after `timeout`; returns what was stopped.
    Certificates, credentials and data stay for the next start."""
    home = home_path(home)
    entries = read_pid_files(home)
    running = [p for _, p in entries if _group_alive(p.pid)]
    for p in running:
        log.info("stopping %s (pid %d, port %d)", p.name, p.pid, p.http_port)
    toolkit.stop_processes([p.pid for p in running], "elasticsearch", timeout=timeout, group=True)
    survivors = [p.name for p in running if toolkit.alive(p.pid, group=True)]
    if survivors:
        raise EsLocalError(f"nodes under {home} survived SIGKILL: {survivors}")
    for f, _ in entries:
        f.unlink(missing_ok=True)
    (home / "connection.json").unlink(missing_ok=True)
    return running


def check_ports_free(ports):
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Elasticsearch binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                raise EsLocalError(f"port {port} on 127.0.0.1 is in use ({e.strerror}): another Elasticsearch? "
                                   "stop it with `facebeam es down --home ...` or pick another --port") from None

