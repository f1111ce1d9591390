"""One state folder: `facebeam es|flink ...` from different folders share $FACEBEAM_HOME.

The home is a temporary folder under .facebeam/ (the Elasticsearch node account must be
able to pass through it when tests run as root); downloads come from the normal cache
($FACEBEAM_CACHE, else .facebeam/cache of the repository), so nothing is fetched twice.
Flink runs on its own REST/RPC ports so a cluster of tests/test_runners.py is not disturbed.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from facebeam.pipelines.local import toolkit
from facebeam.transforms import home as fb_home
from tests.es_fixtures import CACHE, extra_cluster_slot

REPO = Path(__file__).resolve().parents[1]
FACEBEAM = str(Path(sys.executable).with_name("facebeam"))
FLINK_PORT, FLINK_RPC_PORT = 18281, 16323


def _run(args, cwd, env, timeout=600):
    proc = subprocess.run([FACEBEAM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def test_es_and_flink_state_live_in_facebeam_home(tmp_path):
    home = Path(tempfile.mkdtemp(prefix="test-home-", dir=REPO / ".facebeam"))
    os.chmod(home, 0o711)  # Elasticsearch runs as an unprivileged account when we are root
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    env = {**os.environ, fb_home.ENV_HOME: str(home),
           fb_home.ENV_CACHE: os.environ.get(fb_home.ENV_CACHE) or str(CACHE)}
    env.pop("FACEBEAM_ES_CONN", None)
    try:
        with extra_cluster_slot(nodes=1) as (_, port):
            rc, out = _run(["es", "up", "--port", str(port), "--heap", "512m", "--timeout", "300"], a, env)
            assert rc == 0, out
        assert (home / "es" / "connection.json").is_file()
        assert not (a / ".facebeam").exists()
        rc, out = _run(["es", "status", "--json"], b, env)
        assert rc == 0, out
        assert f"127.0.0.1:{port}" in out and '"running": true' in out

        with toolkit.file_lock(REPO / ".facebeam" / "test-local-home-flink.lock", timeout=900):
            rc, out = _run(["flink", "up", "--port", str(FLINK_PORT), "--rpc-port", str(FLINK_RPC_PORT),
                            "--slots", "1"], b, env, timeout=900)
            try:
                assert rc == 0, out
                assert list((home / "flink").glob("flink-*standalonesession*.pid"))
                assert (home / "flink" / "log").is_dir()
                assert not (b / ".facebeam").exists()
                rc, out = _run(["flink", "status", "--port", str(FLINK_PORT)], a, env)
                assert rc == 0 and out.startswith("running"), out
            finally:
                rc, out = _run(["flink", "down"], a, env)
                assert rc == 0 and "stopped" in out, out
    finally:
        _run(["es", "down"], b, env)
        assert not (home / "es" / "connection.json").exists()
        shutil.rmtree(home, ignore_errors=True)
