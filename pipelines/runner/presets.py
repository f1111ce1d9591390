"""The runner set-ups the project supports, by name, for tests, benchmarks and jobs.

`pipeline_options(RUNNER_PRESETS[key] + other_args)` (or `preset_options(key, other_args)`)
turns one into complete options; `preset_cluster(key)` starts (and afterwards stops) the
standalone cluster a preset needs.
"""
from __future__ import annotations

import contextlib

from apache_beam.options.pipeline_options import PipelineOptions

from facebeam.pipelines.local import flink, spark
from facebeam.pipelines.runner.job_options import pipeline_options

#: Runner set-ups, as Beam flags.
RUNNER_PRESETS: dict[str, list[str]] = {
    "direct": [],
    # Direct in each of its two set-ups, whatever the job's size (job_options.IN_PROCESS_MAX_PHOTOS).
    "direct-processes": ["--direct_running_mode=multi_processing"],
    "direct-in-process": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
    "flink-embedded": ["--runner=FlinkRunner", "--flink_master=[local]"],
    "flink-cluster": ["--runner=FlinkRunner", "--flink_master=localhost:8081"],
    "spark-local": ["--runner=SparkRunner", "--spark_master_url=local[2]"],
    "spark-cluster": ["--runner=SparkRunner", "--spark_master_url=spark://localhost:7077"],
}
#: Presets that need a standalone cluster, and the facebeam command that starts it.
PRESET_CLUSTERS = {"flink-cluster": "flink", "spark-cluster": "spark"}


def preset_options(key: str, extra_args=(), **overrides) -> PipelineOptions:
    """`pipeline_options(RUNNER_PRESETS[key] + extra_args)`."""
    if key not in RUNNER_PRESETS:
        raise KeyError(f"unknown runner preset {key!r}; known: {', '.join(RUNNER_PRESETS)}")
    return pipeline_options(RUNNER_PRESETS[key] + list(extra_args), **overrides)


@contextlib.contextmanager
def preset_cluster(key: str):
    """Brings up the standalone cluster a preset needs (if not running) and stops it after."""
    which = PRESET_CLUSTERS.get(key)
    if which is None:
        yield None
        return
    with (flink if which == "flink" else spark).running() as info:
        yield info
