"""Shared test set-up. Elasticsearch fixtures live in tests/es_fixtures.py."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Model weights for the test session live inside the project (seeded from packages, offline).
os.environ["DEEPFACE_HOME"] = os.path.join(ROOT, ".facebeam", "deepface-home")

pytest_plugins = ["tests.es_fixtures", "tests.redis_fixtures"]


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """The embed job run once on the whole sample: (output folder, summary)."""
    from facebeam.pipelines import embed
    from tests.helpers import SAMPLE, job

    out = str(tmp_path_factory.mktemp("embed-sample"))
    return out, job(embed, ["--input", SAMPLE, "--output", out])
