"""Which runner a job names, and how to say it in one line.

`runner_kind` sorts Beam's runner names (and facebeam's managed runner classes) into
'direct', 'flink', 'spark' or 'other'; `runner_name` is the line a job summary prints.
Nothing here starts or probes anything: the job's options (`job_options.py`), probes
(`probes.py`) and runners (`launch.py`, `managed.py`) all build on it.
"""
from __future__ import annotations

import os

from apache_beam.options.pipeline_options import (
    DirectOptions,
    FlinkRunnerOptions,
    PipelineOptions,
    PortableOptions,
    SparkRunnerOptions,
    StandardOptions,
)

#: Runner names Beam runs in-process on FnApiRunner (what DirectRunner runs on).
LOCAL_RUNNER_NAMES = (None, "", "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner")
#: `--flink_master` values that mean an embedded Flink mini-cluster, not a cluster address.
FLINK_EMBEDDED_MASTERS = ("[local]", "[auto]", "[collection]")
#: The port a cluster address without one means (Flink REST, Spark master).
CLUSTER_PORTS = {"flink": 8081, "spark": 7077}


def runner_kind(opts_or_name) -> str:
    """'direct', 'flink', 'spark' or 'other'."""
    runner = opts_or_name
    if isinstance(opts_or_name, PipelineOptions):
        runner = opts_or_name.view_as(StandardOptions).runner
    if runner in LOCAL_RUNNER_NAMES:
        return "direct"
    if not isinstance(runner, str):
        runner = type(runner).__name__
    name = runner.rsplit(".", 1)[-1].lower()
    name = name[: -len("runner")] if name.endswith("runner") else name
    name = name.removeprefix("managed")
    return name if name in ("flink", "spark") else "other"


def is_embedded_flink(master: str | None) -> bool:
    """Does `--flink_master` name an embedded mini-cluster rather than a cluster address?"""
    return master in FLINK_EMBEDDED_MASTERS


def runner_name(opts: PipelineOptions) -> str:
    kind = runner_kind(opts)
    if kind == "direct":
        direct = opts.view_as(DirectOptions)
        if direct.direct_running_mode == "multi_processing":
            return f"DirectRunner(FnApiRunner, {direct.direct_num_workers or os.cpu_count() or 1} processes)"
        return f"DirectRunner(FnApiRunner, {direct.direct_running_mode or 'in_memory'})"
    portable = opts.view_as(PortableOptions)
    env = ""
    if (portable.environment_type or "").upper() == "EXTERNAL":
        env = f", EXTERNAL {portable.environment_config} x{portable.sdk_worker_parallelism}"
    if portable.job_endpoint:
        env += f", job server {portable.job_endpoint}"
    if kind == "flink":
        master = opts.view_as(FlinkRunnerOptions).flink_master
        return f"FlinkRunner({'embedded' if is_embedded_flink(master) else master}{env})"
    if kind == "spark":
        return f"SparkRunner({opts.view_as(SparkRunnerOptions).spark_master_url}{env})"
    return str(opts.view_as(StandardOptions).runner)
