"""What is done: a manifest of (image_sha256, spec_id) per run, and tombstones of erased images.

The manifest is Parquet with a few short columns per image, read column-wise, so
it stays cheap at millions of photos. Skipping is a CoGroupByKey on the sha256,
which scales with the workers instead of a side input held in memory.

A done photo found under a new path, while no path it was done under exists any more, has moved:
it is not embedded again, and this run's manifest records it with status `moved` and its new path
(transforms/moves.py then takes its faces there in the shards and the stores). A second copy of a
done photo, its first path still there, is a duplicate and only counted as done.
"""
import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadAllFromParquet

from facebeam.transforms import metrics, sources

MANIFEST_SCHEMA = pa.schema([
    ("image_sha256", pa.string()), ("spec_id", pa.string()), ("status", pa.string()), ("image_path", pa.string()),
])
# Failures that a re-run would repeat: the image is done (for this spec) as far as a backfill goes.
DETERMINISTIC_REASONS = ("empty", "not_an_image", "truncated", "corrupt", "too_large", "no_face")
MOVED = "moved"  # the status of a done photo this run found under a new path
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
    """(image_sha256, the path it was done under, or None for tombstones) of those files' rows."""
    if not files:
        return p | f"No{label}" >> beam.Create([])
    columns = ["image_sha256"] + (["spec_id", "image_path"] if spec_id else [])
    rows = p | f"{label}Files" >> beam.Create(files) | f"Read{label}" >> ReadAllFromParquet(columns=columns)
    if spec_id:
        rows = rows | f"{label}OfSpec" >> beam.Filter(lambda r, s: r["spec_id"] == s, spec_id)
    return rows | f"{label}Keys" >> beam.Map(lambda r: (r["image_sha256"], r.get("image_path")))


class SkipDone(beam.PTransform):
    """(path, size) -> {'new': the (path, size) whose content is neither done for this spec nor erased,
    'moved': (image_sha256, new path) of done photos found only under a new path}."""

    def __init__(self, spec_id: str, manifest_files, tombstone_files, max_bytes: int):
        super().__init__()
        self._spec_id, self._done, self._gone, self._max_bytes = spec_id, list(manifest_files), list(tombstone_files), max_bytes

    def expand(self, paths):
        p = paths.pipeline
        hashed = paths | "Hash" >> beam.ParDo(HashFiles(self._max_bytes))
        done = _keys(p, "Done", self._done, self._spec_id)
        gone = _keys(p, "Erased", self._gone)
        kept = ({"new": hashed, "done": done, "gone": gone}
                | "Join" >> beam.CoGroupByKey()
                | "KeepNew" >> beam.FlatMap(keep_new).with_outputs(MOVED, main="new"))
        return {"new": kept.new, "moved": kept[MOVED]}


def keep_new(kv, exists=FileSystems.exists):
    """The new files of one content hash; those done or erased are counted (images_done) and dropped. A done photo
    listed only under paths it was not done under, none of which exists now, moved: (sha, new path) is tagged out."""
    sha, groups = kv
    new = list(groups["new"])
    if sha is None or not (groups["done"] or groups["gone"]):
        return new
    metrics.count(metrics.IMAGES_DONE, len(new))
    if groups["gone"]:
        return []
    was = {path for path in groups["done"] if path}
    elsewhere = sorted(path for path, _ in new if path not in was)
    # Existence is asked only of photos listed under a path they were not done under: copies and moves, a few.
    if new and len(elsewhere) == len(new) and was and not any(exists(path) for path in was):
        metrics.count(metrics.IMAGES_MOVED, 1)
        return [beam.pvalue.TaggedOutput(MOVED, (sha, elsewhere[0]))]
    return []


def manifest_rows(faces, errors, spec_id: str, moved=None):
    """One manifest row per image that is done: embedded, failed for a reason a retry cannot change, or moved."""
    embedded = faces | "EmbeddedImages" >> beam.Map(lambda r: (r["image_sha256"], r["image_path"], "embedded"))
    failed = (errors
              | "FinalFailures" >> beam.Filter(lambda r: r["reason"] in DETERMINISTIC_REASONS and r["image_sha256"])
              | "FailedImages" >> beam.Map(lambda r: (r["image_sha256"], r["image_path"], r["reason"])))
    found = [embedded, failed]
    if moved is not None:
        found.append(moved | "MovedImages" >> beam.Map(lambda m: (m[0], m[1], MOVED)))
    return (tuple(found) | "ManifestRows" >> beam.Flatten() | "OnePerImage" >> beam.Distinct()
            | "ToManifest" >> beam.Map(lambda t: {"image_sha256": t[0], "spec_id": spec_id, "status": t[2], "image_path": t[1]}))


