"""Shared test set-up. Elasticsearch fixtures live in tests/es_fixtures.py, Redis ones in tests/redis_fixtures.py.

Every test is marked by what it needs (markers registered in pytest.ini): from the fixtures it
uses (`es`, `redis`, `pipeline`), from its module (`cluster`, `browser`, ...), or explicitly
(`unit`). A test with neither `unit` nor another marker is taken to run facebeam jobs
(`pipeline`). So `pytest -m unit` (make unit) runs the pure tier alone, and while a `unit` test
runs it can open no network port and start no Java process: the tier cannot drift into needing a server.
"""
import os
import socket
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Model weights for the test session live inside the project (seeded from packages, offline).
os.environ["DEEPFACE_HOME"] = os.path.join(ROOT, ".facebeam", "deepface-home")

pytest_plugins = ["tests.es_fixtures", "tests.redis_fixtures"]

#: fixture -> what a test that uses it needs
NEEDS_BY_FIXTURE = {
    "es_home": "es", "es_conn": "es", "es_client": "es", "es_index": "es", "es_cluster_factory": "es",
    "redis_home": "redis", "redis_conn_args": "redis",
    "sample_run": "pipeline",
}
#: test module -> what all its tests need
NEEDS_BY_MODULE = {
    "test_runners.py": ("cluster", "pipeline"), "test_runners_embed.py": ("cluster", "pipeline"),
    "test_worker_pools.py": ("cluster", "pipeline"), "test_cluster_lib.py": ("cluster", "pipeline"),
    "test_worker_death.py": ("cluster", "pipeline"),
    "test_listen_loopback.py": ("cluster", "pipeline"),
    "test_local_home.py": ("cluster", "es"), "test_es_local.py": ("es",), "test_report.py": ("browser", "pipeline"),
}
#: pure tests in modules whose other tests need servers (module::name prefix)
UNIT_ELSEWHERE = (
    "test_persons.py::test_quality_metrics_and_stable_ids_by_hand",
    "test_labels.py::test_parent_dir_labeler_knows_its_roots",
    "test_weights.py::test_seed_places_shipped_dlib_weights",
)
NEEDS = ("es", "redis", "cluster", "pipeline", "browser")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = os.path.basename(str(item.fspath))
        name = f"{module}::{item.name}"
        if name.startswith(UNIT_ELSEWHERE):
            item.add_marker(pytest.mark.unit)
        needs = {NEEDS_BY_FIXTURE[f] for f in getattr(item, "fixturenames", ()) if f in NEEDS_BY_FIXTURE}
        needs.update(NEEDS_BY_MODULE.get(module, ()))
        if "chromium" in item.name or "contact_sheet" in item.name:
            needs.add("browser")
        unit = item.get_closest_marker("unit") is not None
        if unit and needs:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but needs {sorted(needs)}")
        if not unit and not any(item.get_closest_marker(n) for n in NEEDS):
            needs = needs or {"pipeline"}
        for need in sorted(needs):
            item.add_marker(getattr(pytest.mark, need))


@pytest.fixture(autouse=True)
def _unit_tier_stays_pure(request, monkeypatch):
    """A `unit` test opens no network port and starts no Java process."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test opened a network socket; mark it by what it needs instead")

    for method in ("bind", "connect", "connect_ex", "listen"):
        monkeypatch.setattr(socket.socket, method, refuse)
    popen_init = subprocess.Popen.__init__

    def no_java(self, args, *rest, **kwargs):
        first = args if isinstance(args, str) else (list(args) or [""])[0]
        if os.path.basename(str(first).split()[0] if str(first).strip() else "") == "java":
            raise AssertionError("a unit test started Java; mark it by what it needs instead")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_java)
    yield


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """The embed job run once on the whole sample: (output folder, summary)."""
    from facebeam.pipelines import embed
    from tests.helpers import SAMPLE, job

    out = str(tmp_path_factory.mktemp("embed-sample"))
    return out, job(embed, ["--input", SAMPLE, "--output", out])


@pytest.fixture(scope="session")
def local_cluster():
    """`local_cluster(which, workers=2)`: the default local Flink or Spark cluster (`facebeam flink|spark up`),
    started on first use and kept up for the modules after (each start costs 15-25 s); stopped at the end of
    the session if the session started it. A test that breaks part of it (a pool, a TaskManager) brings that
    back with the module's `up` before it ends."""
    from facebeam.pipelines.local import flink, spark

    modules = {"flink": flink, "spark": spark}
    started = []

    def up(which: str, workers: int = 2) -> dict:
        module = modules[which]
        if module.cluster_info() is None and which not in started:
            started.append(which)
        return module.up(workers=workers)

    yield up
    for which in started:
        modules[which].down()
