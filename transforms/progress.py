"""A throttled progress line from inside workers (one per worker process)."""
import collections
import logging
import os
import threading
import time

log = logging.getLogger("facebeam.progress")


class Progress:
    """Counts what a worker did; logs `what` with the counts and a rate at most every `every_s`."""

    def __init__(self, what: str, rate_key: str, every_s: float = 5.0):
        self.what, self.rate_key, self.every_s = what, rate_key, every_s
        self.counts = collections.Counter()
        self.started = self.last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, **deltas) -> None:
        with self._lock:
            self.counts.update(deltas)
            now = time.monotonic()
            if now - self.last < self.every_s:
                return
            self.last = now
            counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
            rate = self.counts[self.rate_key] / max(now - self.started, 1e-9)
        log.info("%s progress [worker %d]: %s, %.2f %s/s", self.what, os.getpid(), counts, rate, self.rate_key)


EMBED = Progress("embed", "images")
INDEX = Progress("index", "docs")
