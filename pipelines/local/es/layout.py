"""Where a local Elasticsearch cluster lives: its home folder, its nodes and their ports.

Layout of a home folder:
    connection.json        url, hosts, ca_certs, username, password, nodes (while running)
    credentials.json       username, password (kept across restarts)
    certs/                 ca.crt, ca.key, node.crt, node.key
    auth/                  users, users_roles (file realm, hashed; kept across restarts)
    nodes/<name>/          config/, data/, logs/, tmp/, console.log, node.json (pid file)
"""
import dataclasses
import re
from pathlib import Path
from typing import NamedTuple

from facebeam.transforms import home as fb_home
from facebeam.transforms.es_conn import EsError

DEFAULT_VERSION = "8.19.7"
DEFAULT_HEAP = "512m"
DEFAULT_PORT = 9200
TRANSPORT_OFFSET = 100  # transport port = http port + 100 (9200 -> 9300)


class EsLocalError(EsError, RuntimeError):
    """The local cluster could not be set up, started or stopped."""


def default_home() -> Path:
    """`<facebeam home>/es`: the cluster folder when no --home is given."""
    return fb_home.facebeam_home() / "es"


def home_path(home) -> Path:
    return Path(home).absolute() if home is not None else default_home()


class NodeProc(NamedTuple):
    name: str
    pid: int
    http_port: int


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    http_port: int
    transport_port: int
    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "config"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "node.json"


def node_layout(home: Path, count: int, port: int) -> list:
    return [Node(f"node-{i}", port + i, port + TRANSPORT_OFFSET + i, home / "nodes" / f"node-{i}")
            for i in range(count)]


def node_index(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else 0

