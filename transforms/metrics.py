"""Beam metric names: one namespace, one constant per counter, so jobs and summaries agree."""
from apache_beam.metrics import Metrics

NAMESPACE = "facebeam"

IMAGES_SEEN = "images_seen"
IMAGES_EMBEDDED = "images_embedded"
IMAGES_DONE = "images_done"  # skipped by an incremental run: content already done for this spec, or erased
IMAGES_MOVED = "images_moved"  # of those, done photos found only under a new path (manifest.MOVED)
IMAGES_REPLACED = "images_replaced"  # done content its path no longer holds, listed nowhere (manifest.REPLACED)
IMAGES_FAILED = "images_failed"  # one counter per reason: images_failed.<reason>
FAILED_PATHS = "images_failed_paths."  # string sets images_failed_paths.<reason>: a few paths, as examples
EXAMPLES_PER_WORKER = 3  # examples a worker notes per string set (Examples)
FACES = "faces"
FACES_LABELED = "faces_labeled"  # faces given a label by --label-from
ROWS_READ = "rows_read"
DOCS_INDEXED = "docs_indexed"
DOCS_FAILED = "docs_failed"
DOCS_RETRIED = "docs_retried"


def counter(name: str):
    return Metrics.counter(NAMESPACE, name)


def count(name: str, n: int = 1) -> None:
    counter(name).inc(n)


def failed_name(reason: str) -> str:
    return f"{IMAGES_FAILED}.{reason}"


def counted(element, name: str):
    """Identity map that counts elements under `name` (use with beam.Map)."""
    count(name)
    return element


def read_counters(result) -> dict:
    """Committed counter values in facebeam's namespace (attempted where a runner has no committed)."""
    from apache_beam.metrics import MetricsFilter

    out = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (value or 0)
    return out


def note(name: str, text: str) -> None:
    """Add `text` to the string set `name`: a few examples for the summary (paths of skipped files)."""
    Metrics.string_set(NAMESPACE, name).add(text)


class Examples:
    """`note`, at most `most` times per string set: a summary needs a few paths, not a backfill's every one. One
    per DoFn instance (or closure), so each job's workers start afresh, even in a harness that serves many jobs."""

    def __init__(self, most: int = EXAMPLES_PER_WORKER):
        self.most, self.noted = most, {}

    def note(self, name: str, text: str) -> None:
        if self.noted.get(name, 0) < self.most:
            self.noted[name] = self.noted.get(name, 0) + 1
            note(name, text)


def read_notes(result) -> dict:
    """{name: sorted texts} of the string sets in facebeam's namespace. Examples only: a runner may merge
    them across workers partly (Beam 2.77's FnApiRunner keeps one worker's), or not report them at all."""
    from apache_beam.metrics import MetricsFilter

    out = {}
    for s in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE)).get("string_sets", []):
        value = s.committed if s.committed is not None else s.attempted
        out.setdefault(s.key.metric.name, set()).update(value or ())
    return {k: sorted(v) for k, v in out.items()}


def by_name(values: dict, prefix: str, keep: int | None = None) -> dict:
    """{name: value} of the non-empty metrics named `prefix` + name, sorted by name; a string set cut to `keep`."""
    return {k[len(prefix):]: (v if keep is None else v[:keep]) for k, v in sorted((values or {}).items())
            if k.startswith(prefix) and v}


def image_counts(c: dict, notes: dict | None = None) -> dict:
    """images_seen = images_embedded + sum(images_failed.values()); with the job's string sets (`read_notes`),
    images_failed_examples: a few failed paths by reason."""
    out = {IMAGES_SEEN: c.get(IMAGES_SEEN, 0), IMAGES_EMBEDDED: c.get(IMAGES_EMBEDDED, 0),
           FACES: c.get(FACES, 0), IMAGES_FAILED: by_name(c, IMAGES_FAILED + ".")}
    examples = by_name(notes, FAILED_PATHS, EXAMPLES_PER_WORKER)
    if examples:
        out[IMAGES_FAILED + "_examples"] = examples
    return out


def index_counts(c: dict) -> dict:
    return {"indexed": c.get(DOCS_INDEXED, 0), "failed": c.get(DOCS_FAILED, 0), "retried": c.get(DOCS_RETRIED, 0)}


# Where the embed time goes: CPU time of the worker thread (core-milliseconds), one counter per stage.
STAGE_PREFIX = "stage_ms."
STAGE_DECODE = STAGE_PREFIX + "decode"  # read the file's bytes + decode (incl. re-decodes for small faces)
STAGE_DETECT = STAGE_PREFIX + "detect"  # face detector on the detection copy
STAGE_ALIGN = STAGE_PREFIX + "align"  # landmarks + alignment to the model's input chip
STAGE_DESCRIPTOR = STAGE_PREFIX + "descriptor"  # the recognizer (Dlib ResNet) on the chips
STAGE_ROWS = STAGE_PREFIX + "rows"  # face rows and error rows built from the results
STAGE_WRITE = STAGE_PREFIX + "write"  # Parquet shards written (counted by whoever writes them)
STAGES = ("decode", "detect", "align", "descriptor", "rows", "write")


def count_stage(name: str, seconds: float) -> None:
    """Add CPU seconds to a stage counter (kept in whole milliseconds)."""
    ms = int(round(seconds * 1000))
    if ms:
        count(name, ms)


class stage_timer:
    """`with stage_timer(STAGE_X):` adds the block's thread CPU time to that stage's counter."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        import time

        self._t = time.thread_time()
        return self

    def __exit__(self, *exc):
        import time

        count_stage(self.name, time.thread_time() - self._t)
        return False


def stage_totals(counters: dict) -> dict:
    """{stage: core-seconds} for every stage counter in read_counters()'s result (0.0 where none)."""
    return {**dict.fromkeys(STAGES, 0.0), **{k: round(v / 1000.0, 3) for k, v in by_name(counters, STAGE_PREFIX).items()}}
