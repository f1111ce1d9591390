"""A long-lived Beam job server beside the local Flink / Spark cluster, and Beam in the cluster's lib.

Left to itself, Beam's Python runner starts a job-server JVM for every job (about 5 s), and
that job server ships every jar on its own classpath with the job (151 MB for Flink, 260 MB
for Spark; about 14 s of upload to Flink here). The Flink TaskManager then loads Beam from
the job's own classloader, and Beam's FlinkExecutableStageContextFactory releases the SDK
harnesses after every stage when it does, so each stage region starts its harnesses anew
(`--environment_cache_millis` is ignored). Production clusters keep a job server up and
Beam's runner jars in the cluster's classpath; `facebeam flink|spark up` does the same here:

- `cluster_lib(kind, engine_jars)`: `<cluster state>/beam-lib/`, links to the job server's
  runtime jars that the engine does not bring itself (not its own artifacts, not a second
  logging binding), plus `facebeam-cluster-lib.jar`. Flink starts with its lib/ and these
  (FLINK_LIB_DIR); Spark executors get them as `spark.executor.extraClassPath`.
- `facebeam-cluster-lib.jar` holds one class compiled here with the JDK's javac,
  `runner/ClusterLibResources.java`: a Beam resources detector that stages nothing, named
  per job by `--pipeline_resources_detector_factory_class` (runner/job_options.py). No Beam
  artifact offers "the cluster has the jars already". Without a javac, jobs still run
  through the long-lived job server but ship the jars as before (`stages_jars` in the state).
- `loopback_agent(spec)`: `runner/LoopbackServers.java`, compiled the same way into a -javaagent
  jar, with which the job server, the Flink TaskManager and the Spark executors run: Beam's gRPC
  servers in them (job, artifacts, fn-API) bind loopback, not every interface (`listening.py`).
- `result_agent(spec)`: `runner/PromptJobResults.java`, a second -javaagent for the Flink job server
  only: Flink's client polls a job's result at most every 250 ms, not every 2 s, so a job's launcher
  learns of its end at once (it waited 1.1 s, measured).
- `start(kind, master)`: the job server's main class on the job server's own classpath plus
  that jar, serving localhost:8099 (Flink) / 8097 (Spark), artifacts on the next port down;
  state in `<cluster state>/job-server.json`, log in `<cluster state>/log/job-server.log`.
  `runner/job_options.py` routes jobs for the local cluster to it (`--job_endpoint`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from pathlib import Path

from facebeam.pipelines.local import jars, toolkit
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.local.workers import free_port, state_dir

log = logging.getLogger(__name__)

JAVA_SOURCE = Path(__file__).resolve().parents[1] / "runner" / "ClusterLibResources.java"
DETECTOR_CLASS = "dev.facebeam.beam.ClusterLibResources"
AGENT_SOURCE = JAVA_SOURCE.with_name("LoopbackServers.java")
AGENT_CLASS = "dev.facebeam.beam.LoopbackServers"
RESULT_AGENT_SOURCE = JAVA_SOURCE.with_name("PromptJobResults.java")
RESULT_AGENT_CLASS = "dev.facebeam.beam.PromptJobResults"
#: (job port, artifact port) per cluster: both clusters may be up at once.
PORTS = {"flink": (8099, 8098), "spark": (8097, 8096)}
STATE_FILE = "job-server.json"
#: Jars of the job server's tree that the engine's own classpath already has in some form.
_ENGINE_OWN = {"flink": ("flink-", "slf4j-", "log4j-", "logback-"), "spark": ("spark-", "slf4j-", "log4j-", "logback-")}


def _spec(kind: str) -> jars.JobServerSpec:
    return jars.flink_spec() if kind == "flink" else jars.spark_spec()


def state_file(kind: str) -> Path:
    return state_dir(kind) / STATE_FILE


def lib_dir(kind: str) -> Path:
    return state_dir(kind) / "beam-lib"


def _artifact(name: str) -> str:
    """'beam-sdks-java-core-2.62.0.jar' -> 'beam-sdks-java-core'."""
    return re.sub(r"-\d[^-]*(-[A-Za-z][\w.]*)?\.jar$", "", name)


def detector_jar(spec: jars.JobServerSpec) -> Path | None:
    """`facebeam-cluster-lib-<hash>.jar` in the jar cache, compiled on first use; None without a javac."""
    classpath = jars.jar_class_path(jars.job_server_jar(spec))
    return _compiled_jar(JAVA_SOURCE, "facebeam-cluster-lib", classpath, spec, {},
                         "jobs on the local cluster ship Beam's jars with every job")


def loopback_agent(spec: jars.JobServerSpec) -> Path | None:
    """`facebeam-loopback-agent-<hash>.jar`: the -javaagent that binds Beam's servers to loopback
    (`runner/LoopbackServers.java`), compiled on first use against Byte Buddy from the job
    server's classpath; None without a javac (then `up` finds Beam's ports on every interface)."""
    return _agent_jar(AGENT_SOURCE, AGENT_CLASS, "facebeam-loopback-agent", spec,
                      "Beam's servers on the local cluster listen on every interface")


def result_agent(spec: jars.JobServerSpec) -> Path | None:
    """`facebeam-result-agent-<hash>.jar`: the Flink job server's -javaagent that polls job results
    promptly (`runner/PromptJobResults.java`); None without a javac."""
    return _agent_jar(RESULT_AGENT_SOURCE, RESULT_AGENT_CLASS, "facebeam-result-agent", spec,
                      "a job's launcher learns of its end up to 2 s after Flink")


def _agent_jar(source: Path, premain_class: str, name: str, spec: jars.JobServerSpec, without: str) -> Path | None:
    """A -javaagent jar of `source`, compiled against Byte Buddy from the job server's classpath."""
    buddy = [p for p in jars.jar_class_path(jars.job_server_jar(spec)) if p.name.startswith("byte-buddy-")]
    if not buddy:
        raise RunnerSetupError(f"{spec.assembled_coordinates}'s classpath has no byte-buddy jar, which "
                               f"{source.name} needs")
    manifest = {"Premain-Class": premain_class, "Class-Path": buddy[0].resolve().as_uri()}
    return _compiled_jar(source, name, buddy[:1], spec, manifest, without)


def _compiled_jar(source_file: Path, name: str, classpath: list, spec: jars.JobServerSpec, manifest: dict,
                  without: str) -> Path | None:
    """`<name>-<hash>.jar` in the jar cache: `source_file` compiled with the JDK's javac against
    `classpath`, with `manifest` entries; None without a javac (`without`: what that costs)."""
    source = source_file.read_bytes()
    key = hashlib.sha256(source + repr(sorted(manifest.items())).encode()).hexdigest()[:12]
    out = jars.jar_cache_dir() / f"{name}-{key}.jar"
    if out.is_file():
        return out
    java = toolkit.find_java(purpose=f"compiling facebeam's {source_file.stem}")
    javac = Path(java.path).with_name("javac")
    if not os.access(javac, os.X_OK):
        log.warning("no javac next to %s (a JRE?): %s", java.path, without)
        return None
    work = out.parent / f".build-{name}-{os.getpid()}"
    (work / "classes").mkdir(parents=True, exist_ok=True)
    (work / "MANIFEST.MF").write_text("".join(f"{k}: {v}\n" for k, v in manifest.items()))
    deadline = time.monotonic() + 120
    ok, text = toolkit.run_until([str(javac), "--release", "11", "-nowarn", "-cp",
                                  os.pathsep.join(str(p) for p in classpath), "-d", str(work / "classes"),
                                  str(source_file)], cwd=out.parent, deadline=deadline, what="javac")
    if ok:
        ok, more = toolkit.run_until([str(javac.with_name("jar")), "cfm", str(work / "lib.jar"),
                                      str(work / "MANIFEST.MF"), "-C", str(work / "classes"), "."],
                                     cwd=out.parent, deadline=deadline, what="jar")
        text += more
    if not ok:
        shutil.rmtree(work, ignore_errors=True)
        raise RunnerSetupError(f"compiling {source_file.name} against {spec.assembled_coordinates} failed:\n"
                               f"{text[-2000:]}")
    os.replace(work / "lib.jar", out)
    shutil.rmtree(work, ignore_errors=True)
    return out


def cluster_lib(kind: str, engine_jars: Path) -> tuple:
    """(`beam-lib` folder, detector jar or None): what the cluster's JVMs need on their classpath
    so that jobs need not ship Beam. `engine_jars`: the engine's own jar folder (Flink lib/,
    Spark jars/), whose artifacts are not linked twice (Flink's are linked, as its whole lib)."""
    spec = _spec(kind)
    own = {_artifact(p.name) for p in engine_jars.glob("*.jar")}
    target = lib_dir(kind)
    fresh = target.with_name(target.name + ".tmp")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    if kind == "flink":  # FLINK_LIB_DIR replaces Flink's lib/: its own jars go in too
        for jar in engine_jars.glob("*.jar"):
            (fresh / jar.name).symlink_to(jar.resolve())
    server_jar = jars.job_server_jar(spec)
    for jar in jars.jar_class_path(server_jar)[1:] or [server_jar]:
        if jar.name.startswith(_ENGINE_OWN[kind]) or _artifact(jar.name) in own:
            continue
        (fresh / jar.name).symlink_to(jar.resolve())
    detector = detector_jar(spec)
    if detector:
        (fresh / "facebeam-cluster-lib.jar").symlink_to(detector)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(fresh, target)
    return target, detector


# --- the job server process -------------------------------------------------------------------
def read_state(kind: str) -> dict | None:
    return toolkit.read_json(state_file(kind))


def info(kind: str) -> dict | None:
    """The running job server of `kind`'s cluster (its state), or None."""
    st = read_state(kind)
    if st and toolkit.alive(int(st.get("pid", 0)), st.get("main_class")):
        return st
    return None


def start_timeout_s() -> float:
    """Seconds a job server gets to open its port ($FACEBEAM_JOB_SERVER_TIMEOUT, default 120)."""
    return float(os.environ.get("FACEBEAM_JOB_SERVER_TIMEOUT", "120"))


def start(kind: str, master: str, stages_jars: bool, extra_jvm: tuple = (), timeout: float | None = None,
          agent: Path | None = None, results_jar: Path | None = None) -> dict:
    """Start `kind`'s job server for the cluster at `master` (unless one already serves it);
    `agent`: the loopback agent (`loopback_agent`) it runs with; `results_jar`: `result_agent`'s, on Flink."""
    timeout = start_timeout_s() if timeout is None else timeout
    live = info(kind)
    agent = str(agent) if agent else None
    results_jar = str(results_jar) if results_jar else None
    if live and live.get("master") == master and live.get("stages_jars") == stages_jars \
            and live.get("agent") == agent and live.get("result_agent") == results_jar \
            and toolkit.port_open("localhost", int(live["port"])):
        return live
    stop(kind)
    spec = _spec(kind)
    java = toolkit.find_java(purpose=f"the Beam {kind.capitalize()} job server")
    job_port, artifact_port = PORTS[kind]
    if any(toolkit.port_open("localhost", p) for p in (job_port, artifact_port)):
        job_port, artifact_port = free_port(), free_port()  # another home's cluster: jobs read the state file
        log.warning("ports %s are taken; the %s job server uses %d and %d", PORTS[kind], kind, job_port, artifact_port)
    classpath = [str(jars.job_server_jar(spec))]
    if not stages_jars:
        classpath.append(str(lib_dir(kind) / "facebeam-cluster-lib.jar"))
    flags = jars.java17_flags(kind)
    master_flag = "--flink-master" if kind == "flink" else "--spark-master-url"
    artifacts = state_dir(kind) / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    cmd = [java.path, *flags, *(f"-javaagent:{a}" for a in (agent, results_jar) if a),
           "-Dorg.slf4j.simpleLogger.showDateTime=true", *toolkit.cluster_jvm_flags(), *extra_jvm,
           "-cp", os.pathsep.join(classpath), spec.main_class, f"{master_flag}={master}",
           "--job-host=127.0.0.1", f"--job-port={job_port}", f"--artifact-port={artifact_port}", "--expansion-port=0",
           f"--artifacts-dir={artifacts}"]
    (state_dir(kind) / "log").mkdir(parents=True, exist_ok=True)
    console = state_dir(kind) / "log" / "job-server.log"
    proc = toolkit.spawn_detached(cmd, console, cwd=str(state_dir(kind)))
    ready, _ = toolkit.wait_ready(lambda: toolkit.port_open("localhost", job_port, timeout=0.5),
                                  lambda: proc.poll() is None, timeout, interval=0.3)
    if ready:
        st = {"kind": kind, "pid": proc.pid, "port": job_port, "artifact_port": artifact_port, "master": master,
              "main_class": spec.main_class, "jar": classpath[0], "stages_jars": stages_jars,
              "agent": agent, "result_agent": results_jar, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        toolkit.write_json(state_file(kind), st)
        log.info("Beam %s job server pid %d on localhost:%d for %s%s", kind, proc.pid, job_port, master,
                 "" if stages_jars else " (Beam from the cluster's classpath: jobs ship no jars)")
        return st
    tail = toolkit.log_tail(console, 30)
    toolkit.stop_processes([proc.pid], group=True, timeout=10)
    raise RunnerSetupError(f"the Beam {kind} job server did not serve localhost:{job_port} within {timeout:.0f} s "
                           f"(exit {proc.poll()}); log {console}:\n{tail}")


def stop(kind: str, timeout: float = 15) -> bool:
    st = read_state(kind)
    stopped = []
    if st and st.get("pid") and toolkit.alive(int(st["pid"]), st.get("main_class")):
        stopped = toolkit.stop_processes([int(st["pid"])], st.get("main_class"), group=True, timeout=timeout)
    state_file(kind).unlink(missing_ok=True)
    return bool(stopped)


def describe(st: dict | None) -> str:
    if not st:
        return "job server not running (jobs start their own)"
    how = "jobs ship Beam's jars" if st.get("stages_jars") else "Beam from the cluster's classpath, jobs ship no jars"
    return f"job server localhost:{st['port']} (pid {st['pid']}, {how})"


def check(kind: str, st: dict, timeout: float) -> None:
    """RunnerSetupError unless the recorded job server answers within `timeout`."""
    if not toolkit.poll(lambda: toolkit.port_open("localhost", int(st["port"]), timeout=0.5), timeout, interval=0.3):
        raise RunnerSetupError(
            f"No Beam job server answers at localhost:{st['port']} (the local {kind} cluster's, "
            f"{state_file(kind)}) after {timeout:.0f} s. Restart it: `facebeam {kind} down && facebeam {kind} up`.")
