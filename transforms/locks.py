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


@contextlib.contextmanager
def held(folder: str, name: str, timeout: float = 60.0):
    """`<folder>/<name>` held exclusively while the body runs, waiting up to `timeout` s for another holder."""
    if "://" in folder:
        log.info("no lock for %s on %s (not a local folder): concurrent writers may overwrite each other", name,
                 folder)
        yield
        return
    lock = filelock.FileLock(os.path.join(folder, name), timeout=timeout, preserve_lock_file=True)
    try:
        with privacy.private_umask():
            lock.acquire()
    except filelock.Timeout:
        raise UserError(f"{os.path.join(folder, name)} was held by another facebeam job for {timeout:.0f} s; "
                        "try again when it has finished") from None
    try:
        yield
    finally:
        lock.release()
