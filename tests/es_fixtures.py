"""pytest plugin: real local Elasticsearch clusters (registered in tests/conftest.py).

- `es_conn` (session): a secured 1-node cluster in .facebeam/test-es on port 9250
  (FACEBEAM_TEST_ES_PORT overrides). A cluster already running there is reused when
  its connection file works (start one with
  `facebeam es up --home .facebeam/test-es --port 9250` to skip start-up between runs);
  one a fixture started is stopped by the last session using it (leases under
  <home>/leases let concurrent pytest runs share it safely).
- `es_client`, `es_index`: a client for it, and a unique index name deleted afterwards.
- `es_cluster_factory` (function): extra clusters for a single test, e.g.
  `es_cluster_factory(nodes=3)` or `es_cluster_factory(settings={"thread_pool.write.queue_size": 1})`;
  returns an EsConnection; `es_cluster_factory.home(conn)` / `.kill_node(conn, 1)` reach its
  processes. Every cluster it started is stopped at teardown; homes are
  .facebeam/test-es-extra/<pid>-p<port>, pruned once their session is gone.
"""
import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest

from facebeam.pipelines.local import elasticsearch as es_local
from facebeam.pipelines.local import toolkit
from facebeam.transforms.es_conn import EsConnection, EsError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".facebeam" / "cache"
SESSION_HOME = REPO / ".facebeam" / "test-es"
EXTRA_HOMES = REPO / ".facebeam" / "test-es-extra"
ENV_PORT = "FACEBEAM_TEST_ES_PORT"
SESSION_PORT = 9250
EXTRA_PORT = 9270  # extra clusters from here, 10 ports apart
START_TIMEOUT = 300.0  # 2 cores, several JVMs
LOCK_TIMEOUT = 900.0  # another session may be starting a 3-node cluster


def _cache() -> Path:
    return Path(os.environ.get(es_local.ENV_CACHE) or CACHE)


def _locked(path: Path, timeout: float = LOCK_TIMEOUT):
    """An exclusive lock shared by concurrent pytest sessions (and xdist workers)."""
    return toolkit.file_lock(path, timeout=timeout, what=f"holding {path}", error=TimeoutError)


def _pid_alive(pid: int) -> bool:
    return toolkit.alive(pid)


def _reusable(home: Path):
    """The connection of a healthy cluster already running under `home`, else None."""
    if not es_local.node_processes(home) or not (home / "connection.json").is_file():
        return None
    try:
        conn = es_local.connection(home)
        client = conn.client()
        try:
            conn.check(client)
        finally:
            client.close()
        return conn
    except EsError as e:
        log.info("not reusing the cluster under %s: %s", home, e)
        return None


# --- the session cluster, shared by concurrent sessions through leases -----------------------
# <home>/leases/<pid>: one per pytest process using the cluster. <home>/fixture-owned: a
# fixture started it, so the last session to leave stops it; a cluster started by hand
# (`facebeam es up --home .facebeam/test-es --port 9250`) is reused and never stopped.
def _live_leases(home: Path) -> list:
    """Other live sessions' leases; drops those of sessions that died without teardown."""
    live = []
    for f in (home / "leases").glob("*"):
        pid = int(f.name) if f.name.isdigit() else None
        if pid == os.getpid():
            continue
        if pid is not None and _pid_alive(pid):
            live.append(f)
        else:
            f.unlink(missing_ok=True)
    return live


@pytest.fixture(scope="session")
def es_home() -> Path:
    return SESSION_HOME


@pytest.fixture(scope="session")
def es_conn(es_home) -> EsConnection:
    lock = es_home.parent / f"{es_home.name}.lock"
    lease = es_home / "leases" / str(os.getpid())
    with _locked(lock):
        conn = _reusable(es_home)
        if conn is None:
            es_local.stop_cluster(es_home)  # leftovers of a crashed run in our own test folder
            port = int(os.environ.get(ENV_PORT, SESSION_PORT))
            conn = es_local.start_cluster(es_home, nodes=1, port=port, security=True, timeout=START_TIMEOUT,
                                          fresh=True, cache=_cache())
            (es_home / "fixture-owned").touch()
        else:
            log.info("reusing the Elasticsearch already running under %s", es_home)
        lease.parent.mkdir(exist_ok=True)
        lease.touch()
    try:
        yield conn
    finally:
        with _locked(lock):
            lease.unlink(missing_ok=True)
            if (es_home / "fixture-owned").exists() and not _live_leases(es_home):
                es_local.stop_cluster(es_home)
                (es_home / "fixture-owned").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def es_client(es_conn):
    client = es_conn.client()
    yield client
    client.close()


@pytest.fixture
def es_index(es_client) -> str:
    """A fresh index name (not created); the index is deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    es_client.options(ignore_status=404).indices.delete(index=name)


# --- extra clusters for single tests -------------------------------------------------------------
EXTRA_LOCK = EXTRA_HOMES.parent / "test-es-extra.lock"


def _prune_extra_homes():
    """Stop and delete extra clusters of sessions that died (their folder starts with the pid)."""
    for home in EXTRA_HOMES.glob("*-p*"):
        pid = home.name.split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            es_local.stop_cluster(home)
            shutil.rmtree(home, ignore_errors=True)


def _free_base(nodes: int) -> int:
    for base in range(EXTRA_PORT, EXTRA_PORT + 300, 10):
        ports = [base + i for i in range(nodes)] + [base + es_local.TRANSPORT_OFFSET + i for i in range(nodes)]
        try:
            es_local.check_ports_free(ports)
            return base
        except es_local.EsLocalError:
            continue
    raise es_local.EsLocalError(f"no free port range for {nodes} node(s) from {EXTRA_PORT}")


@contextlib.contextmanager
def extra_cluster_slot(nodes: int = 1, port=None):
    """(home, port) for one extra cluster; hold it while starting so sessions do not collide."""
    with _locked(EXTRA_LOCK):
        _prune_extra_homes()
        new = port is None  # a given port: the caller holds the slot again for its own cluster there
        port = port or _free_base(nodes)
        home = EXTRA_HOMES / f"{os.getpid()}-p{port}"
        if new:  # its ports are free: what is left is an earlier test's cluster (maybe of three nodes,
            shutil.rmtree(home, ignore_errors=True)  # whose state a one-node `up` would wait on forever)
        yield home, port


class ClusterFactory:
    """Starts extra clusters for one test; stops all of them at teardown."""

    def __init__(self):
        self._homes = {}  # EsConnection -> home

    def __call__(self, nodes: int = 1, settings=None, port=None, security: bool = True,
                 heap: str = es_local.DEFAULT_HEAP, timeout: float = START_TIMEOUT) -> EsConnection:
        with extra_cluster_slot(nodes, port) as (home, port):
            es_local.stop_cluster(home)
            conn = es_local.start_cluster(home, nodes=nodes, port=port, security=security, settings=settings,
                                          heap=heap, timeout=timeout, fresh=True, cache=_cache())
        self._homes[conn] = home
        return conn

    def home(self, conn: EsConnection) -> Path:
        return self._homes[conn]

    def nodes(self, conn: EsConnection) -> list:
        return es_local.node_processes(self._homes[conn])

    def kill_node(self, conn: EsConnection, name_or_index, **kwargs):
        return es_local.kill_node(self._homes[conn], name_or_index, **kwargs)

    def stop_all(self):
        for home in self._homes.values():
            es_local.stop_cluster(home)
        self._homes.clear()


@pytest.fixture
def es_cluster_factory():
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.stop_all()
