"""Short exclusive sections around a local folder's small metadata files (read, change, write).

filelock's lock file is kept (unlinking it on release lets a waiter and a newcomer both hold it) and made
under privacy.private_umask, like everything facebeam writes beside the faces (0600 unless
FACEBEAM_SHARED_FILES). A folder on another Beam filesystem (gs://, s3://, hdfs://) has no lock here: the
record there is last-writer-wins, and the log says so.
"""
from __future__ import annotations

import contextlib
import logging
import os

import filelock

from facebeam.transforms import privacy
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)
OUTPUT_LOCK_FILE = ".facebeam.lock"  # held in a job's output folder while it runs, kept after (jobs.lock_output)


@contextlib.contextmanager
def held(folder: str, name: str, timeout: float = 60.0, busy: str | None = None, error: type = UserError,
         poll_interval: float = 0.05):
    """`<folder>/<name>` held exclusively while the body runs, waiting up to `timeout` s for another holder
    (0: refused at once). A holder that outlasts it is `error`: `busy`, or a message naming the lock file."""
    if "://" in folder:
        log.info("no lock for %s on %s (not a local folder): concurrent writers may overwrite each other", name,
                 folder)
        yield
        return
    path = os.path.join(folder, name)
    lock = filelock.FileLock(path, timeout=timeout, blocking=timeout > 0, poll_interval=poll_interval,
                             preserve_lock_file=True)
    try:  # the caller's folder, as the caller would make it (a server's home stays readable by the server's user)
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise error(f"folder {folder} cannot be made: {e.strerror or e}") from None
    try:  # only the lock file is private
        with privacy.private_umask():
            lock.acquire()
    except filelock.Timeout:
        raise error(busy or f"{path} was held by another facebeam job for {timeout:.0f} s; try again when it has "
                    "finished") from None
    try:
        yield
    finally:
        lock.release()
