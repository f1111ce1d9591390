"""A node's configuration: elasticsearch.yml, JVM heap, certificates and users, regenerated on every start."""
import json
import os
import pwd
import re
import shutil
from pathlib import Path
from typing import Optional

from facebeam.pipelines.local.es.account import chown_tree
from facebeam.pipelines.local.es.layout import EsLocalError, Node


def node_settings(node: Node, nodes: list, cluster_name: str, security: bool, es_home: Path) -> dict:
    s = {
        "cluster.name": cluster_name,
        "node.name": node.name,
        "path.data": str(node.dir / "data"),
        "path.logs": str(node.dir / "logs"),
        "network.host": "127.0.0.1",
        "http.port": node.http_port,
        "transport.port": node.transport_port,
        "discovery.seed_hosts": [f"127.0.0.1:{n.transport_port}" for n in nodes],
        "cluster.initial_master_nodes": [n.name for n in nodes],
        # A dev machine's nearly full disk must not flip indices to read-only.
        "cluster.routing.allocation.disk.threshold_enabled": False,
        "xpack.security.enabled": security,
        # A force merge builds a shard's graph on one thread and 8.19 gives the pool max(1, cores / 8) threads:
        # with a thread per core here a new index's shards are merged side by side (es_index.DEFAULT_TUNING).
        "thread_pool.force_merge.size": max(1, (os.cpu_count() or 1) // len(nodes)),
    }
    if security:
        for layer in ("http", "transport"):
            s.update({
                f"xpack.security.{layer}.ssl.enabled": True,
                f"xpack.security.{layer}.ssl.key": "certs/node.key",
                f"xpack.security.{layer}.ssl.certificate": "certs/node.crt",
                f"xpack.security.{layer}.ssl.certificate_authorities": ["certs/ca.crt"],
            })
        s["xpack.security.transport.ssl.verification_mode"] = "certificate"
    # Only modules the distribution ships accept their settings.
    if (es_home / "modules" / "x-pack-ml").is_dir():
        s["xpack.ml.enabled"] = False
    if (es_home / "modules" / "ingest-geoip").is_dir():
        s["ingest.geoip.downloader.enabled"] = False
    return s


def _write_yaml(path: Path, settings: dict):
    # JSON scalars and lists are valid YAML; quoting every value keeps user text inert.
    lines = ["# written by facebeam es up; regenerated on every start"]
    lines += [f"{key}: {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")


def prepare_node(node: Node, es_home: Path, settings: dict, heap: str, certs: Optional[dict],
                  auth_dir: Optional[Path], account: Optional[pwd.struct_passwd]):
    if node.config.exists():
        shutil.rmtree(node.config)
    shutil.copytree(es_home / "config", node.config)
    for sub in ("data", "logs", "tmp"):
        (node.dir / sub).mkdir(parents=True, exist_ok=True)
    _write_yaml(node.config / "elasticsearch.yml", settings)
    (node.config / "jvm.options.d" / "facebeam.options").write_text(
        f"-Xms{heap}\n-Xmx{heap}\n-XX:HeapDumpPath={node.dir / 'logs'}\n")
    if certs:
        for key, dest in (("ca_crt", "ca.crt"), ("node_crt", "node.crt"), ("node_key", "node.key")):
            (node.config / "certs").mkdir(exist_ok=True)
            shutil.copy2(certs[key], node.config / "certs" / dest)
    if auth_dir:
        for f in ("users", "users_roles"):
            shutil.copy2(auth_dir / f, node.config / f)
    os.chmod(node.config, 0o700)
    if account:
        chown_tree(node.dir, account)


def parse_heap(heap: str) -> str:
    if not re.fullmatch(r"\d+[kmgKMG]", heap or ""):
        raise EsLocalError(f"--heap must look like 512m or 1g, got {heap!r}")
    return heap

