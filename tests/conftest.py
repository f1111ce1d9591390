"""Shared test fixtures. Elasticsearch fixtures live in tests/es_fixtures.py."""
pytest_plugins = ["tests.es_fixtures"]
