"""`facebeam es up|down|status`: a real local Elasticsearch cluster without Docker.

The server is Elastic's minimal `integ-test-zip` distribution from Maven Central
(fetched with `mvn dependency:copy`, unpacked once under the cache folder,
`facebeam.transforms.home.cache_dir()`). Each
node gets its own config, data, log and tmp dirs under the home folder and runs
detached in its own process group, so `es down` (or another process) can stop it.

Security is on by default: HTTPS and transport TLS with a CA and node certificate
generated here, and a generated file-realm superuser. The password lives only in
`<home>/credentials.json` and `<home>/connection.json` (mode 0600); nothing prints or
logs it. CA, certificates, credentials and data are made on the first start only: a
restart of the same home (after `es down`, a crash, or a reboot) reuses them, so
connections made before the restart keep working. `--fresh` wipes the data only.

The default home is `<facebeam home>/es` ($FACEBEAM_HOME, else ./.facebeam; see
`facebeam.transforms.home`), whatever folder the command runs in.

One room per concern under `pipelines/local/es/`: the server download (`distribution`),
TLS (`certs`), the file-realm user (`realm`), running as an unprivileged account when
root (`account`), node configuration (`config`), node processes (`process`), start-up
health (`health`) and the home folder's layout (`layout`). This module is the command and
`start_cluster`, which puts them together.

The layout of a home folder is described once, in `es/layout.py`.
"""
import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

from elasticsearch import NotFoundError

from facebeam.pipelines import jobs, options
from facebeam.pipelines.local import service, toolkit
from facebeam.pipelines.local.es.account import check_reachable, run_as_account
from facebeam.pipelines.local.es.certs import make_certs
from facebeam.pipelines.local.es.config import node_settings, parse_heap, prepare_node
from facebeam.pipelines.local.es.distribution import check_java, fetch_distribution
from facebeam.pipelines.local.es.health import wait_ready
from facebeam.pipelines.local.es.layout import (  # noqa: F401 (DEFAULT_*, TRANSPORT_OFFSET: the command's API)
    DEFAULT_HEAP,
    DEFAULT_PORT,
    DEFAULT_VERSION,
    TRANSPORT_OFFSET,
    EsLocalError,
    home_path,
    node_index,
    node_layout,
)
from facebeam.pipelines.local.es.process import (  # noqa: F401 (kill_node: the command's API)
    check_ports_free,
    kill_node,
    launch,
    node_processes,
    stop_cluster,
)
from facebeam.pipelines.local.es.realm import credentials
from facebeam.transforms import home as fb_home
from facebeam.transforms import privacy
from facebeam.transforms.es_conn import EsConnection

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 180.0
ENV_CACHE = fb_home.ENV_CACHE


def start_cluster(home=None, nodes: int = 1, version: str = DEFAULT_VERSION, heap: str = DEFAULT_HEAP,
                  port: int = DEFAULT_PORT, security: bool = True, settings: Optional[dict] = None,
                  timeout: float = DEFAULT_TIMEOUT, fresh: bool = False,
                  cache: Optional[Path] = None) -> EsConnection:
    """Start `nodes` nodes as one cluster under `home`; wait for yellow and all nodes joined.

    Fails (and stops what it started) on a Java, port, configuration or start-up problem.
    The CA, certificates and credentials of a previous start of `home` are reused (a
    restart keeps connections made before it working); `fresh=True` wipes the data of a
    previous run, which is otherwise kept across restarts.
    """
    home = home_path(home)
    if nodes < 1:
        raise EsLocalError("--nodes must be at least 1")
    heap = parse_heap(heap)
    running = node_processes(home)
    if running:
        raise EsLocalError(f"Elasticsearch already running under {home} "
                           f"({', '.join(p.name for p in running)}): `facebeam es down --home {home}` first")
    started = time.monotonic()
    java_home = check_java(version)
    layout = node_layout(home, nodes, port)
    ports = [n.http_port for n in layout] + [n.transport_port for n in layout]
    toolkit.poll(lambda: ports_free(ports), 10)  # a node killed just before may still be letting go of them
    check_ports_free(ports)
    es_home = fetch_distribution(version, cache)
    account = run_as_account()

    home.mkdir(parents=True, exist_ok=True)
    # The node account (not us, when we are root) only needs to pass through home.
    os.chmod(home, 0o711 if account else 0o700)
    if account:
        check_reachable(home, account)
        check_reachable(es_home / "bin", account)
    stale = home / "nodes"
    if stale.exists():
        for d in stale.iterdir():
            if fresh or d.name not in {n.name for n in layout}:
                shutil.rmtree(d, ignore_errors=True)
    username = password = certs = auth_dir = None
    if security:
        certs = make_certs(home / "certs")
        os.chmod(home / "certs", 0o700)
        username, password, auth_dir = credentials(home, es_home, java_home)
    cluster_name = f"facebeam-{home.name}"
    for node in layout:
        own = node_settings(node, layout, cluster_name, security, es_home)
        own.update(settings or {})
        prepare_node(node, es_home, own, heap, certs, auth_dir, account)

    scheme = "https" if security else "http"
    urls = [f"{scheme}://127.0.0.1:{n.http_port}" for n in layout]
    conn = EsConnection(hosts=tuple(urls), ca_certs=str(certs["ca_crt"]) if certs else None,
                        username=username, password=password)
    procs = {}
    try:
        for node in layout:
            procs[node.name] = launch(node, es_home, java_home, account)
        wait_ready(conn, layout, procs, timeout)
    except BaseException:
        stop_cluster(home)
        raise
    info = {
        "url": urls[0], "hosts": urls, "ca_certs": conn.ca_certs, "username": username, "password": password,
        "version": version, "security": security,
        "nodes": [{"name": n.name, "pid": procs[n.name].pid, "http_port": n.http_port} for n in layout],
    }
    privacy.write_private(home / "connection.json", (json.dumps(info, indent=2) + "\n").encode())
    log.info("Elasticsearch %s: %d node(s) up at %s in %.1f s", version, nodes, urls[0], time.monotonic() - started)
    return conn


def ports_free(ports) -> bool:
    try:
        check_ports_free(ports)
    except EsLocalError:
        return False
    return True


def is_running(home=None) -> bool:
    """Does a node of the cluster under `home` (default: <facebeam home>/es) run?"""
    return bool(node_processes(home))


def connection(home=None) -> EsConnection:
    """The EsConnection of the cluster running under `home` (from its connection.json)."""
    return EsConnection.from_file(home_path(home) / "connection.json")


# --- CLI --------------------------------------------------------------------------------------
def setting_arg(text: str) -> tuple:
    """argparse type of `--setting KEY=VALUE` (also `facebeam bench index --node-setting`)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or "\n" in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


BEAM = False


@dataclasses.dataclass(frozen=True)
class EsLocalConfig:
    action: str  # up | down | status
    home: Path
    nodes: int = 1
    version: str = DEFAULT_VERSION
    heap: str = DEFAULT_HEAP
    security: bool = True
    port: int = DEFAULT_PORT
    settings: tuple = ()
    timeout: float = DEFAULT_TIMEOUT
    fresh: bool = False
    index: str = None
    json: bool = False


def build_parser() -> argparse.ArgumentParser:
    p = options.parser("facebeam es", "Start, stop and inspect a local Elasticsearch.")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a local cluster and wait until it is ready")
    up.add_argument("--nodes", type=options.COUNT, default=1, help="cluster nodes on this machine")
    up.add_argument("--version", default=DEFAULT_VERSION, help="server version (8.x; default %(default)s)")
    up.add_argument("--heap", default=DEFAULT_HEAP, help="JVM heap per node (default %(default)s)")
    up.add_argument("--no-security", action="store_true", help="plain http without authentication")
    up.add_argument("--port", type=options.PORT, default=DEFAULT_PORT, help="first HTTP port (default %(default)s)")
    up.add_argument("--setting", type=setting_arg, action="append", default=[], metavar="KEY=VALUE",
                    help="extra elasticsearch.yml setting for every node (repeatable)")
    up.add_argument("--timeout", type=options.POSITIVE, default=DEFAULT_TIMEOUT, help="seconds to wait (default %(default)s)")
    up.add_argument("--fresh", action="store_true", help="wipe the data of a previous run first")
    down = sub.add_parser("down", help="stop the nodes started under --home")
    status = sub.add_parser("status", help="cluster health, nodes, and a doc count")
    status.add_argument("--index", help="index or alias to count")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    for sp in (up, down, status):
        sp.add_argument("--home", type=Path, default=None,
                        help="cluster folder (default: $FACEBEAM_HOME/es, else ./.facebeam/es)")
    return p


def configure(a, beam_args=()) -> EsLocalConfig:
    given = {"action": a.cmd, "home": home_path(a.home)}
    if a.cmd == "up":
        given.update(nodes=a.nodes, version=a.version, heap=a.heap, security=not a.no_security, port=a.port,
                     settings=tuple(a.setting), timeout=a.timeout, fresh=a.fresh)
    elif a.cmd == "status":
        given.update(index=a.index, json=a.json)
    return EsLocalConfig(**given)


def _cmd_up(a: EsLocalConfig) -> list:
    """What `es up` says (it starts the cluster unless one runs under the home)."""
    running = node_processes(a.home)
    if running and (a.home / "connection.json").is_file():
        conn = connection(a.home)
        return [f"already running under {a.home}: {len(running)} node(s) at {conn.url} (`facebeam es down` to stop)"]
    t0 = time.monotonic()
    conn = start_cluster(a.home, nodes=a.nodes, version=a.version, heap=a.heap, port=a.port,
                         security=a.security, settings=dict(a.settings), timeout=a.timeout, fresh=a.fresh)
    out = [f"Elasticsearch {a.version}: {a.nodes} node(s) up in {time.monotonic() - t0:.1f} s",
           f"  url:        {conn.url}" + (f"  (+{len(conn.hosts) - 1} more)" if len(conn.hosts) > 1 else "")]
    if conn.username:
        out += [f"  user:       {conn.username} (password in {a.home / 'connection.json'})",
                f"  CA:         {conn.ca_certs}"]
    return out + [f"  connection: export FACEBEAM_ES_CONN={(a.home / 'connection.json').absolute()}"]


def _cmd_down(a: EsLocalConfig) -> list:
    stopped = stop_cluster(a.home)
    return [f"stopped {p.name} (pid {p.pid}, port {p.http_port})" for p in stopped] or [f"nothing running under {a.home}"]


def _node_rows(client, running: list) -> list:
    """Joined nodes: name, http address, heap use, master. (Node stats rather than
    `_cat/nodes`, which answered HTTP 500 here right after start-up.)"""
    ports = {p.name: p.http_port for p in running}
    master = client.cluster.state(metric="master_node").get("master_node")
    stats = client.nodes.stats(metric="jvm")["nodes"]
    rows = [{"name": n["name"], "http": f"127.0.0.1:{ports[n['name']]}" if n["name"] in ports else None,
             "heap_percent": n.get("jvm", {}).get("mem", {}).get("heap_used_percent"), "master": node_id == master}
            for node_id, n in stats.items()]
    return sorted(rows, key=lambda r: node_index(r["name"]))


def _cmd_status(a: EsLocalConfig) -> tuple:
    """(found, lines): found is False when nothing runs under the home, or the --index is missing."""
    running = node_processes(a.home)
    conn_file = a.home / "connection.json"
    if not running or not conn_file.is_file():
        if a.json:
            return False, [json.dumps({"running": False, "health": None, "count": None})]
        return False, [f"no Elasticsearch running under {a.home}"]
    # Ask the nodes that are alive (a killed node stays in the connection file).
    conn = connection(a.home)
    scheme = conn.url.split(":", 1)[0]
    conn = dataclasses.replace(conn, hosts=tuple(f"{scheme}://127.0.0.1:{p.http_port}" for p in running))
    client = conn.client()
    try:
        conn.check(client)
        health = client.cluster.health()
        nodes = _node_rows(client, running)
        count = None
        if a.index:
            try:
                count = client.count(index=a.index)["count"]
            except NotFoundError:
                print(f"index or alias {a.index!r} not found", file=sys.stderr)
                return False, []
    finally:
        client.close()
    if a.json:
        return True, [json.dumps({"running": True, "url": conn.url, "health": health["status"], "count": count,
                                  "index": a.index, "number_of_nodes": health["number_of_nodes"], "nodes": nodes})]
    out = [f"cluster {health['cluster_name']} at {conn.url}: {health['status']}, "
           f"{health['number_of_nodes']} node(s), {health['active_shards']} active shard(s)"]
    for n in nodes:
        master = "  (master)" if n["master"] else ""
        out.append(f"  {n['name']:<8} {n['http'] or '-':<16} heap {n['heap_percent']}%{master}")
    if a.index:
        out.append(f"index {a.index}: {count} doc(s)")
    return True, out


def run(config: EsLocalConfig, pipeline=None) -> dict:
    transport_log = logging.getLogger("elastic_transport")
    if transport_log.level == logging.NOTSET:
        transport_log.setLevel(logging.WARNING)  # one INFO line per request is noise on a CLI
    return service.run_action("es", config.action, {
        "up": service.Action(lambda: _cmd_up(config), "\n".join),
        "down": service.Action(lambda: _cmd_down(config), "\n".join),
        "status": service.Action(lambda: _cmd_status(config), lambda found: "\n".join(found[1]),
                                 ok=lambda found: found[0]),
    })


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: not s["ok"])


if __name__ == "__main__":
    jobs.entry(main)
