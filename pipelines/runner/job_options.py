"""The options a job gets: a bare `--runner` flag (or none) is enough to get a working job.

Local runs use Beam's FnApiRunner (what DirectRunner runs on) in multi-process mode
on all cores, and a job of at most IN_PROCESS_MAX_PHOTOS photos in the launcher's own
process. Naming it directly keeps Beam 2.77's DirectRunner from first trying to
download the Prism runner, which hangs on a machine without internet.

`--runner=FlinkRunner` alone runs on an embedded Flink mini-cluster
(`--flink_master=[local]`), `--runner=SparkRunner` alone on Spark `local[<cores>]`.
For both, `pipeline_options` fills in the SDK harness environment: on a facebeam-local
standalone cluster (`facebeam flink|spark up`, named by `--flink_master=localhost:8081` /
`--spark_master_url=spark://localhost:7077`) the production set-up of deploy/:
`--environment_type=EXTERNAL --environment_config=localhost:<its worker pool's port>
--sdk_worker_parallelism=<its workers>` (one Python harness process per slot, see
`pipelines/local/workers.py`), and the cluster's own long-lived job server
(`--job_endpoint`, `local/job_server.py`); otherwise (embedded, local[N], a cluster
facebeam did not start) `--environment_type=LOOPBACK` (the SDK harness runs in this
process: no Docker, local paths work). It also fills in the Beam job-server jar staged
through Maven into `~/.apache_beam/cache/jars/` (see `pipelines/local/jars.py`),
`--flink_version`, the Java launcher, and the JVM flags Java 17 needs
(`--job_server_jvm_properties`). It also checks up front, with timeouts, that Java is
17+, that the jar can be had, and that the named cluster and worker pool answer
(`probes.py`); anything wrong raises `RunnerSetupError`.

Explicit Beam flags always win over these defaults (list-valued JVM flags are merged:
yours first, the needed ones added when missing).
"""
from __future__ import annotations

import logging
import os
import urllib.parse

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    FlinkRunnerOptions,
    JobServerOptions,
    PipelineOptions,
    PortableOptions,
    SparkRunnerOptions,
    WorkerOptions,
)

from facebeam.pipelines.local import jars, job_server, toolkit
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner.kinds import runner_kind
from facebeam.pipelines.runner.local_clusters import local_cluster_pool, local_job_server, started_elsewhere
from facebeam.pipelines.runner.probes import check_cluster

log = logging.getLogger(__name__)

#: How long a TaskManager / executor keeps a job's SDK harnesses after a stage releases them:
#: long enough to reach the job's next stage region, so each slot starts its harness once.
ENVIRONMENT_CACHE_MS = 10_000

#: Up to this many photos a Direct job runs in the launcher's process (Beam's `in_memory` mode), not in one
#: worker process per core. Each worker process costs a Python start, Beam's and facebeam's imports and a model
#: load, S = 2.7 s of wall time here (4 photos: 5.7 s against 3.0 s), and a photo about t = 0.11 core-s (detection
#: runs on a copy of at most 640 px, so the photo's own size hardly counts). Processes on c cores win only past
#: S / (t * (1 - 1/c)) photos: 49 on 2 cores, and never below S / t = 24 on any number of cores. Measure it with
#: `facebeam bench runners --runners direct-processes,direct-in-process --photos N`.
IN_PROCESS_MAX_PHOTOS = 24
#: The same for a load of faces into Elasticsearch (`index`): S = 2.6 s, a face about t = 0.25 ms of the launcher
#: (5,000 faces: 7.8 s against 5.4 s; 60,000: 22.6 s against 25.2 s, on 2 cores), so S / t = 10,000.
IN_PROCESS_MAX_FACES = 10_000
#: The same for the kNN graph of `cluster`: S = 1.3-1.8 s, a face t = 0.7 ms (exact graph) to 1.2-2 ms (graph from
#: Elasticsearch) of the graph stage, so S / t = 900-1,900 faces. On 2 cores (2026-12-06) in-process won by 0.5-1.8 s
#: at 300-1,000 faces in both modes, and lost past about 1,500 (Elasticsearch) or 5,500 (exact) faces.
IN_PROCESS_MAX_GRAPH_FACES = 1_000

#: Python log level names the Java job server's SdkHarnessOptions (Beam 2.62) rejects
#: ("Must be one of [OFF, ERROR, WARN, INFO, DEBUG, TRACE]"), and what both sides accept.
_JAVA_LEVELS = {"CRITICAL": "ERROR", "FATAL": "ERROR", "WARNING": "WARN", "NOTSET": "DEBUG"}


class ClusterLibOptions(PipelineOptions):
    """Beam Java's --pipelineResourcesDetectorFactoryClass. The Python SDK does not declare it,
    and undeclared flags never reach the job server; declared here, it does."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--pipeline_resources_detector_factory_class", default=None,
                            help="Java class naming the jars a job server ships with a job (facebeam sets "
                                 f"{job_server.DETECTOR_CLASS} for its local clusters, which have Beam in lib/)")


#: The exchange mode of a Flink job that asks for blocking exchanges (`pipeline_options(..., blocking=True)`).
#: Under PIPELINED, an embed job's listing, shuffle and embedding form one region of tasks, which Flink starts only
#: when the writes' set-up (a side input, always blocking) is done; under BATCH the listing is a region of its
#: own and runs meanwhile: the first photo starts 0.2-0.6 s sooner (the Flink REST API's vertex times). A blocking
#: exchange keeps its data on the TaskManager's disk until read, so only jobs whose shuffles carry no face
#: vectors ask for it (embed's carry paths and file names).
BLOCKING_EXCHANGES = "BATCH"


class FlinkExchangeOptions(PipelineOptions):
    """Beam Java's --executionModeForBatch: how a Flink batch job's stages exchange data (Flink's ExecutionMode).
    The Python SDK does not declare it; declared here, it reaches the job server."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--execution_mode_for_batch", default=None,
                            choices=("PIPELINED", "PIPELINED_FORCED", "BATCH", "BATCH_FORCED"),
                            help="Flink's data exchange for batch jobs (Beam's default PIPELINED; facebeam embed "
                                 f"sets {BLOCKING_EXCHANGES}: see job_options.BLOCKING_EXCHANGES)")


def flag_given(args, name) -> bool:
    """Is `--name` (or `--name=...`) among the command-line words `args`?"""
    return any(a == f"--{name}" or a.startswith(f"--{name}=") for a in args)


def pipeline_options(beam_args, blocking: bool = False, photos: int | None = None, faces: int | None = None,
                     graph_faces: int | None = None, **overrides) -> PipelineOptions:
    """PipelineOptions from command-line Beam flags plus facebeam's runner defaults; `blocking`: Flink exchanges
    data between stages as BLOCKING_EXCHANGES says, unless the flags say otherwise; `photos` / `faces` /
    `graph_faces`: how many photos the job embeds, faces it loads or faces it finds neighbours for, where cheap to
    know (a small Direct job runs in this process: IN_PROCESS_MAX_PHOTOS, _FACES, _GRAPH_FACES)."""
    args = list(beam_args or [])
    opts = PipelineOptions(args, **overrides)

    def given(name):
        return flag_given(args, name) or name in overrides

    kind = runner_kind(opts)
    if kind == "direct":
        direct = opts.view_as(DirectOptions)
        sizes = ((photos, IN_PROCESS_MAX_PHOTOS), (faces, IN_PROCESS_MAX_FACES),
                 (graph_faces, IN_PROCESS_MAX_GRAPH_FACES))
        small = any(n is not None and n <= most for n, most in sizes) and not given("direct_num_workers")
        if not given("direct_running_mode"):
            direct.direct_running_mode = "in_memory" if small else "multi_processing"
        if not given("direct_num_workers"):
            direct.direct_num_workers = 1 if small else 0  # 0 = one worker per core
    elif kind in ("flink", "spark"):
        _java_log_levels(opts)
        _portable_defaults(opts, kind, given)
        if kind == "flink" and blocking and not given("execution_mode_for_batch"):
            opts.view_as(FlinkExchangeOptions).execution_mode_for_batch = BLOCKING_EXCHANGES
    return opts


def _java_log_levels(opts: PipelineOptions) -> None:
    """Rewrite harness log levels the Java job server cannot parse (it fails the job at Run
    with INTERNAL otherwise). CRITICAL becomes ERROR: Python's "OFF" does not exist."""
    worker = opts.view_as(WorkerOptions)
    level = (worker.default_sdk_harness_log_level or "").upper()
    if level in _JAVA_LEVELS:
        worker.default_sdk_harness_log_level = _JAVA_LEVELS[level]
    overrides = worker.sdk_harness_log_level_overrides
    if isinstance(overrides, dict):
        worker.sdk_harness_log_level_overrides = {
            k: _JAVA_LEVELS.get(str(v).upper(), v) for k, v in overrides.items()}


def _environment_defaults(opts: PipelineOptions, kind: str, given) -> None:
    """LOOPBACK for embedded / unknown clusters; EXTERNAL on the local cluster's worker pool."""
    portable = opts.view_as(PortableOptions)
    pool = None if portable.job_endpoint else local_cluster_pool(opts, kind)
    if not given("environment_type"):
        portable.environment_type = "EXTERNAL" if pool else "LOOPBACK"
    if pool and portable.environment_type == "EXTERNAL":
        if not given("environment_config") and not portable.environment_config:
            portable.environment_config = f"localhost:{pool['port']}"
        if not given("sdk_worker_parallelism"):
            portable.sdk_worker_parallelism = int(pool.get("workers") or 1)
    if pool and kind == "flink" and not given("parallelism"):
        # Beam's Flink runner takes the job's parallelism from the *job server's* Flink
        # config (1 without one), not from the cluster: one slot would do all the work.
        opts.view_as(FlinkRunnerOptions).parallelism = int(pool.get("slots") or pool.get("workers") or 1)


#: Beam stages a `pip freeze` of the launcher with every portable job, for the runner to log: a
#: subprocess of 0.25 s wall and CPU per submission, which the engines here never read.
NO_SUBMISSION_ENV = "disable_logging_submission_environment"


def _portable_defaults(opts: PipelineOptions, kind: str, given) -> None:
    portable = opts.view_as(PortableOptions)
    jobsrv = opts.view_as(JobServerOptions)
    opts.view_as(DebugOptions).add_experiment(NO_SUBMISSION_ENV)
    if portable.job_endpoint:  # an already running job service: nothing to launch here
        if not given("environment_type"):
            portable.environment_type = "LOOPBACK"
        return
    if kind == "flink" and not given("flink_master"):
        opts.view_as(FlinkRunnerOptions).flink_master = "[local]"
    if kind == "spark" and not given("spark_master_url"):
        opts.view_as(SparkRunnerOptions).spark_master_url = f"local[{os.cpu_count() or 2}]"
    _environment_defaults(opts, kind, given)
    served = local_job_server(opts, kind)
    elsewhere = None if served else started_elsewhere(opts, kind)
    if elsewhere:  # its job server is recorded in that home, not in this one
        where = (f"the local {kind.capitalize()} cluster was started from {os.path.dirname(elsewhere)}, whose "
                 ".facebeam holds its job server")
        fix = f"run from {os.path.dirname(elsewhere)}, or set FACEBEAM_HOME={elsewhere}"
        if kind == "spark":  # a second application would wait for the cores the job server's holds, for ever
            raise RunnerSetupError(f"{where}; a job server of this job's own would start a second Spark "
                                   f"application, which waits for the cores the first one holds: {fix}")
        log.warning("%s, so this job starts one of its own (about 20 s more): %s", where, fix)
    if served:  # the cluster's own job server: no JVM to start, no jars to ship
        portable.job_endpoint = f"localhost:{served['port']}"
        if not served.get("stages_jars"):
            opts.view_as(ClusterLibOptions).pipeline_resources_detector_factory_class = job_server.DETECTOR_CLASS
        if not given("environment_cache_millis"):
            portable.environment_cache_millis = ENVIRONMENT_CACHE_MS
        if kind == "flink" and not given("flink_version"):
            opts.view_as(FlinkRunnerOptions).flink_version = jars.FLINK_MINOR
        check_cluster(opts)
        return
    java = toolkit.find_java(
        purpose=f"the Beam {kind.capitalize()} job server", launcher=jobsrv.job_server_java_launcher,
        hint=f"Point JAVA_HOME/PATH at a Java {toolkit.MIN_JAVA}+ (e.g. /usr/lib/jvm/java-17-openjdk-amd64) "
             "or pass --job_server_java_launcher=/path/to/java",
    ).path
    if not given("job_server_java_launcher"):
        jobsrv.job_server_java_launcher = java
    if kind == "flink":
        flink = opts.view_as(FlinkRunnerOptions)
        if not given("flink_version"):
            flink.flink_version = jars.FLINK_MINOR
        flags = jars.FLINK_JAVA17_FLAGS + jars.FLINK_LOG_FLAGS
        if given("flink_job_server_jar"):
            _check_given_jar(flink.flink_job_server_jar, "flink")
        else:
            flink.flink_job_server_jar = str(jars.job_server_jar(jars.flink_spec(flink.flink_version)))
    else:
        spark = opts.view_as(SparkRunnerOptions)
        flags = jars.SPARK_JAVA17_FLAGS
        if given("spark_job_server_jar"):
            _check_given_jar(spark.spark_job_server_jar, "spark")
        else:
            spark.spark_job_server_jar = str(jars.job_server_jar(jars.spark_spec()))
    props = list(jobsrv.job_server_jvm_properties or [])
    jobsrv.job_server_jvm_properties = props + [f for f in flags if f not in props]
    check_cluster(opts)


def _check_given_jar(jar: str, kind: str) -> None:
    if jar and not os.path.exists(jar) and not urllib.parse.urlparse(jar).scheme:
        raise RunnerSetupError(f"--{kind}_job_server_jar={jar} does not exist")
