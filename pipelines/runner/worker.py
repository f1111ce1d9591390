"""Beam's local multi-process worker, started through facebeam so its import-time noise is filtered.

FnApiRunner starts each worker as `python -m apache_beam.runners.worker.sdk_worker_main`; importing
that logs Beam's "apitools not found ... bigquery" warning before any pipeline code runs. Importing
`facebeam.pipelines` first installs the same root-logger filter the launcher has
(pipelines/__init__.py), then the stock worker main runs unchanged.
"""
import logging
import os
import runpy

import facebeam.pipelines  # noqa: F401  (installs the filter)

#: what the launcher runs with `python -m`, and how an interrupted launcher finds its own workers
MODULE = "facebeam.pipelines.runner.worker"

if __name__ == "__main__":
    # The launcher's verbosity (jobs.setup_logging): this stderr shows ERROR and up unless -v; the
    # worker's records still reach the runner at the pipeline's levels.
    import sys

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(os.environ.get("FACEBEAM_WORKER_LOG", "INFO"))
    if stderr.level > logging.INFO:
        # Quiet: a failure comes back to the launcher as the job's exception (with the worker's traceback
        # when it is a bug), so Beam's own copies here (its log records, the traceback its worker prints
        # to stderr) are dropped; facebeam's errors still show.
        stderr.addFilter(lambda r: r.name.startswith("facebeam") or r.levelno >= logging.CRITICAL)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the worker
    logging.getLogger().addHandler(stderr)
    runpy.run_module("apache_beam.runners.worker.sdk_worker_main", run_name="__main__", alter_sys=True)
