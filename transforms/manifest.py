"""What is done: a manifest of (image_sha256, spec_id) per run, and tombstones of erased images.

The manifest is Parquet with a few short columns per image, read column-wise, so
it stays cheap at millions of photos. Skipping is a CoGroupByKey on the sha256,
which scales with the workers instead of a side input held in memory.
"""
import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import ReadAllFromParquet

from facebeam.transforms import metrics, sources

MANIFEST_SCHEMA = pa.schema([
    ("image_sha256", pa.string()), ("spec_id", pa.string()), ("status", pa.string()), ("image_path", pa.string()),
])
# Failures that a re-run would repeat: the image is done (for this spec) as far as a backfill goes.
DETERMINISTIC_REASONS = ("empty", "not_an_image", "truncated", "corrupt", "too_large", "no_face")
TOMBSTONE_SCHEMA = pa.schema([
    ("image_sha256", pa.string()), ("image_path", pa.string()), ("label", pa.string()),
    ("reason", pa.string()), ("erased_at", pa.string()),
])


class HashFiles(beam.DoFn):
    """(path, size) -> (sha256, (path, size)); an unreadable file keys as None and stays 'new'."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes

    def process(self, element):
        try:
            _, sha = sources.read_bytes(element[0], self._max_bytes)
        except (OSError, ValueError):
            sha = None
        yield sha, element


def _keys(p, label, files, spec_id=None):
    if not files:
        return p | f"No{label}" >> beam.Create([])
    columns = ["image_sha256"] + (["spec_id"] if spec_id else [])
    rows = p | f"{label}Files" >> beam.Create(files) | f"Read{label}" >> ReadAllFromParquet(columns=columns)
    if spec_id:
        rows = rows | f"{label}OfSpec" >> beam.Filter(lambda r, s: r["spec_id"] == s, spec_id)
    return rows | f"{label}Keys" >> beam.Map(lambda r: (r["image_sha256"], None))


class SkipDone(beam.PTransform):
    """(path, size) -> the (path, size) whose content is neither done for this spec nor erased."""

    def __init__(self, spec_id: str, manifest_files, tombstone_files, max_bytes: int):
        super().__init__()
        self._spec_id, self._done, self._gone, self._max_bytes = spec_id, list(manifest_files), list(tombstone_files), max_bytes

    def expand(self, paths):
        p = paths.pipeline
        hashed = paths | "Hash" >> beam.ParDo(HashFiles(self._max_bytes))
        done = _keys(p, "Done", self._done, self._spec_id)
        gone = _keys(p, "Erased", self._gone)
        return ({"new": hashed, "done": done, "gone": gone}
                | "Join" >> beam.CoGroupByKey()
                | "KeepNew" >> beam.FlatMap(keep_new))


def keep_new(kv):
    """The new files of one content hash; those done or erased are counted (images_done) and dropped."""
    sha, groups = kv
    new = list(groups["new"])
    if sha is not None and (groups["done"] or groups["gone"]):
        metrics.count(metrics.IMAGES_DONE, len(new))
        return []
    return new


def manifest_rows(faces, errors, spec_id: str):
    """One manifest row per image that is done: embedded, or failed for a reason a retry cannot change."""
    embedded = faces | "EmbeddedImages" >> beam.Map(lambda r: (r["image_sha256"], r["image_path"], "embedded"))
    failed = (errors
              | "FinalFailures" >> beam.Filter(lambda r: r["reason"] in DETERMINISTIC_REASONS and r["image_sha256"])
              | "FailedImages" >> beam.Map(lambda r: (r["image_sha256"], r["image_path"], r["reason"])))
    return ((embedded, failed) | "ManifestRows" >> beam.Flatten() | "OnePerImage" >> beam.Distinct()
            | "ToManifest" >> beam.Map(lambda t: {"image_sha256": t[0], "spec_id": spec_id, "status": t[2], "image_path": t[1]}))


