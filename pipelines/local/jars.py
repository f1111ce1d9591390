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

The JVM flags a job server needs on Java 17 live here too (`FLINK_JAVA17_FLAGS`,
`SPARK_JAVA17_FLAGS`): the per-job job servers (`runner/job_options.py`) and the local
clusters' long-lived ones (`local/job_server.py`) both start these jars with them.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from facebeam.pipelines.local.toolkit import RunnerSetupError, file_lock, maven, maven_reason

log = logging.getLogger(__name__)

BEAM_GROUP = "org.apache.beam"
#: Newest Beam Java version whose Flink-1.19 and Spark-3 runner dependency trees
#: resolve completely from the reachable Maven registry. Checked 2026-11-24 for
#: 2.63.0-2.77.0: the registry serves the runner POMs (beam-runners-flink-1.19,
#: beam-runners-spark-3) only at 2.70.0, and their trees do not resolve there
#: (org.apache.beam:beam-runners-java-job-service:2.70.0 is not served);
#: beam-runners-flink-1.18 / -1.20 are served at none of 2.61.0-2.77.0.
ASSEMBLED_BEAM_VERSION = "2.62.0"
#: THE Flink minor: of the job server (the only one with runner artifacts on the
#: registry at a resolvable Beam version), of the local cluster and of deploy/
#: (tests/test_runners.py::test_flink_minor_is_one_constant). FLINK_VERSION is the
#: patch release used for both the job server's Flink client and the standalone
#: cluster (PyPI `apache-flink`).
FLINK_MINOR = "1.19"
FLINK_VERSION = "1.19.3"
#: Spark bundled into the assembled Spark job server (and so the `pyspark` version
#: of the standalone cluster). Spark >= 3.3 is needed for Java 17; Beam 2.70+ builds
#: its Spark 3 runner against 3.5.
SPARK_VERSION = "3.5.9"
SCALA_BINARY = "2.12"

#: What Flink's own config.yaml passes to its JVMs on Java 17 (env.java.opts.all).
FLINK_JAVA17_FLAGS = [
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
]
#: Spark 3.5's JavaModuleOptions (what spark-submit adds on Java 17).
SPARK_JAVA17_FLAGS = [
    "-XX:+IgnoreUnrecognizedVMOptions",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.invoke=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.cs=ALL-UNNAMED",
    "--add-opens=java.base/sun.security.action=ALL-UNNAMED",
    "--add-opens=java.base/sun.util.calendar=ALL-UNNAMED",
    "-Djdk.reflect.useDirectMethodHandle=false",
]
#: Per-job Flink job servers log at WARN (their INFO lines are one per artifact).
FLINK_LOG_FLAGS = ["-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]


def java17_flags(kind: str) -> list:
    """The JVM flags a `kind` ('flink' | 'spark') job server needs on Java 17."""
    return FLINK_JAVA17_FLAGS if kind == "flink" else SPARK_JAVA17_FLAGS



def stage_timeout_s() -> float:
    """Seconds Maven gets to stage a jar (`FACEBEAM_MVN_TIMEOUT`, read when a jar is staged)."""
    return float(os.environ.get("FACEBEAM_MVN_TIMEOUT", "900"))


_FLINK_PINNED = (
    "flink-annotations", "flink-clients", "flink-connector-datagen", "flink-core",
    "flink-file-sink-common", "flink-hadoop-fs", "flink-java", "flink-metrics-core",
    "flink-optimizer", "flink-queryable-state-client-java", "flink-rpc-akka-loader",
    "flink-rpc-core", "flink-runtime", "flink-streaming-java",
)


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


def jar_cache_dir() -> Path:
    """Beam's own jar cache (`~/.apache_beam/cache/jars`), or FACEBEAM_JAR_CACHE."""
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


def cached_job_server_jar(spec: JobServerSpec, cache: Path | None = None) -> Path | None:
    cache = cache or jar_cache_dir()
    published = spec.published_path(cache)
    if published.is_file() and published.stat().st_size > 0:
        return published
    assembled = spec.assembled_path(cache)
    if assembled.is_file() and spec.assembled_lib(cache).is_dir():
        return assembled
    return None


def job_server_jar(spec: JobServerSpec, cache: Path | None = None, timeout: float | None = None) -> Path:
    """Path of a runnable job-server jar for `spec`, staging it through Maven if needed."""
    cache = cache or jar_cache_dir()
    found = cached_job_server_jar(spec, cache)
    if found:
        return found
    timeout = stage_timeout_s() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{spec.artifact}.lock", deadline=deadline,
                   what=f"staging {spec.coordinates} into {cache}", error=RunnerSetupError):
        found = cached_job_server_jar(spec, cache)  # staged meanwhile by another process
        if found:
            return found
        purpose = f"the job-server jar {spec.coordinates} (into {cache})"
        hint = f" or pass --{spec.runner}_job_server_jar=PATH"
        log.info("staging %s into %s", spec.coordinates, cache)
        errors = []
        ok, out = maven(["dependency:copy", f"-Dartifact={spec.coordinates}", f"-DoutputDirectory={cache}"],
                        deadline, purpose, cwd=cache, hint=hint)
        if ok and spec.published_path(cache).is_file():
            return spec.published_path(cache)
        errors.append(f"{spec.coordinates}: {maven_reason(out)}")
        log.info("%s not available (%s); assembling the job server from %s", spec.coordinates,
                 maven_reason(out), spec.assembled_coordinates)
        try:
            return _assemble(spec, cache, deadline, purpose, hint)
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


def _assemble(spec: JobServerSpec, cache: Path, deadline: float, purpose: str, hint: str) -> Path:
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
        ok, out = maven(["-f", str(work / "pom.xml"), "dependency:copy-dependencies", "-DincludeScope=runtime",
                         f"-DoutputDirectory={lib_tmp}"], deadline, purpose, cwd=work, hint=hint)
        jars = sorted(p.name for p in lib_tmp.glob("*.jar")) if lib_tmp.is_dir() else []
        if not ok or not jars:
            raise RunnerSetupError(f"{spec.assembled_coordinates}: {maven_reason(out)}")
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
