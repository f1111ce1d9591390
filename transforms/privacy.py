"""Who may read what facebeam writes: face vectors are biometric data, so they are private by default.

The rule: every file facebeam writes with faces in it, or about them (Parquet shards, dead letters,
summaries, the embedded index, Redis's data folder), is created 0600 in 0700 folders, whatever the
umask. facebeam narrows the umask by 077 while it writes: for the whole of a job in the launcher
(`private_umask`), and on every worker before its first shard (`PrivateWrites`), so files written by
Beam's sinks on Direct, Flink or Spark workers are private from their first byte. Folders it makes
are 0700 (`make_dirs`); an output folder that already exists keeps its mode, the folders inside it are
facebeam's and are made private.

`FACEBEAM_SHARED_FILES=1` in the environment (of the job, or of `facebeam redis up`) keeps your own
umask instead: with `umask 027` a group can read the output, with `umask 022` everyone can.

Secrets (connection files with passwords, TLS keys) are 0600 always (`write_private`), shared or not.
"""
from __future__ import annotations

import contextlib
import os
import threading

import apache_beam as beam

ENV_SHARED = "FACEBEAM_SHARED_FILES"
PRIVATE = 0o077  # the umask bits private mode adds: nothing for group and others
FILE_MODE, DIR_MODE = 0o600, 0o700

_LOCK = threading.Lock()


def shared() -> bool:
    """Whether the user asked for shared files (`FACEBEAM_SHARED_FILES=1`): then their umask rules."""
    return os.environ.get(ENV_SHARED, "").strip().lower() in ("1", "true", "yes", "on")


def current_umask() -> int:
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def private_umask(is_shared: bool | None = None):
    """Narrow this process's umask by 077 for the body (unless shared); restored afterwards."""
    if shared() if is_shared is None else is_shared:
        yield
        return
    _narrow_umask(+1)  # counted: threads share the umask, so the last one out restores it
    try:
        yield
    finally:
        _narrow_umask(-1)


def make_dirs(path: str, is_shared: bool | None = None) -> None:
    """`os.makedirs` whose new folders are 0700 (unless shared); an existing leaf folder is made 0700 too."""
    if "://" in path:
        return
    if shared() if is_shared is None else is_shared:
        os.makedirs(path, exist_ok=True)
        return
    with private_umask(False):
        os.makedirs(path, exist_ok=True)
    if os.stat(path).st_mode & PRIVATE:
        os.chmod(path, DIR_MODE)


def restrict(folder: str, *names: str, is_shared: bool | None = None) -> None:
    """Make files already written under `folder` 0600 (unless shared): for writers that take no mode."""
    if shared() if is_shared is None else is_shared:
        return
    for name in names:
        path = os.path.join(folder, name)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_mode & PRIVATE:
                os.chmod(path, FILE_MODE)


def write_private(path, data) -> None:
    """Write a secret readable by its owner only, whole or not at all (bytes or text), whatever the rule."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.chmod(tmp, FILE_MODE)  # an existing tmp kept its old mode
    os.replace(tmp, path)


class PrivateWrites(beam.DoFn):
    """Passes elements through; on each worker it narrows the process umask first (unless `shared`).

    Put right before a file sink: Beam fuses it with the sink's writer, so the worker's umask is
    set before its first file is created. The launcher's rule travels with the job (`shared`).
    """

    def __init__(self, is_shared: bool):
        self._shared = is_shared

    def setup(self):
        if not self._shared:
            _narrow_umask(+1)

    def process(self, element):
        yield element

    def teardown(self):
        if not self._shared:
            _narrow_umask(-1)


_NARROWED = {"users": 0, "before": None}  # private_umask bodies and PrivateWrites DoFns of this process now


def _narrow_umask(step: int) -> None:
    """Counted per process: the first user narrows the umask, the last one restores it. Threads share the umask:
    a body that restored what it saw on entry could leave it narrowed for good, or widen it under another."""
    with _LOCK:
        if step > 0 and _NARROWED["users"] == 0:
            _NARROWED["before"] = os.umask(0o077)
            os.umask(_NARROWED["before"] | PRIVATE)
        _NARROWED["users"] = max(0, _NARROWED["users"] + step)
        if step < 0 and _NARROWED["users"] == 0 and _NARROWED["before"] is not None:
            os.umask(_NARROWED["before"])
            _NARROWED["before"] = None
