"""`create_pipeline(opts)`: the Beam Pipeline a job runs, on the runner its options name.

Direct runs get Beam's FnApiRunner with facebeam's quiet workers and the harness log
levels passed on (`local_provision_info`); Flink and Spark runs without a job endpoint get
the managed runners of `managed.py` (a per-job job server with a start timeout, stopped
when the job is over); anything else is Beam's own runner for the options. Beam's Python gRPC
servers that a job opens in this process listen on loopback (`loopback_grpc`).
"""
from __future__ import annotations

import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, WorkerOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.job import utils as job_utils
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
from apache_beam.transforms import environments

from facebeam.pipelines.local import loopback_grpc
from facebeam.pipelines.runner import managed, worker
from facebeam.pipelines.runner.kinds import runner_kind

#: What FnApiRunner starts each multi-process worker with, and what facebeam starts instead.
_BEAM_WORKER_MAIN = "-m apache_beam.runners.worker.sdk_worker_main"
QUIET_WORKER_MODULE = worker.MODULE


def local_provision_info(opts):
    """Provision info that hands the worker log levels to FnApiRunner's subprocess workers.

    FnApiRunner starts its multi-process workers without the pipeline options, so
    `--default_sdk_harness_log_level` never reaches them; this passes those two options.
    """
    worker = opts.view_as(WorkerOptions)
    levels = {"beam:option:default_sdk_harness_log_level:v1": worker.default_sdk_harness_log_level or "INFO"}
    if worker.sdk_harness_log_level_overrides:
        levels["beam:option:sdk_harness_log_level_overrides:v1"] = dict(worker.sdk_harness_log_level_overrides)
    return ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(
        retrieval_token="unused-retrieval-token", pipeline_options=job_utils.dict_to_struct(levels)))


class QuietWorkersRunner(FnApiRunner):
    """FnApiRunner whose multi-process workers start as `python -m facebeam.pipelines.runner.worker`
    (Beam's own worker main behind facebeam's import-noise filter) instead of Beam's module directly.
    FnApiRunner offers no option for the worker command: its `_default_environment` is replaced."""

    @property
    def _default_environment(self):
        return self.__dict__["_facebeam_env"]

    @_default_environment.setter
    def _default_environment(self, env):
        if isinstance(env, environments.SubprocessSDKEnvironment) and env.command_string.endswith(_BEAM_WORKER_MAIN):
            env = environments.SubprocessSDKEnvironment.from_command_string(
                f"{sys.executable} -m {QUIET_WORKER_MODULE}")
        self.__dict__["_facebeam_env"] = env


def create_pipeline(opts: PipelineOptions, test_pipeline=None) -> beam.Pipeline:
    loopback_grpc.install()
    if test_pipeline is not None:
        return test_pipeline
    kind = runner_kind(opts)
    if kind == "direct":
        return beam.Pipeline(runner=QuietWorkersRunner(provision_info=local_provision_info(opts)), options=opts)
    if kind == "flink" and not opts.view_as(PortableOptions).job_endpoint:
        return beam.Pipeline(runner=managed.flink_runner()(), options=opts)
    if kind == "spark" and not opts.view_as(PortableOptions).job_endpoint:
        return beam.Pipeline(runner=managed.spark_runner()(), options=opts)
    return beam.Pipeline(options=opts)
