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

Layout of a home folder:
    connection.json        url, hosts, ca_certs, username, password, nodes (while running)
    credentials.json       username, password (kept across restarts)
    certs/                 ca.crt, ca.key, node.crt, node.key
    auth/                  users, users_roles (file realm, hashed; kept across restarts)
    nodes/<name>/          config/, data/, logs/, tmp/, console.log, node.json (pid file)
"""
import argparse
import dataclasses
import datetime
import ipaddress
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional

from facebeam.pipelines.local import toolkit
from facebeam.transforms import home as fb_home
from facebeam.transforms import privacy
from facebeam.transforms.es_conn import EsConnection, EsError

log = logging.getLogger(__name__)

DEFAULT_VERSION = "8.19.7"
DEFAULT_HEAP = "512m"
DEFAULT_PORT = 9200
DEFAULT_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
TRANSPORT_OFFSET = 100  # transport port = http port + 100 (9200 -> 9300)
USERNAME = "facebeam"
ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch:{version}:zip"
ENV_CACHE = fb_home.ENV_CACHE
MAVEN_TIMEOUT = 900.0
ENV_RUN_AS = "FACEBEAM_ES_RUN_AS"  # OS account for the nodes when we are root


class EsLocalError(EsError, RuntimeError):
    """The local cluster could not be set up, started or stopped."""


def default_home() -> Path:
    """`<facebeam home>/es`: the cluster folder when no --home is given."""
    return fb_home.facebeam_home() / "es"


def _home(home) -> Path:
    return Path(home).absolute() if home is not None else default_home()


class NodeProc(NamedTuple):
    name: str
    pid: int
    http_port: int


@dataclasses.dataclass(frozen=True)
class _Node:
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


# --- Java and the distribution --------------------------------------------------------
def check_java(version: str) -> str:
    """The Java home to run `version` with (ES_JAVA_HOME, then JAVA_HOME, then `java` on PATH);
    fails clearly if that Java is too old."""
    es_major = int(version.split(".")[0])
    java = toolkit.find_java(17 if es_major <= 8 else 21, purpose=f"Elasticsearch {version}",
                             home_vars=("ES_JAVA_HOME", "JAVA_HOME"), error=EsLocalError,
                             hint="Set ES_JAVA_HOME to a newer JDK")
    if es_major != 8:
        log.warning("Elasticsearch %s: facebeam's Python client is 8.x and expects an 8.x server", version)
    return java.home


def fetch_distribution(version: str = DEFAULT_VERSION, cache: Optional[Path] = None) -> Path:
    """ES_HOME of the unpacked integ-test-zip, fetched through Maven on first use."""
    cache = Path(cache or toolkit.cache_dir())
    target = cache / f"elasticsearch-{version}"
    if (target / "bin" / "elasticsearch").is_file():
        return target
    deadline = time.monotonic() + MAVEN_TIMEOUT
    with toolkit.file_lock(cache / ".lock", deadline=deadline, error=EsLocalError,  # one unpacker at a time
                           what=f"unpacking Elasticsearch {version} into {cache}"):
        if (target / "bin" / "elasticsearch").is_file():
            return target
        zip_path = _maven_fetch(version, cache / "downloads", deadline)
        log.info("unpacking %s into %s", zip_path.name, cache)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
        try:
            _extract_zip(zip_path, tmp)
            inner = tmp / f"elasticsearch-{version}"
            if not (inner / "bin" / "elasticsearch").is_file():
                raise EsLocalError(f"{zip_path} has no elasticsearch-{version}/bin/elasticsearch")
            inner.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _maven_fetch(version: str, out_dir: Path, deadline: float) -> Path:
    zip_path = out_dir / f"elasticsearch-{version}.zip"
    if zip_path.is_file():
        return zip_path
    artifact = ARTIFACT.format(version=version)
    log.info("fetching %s with Maven (cached in ~/.m2 afterwards)", artifact)
    ok, out = toolkit.maven(["dependency:copy", f"-Dartifact={artifact}", f"-DoutputDirectory={out_dir}"],
                            deadline, f"the Elasticsearch server {artifact}", error=EsLocalError)
    if not ok or not zip_path.is_file():
        tail = "\n".join(out.strip().splitlines()[-15:])
        raise EsLocalError(f"Maven could not fetch {artifact} ({toolkit.maven_reason(out)}):\n{tail}")
    return zip_path


def _extract_zip(zip_path: Path, dest: Path):
    """Unzip keeping the executable bits (zipfile alone drops them)."""
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                path.chmod(mode)


# --- TLS and credentials ----------------------------------------------------------------
def make_certs(cert_dir: Path) -> dict:
    """A CA and one node certificate for 127.0.0.1/localhost (kept if already there)."""
    paths = {k: cert_dir / f"{k.replace('_', '.')}" for k in ("ca_crt", "ca_key", "node_crt", "node_key")}
    if all(p.is_file() for p in paths.values()):
        return paths
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "facebeam local"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("facebeam local CA")).issuer_name(name("facebeam local CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    node_key = key()
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    node = (x509.CertificateBuilder().subject_name(name("facebeam local node")).issuer_name(ca.subject)
            .public_key(node_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    privacy.write_private(paths["ca_key"], pem_key(ca_key))
    privacy.write_private(paths["node_key"], pem_key(node_key))
    paths["ca_crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["node_crt"].write_bytes(node.public_bytes(serialization.Encoding.PEM))
    return paths


def _add_file_user(es_home: Path, java_home: str, conf_dir: Path, username: str, password: str):
    """Write users/users_roles with ES's own tool; the password goes through stdin, never argv."""
    for f in ("users", "users_roles"):
        (conf_dir / f).write_text("")
    env = {**os.environ, "ES_JAVA_HOME": java_home, "ES_PATH_CONF": str(conf_dir)}
    env.pop("JAVA_HOME", None)
    try:
        res = subprocess.run([str(es_home / "bin" / "elasticsearch-users"), "useradd", username, "-r", "superuser"],
                             input=f"{password}\n{password}\n", env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise EsLocalError("elasticsearch-users did not finish within 120 s") from None
    if res.returncode != 0:
        out = (res.stdout + res.stderr).replace(password, "***")
        raise EsLocalError(f"elasticsearch-users useradd failed (exit {res.returncode}): {out.strip()[-500:]}")


# --- running as root ------------------------------------------------------------------------
def run_as_account() -> Optional[pwd.struct_passwd]:
    """Elasticsearch refuses to run as root; as root, nodes run as FACEBEAM_ES_RUN_AS (default nobody)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(ENV_RUN_AS) or "nobody"
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise EsLocalError(f"running as root, and Elasticsearch refuses root: no account {name!r} to run it as "
                           f"(set {ENV_RUN_AS} to an unprivileged user)") from None
    if account.pw_uid == 0:
        raise EsLocalError(f"{ENV_RUN_AS}={name} is root; Elasticsearch needs an unprivileged account")
    return account


def _check_reachable(path: Path, account: pwd.struct_passwd):
    """Every parent of `path` must let the node account through (o+x), or the node cannot start."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid != account.pw_uid and not st.st_mode & stat.S_IXOTH:
            raise EsLocalError(f"{parent} is not searchable by {account.pw_name!r}, the account the nodes run as "
                               f"(Elasticsearch refuses root): chmod o+x it or use another --home")


def _chown_tree(root: Path, account: pwd.struct_passwd):
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, account.pw_uid, account.pw_gid)


# --- node configuration ---------------------------------------------------------------------
def _nodes(home: Path, count: int, port: int) -> list:
    return [_Node(f"node-{i}", port + i, port + TRANSPORT_OFFSET + i, home / "nodes" / f"node-{i}")
            for i in range(count)]


def _node_settings(node: _Node, nodes: list, cluster_name: str, security: bool, es_home: Path) -> dict:
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


def _prepare_node(node: _Node, es_home: Path, settings: dict, heap: str, certs: Optional[dict],
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
        _chown_tree(node.dir, account)


def _launch(node: _Node, es_home: Path, java_home: str, account: Optional[pwd.struct_passwd]) -> subprocess.Popen:
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


# --- processes --------------------------------------------------------------------------
def _group_alive(pgid: int) -> bool:
    """Is the node's process group alive? (Some process in it must be Elasticsearch: a recycled pid is not.)"""
    return toolkit.alive(pgid, "elasticsearch", group=True)


def _read_pid_files(home: Path) -> list:
    out = []
    for f in sorted((Path(home) / "nodes").glob("*/node.json")):
        try:
            d = json.loads(f.read_text())
            out.append((f, NodeProc(d["name"], int(d["pid"]), int(d["http_port"]))))
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable pid file %s", f)
    return sorted(out, key=lambda t: _node_index(t[1].name))


def _node_index(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else 0


def node_processes(home=None) -> list:
    """Running nodes under `home`: [NodeProc(name, pid, http_port)], pid = process-group id."""
    return [p for _, p in _read_pid_files(_home(home)) if _group_alive(p.pid)]


def kill_node(home, name_or_index, sig=signal.SIGKILL, timeout: float = STOP_TIMEOUT) -> NodeProc:
    """Send `sig` to one node's process group (default SIGKILL: a crash) and wait until it is gone."""
    procs = node_processes(home)
    if isinstance(name_or_index, int):
        match = [p for p in procs if _node_index(p.name) == name_or_index]
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
    home = _home(home)
    entries = _read_pid_files(home)
    running = [p for _, p in entries if _group_alive(p.pid)]
    for p in running:
        log.info("stopping %s (pid %d, port %d)", p.name, p.pid, p.http_port)
    toolkit.stop_processes([p.pid for p in running], "elasticsearch", timeout=timeout, group=True)
    survivors = [p.name for p in running if toolkit.alive(p.pid, group=True)]
    if survivors:
        raise EsLocalError(f"nodes under {home} survived SIGKILL: {survivors}")
    for f, p in entries:
        f.unlink(missing_ok=True)
        toolkit.forget(p.pid)
    (home / "connection.json").unlink(missing_ok=True)
    return running


# --- start ---------------------------------------------------------------------------------
def check_ports_free(ports):
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Elasticsearch binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                raise EsLocalError(f"port {port} on 127.0.0.1 is in use ({e.strerror}): another Elasticsearch? "
                                   "stop it with `facebeam es down --home ...` or pick another --port") from None


def _parse_heap(heap: str) -> str:
    if not re.fullmatch(r"\d+[kmgKMG]", heap or ""):
        raise EsLocalError(f"--heap must look like 512m or 1g, got {heap!r}")
    return heap


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
    home = _home(home)
    if nodes < 1:
        raise EsLocalError("--nodes must be at least 1")
    heap = _parse_heap(heap)
    running = node_processes(home)
    if running:
        raise EsLocalError(f"Elasticsearch already running under {home} "
                           f"({', '.join(p.name for p in running)}): `facebeam es down --home {home}` first")
    started = time.monotonic()
    java_home = check_java(version)
    layout = _nodes(home, nodes, port)
    ports = [n.http_port for n in layout] + [n.transport_port for n in layout]
    ports_deadline = time.monotonic() + 10  # a node killed just before may still be letting go of them
    while True:
        try:
            check_ports_free(ports)
            break
        except EsLocalError:
            if time.monotonic() > ports_deadline:
                raise
            time.sleep(0.5)
    es_home = fetch_distribution(version, cache)
    account = run_as_account()

    home.mkdir(parents=True, exist_ok=True)
    # The node account (not us, when we are root) only needs to pass through home.
    os.chmod(home, 0o711 if account else 0o700)
    if account:
        _check_reachable(home, account)
        _check_reachable(es_home / "bin", account)
    stale = home / "nodes"
    if stale.exists():
        for d in stale.iterdir():
            if fresh or d.name not in {n.name for n in layout}:
                shutil.rmtree(d, ignore_errors=True)
    username = password = certs = auth_dir = None
    if security:
        certs = make_certs(home / "certs")
        os.chmod(home / "certs", 0o700)
        username, password, auth_dir = _credentials(home, es_home, java_home)
    cluster_name = f"facebeam-{home.name}"
    for node in layout:
        node_settings = _node_settings(node, layout, cluster_name, security, es_home)
        node_settings.update(settings or {})
        _prepare_node(node, es_home, node_settings, heap, certs, auth_dir, account)

    scheme = "https" if security else "http"
    urls = [f"{scheme}://127.0.0.1:{n.http_port}" for n in layout]
    conn = EsConnection(hosts=tuple(urls), ca_certs=str(certs["ca_crt"]) if certs else None,
                        username=username, password=password)
    procs = {}
    try:
        for node in layout:
            procs[node.name] = _launch(node, es_home, java_home, account)
        _wait_ready(conn, layout, procs, timeout)
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


def _credentials(home: Path, es_home: Path, java_home: str) -> tuple:
    """(username, password, auth dir with the file-realm users): those of a previous start of
    `home` when there are any, else new ones (kept in credentials.json, mode 0600)."""
    cred_file, auth_dir = home / "credentials.json", home / "auth"
    creds = None
    if cred_file.is_file():
        try:
            d = json.loads(cred_file.read_text())
            creds = (str(d["username"]), str(d["password"]))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is unreadable: new credentials for the cluster under %s", cred_file, home)
    if creds is None:
        creds = (USERNAME, secrets.token_urlsafe(24))
        privacy.write_private(cred_file, (json.dumps({"username": creds[0], "password": creds[1]}, indent=2)
                                   + "\n").encode())
        shutil.rmtree(auth_dir, ignore_errors=True)  # users of older credentials
    if not all((auth_dir / f).is_file() for f in ("users", "users_roles")):
        tmp = home / ".auth-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        _add_file_user(es_home, java_home, tmp, *creds)
        shutil.rmtree(auth_dir, ignore_errors=True)
        os.replace(tmp, auth_dir)
    return creds[0], creds[1], auth_dir


def _http_get(conn: EsConnection, url: str, timeout: float) -> dict:
    return toolkit.http_json(url, timeout=timeout, auth=(conn.username, conn.password), cafile=conn.ca_certs)


def _wait_ready(conn: EsConnection, layout: list, procs: dict, timeout: float):
    """Poll cluster health until yellow/green with every node joined; watch for dead nodes."""
    deadline = time.monotonic() + timeout
    want = len(layout)
    last = "no answer yet"
    while True:
        for node in layout:
            code = procs[node.name].poll()
            if code is not None:
                raise EsLocalError(f"{node.name} exited with code {code} during start-up; "
                                   f"last lines of {node.console}:\n{log_tail(node)}")
        try:
            health = _http_get(conn, f"{conn.url}/_cluster/health?wait_for_nodes={want}&timeout=1s", timeout=5)
            last = f"status {health.get('status')}, {health.get('number_of_nodes')}/{want} nodes"
            if health.get("status") in ("yellow", "green") and health.get("number_of_nodes") == want:
                return
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
            if e.code == 401:
                raise EsLocalError(f"{conn.url} rejected the generated credentials (HTTP 401); "
                                   f"see {layout[0].console}") from None
        except (OSError, ValueError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() > deadline:
            raise EsLocalError(f"cluster not ready after {timeout:.0f} s ({last}); last lines of "
                               f"{layout[0].console}:\n{log_tail(layout[0])}")
        time.sleep(0.5)


def log_tail(node: _Node, lines: int = 15) -> str:
    """The end of a node's console output, Java stack frames left out, long lines cut."""
    return toolkit.log_tail(node.console, lines, java_frames=False, width=600, missing="(no console log)")


def connection(home=None) -> EsConnection:
    """The EsConnection of the cluster running under `home` (from its connection.json)."""
    return EsConnection.from_file(_home(home) / "connection.json")


# --- CLI --------------------------------------------------------------------------------------
def _setting(text: str) -> tuple:
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
    from facebeam.pipelines import options

    p = options.parser("facebeam es", "Start, stop and inspect a local Elasticsearch.")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a local cluster and wait until it is ready")
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--version", default=DEFAULT_VERSION, help="server version (8.x; default %(default)s)")
    up.add_argument("--heap", default=DEFAULT_HEAP, help="JVM heap per node (default %(default)s)")
    up.add_argument("--no-security", action="store_true", help="plain http without authentication")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help="first HTTP port (default %(default)s)")
    up.add_argument("--setting", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                    help="extra elasticsearch.yml setting for every node (repeatable)")
    up.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait (default %(default)s)")
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
    given = {"action": a.cmd, "home": _home(a.home)}
    if a.cmd == "up":
        given.update(nodes=a.nodes, version=a.version, heap=a.heap, security=not a.no_security, port=a.port,
                     settings=tuple(a.setting), timeout=a.timeout, fresh=a.fresh)
    elif a.cmd == "status":
        given.update(index=a.index, json=a.json)
    return EsLocalConfig(**given)


def _cmd_up(a: EsLocalConfig) -> int:
    running = node_processes(a.home)
    if running and (a.home / "connection.json").is_file():
        conn = connection(a.home)
        print(f"already running under {a.home}: {len(running)} node(s) at {conn.url} "
              "(`facebeam es down` to stop)")
        return 0
    t0 = time.monotonic()
    conn = start_cluster(a.home, nodes=a.nodes, version=a.version, heap=a.heap, port=a.port,
                         security=a.security, settings=dict(a.settings), timeout=a.timeout, fresh=a.fresh)
    print(f"Elasticsearch {a.version}: {a.nodes} node(s) up in {time.monotonic() - t0:.1f} s")
    print(f"  url:        {conn.url}" + (f"  (+{len(conn.hosts) - 1} more)" if len(conn.hosts) > 1 else ""))
    if conn.username:
        print(f"  user:       {conn.username} (password in {a.home / 'connection.json'})")
        print(f"  CA:         {conn.ca_certs}")
    print(f"  connection: export FACEBEAM_ES_CONN={(a.home / 'connection.json').absolute()}")
    return 0


def _cmd_down(a: EsLocalConfig) -> int:
    stopped = stop_cluster(a.home)
    if not stopped:
        print(f"nothing running under {a.home}")
    for p in stopped:
        print(f"stopped {p.name} (pid {p.pid}, port {p.http_port})")
    return 0


def _node_rows(client, running: list) -> list:
    """Joined nodes: name, http address, heap use, master. (Node stats rather than
    `_cat/nodes`, which answered HTTP 500 here right after start-up.)"""
    ports = {p.name: p.http_port for p in running}
    master = client.cluster.state(metric="master_node").get("master_node")
    stats = client.nodes.stats(metric="jvm")["nodes"]
    rows = [{"name": n["name"], "http": f"127.0.0.1:{ports[n['name']]}" if n["name"] in ports else None,
             "heap_percent": n.get("jvm", {}).get("mem", {}).get("heap_used_percent"), "master": node_id == master}
            for node_id, n in stats.items()]
    return sorted(rows, key=lambda r: _node_index(r["name"]))


def _cmd_status(a: EsLocalConfig) -> int:
    running = node_processes(a.home)
    conn_file = a.home / "connection.json"
    if not running or not conn_file.is_file():
        if a.json:
            print(json.dumps({"running": False, "health": None, "count": None}))
        else:
            print(f"no Elasticsearch running under {a.home}")
        return 1
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
            from elasticsearch import NotFoundError

            try:
                count = client.count(index=a.index)["count"]
            except NotFoundError:
                print(f"index or alias {a.index!r} not found", file=sys.stderr)
                return 1
    finally:
        client.close()
    if a.json:
        print(json.dumps({"running": True, "url": conn.url, "health": health["status"], "count": count,
                          "index": a.index, "number_of_nodes": health["number_of_nodes"], "nodes": nodes}))
        return 0
    print(f"cluster {health['cluster_name']} at {conn.url}: {health['status']}, "
          f"{health['number_of_nodes']} node(s), {health['active_shards']} active shard(s)")
    for n in nodes:
        master = "  (master)" if n["master"] else ""
        print(f"  {n['name']:<8} {n['http'] or '-':<16} heap {n['heap_percent']}%{master}")
    if a.index:
        print(f"index {a.index}: {count} doc(s)")
    return 0


def run(config: EsLocalConfig, pipeline=None) -> dict:
    transport_log = logging.getLogger("elastic_transport")
    if transport_log.level == logging.NOTSET:
        transport_log.setLevel(logging.WARNING)  # one INFO line per request is noise on a CLI
    return {"code": {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}[config.action](config)}


def main(argv=None) -> int:
    from facebeam.pipelines import jobs

    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["code"])


if __name__ == "__main__":
    from facebeam.pipelines import jobs

    jobs.entry(main)
