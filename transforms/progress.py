"""A throttled progress line from inside workers (one per worker process)."""
import logging
import os
import threading
import time

log = logging.getLogger("facebeam.progress")


class Progress:
    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.counts = {"images": 0, "embedded": 0, "failed": 0, "faces": 0}
        self.started = self.last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, **deltas) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counts[k] += v
            now = time.monotonic()
            if now - self.last < self.every_s:
                return
            self.last = now
            c, rate = self.counts, self.counts["images"] / max(now - self.started, 1e-9)
        log.info("progress [worker %d]: %d images (%d embedded, %d failed), %d faces, %.2f images/s",
                 os.getpid(), c["images"], c["embedded"], c["failed"], c["faces"], rate)


PROGRESS = Progress()
