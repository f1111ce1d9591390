"""Shared test set-up. Elasticsearch fixtures live in tests/es_fixtures.py."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Model weights for the test session live inside the project (seeded from packages, offline).
os.environ["DEEPFACE_HOME"] = os.path.join(ROOT, ".facebeam", "deepface-home")

pytest_plugins = ["tests.es_fixtures"]
