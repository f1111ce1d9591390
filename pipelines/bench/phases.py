"""Where a job's fixed cost goes on a local cluster, read from the logs `facebeam flink|spark up` keeps.

`facebeam bench runners` times each job from the launcher; this splits the part of a cluster job
that does not grow with the photos, between the launcher's start `t0` and the job's end `t1`:

- job submission: `t0` until the engine has the job (Flink: the job's start-time in the JobManager's
  REST API; Spark: the job server's "Running job" line): pipeline construction and input listing in
  the launcher, artifact staging, the job server's translation and its submission to the engine;
- stage set-up: until the worker pool is first asked for a harness (Flink deploys and opens the
  tasks; Spark gets its executor, plans the first stage and launches its tasks);
- harness start: until the harnesses of that first request are up ("Logging handler created.",
  the harness's first line once connected to the runner);
- model load: until each of those harnesses has logged `faces.MODEL_READY` (its ModelHandler's
  load_model returned; a spare harness that preloaded the models returns at once);
- job end: from the engine's end of the job (Flink: its end-time in the REST API; Spark: the job
  server's "Job ... finished." line) until the launcher has the result (`t1`);
- scheduling (Spark only): per task set, "Adding task set" to its first "Starting task", summed.
  Flink logs nothing comparable at INFO (None).

The logs have no job id in the pool's lines, so only one job may run on the cluster meanwhile
(the bench runs one at a time). Spark's log stamps whole seconds, in local time.
"""
from __future__ import annotations

import datetime
import re
from pathlib import Path

from facebeam.pipelines.local import flink, job_server, toolkit, workers
from facebeam.transforms import faces

_SPARK_LINE = re.compile(r"^(\d\d/\d\d/\d\d \d\d:\d\d:\d\d) ")
_POOL_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
PHASES = ("job submission", "stage set-up", "harness start", "model load", "job end", "scheduling")


def _local(stamp: str, fmt: str) -> float:
    return datetime.datetime.strptime(stamp, fmt).timestamp()


def spark_job_server_lines() -> list:
    """[(unix time, line)] of the Spark job server's log (Spark's own lines carry the wall clock;
    the Flink job server's slf4j lines carry only milliseconds since its logger started)."""
    path = workers.state_dir("spark") / "log" / "job-server.log"
    if not job_server.info("spark") or not path.is_file():
        return []
    return [(_local(m.group(1), "%y/%m/%d %H:%M:%S"), line)
            for line in Path(path).read_text(errors="replace").splitlines() if (m := _SPARK_LINE.match(line))]


def flink_job_times(t0: float, t1: float) -> tuple:
    """(start, end) of the job that the local Flink JobManager received between `t0` and `t1` (REST);
    None for what it does not say."""
    try:
        jobs = toolkit.http_json(f"{flink.rest_url()}/jobs/overview", timeout=5).get("jobs", [])
    except (OSError, ValueError):
        return None, None
    ran = sorted((j["start-time"] / 1000, j.get("end-time", -1) / 1000) for j in jobs
                 if t0 <= j.get("start-time", 0) / 1000 <= t1)
    if not ran:
        return None, None
    start, end = ran[0]
    return start, end if end > 0 else None


def pool_lines(kind: str) -> list:
    """[(unix time, line)] of the worker pool's log (its harnesses write there too)."""
    path = workers.state_dir(kind) / "log" / "worker-pool.log"
    if not path.is_file():
        return []
    return [(_local(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), line)
            for line in Path(path).read_text(errors="replace").splitlines() if (m := _POOL_LINE.match(line))]


def _first(lines, needle: str, after: float):
    return next((t for t, line in lines if t >= after and needle in line), None)


def job_phases(kind: str, t0: float, t1: float, harnesses: int) -> dict:
    """{phase: seconds or None} of the job that ran on `kind`'s local cluster from `t0` to `t1`
    with `harnesses` harness processes (PHASES; None where a log line was not found)."""
    server = [(t, x) for t, x in spark_job_server_lines() if t0 - 1 <= t <= t1 + 1] if kind == "spark" else []
    pool = [(t, x) for t, x in pool_lines(kind) if t0 <= t <= t1 + 1]
    if kind == "flink":
        accepted, ended = flink_job_times(t0, t1)
    else:
        accepted = _first(server, "SparkPipelineRunner: Running job", t0 - 1)
        ended = next((t for t, x in reversed(server) if "SparkPipelineRunner: Job" in x and "finished" in x), None)
    requested = _first(pool, "Starting worker with command", t0)
    ready = sorted(t for t, x in pool if "Logging handler created." in x and requested and t >= requested)
    up = ready[min(harnesses, len(ready)) - 1] if ready else None
    loaded = sorted(t for t, x in pool if faces.MODEL_READY in x and up and t >= requested)
    models = loaded[min(harnesses, len(loaded)) - 1] if loaded else None
    out = dict.fromkeys(PHASES)
    marks = [t0, accepted, requested, up, models]
    for name, a, b in zip(PHASES, marks, marks[1:]):
        out[name] = round(max(0.0, b - a), 1) if a is not None and b is not None else None
    out["job end"] = round(max(0.0, t1 - ended), 1) if ended is not None else None
    if kind == "spark":
        out["scheduling"] = spark_scheduling(server)
    return out


def spark_scheduling(lines) -> float | None:
    """Seconds from each "Adding task set X" to the first "Starting task ... in stage X", summed."""
    total, found, waiting = 0.0, False, {}
    for t, line in lines:
        if m := re.search(r"Adding task set (\d+\.\d+)", line):
            waiting[m.group(1)] = t
        elif (m := re.search(r"Starting task \S+ in stage (\d+\.\d+)", line)) and m.group(1) in waiting:
            total += t - waiting.pop(m.group(1))
            found = True
    return round(total, 1) if found else None


def describe(phases: dict) -> str:
    """'job submission 9.8 s, stage set-up 13.0 s, ...' (n/a where not measured)."""
    return ", ".join(f"{k} {'n/a' if v is None else f'{v:.1f} s'}" for k, v in phases.items())
