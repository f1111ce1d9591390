"""Progress: counts each worker keeps, a throttled log line per worker, and one overall bar in the launcher.

Workers count what they did (`EMBED.add(images=1, faces=2)`, the same events the Beam counters
count). When the launcher shows a bar it names a folder in FACEBEAM_PROGRESS_DIR before the job
starts; each worker process then keeps its running counts in one small JSON file there, and the
launcher sums the files into a tqdm bar (done, rate, ETA). Beam's metrics reach the launcher
only when the job ends, hence the files. Harnesses a local cluster's worker pool started do not
inherit the launcher's environment, so the embed transforms also carry the folder to their
workers (`shared_folder` at construction, `Progress.share_into` in setup). Workers on other
machines do not see the folder, and their bar stays at zero until the job's counters arrive.
"""
import collections
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time

from facebeam.transforms.locks import OUTPUT_LOCK_FILE

log = logging.getLogger("facebeam.progress")
ENV_DIR = "FACEBEAM_PROGRESS_DIR"


class Progress:
    """Counts what a worker did; logs `what` with the counts and a rate at most every `every_s`."""

    def __init__(self, what: str, rate_key: str, every_s: float = 5.0, share_s: float = 0.5):
        self.what, self.rate_key, self.every_s, self.share_s = what, rate_key, every_s, share_s
        self.counts = collections.Counter()
        self.folder = None  # set on a worker by share_into; else FACEBEAM_PROGRESS_DIR
        self.started = self.last = self.shared = time.monotonic()
        self._lock = threading.Lock()

    def add(self, **deltas) -> None:
        with self._lock:
            self.counts.update(deltas)
            now = time.monotonic()
            if now - self.shared >= self.share_s:
                self.shared = now
                self._share(dict(self.counts))
            if now - self.last < self.every_s:
                return
            self.last = now
            counts = ", ".join(f"{v} {k}" for k, v in self.counts.items())
            rate = self.counts[self.rate_key] / max(now - self.started, 1e-9)
        log.info("%s progress [worker %d]: %s, %.2f %s/s", self.what, os.getpid(), counts, rate, self.rate_key)

    def flush(self) -> None:
        """Share the counts now (at a bundle's end: the last counts must reach the bar)."""
        with self._lock:
            self.shared = time.monotonic()
            self._share(dict(self.counts))

    def share_into(self, folder) -> None:
        """On a worker: keep counts in the launcher's folder (from `shared_folder()` at construction). A new
        folder is a new job in the same process (a small job runs in its launcher): its counts start at zero."""
        if folder and folder != self.folder:
            with self._lock:
                self.folder = folder
                self.counts.clear()
                self.started = self.last = self.shared = time.monotonic()

    def _share(self, counts: dict) -> None:
        folder = self.folder or os.environ.get(ENV_DIR)
        if not folder or not os.path.isdir(folder):
            return
        path = os.path.join(folder, f"{self.what}-{os.getpid()}-{id(self)}.json")
        with contextlib.suppress(OSError):
            with open(path + ".tmp", "w") as f:
                json.dump(counts, f)
            os.replace(path + ".tmp", path)


EMBED = Progress("embed", "images")
INDEX = Progress("index", "docs")
GRAPH = Progress("graph", "faces")

#: what each kind of work shows on its bar: (unit, the count that advances it)
BARS = {"embed": ("photos", "images"), "index": ("faces", "docs"), "graph": ("faces", "faces")}


def shared_folder():
    """The folder this launch's bars read, if any; a transform built now carries it to its workers."""
    return os.environ.get(ENV_DIR)


@contextlib.contextmanager
def launch_folder(stream=None):
    """While a command runs on a terminal: its bars' folder exists before its pipeline is built."""
    stream = stream or sys.stderr
    if os.environ.get(ENV_DIR) or not (hasattr(stream, "isatty") and stream.isatty()):
        yield
        return
    folder = tempfile.mkdtemp(prefix="facebeam-progress-")
    os.environ[ENV_DIR] = folder
    try:
        yield
    finally:
        os.environ.pop(ENV_DIR, None)
        shutil.rmtree(folder, ignore_errors=True)


def shared_counts(folder: str, what: str) -> collections.Counter:
    total = collections.Counter()
    for name in os.listdir(folder):
        if name.startswith(what + "-") and name.endswith(".json"):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, name)) as f:
                total.update(json.load(f))
    return total


@contextlib.contextmanager
def bars(totals=None, stream=None, every_s: float = 0.3):
    """While the body runs a job, one tqdm bar per kind of work its workers report; off unless `stream`
    (stderr) is a terminal. `totals`: {kind: expected count}, for the ETA. The body may put the job's final
    counts into the dict it gets ({"embed": images seen}); the bars end on them."""
    stream = stream or sys.stderr
    final = {}  # {kind: count}: the job's own metrics once it ended (bars.update_final)
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield final
        return
    from tqdm import tqdm

    before = os.environ.get(ENV_DIR)
    owned = not (before and os.path.isdir(before))  # else launch_folder's, made before the pipeline was built
    folder = tempfile.mkdtemp(prefix="facebeam-progress-") if owned else before
    os.environ[ENV_DIR] = folder
    shown, stop = {}, threading.Event()

    def refresh():
        for what, (unit, key) in BARS.items():
            n = max(shared_counts(folder, what)[key], final.get(what, 0))
            if n and what not in shown:
                shown[what] = tqdm(total=(totals or {}).get(what), desc=what, unit=f" {unit}", file=stream,
                                   dynamic_ncols=True, leave=False)
            if what in shown:
                shown[what].update(n - shown[what].n)

    def poll():
        while not stop.wait(every_s):
            refresh()

    thread = threading.Thread(target=poll, name="facebeam-progress", daemon=True)
    thread.start()
    try:
        yield final
    finally:
        stop.set()
        thread.join()
        refresh()  # the last counts the workers shared
        for bar in shown.values():
            bar.refresh()  # tqdm draws an update only 0.1 s after the last one: the final count, drawn
            bar.close()
        if owned:
            if before is None:
                os.environ.pop(ENV_DIR, None)
            else:
                os.environ[ENV_DIR] = before
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def waiting(what: str, stream=None, every_s: float = 1.0):
    """While the body waits on work with no count to show (a force merge that builds an index's graph),
    one line with `what` and the time so far, on a terminal only."""
    stream = stream or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        yield
        return
    from tqdm import tqdm

    bar = tqdm(desc=what, bar_format="{desc}: {elapsed}", file=stream, dynamic_ncols=True, leave=False)
    stop = threading.Event()

    def tick():
        while not stop.wait(every_s):
            bar.refresh()

    thread = threading.Thread(target=tick, name="facebeam-waiting", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


def count_files(patterns, budget_s: float = 2.0, since: float = None):
    """How many files local folder walks and globs read, for a bar's ETA; None when it is not cheap to know
    (another filesystem, a list file, or more than `budget_s` of walking). With `since` (--since, epoch
    seconds), only files modified at or after it: a nightly run's bar counted the whole library."""
    import glob

    from facebeam.transforms import sources

    def fresh(path):
        try:
            return since is None or os.stat(path).st_mtime >= since
        except OSError:  # a broken link: read, and its row says so
            return True

    n, deadline = 0, time.monotonic() + budget_s
    for p in patterns:
        if "://" in p or sources.is_list(p):
            return None
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):  # as the walk on the workers (sources.expand): no hidden
                dirs[:] = [d for d in dirs if not sources.hidden(d)  # folders, no facebeam outputs inside
                           and not os.path.exists(os.path.join(root, d, OUTPUT_LOCK_FILE))]
                n += sum(1 for name in names
                         if sources.walk_skips(os.path.join(root, name), p) is None and fresh(os.path.join(root, name)))
                if time.monotonic() > deadline:
                    return None
        elif os.path.isfile(p):  # named as it is, even with a [ in its name
            n += fresh(p)
        elif p.endswith("/"):  # a glob that walks the folders it matches
            found = glob.glob(os.path.join(p, "**"), recursive=True)
            n += sum(1 for f in found
                     if os.path.isfile(f) and sources.walk_skips(f, sources.walk_root(p)) is None and fresh(f))
        else:
            n += sum(1 for f in glob.glob(p, recursive=True) if os.path.isfile(f) and fresh(f))
    return n
