"""Shared infrastructure of the local services (Elasticsearch, Flink, Spark, job servers).

One of each: Java lookup (`find_java`), Maven (`maven`), a file lock with a deadline
(`file_lock`, on transforms.locks and filelock), a subprocess with a deadline (`run_until`), `pip install --target`
(`pip_install_target`), process helpers (`spawn_detached`, `alive`, `stop_processes`, on
psutil), an HTTP / port probe (`http_json` on requests, `port_open`), the one wait-until
helper (`poll`, on tenacity, with `Deadline`), the state-file and private-file writers
(`write_json`, `write_private`), `log_tail`, and the state and cache folders
(`facebeam_home`, `cache_dir`, from `facebeam.transforms.home`).

Setup problems raise the caller's error class (`error=`): `RunnerSetupError` (the
default) for the runners, `EsLocalError` for `facebeam es`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests
import tenacity

from facebeam.transforms.errors import UserError
from facebeam.transforms.home import cache_dir, facebeam_home  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

MIN_JAVA = 17
#: JVM flags of the local clusters' own JVMs (JobManager, TaskManager, Spark master, worker and executor,
#: job servers). Their Java work per job is light (the Python harnesses embed), yet on a 2-core machine
#: C2 compilation and G1's threads took 7.6 core-s of a 300-photo Flink job beside the harnesses' 28;
#: C1 only and the serial collector took 3.3 (`facebeam bench runners`, README). A long-lived cluster
#: doing Java-heavy work would drop them ($FACEBEAM_CLUSTER_JVM_OPTS replaces them; empty: none).
LIGHT_JVM_FLAGS = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")


def cluster_jvm_flags() -> tuple:
    """The flags every local cluster JVM gets: LIGHT_JVM_FLAGS, or $FACEBEAM_CLUSTER_JVM_OPTS when set."""
    given = os.environ.get("FACEBEAM_CLUSTER_JVM_OPTS")
    return LIGHT_JVM_FLAGS if given is None else tuple(given.split())


class RunnerSetupError(UserError, RuntimeError):
    """A runner cannot be set up: missing jar, wrong Java, cluster not running, ... (a user can fix it)."""


# --- Java ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Java:
    path: str  # the java executable
    home: str  # its JAVA_HOME
    major: int  # 17, 21, ...


def find_java(need: int = MIN_JAVA, purpose: str = "the Beam job server", launcher: str | None = None,
              home_vars: tuple = ("JAVA_HOME",), error: type = RunnerSetupError, hint: str = "",
              timeout: float = 60) -> Java:
    """The Java to run `purpose` with: `launcher` if given, else `$<home_var>/bin/java` for the
    first of `home_vars` that is set, else `java` on PATH. Raises `error` naming the needed
    version unless it is Java `need` or newer."""
    hint = hint or f"Point JAVA_HOME/PATH at a Java {need}+ (e.g. /usr/lib/jvm/java-17-openjdk-amd64)"
    if launcher and launcher != "java":
        java = launcher
    else:
        var = next((v for v in home_vars if os.environ.get(v)), None)
        if var:
            java = os.path.join(os.environ[var], "bin", "java")
            if not os.access(java, os.X_OK):
                raise error(f"No java executable at {java} (from {var}); Java {need}+ is needed for {purpose}. "
                            f"{hint}.")
        else:
            java = shutil.which("java")
            if not java:
                raise error(f"No `java` found ({' / '.join(home_vars)} unset, PATH has none). Java {need}+ is "
                            f"needed for {purpose}: apt-get install openjdk-17-jre-headless, or set "
                            f"{home_vars[0]}.")
    try:
        mtime = os.stat(java).st_mtime
    except OSError:
        mtime = None
    try:
        major, first = _java_version(java, mtime, timeout)
    except FileNotFoundError:
        raise error(f"Java launcher {java!r} does not exist; Java {need}+ is needed for {purpose}.") from None
    except _JavaVersionError as e:
        raise error(str(e)) from None
    if major < need:
        raise error(f"Java {need} or newer is needed for {purpose}, but {java} is Java {major} ({first}). "
                    f"{hint}.")
    return Java(path=java, home=str(Path(os.path.realpath(java)).parents[1]), major=major)


class _JavaVersionError(Exception):
    """`java -version` did not answer with a version."""


@functools.lru_cache(maxsize=16)
def _java_version(java: str, mtime, timeout: float) -> tuple:
    """(major, first line of `java -version`), asked once per launcher and modification time."""
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except PermissionError as e:
        raise FileNotFoundError(java) from e
    except subprocess.TimeoutExpired:
        raise _JavaVersionError(f"`{java} -version` did not answer within {timeout:.0f} s.") from None
    text = (proc.stderr or "") + (proc.stdout or "")
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if proc.returncode != 0 or not m:
        raise _JavaVersionError(f"`{java} -version` failed (exit {proc.returncode}): {text.strip()[:300]}")
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392" -> 8
        major = int(m.group(2))
    return major, (text.strip().splitlines()[0] if text.strip() else "")


# --- subprocesses with a deadline, Maven, pip ------------------------------------------------
def run_until(cmd: list, cwd, deadline: float, env: dict | None = None, what: str | None = None) -> tuple:
    """Run `cmd` (own process group) until `deadline` (time.monotonic()); (ok, output).
    Past the deadline the whole group is killed and ok is False."""
    left = deadline - time.monotonic()
    what = what or cmd[0]
    if left <= 0:
        return False, f"{what} timed out before it could run"
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"{what} timed out after {left:.0f} s: {' '.join(map(str, cmd))}"
    return proc.returncode == 0, out


def maven(args: list, deadline: float, purpose: str, cwd=None, error: type = RunnerSetupError,
          hint: str = "") -> tuple:
    """`mvn -B -q <args>` until `deadline`; (ok, output). Without a `cwd` it runs in an empty
    folder (outside any Maven project). Raises `error` when Maven is not installed."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise error(f"Maven (mvn) is not on PATH, so {purpose} cannot be fetched. "
                    f"Install it (apt-get install maven){hint}.")
    cmd = [mvn, "-B", "-q", "-Dstyle.color=never", *args]
    if cwd is not None:
        return run_until(cmd, cwd, deadline, what="Maven")
    with tempfile.TemporaryDirectory() as empty:
        return run_until(cmd, empty, deadline, what="Maven")


def maven_reason(out: str) -> str:
    """The line of Maven's output that says why it failed."""
    out = re.sub(r"\x1b\[[0-9;]*m", "", out or "")
    m = re.search(r"(\S+) was not found in (\S+)", out)
    if m:
        return f"Could not find artifact {m.group(1)} in {m.group(2)} (Maven caches the miss for a day; -U retries)"
    for pat in (r"Could not find artifact \S+( in \S+)?", r"Could not resolve dependencies[^\n]*",
                r"Maven timed out[^\n]*"):
        m = re.search(pat, out)
        if m:
            return m.group(0)
    errs = [ln for ln in out.splitlines() if "ERROR" in ln]
    return (errs[0] if errs else out.strip().splitlines()[-1] if out.strip() else "Maven failed")[:400]


def pip_install_target(packages: list, target: Path, timeout: float = 900, no_deps: bool = True,
                       error: type = RunnerSetupError) -> Path:
    """`pip install --target` into a folder outside the project environment, once."""
    marker = target / ".installed"
    if marker.is_file():
        return target
    deadline = time.monotonic() + timeout
    with file_lock(target.parent / f".{target.name}.lock", deadline=deadline,
                   what=f"installing {' '.join(packages)} into {target}", error=error):
        if marker.is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--target", str(tmp), *(["--no-deps"] if no_deps else []), *packages]
        log.info("installing %s into %s (outside the project environment)", " ".join(packages), target)
        ok, out = run_until(cmd, target.parent, deadline, what="pip install")
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)
            raise error(f"`pip install --target {target} {' '.join(packages)}` failed:\n{out[-2000:]}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        marker.write_text(" ".join(packages) + "\n")
    return target


# --- state files ----------------------------------------------------------------------------
def read_json(path: Path) -> dict | None:
    """A state file's contents, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    """Write a state file whole or not at all (readers never see half of it)."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# --- lock -------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path, deadline: float | None = None, timeout: float | None = None, what: str | None = None,
              error: type = RunnerSetupError):
    """An exclusive lock on `path` (made if needed, kept afterwards), waited for until `deadline`
    (time.monotonic()) or for `timeout` seconds; then `error` is raised."""
    from facebeam.transforms import locks

    path = Path(path)
    if deadline is None:
        deadline = time.monotonic() + (900.0 if timeout is None else timeout)
    with locks.held(str(path.parent), path.name, timeout=max(0.0, deadline - time.monotonic()), error=error,
                    busy=f"timed out waiting for another process {what or 'holding it'} (lock {path})",
                    poll_interval=0.5):
        yield


# --- deadlines ------------------------------------------------------------------------------
class Deadline:
    """`timeout` seconds from now, on the monotonic clock."""

    def __init__(self, timeout: float):
        self.at = time.monotonic() + timeout

    def left(self, lo: float = 0.0, hi: float = float("inf")) -> float:
        """Seconds left, kept within [lo, hi] (a probe's own timeout)."""
        return min(hi, max(lo, self.at - time.monotonic()))

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at


def poll(probe, timeout: float, interval: float = 0.5):
    """`probe()` every `interval` seconds until it returns something true (returned) or `timeout`
    seconds have passed (its last, false answer is returned). It runs at least once; an exception
    it raises ends the wait (that is how a probe gives up early, e.g. when its process died)."""
    retrying = tenacity.Retrying(stop=tenacity.stop_after_delay(timeout), wait=tenacity.wait_fixed(interval),
                                 retry=tenacity.retry_if_result(lambda answer: not answer),
                                 retry_error_callback=lambda state: state.outcome.result(), reraise=True)
    return retrying(probe)


class _Gone(Exception):
    """The processes `wait_ready` watches are gone."""


def wait_ready(probe, alive, timeout: float, interval: float = 0.5, ready=bool) -> tuple:
    """Ask `probe()` every `interval` seconds until `ready(answer)`: (True, answer); (False, last
    answer) as soon as `alive()` says the processes that should answer are gone, or after `timeout`."""
    last = [None]

    def check():
        last[0] = probe()
        if ready(last[0]):
            return True
        if not alive():
            raise _Gone
        return False

    try:
        return bool(poll(check, timeout, interval)), last[0]
    except _Gone:
        return False, last[0]


# --- processes ----------------------------------------------------------------------------------
def spawn_detached(cmd: list, console: Path, **popen) -> subprocess.Popen:
    """Start `cmd` in its own session (it outlives us; its pid is its process-group id),
    stdout+stderr into `console`."""
    with open(console, "wb") as out:
        if popen.get("user") is not None:
            os.fchown(out.fileno(), popen["user"], popen.get("group", -1))
            cmd, popen = _drop_by_exec(cmd, popen)
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, **popen)


def _drop_by_exec(cmd: list, popen: dict) -> tuple:
    """Drop to another account with setpriv(1) after exec, not with Popen(user=...): Popen's own
    drop forces fork() instead of vfork(), and a fork while gRPC threads run (Beam in the same
    process) runs gRPC's fork handlers in the child, which can crash it (SIGSEGV) before exec."""
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return cmd, popen
    popen = dict(popen)
    uid, gid, extra = popen.pop("user"), popen.pop("group", None), popen.pop("extra_groups", None)
    gid = pwd.getpwuid(uid).pw_gid if gid is None else gid
    groups = f"--groups={','.join(map(str, extra))}" if extra else "--clear-groups"
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", groups, "--", *cmd], popen


def cmdline(pid) -> str:
    """The command line of `pid` ('' when it is gone)."""
    try:
        return " ".join(psutil.Process(int(pid)).cmdline())
    except (psutil.Error, ValueError):
        return ""


def _reap_if_ours(proc: psutil.Process) -> None:
    """A child of ours that exited stays a zombie until it is waited for: wait for it now."""
    with contextlib.suppress(psutil.Error, ChildProcessError, OSError):
        if proc.ppid() == os.getpid():
            os.waitpid(proc.pid, os.WNOHANG)


def alive(pid: int, must_contain: str | None = None, group: bool = False) -> bool:
    """Is process `pid` (with `group`: any process of group `pid`) running and not a zombie?
    With `must_contain`, one such process's command line must contain it (a guard against
    recycled pids)."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    members = [pid] if not group else [p for p in psutil.pids() if _group_of(p) == pid]
    for member in members:
        try:
            proc = psutil.Process(member)
            if proc.status() == psutil.STATUS_ZOMBIE:
                _reap_if_ours(proc)
                continue
            if must_contain is None or must_contain in " ".join(proc.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def read_pids(pid_files) -> list:
    """The pids written in pid files (one or more per file); unreadable files are skipped."""
    out = []
    for f in pid_files:
        with contextlib.suppress(OSError, ValueError):
            out += [int(x) for x in Path(f).read_text().split()]
    return out


def signal_process(pid: int, sig, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, sig)


def wait_gone(pids: list, timeout: float, group: bool = False, must_contain: str | None = None) -> bool:
    return bool(poll(lambda: not any(alive(p, must_contain, group) for p in pids), timeout, interval=0.2))


def stop_processes(pids: list, must_contain: str | None = None, timeout: float = 30, group: bool = False,
                   kill_wait: float = 10) -> list:
    """SIGTERM each live pid (with `group`: process group), wait up to `timeout`, SIGKILL what
    is left and wait up to `kill_wait` more. Returns the pids that were signalled."""
    live = [p for p in pids if alive(p, must_contain, group)]
    for p in live:
        signal_process(p, signal.SIGTERM, group)
    # Waiting ignores `must_contain`: an exiting process has lost its command line but may
    # still hold its sockets and files.
    if not wait_gone(live, timeout, group):
        for p in live:
            if alive(p, None, group):
                log.warning("pid %d ignored SIGTERM for %.0f s; killing", p, timeout)
                signal_process(p, signal.SIGKILL, group)
        wait_gone(live, kill_wait, group)
    return live


def run_script(script: Path, *args: str, env: dict, timeout: float = 60, error: type = RunnerSetupError) -> None:
    """`bash <script> <args>` (a daemon start/stop script); `error` with its output if it fails."""
    proc = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise error(f"{Path(script).name} {' '.join(args)} failed (exit {proc.returncode}):\n"
                    f"{(proc.stdout + proc.stderr)[-2000:]}")


# --- HTTP and ports ------------------------------------------------------------------------------
def http_json(url: str, timeout: float = 5.0, auth: tuple | None = None, cafile: str | None = None):
    """GET `url` and decode its JSON; `auth` = (user, password) for basic auth, `cafile` to
    verify https. A refusal raises `requests.HTTPError` (its `.response.status_code`); no answer
    raises another `requests.RequestException`; both are OSErrors, a body that is not JSON a ValueError."""
    resp = requests.get(url, timeout=timeout, auth=tuple(auth) if auth and auth[0] else None,
                        verify=cafile if (cafile and url.startswith("https")) else True)
    resp.raise_for_status()
    return resp.json()


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    """Does something accept connections on host:port?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Could a server bind host:port now? Stricter than `port_open`: a port in the ephemeral
    range (the worker pools' 50000-50001 are) may be some client's local end, which no
    connect sees and which still makes the server's bind fail."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's server does
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --- logs ----------------------------------------------------------------------------------------
def log_tail(path: Path, lines: int = 30, java_frames: bool = True, width: int | None = None,
             missing: str = "") -> str:
    """The last `lines` lines of a log; `java_frames=False` drops stack frames and blank
    lines, `width` cuts long lines, `missing` is returned when it cannot be read."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return missing
    if not java_frames:
        text = [ln for ln in text if ln.strip() and not re.match(r"\s+(at |\.\.\. \d+ more)", ln)]
    if width:
        text = [ln[:width] for ln in text]
    return "\n".join(text[-lines:])
