"""Beam job-server jars for the Flink and Spark runners, staged through Maven.

Beam's Python FlinkRunner / SparkRunner start a Java "job server" with
`java <jvm flags> -jar <job-server jar> ...`. Beam would download that jar itself
over plain HTTP; here it is staged with Maven (`mvn dependency:copy`) into Beam's
jar cache, `~/.apache_beam/cache/jars/`, and handed to Beam as
`--flink_job_server_jar` / `--spark_job_server_jar`.

Two ways to get one, tried in this order:

1. The published shaded jar, `org.apache.beam:beam-runners-<runner>-job-server:<v>`
   with `<v>` the Python SDK's own version (2.77.0).
2. An assembled one: the runner artifact (`org.apache.beam:beam-runners-flink-1.19`,
   `beam-runners-spark-3`) with all its runtime dependencies copied by Maven into
   `<cache>/<name>-lib/`, plus a small launcher jar whose manifest names the
   job-server main class and lists those jars on its `Class-Path`. `java -jar
   launcher.jar` then runs exactly as the shaded jar would. The Maven registry this
   project can reach does not serve the `*-job-server` artifacts at all, and serves
   Beam's Java runner artifacts only for some versions; 2.62.0 is the newest at which
   the whole dependency tree of both runners resolves (`ASSEMBLED_BEAM_VERSION`).
   The Python SDK (2.77.0) talks to it over Beam's portability API.

`FACEBEAM_JOB_SERVER_VERSION` pins one Beam Java version for both ways;
`FACEBEAM_JAR_CACHE` moves the cache. Every Maven call has a timeout, and a jar that
cannot be had raises `RunnerSetupError` naming the coordinates and the cache path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

BEAM_GROUP = "org.apache.beam"
#: Newest Beam Java version whose Flink-1.19 and Spark-3 runner dependency trees
#: resolve completely from the reachable Maven registry.
ASSEMBLED_BEAM_VERSION = "2.62.0"
#: Flink minor of the job server (the only one with runner artifacts on the registry
#: at a resolvable Beam version) and the patch release used for both the job
#: server's Flink client and the standalone cluster (PyPI `apache-flink`).
FLINK_MINOR = "1.19"
FLINK_VERSION = "1.19.3"
#: Spark bundled into the assembled Spark job server (and so the `pyspark` version
#: of the standalone cluster). Spark >= 3.3 is needed for Java 17; Beam 2.70+ builds
#: its Spark 3 runner against 3.5.
SPARK_VERSION = "3.5.9"
SCALA_BINARY = "2.12"

STAGE_TIMEOUT_S = float(os.environ.get("FACEBEAM_MVN_TIMEOUT", "900"))

_FLINK_PINNED = (
    "flink-annotations", "flink-clients", "flink-connector-datagen", "flink-core",
    "flink-file-sink-common", "flink-hadoop-fs", "flink-java", "flink-metrics-core",
    "flink-optimizer", "flink-queryable-state-client-java", "flink-rpc-akka-loader",
    "flink-rpc-core", "flink-runtime", "flink-streaming-java",
)


class RunnerSetupError(RuntimeError):
    """A runner cannot be set up: missing jar, wrong Java, cluster not running, ..."""


@dataclasses.dataclass(frozen=True)
class JobServerSpec:
    runner: str  # "flink" or "spark"
    artifact: str  # published shaded job-server artifact id
    version: str  # version of the published jar to try first
    runner_artifact: str  # runner artifact the assembled job server is built from
    assembled_version: str
    main_class: str
    extra_deps: tuple = ()  # (group, artifact, version) added next to the runner
    pins: tuple = ()  # (group, artifact, version) in <dependencyManagement>

    @property
    def coordinates(self) -> str:
        return f"{BEAM_GROUP}:{self.artifact}:{self.version}"

    @property
    def assembled_coordinates(self) -> str:
        return f"{BEAM_GROUP}:{self.runner_artifact}:{self.assembled_version}"

    def published_path(self, cache: Path) -> Path:
        return cache / f"{self.artifact}-{self.version}.jar"

    def assembled_path(self, cache: Path) -> Path:
        return cache / f"{self.artifact}-{self.assembled_version}-assembled.jar"

    def assembled_lib(self, cache: Path) -> Path:
        return cache / f"{self.artifact}-{self.assembled_version}-assembled-lib"


def beam_version() -> str:
    import apache_beam

    return apache_beam.__version__


def cache_dir() -> Path:
    env = os.environ.get("FACEBEAM_JAR_CACHE")
    return Path(env) if env else Path.home() / ".apache_beam" / "cache" / "jars"


def flink_spec(flink_minor: str = FLINK_MINOR, version: str | None = None) -> JobServerSpec:
    pinned = os.environ.get("FACEBEAM_JOB_SERVER_VERSION")
    version = version or pinned
    pins = ()
    if flink_minor == FLINK_MINOR:
        pins = tuple(("org.apache.flink", a, FLINK_VERSION) for a in _FLINK_PINNED)
    return JobServerSpec(
        runner="flink",
        artifact=f"beam-runners-flink-{flink_minor}-job-server",
        version=version or beam_version(),
        runner_artifact=f"beam-runners-flink-{flink_minor}",
        assembled_version=version or ASSEMBLED_BEAM_VERSION,
        main_class="org.apache.beam.runners.flink.FlinkJobServerDriver",
        extra_deps=(("org.slf4j", "slf4j-simple", "1.7.36"),),
        pins=pins + (("org.slf4j", "slf4j-api", "1.7.36"),),
    )


def spark_spec(version: str | None = None) -> JobServerSpec:
    pinned = os.environ.get("FACEBEAM_JOB_SERVER_VERSION")
    version = version or pinned
    spark = [("org.apache.spark", f"{a}_{SCALA_BINARY}", SPARK_VERSION) for a in ("spark-core", "spark-streaming")]
    return JobServerSpec(
        runner="spark",
        artifact="beam-runners-spark-3-job-server",
        version=version or beam_version(),
        runner_artifact="beam-runners-spark-3",
        assembled_version=version or ASSEMBLED_BEAM_VERSION,
        main_class="org.apache.beam.runners.spark.SparkJobServerDriver",
        # Spark is a `provided` dependency of the runner: the job server brings it.
        extra_deps=tuple(spark),
        # Spark 3.5 logs through slf4j 2 + log4j2; Beam's own jars ask for slf4j 1.7.
        pins=(("org.slf4j", "slf4j-api", "2.0.7"),),
    )


def spec_for(runner: str, flink_minor: str | None = None) -> JobServerSpec:
    if runner == "flink":
        return flink_spec(flink_minor or FLINK_MINOR)
    if runner == "spark":
        return spark_spec()
    raise ValueError(f"no job server for runner {runner!r}")


def cached_job_server_jar(spec: JobServerSpec, cache: Path | None = None) -> Path | None:
    cache = cache or cache_dir()
    published = spec.published_path(cache)
    if published.is_file() and published.stat().st_size > 0:
        return published
    assembled = spec.assembled_path(cache)
    if assembled.is_file() and spec.assembled_lib(cache).is_dir():
        return assembled
    return None


def job_server_jar(spec: JobServerSpec, cache: Path | None = None, timeout: float | None = None) -> Path:
    """Path of a runnable job-server jar for `spec`, staging it through Maven if needed."""
    cache = cache or cache_dir()
    found = cached_job_server_jar(spec, cache)
    if found:
        return found
    timeout = STAGE_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    cache.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache / f".{spec.artifact}.lock", deadline, f"{spec.coordinates} into {cache}"):
        found = cached_job_server_jar(spec, cache)  # staged meanwhile by another process
        if found:
            return found
        mvn = shutil.which("mvn")
        if not mvn:
            raise RunnerSetupError(
                f"Maven (mvn) is not on PATH, so the job-server jar {spec.coordinates} cannot be staged "
                f"into {cache}. Install it (apt-get install maven) or pass --{spec.runner}_job_server_jar=PATH."
            )
        log.info("staging %s into %s", spec.coordinates, cache)
        errors = []
        ok, out = _mvn(
            [mvn, "-B", "-q", "dependency:copy", f"-Dartifact={spec.coordinates}", f"-DoutputDirectory={cache}"],
            cwd=cache, deadline=deadline,
        )
        if ok and spec.published_path(cache).is_file():
            return spec.published_path(cache)
        errors.append(f"{spec.coordinates}: {_mvn_reason(out)}")
        log.info("%s not available (%s); assembling the job server from %s", spec.coordinates,
                 _mvn_reason(out), spec.assembled_coordinates)
        try:
            return _assemble(spec, cache, mvn, deadline)
        except RunnerSetupError as e:
            errors.append(str(e))
        raise RunnerSetupError(
            f"Cannot stage the Beam {spec.runner} job-server jar into {cache}.\n"
            f"  tried {spec.coordinates} (published shaded jar) and\n"
            f"  {spec.assembled_coordinates} + its runtime dependencies (assembled job server):\n    "
            + "\n    ".join(errors)
            + f"\nCheck that Maven Central is reachable and the version exists, or pass "
            f"--{spec.runner}_job_server_jar=PATH to a job-server jar."
        )


def _assemble(spec: JobServerSpec, cache: Path, mvn: str, deadline: float) -> Path:
    work = Path(tempfile.mkdtemp(prefix=f".stage-{spec.artifact}-", dir=cache))
    try:
        deps = [(BEAM_GROUP, spec.runner_artifact, spec.assembled_version), *spec.extra_deps]
        dep_xml = "".join(
            f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
            for g, a, v in deps
        )
        pin_xml = "".join(
            f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
            for g, a, v in spec.pins
        )
        (work / "pom.xml").write_text(
            '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
            f"<groupId>facebeam.staging</groupId><artifactId>{spec.artifact}</artifactId>"
            f"<version>{spec.assembled_version}</version>"
            f"<dependencyManagement><dependencies>{pin_xml}</dependencies></dependencyManagement>"
            f"<dependencies>{dep_xml}</dependencies></project>\n"
        )
        lib_tmp = work / "lib"
        ok, out = _mvn(
            [mvn, "-B", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={lib_tmp}"],
            cwd=work, deadline=deadline,
        )
        jars = sorted(p.name for p in lib_tmp.glob("*.jar")) if lib_tmp.is_dir() else []
        if not ok or not jars:
            raise RunnerSetupError(f"{spec.assembled_coordinates}: {_mvn_reason(out)}")
        lib = spec.assembled_lib(cache)
        if lib.exists():
            shutil.rmtree(lib)
        os.replace(lib_tmp, lib)
        launcher_tmp = work / "launcher.jar"
        write_launcher_jar(launcher_tmp, spec.main_class, [f"{lib.name}/{n}" for n in jars])
        os.replace(launcher_tmp, spec.assembled_path(cache))
        log.info("assembled %s (%d jars in %s)", spec.assembled_path(cache), len(jars), lib)
        return spec.assembled_path(cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_launcher_jar(path: Path, main_class: str, class_path: list[str]) -> None:
    """A jar holding only a manifest: Main-Class plus Class-Path (relative to the jar)."""

    def line(text: str) -> bytes:  # manifest lines are at most 72 bytes, continued with a space
        raw, out = text.encode(), []
        out.append(raw[:72])
        raw = raw[72:]
        while raw:
            out.append(b" " + raw[:71])
            raw = raw[71:]
        return b"\r\n".join(out) + b"\r\n"

    manifest = (
        line("Manifest-Version: 1.0")
        + line("Created-By: facebeam")
        + line(f"Main-Class: {main_class}")
        + line("Class-Path: " + " ".join(class_path))
        + b"\r\n"
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", manifest)


def jar_class_path(jar: Path) -> list[Path]:
    """The jar itself plus what its manifest Class-Path names (for an assembled launcher)."""
    jar = Path(jar)
    out = [jar]
    with zipfile.ZipFile(jar) as z:
        try:
            text = z.read("META-INF/MANIFEST.MF").decode()
        except KeyError:
            return out
    text = text.replace("\r\n ", "").replace("\n ", "")
    for ln in text.splitlines():
        if ln.startswith("Class-Path:"):
            out += [jar.parent / p for p in ln.split(":", 1)[1].split()]
    return out


def bundled_spark_version(jar: Path) -> str:
    """Spark version inside a Spark job-server jar: its `spark-version-info.properties`."""
    for candidate in jar_class_path(jar):
        if not candidate.is_file():
            continue
        with zipfile.ZipFile(candidate) as z:
            try:
                props = z.read("spark-version-info.properties").decode()
            except KeyError:
                continue
        m = re.search(r"^version=(\S+)", props, re.M)
        if m:
            return m.group(1)
    raise RunnerSetupError(f"no spark-version-info.properties in {jar} or its Class-Path")


def _mvn(cmd: list[str], cwd: Path, deadline: float) -> tuple[bool, str]:
    left = deadline - time.monotonic()
    if left <= 0:
        return False, "timed out before Maven could run"
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"Maven timed out after {left:.0f} s: {' '.join(cmd)}"
    return proc.returncode == 0, out


def _mvn_reason(out: str) -> str:
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


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float, what: str):
    with open(path, "w") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RunnerSetupError(
                        f"timed out waiting for another process staging {what} (lock {path})"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------
# Java and local-process helpers shared by runners.py, flink_local.py and spark_local.py
# --------------------------------------------------------------------------------------

MIN_JAVA = 17
_JAVA_CACHE: dict = {}


def facebeam_dir() -> Path:
    """The project's git-ignored state folder, `.facebeam/` at the repository root."""
    env = os.environ.get("FACEBEAM_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[1]
    if (root / "setup.py").is_file():
        return root / ".facebeam"
    return Path.cwd() / ".facebeam"


def java_executable(launcher: str | None = None) -> str:
    """The `java` to use: an explicit launcher, else $JAVA_HOME/bin/java, else `java` on PATH."""
    if launcher and launcher != "java":
        return launcher
    home = os.environ.get("JAVA_HOME")
    if home and os.path.isfile(os.path.join(home, "bin", "java")):
        return os.path.join(home, "bin", "java")
    found = shutil.which("java")
    if not found:
        raise RunnerSetupError(
            f"No `java` found (JAVA_HOME={home!r}, PATH has none). Java {MIN_JAVA}+ is needed: "
            "apt-get install openjdk-17-jre-headless, or set JAVA_HOME."
        )
    return found


def check_java(java: str | None = None, purpose: str = "the Beam job server", timeout: float = 20) -> int:
    """Major version of `java`; RunnerSetupError unless it is MIN_JAVA or newer."""
    java = java or java_executable()
    try:
        key = (java, os.stat(java).st_mtime) if os.path.exists(java) else (java, None)
    except OSError:
        key = (java, None)
    if key in _JAVA_CACHE:
        return _JAVA_CACHE[key]
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RunnerSetupError(f"Java launcher {java!r} does not exist; Java {MIN_JAVA}+ is needed for {purpose}.") from None
    except subprocess.TimeoutExpired:
        raise RunnerSetupError(f"`{java} -version` did not answer within {timeout:.0f} s.") from None
    text = (proc.stderr or "") + (proc.stdout or "")
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if proc.returncode != 0 or not m:
        raise RunnerSetupError(f"`{java} -version` failed (exit {proc.returncode}): {text.strip()[:300]}")
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392" -> 8
        major = int(m.group(2))
    if major < MIN_JAVA:
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise RunnerSetupError(
            f"Java {MIN_JAVA} or newer is needed for {purpose}, but {java} is Java {major} ({first}). "
            f"Point JAVA_HOME/PATH at a Java {MIN_JAVA}+ (e.g. /usr/lib/jvm/java-17-openjdk-amd64) "
            "or pass --job_server_java_launcher=/path/to/java."
        )
    _JAVA_CACHE[key] = major
    return major


def java_home_of(java: str) -> str:
    """JAVA_HOME for a java executable (for Flink/Spark scripts)."""
    return str(Path(os.path.realpath(java)).parents[1])


def http_json(url: str, timeout: float = 5.0):
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (localhost)
        return json.loads(resp.read().decode())


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pip_install_target(packages: list[str], target: Path, timeout: float = 900, no_deps: bool = True) -> Path:
    """`pip install --target` into a folder outside the project environment, once."""
    import sys

    marker = target / ".installed"
    if marker.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _file_lock(target.parent / f".{target.name}.lock", deadline, f"{' '.join(packages)} into {target}"):
        if marker.is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
               "--target", str(tmp), *(["--no-deps"] if no_deps else []), *packages]
        log.info("installing %s into %s (outside the project environment)", " ".join(packages), target)
        ok, out = _mvn(cmd, cwd=target.parent, deadline=deadline)  # same timeout/kill handling
        if not ok:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RunnerSetupError(f"`pip install --target {target} {' '.join(packages)}` failed:\n{out[-2000:]}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        marker.write_text(" ".join(packages) + "\n")
    return target


def pid_alive(pid: int, must_contain: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.split(")")[-1].split()[0] == "Z":
        return False
    return must_contain is None or must_contain in cmdline


def stop_pids(pids: list[int], must_contain: str | None, timeout: float = 30) -> list[int]:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the pids that were signalled."""
    live = [p for p in pids if pid_alive(p, must_contain)]
    for p in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in live):
        time.sleep(0.25)
    for p in live:
        if pid_alive(p):
            log.warning("pid %d ignored SIGTERM for %.0f s; killing", p, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    return live


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
