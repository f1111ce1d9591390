"""Beam metric names: one namespace, one constant per counter, so jobs and summaries agree."""
from apache_beam.metrics import Metrics

NAMESPACE = "facebeam"

IMAGES_SEEN = "images_seen"
IMAGES_EMBEDDED = "images_embedded"
IMAGES_FAILED = "images_failed"  # one counter per reason: images_failed.<reason>
FACES = "faces"
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


def image_counts(c: dict) -> dict:
    """images_seen = images_embedded + sum(images_failed.values())."""
    prefix = IMAGES_FAILED + "."
    failed = {k[len(prefix):]: v for k, v in sorted(c.items()) if k.startswith(prefix) and v}
    return {IMAGES_SEEN: c.get(IMAGES_SEEN, 0), IMAGES_EMBEDDED: c.get(IMAGES_EMBEDDED, 0),
            FACES: c.get(FACES, 0), IMAGES_FAILED: failed}


def index_counts(c: dict) -> dict:
    return {"indexed": c.get(DOCS_INDEXED, 0), "failed": c.get(DOCS_FAILED, 0), "retried": c.get(DOCS_RETRIED, 0)}
