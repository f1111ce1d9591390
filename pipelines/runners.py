"""Runner defaults: a bare `--runner` flag (or none) is enough to get a working job.

Local runs use Beam's FnApiRunner (what DirectRunner runs on) in multi-process mode
on all cores. Naming it directly keeps Beam 2.77's DirectRunner from first trying to
download the Prism runner, which hangs on a machine without internet.
Explicit Beam flags always win over these defaults.
"""
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

log = logging.getLogger(__name__)

_LOCAL_NAMES = (None, "", "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


def _flag_given(args, name):
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def pipeline_options(beam_args, **overrides) -> PipelineOptions:
    """PipelineOptions from command-line Beam flags plus facebeam's runner defaults."""
    args = list(beam_args or [])
    opts = PipelineOptions(args, **overrides)
    runner = opts.view_as(StandardOptions).runner
    if runner in _LOCAL_NAMES:
        direct = opts.view_as(DirectOptions)
        if not _flag_given(args, "direct_running_mode"):
            direct.direct_running_mode = "multi_processing"
        if not _flag_given(args, "direct_num_workers"):
            direct.direct_num_workers = 0  # 0 = one worker per core
    return opts


def runner_name(opts: PipelineOptions) -> str:
    runner = opts.view_as(StandardOptions).runner
    return "DirectRunner(FnApiRunner)" if runner in _LOCAL_NAMES else str(runner)


def create_pipeline(opts: PipelineOptions, test_pipeline=None) -> beam.Pipeline:
    if test_pipeline is not None:
        return test_pipeline
    runner = opts.view_as(StandardOptions).runner
    if runner in _LOCAL_NAMES:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=opts)
    return beam.Pipeline(options=opts)
