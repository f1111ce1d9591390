"""Inputs: folders (recursive), glob patterns and list files, on any Beam filesystem."""
import dataclasses
import hashlib
import logging

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms.errors import UserError
from facebeam.transforms.images import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif")
LIST_EXTENSIONS = (".txt", ".lst", ".list")


class InputError(UserError, ValueError):
    """An input pattern that names nothing usable."""


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What to embed, and the limits each image is checked against before decoding."""

    patterns: tuple
    label_from: str = None
    since: str = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    batch_size: int = 4


def _is_dir(p: str) -> bool:
    if p.endswith("/"):
        return True
    import os

    return "://" not in p and os.path.isdir(p)


def expand(pattern: str, since: float = None):
    """Yield (path, size_in_bytes or None) for one user input; `since` keeps files modified at or after it."""
    if pattern.startswith("@") or pattern.lower().endswith(LIST_EXTENSIONS):
        with FileSystems.open(pattern.lstrip("@")) as f:
            for line in f.read().decode("utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    if since is None:
                        yield line, None
                        continue
                    found = FileSystems.match([line])[0].metadata_list
                    if found and found[0].last_updated_in_seconds >= since:
                        yield line, found[0].size_in_bytes
        return
    if _is_dir(pattern):
        found = FileSystems.match([FileSystems.join(pattern.rstrip("/"), "**")])[0].metadata_list
        found = [m for m in found if m.path.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = FileSystems.match([pattern])[0].metadata_list
    if not found:
        raise InputError(f"input {pattern!r} matched no image files")
    for m in found:
        if since is None or m.last_updated_in_seconds >= since:
            yield m.path, m.size_in_bytes


class ExpandInputs(beam.DoFn):
    """Pattern -> (path, size); listing happens on workers, not in the launcher."""

    def __init__(self, since: float = None):
        self._since = since

    def process(self, pattern):
        yield from expand(pattern, self._since)


def parse_since(text: str) -> float:
    """'2026-11-01' or an ISO date-time (UTC unless it says otherwise) -> epoch seconds."""
    import datetime

    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since wants an ISO date like 2026-11-01 or 2026-11-01T08:00, got {text!r}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def read_bytes(path: str, max_bytes: int):
    """(data, sha256); raises OSError for unreadable paths and ValueError when too big."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file is larger than the limit of {max_bytes} bytes")
    return data, hashlib.sha256(data).hexdigest()


def check_inputs(patterns) -> None:
    """Fail before launching a job when an input names nothing (a typo should not run for an hour)."""
    for p in patterns:
        if p.startswith("@") or p.lower().endswith(LIST_EXTENSIONS):
            if not FileSystems.exists(p.lstrip("@")):
                raise InputError(f"list file {p.lstrip('@')!r} does not exist")
        elif _is_dir(p):
            continue
        elif not FileSystems.match([p])[0].metadata_list:
            raise InputError(f"input {p!r} matched no files")


