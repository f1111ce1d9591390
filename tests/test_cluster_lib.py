"""A local Flink cluster whose job server cannot leave Beam's jars out (no javac, so no
stage-nothing jar): jobs ship the jars to a cluster that has Beam in its lib/ too, and
must still give Direct's rows (Flink resolves classes parent-first there: the job's copy of
Beam is never loaded beside lib's).

Runs in its own FACEBEAM_HOME and ports, beside any cluster of the other tests.
"""
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from apache_beam.runners.runner import PipelineState

from facebeam.pipelines.local import flink as flink_local
from facebeam.pipelines.local import job_server, toolkit
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.transforms import home as fb_home
from tests.es_fixtures import CACHE
from tests.test_runners import N, read_rows, sha_pipeline

REPO = Path(__file__).resolve().parents[1]
FLINK_PORT, FLINK_RPC_PORT = 18281, 16323


def test_without_the_stage_nothing_jar_jobs_ship_beam_and_still_match(tmp_path, monkeypatch):
    (REPO / ".facebeam").mkdir(exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="test-home-", dir=REPO / ".facebeam"))
    monkeypatch.setenv(fb_home.ENV_HOME, str(home))
    monkeypatch.setenv(fb_home.ENV_CACHE, os.environ.get(fb_home.ENV_CACHE) or str(CACHE))
    monkeypatch.setattr(job_server, "detector_jar", lambda spec: None)  # what a JRE without javac gets
    with toolkit.file_lock(REPO / ".facebeam" / "test-local-home-flink.lock", timeout=900):
        try:
            flink_local.up(port=FLINK_PORT, rpc_port=FLINK_RPC_PORT, workers=1)
            served = job_server.info("flink")
            assert served and served["stages_jars"] and served["master"] == f"localhost:{FLINK_PORT}"
            assert not (job_server.lib_dir("flink") / "facebeam-cluster-lib.jar").exists()
            assert list(job_server.lib_dir("flink").glob("beam-sdks-java-core-*.jar"))

            opts = pipeline_options(["--runner=FlinkRunner", f"--flink_master=localhost:{FLINK_PORT}"])
            o = opts.get_all_options()
            assert o["job_endpoint"] == f"localhost:{served['port']}"
            assert o["environment_type"] == "EXTERNAL" and not o["pipeline_resources_detector_factory_class"]
            out_dir = str(tmp_path / "out")
            os.makedirs(out_dir)
            p = create_pipeline(opts)
            sha_pipeline(p, out_dir)
            result = p.run()
            assert result.wait_until_finish(duration=300_000) == PipelineState.DONE
            assert read_rows(out_dir) == [(n, hashlib.sha256(str(n).encode()).hexdigest()) for n in range(N)]
        finally:
            flink_local.down()
            shutil.rmtree(home, ignore_errors=True)
