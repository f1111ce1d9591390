"""A real local Redis for the tests (`facebeam redis up` in a temporary home, stopped afterwards)."""
import os
import shutil
import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_home(tmp_path_factory):
    """(home folder, port) of a running Redis; its connection file is `<home>/connection.json`."""
    from pathlib import Path

    from facebeam.pipelines.local import redis as redis_local

    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: apt-get install -y redis-server (.ci/run does)")
    home = Path(tmp_path_factory.mktemp("redis")) / "redis"
    port = free_port()
    redis_local.up(home, port)
    os.environ.pop("FACEBEAM_REDIS_PASSWORD", None)
    yield home, port
    redis_local.down(home)


@pytest.fixture
def redis_conn_args(redis_home):
    home, _ = redis_home
    return ["--redis-conn", str(home / "connection.json")]
