"""The one state folder of facebeam's local tooling, and its download cache.

`facebeam_home()` is `$FACEBEAM_HOME` when set, else `.facebeam` in the current
folder, always made absolute. Everything the local tooling keeps lives under it:

    <home>/es/             `facebeam es up` cluster (connection.json, certs, nodes/)
    <home>/redis/          `facebeam redis up` server (connection.json, redis.conf, data/)
    <home>/flink/          `facebeam flink up` configuration, logs and pid files
    <home>/spark/          `facebeam spark up` logs, pid files and scratch space
    <home>/logs/           saved job-server logs
    <home>/cache/          downloads: Elasticsearch, Flink and Spark distributions

`cache_dir()` is `$FACEBEAM_CACHE` when set (the one override of the cache folder, e.g.
to share downloads between several homes), else `<home>/cache`.

It lives in `transforms` because `transforms.es_conn` reads the default connection file
(`<home>/es/connection.json`) and transforms must not import pipelines.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "FACEBEAM_HOME"
ENV_CACHE = "FACEBEAM_CACHE"


def facebeam_home() -> Path:
    """`$FACEBEAM_HOME`, else `./.facebeam`; absolute."""
    return Path(os.environ.get(ENV_HOME) or ".facebeam").absolute()


def cache_dir() -> Path:
    """`$FACEBEAM_CACHE`, else `<facebeam_home()>/cache`; absolute."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).absolute() if env else facebeam_home() / "cache"


def es_conn_file() -> Path:
    """The connection file `facebeam es up` writes by default: `<home>/es/connection.json`."""
    return facebeam_home() / "es" / "connection.json"


def elsewhere_hint(path) -> str:
    """Why `path` (under the default home) may be missing: state lives in `.facebeam` of the folder a command runs
    in, so `facebeam run` in one folder and `facebeam search` in another find nothing. Empty when FACEBEAM_HOME
    is set, when `path` lies elsewhere, or when this folder has a `.facebeam` of its own."""
    home = facebeam_home()
    if os.environ.get(ENV_HOME) or home.exists() or not Path(path).absolute().is_relative_to(home):
        return ""
    return (f" (facebeam keeps its indexes and servers in .facebeam of the folder it runs in, and {home.parent} "
            "has none: run it from the folder you built them in, or set FACEBEAM_HOME to that .facebeam)")
