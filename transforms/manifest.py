"""What is done: a manifest of (image_sha256, spec_id) per run, and tombstones of erased images.

The manifest is Parquet with a few short columns per image, read column-wise, so
it stays cheap at millions of photos. Skipping is a CoGroupByKey on the sha256,
which scales with the workers instead of a side input held in memory.

A done photo found under a new path, while no path it was done under still holds it, has moved:
it is not embedded again, and this run's manifest records it with status `moved` and its new path
(transforms/moves.py then takes its faces there in the shards and the stores). A second copy of a
done photo, its first path still there, is a duplicate and only counted as done. A path that now
holds other content (a photo edited in place) no longer holds the old: when the old content is
listed nowhere now, the manifest records it as `replaced`, which is not done, and moves.py drops
its faces (the new content is embedded as any new photo).
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
REPLACED = "replaced"  # the status of done content whose path now holds other content: not done any more
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


def _keys(p, label, files, spec_id=None, statuses=False):
    """(image_sha256, the path it was done under, or None for tombstones) of those files' rows; `statuses`: manifest
    files, whose `replaced` rows are not done."""
    if not files:
        return p | f"No{label}" >> beam.Create([])
    columns = ["image_sha256"] + (["spec_id", "image_path"] if spec_id else []) + (["status"] if statuses else [])
    rows = p | f"{label}Files" >> beam.Create(files) | f"Read{label}" >> ReadAllFromParquet(columns=columns)
    if spec_id:
        rows = rows | f"{label}OfSpec" >> beam.Filter(lambda r, s: r["spec_id"] == s and r.get("status") != REPLACED,
                                                      spec_id)
    return rows | f"{label}Keys" >> beam.Map(lambda r: (r["image_sha256"], r.get("image_path")))


class SkipDone(beam.PTransform):
    """(path, size) -> {'new': the (path, size) whose content is neither done for this spec nor erased,
    'moved': (image_sha256, new path) of done photos found only under a new path, 'replaced': (image_sha256, path) of
    done content listed nowhere now, whose path holds other content}.

    `manifest_files` (status column) and `flat_files` (a run without --incremental: face rows) say what is done."""

    def __init__(self, spec_id: str, manifest_files, tombstone_files, max_bytes: int, flat_files=()):
        super().__init__()
        self._spec_id, self._done, self._gone, self._max_bytes = spec_id, list(manifest_files), list(tombstone_files), max_bytes
        self._flat = list(flat_files)

    def expand(self, paths):
        p = paths.pipeline
        hashed = paths | "Hash" >> beam.ParDo(HashFiles(self._max_bytes))
        done = ((_keys(p, "Done", self._done, self._spec_id, statuses=True),
                 _keys(p, "DoneFlat", self._flat, self._spec_id)) | "AllDone" >> beam.Flatten())
        gone = _keys(p, "Erased", self._gone)
        # A path listed now with other content than it was done with (edited in place): keyed by the content it held.
        changed = ({"now": hashed | "NowByPath" >> beam.Map(lambda kv: (kv[1][0], kv[0])),
                    "was": done | "DoneByPath" >> beam.Map(lambda kv: (kv[1], kv[0]))}
                   | "JoinByPath" >> beam.CoGroupByKey()
                   | "ChangedInPlace" >> beam.FlatMap(changed_in_place))
        kept = ({"new": hashed, "done": done, "gone": gone, "changed": changed}
                | "Join" >> beam.CoGroupByKey()
                | "KeepNew" >> beam.FlatMap(keep_new).with_outputs(MOVED, REPLACED, main="new"))
        return {"new": kept.new, "moved": kept[MOVED], "replaced": kept[REPLACED]}


def changed_in_place(kv):
    """(path, {'now': [content sha listed there now], 'was': [content shas done there]}) -> (old sha, path) for each
    content done there that the path no longer holds (an unreadable file tells nothing)."""
    path, groups = kv
    now = {sha for sha in groups["now"] if sha}
    if not path or not now:
        return []
    return [(sha, path) for sha in sorted(set(groups["was"]) - now) if sha]


def keep_new(kv, exists=FileSystems.exists):
    """The new files of one content hash; those done or erased are counted (images_done) and dropped. Done content
    that no path it was done under holds now (gone, or holding other content: `changed`) has moved when it is listed
    elsewhere, (sha, new path) tagged `moved`, and was replaced when it is listed nowhere but its path holds other
    content, (sha, path) tagged `replaced`."""
    sha, groups = kv
    new = list(groups["new"])
    if sha is None or not (groups["done"] or groups["gone"]):
        return new
    metrics.count(metrics.IMAGES_DONE, len(new))
    changed = set(groups.get("changed") or ())
    if groups["gone"] or not (new or changed):  # erased; or done, and not listed in this run: nothing to ask
        return []
    was = {path for path in groups["done"] if path}
    elsewhere = sorted(path for path, _ in new if path not in was)
    # Existence is asked only of content listed under a path it was not done under, or whose path changed: a few.
    if len(elsewhere) < len(new) or not was or any(path not in changed and exists(path) for path in was):
        return []
    if new:
        metrics.count(metrics.IMAGES_MOVED, 1)
        return [beam.pvalue.TaggedOutput(MOVED, (sha, elsewhere[0]))]
    metrics.count(metrics.IMAGES_REPLACED, 1)
    return [beam.pvalue.TaggedOutput(REPLACED, (sha, sorted(changed)[0]))]


def manifest_rows(faces, errors, spec_id: str, moved=None, replaced=None):
    """One manifest row per image that is done (embedded, failed for a reason a retry cannot change, or moved), and
    one per content replaced in place (not done: moves.py drops its faces)."""
    embedded = faces | "EmbeddedImages" >> beam.Map(lambda r: (r["image_sha256"], r["image_path"], "embedded"))
    failed = (errors
              | "FinalFailures" >> beam.Filter(lambda r: r["reason"] in DETERMINISTIC_REASONS and r["image_sha256"])
              | "FailedImages" >> beam.Map(lambda r: (r["image_sha256"], r["image_path"], r["reason"])))
    found = [embedded, failed]
    if moved is not None:
        found.append(moved | "MovedImages" >> beam.Map(lambda m: (m[0], m[1], MOVED)))
    if replaced is not None:
        found.append(replaced | "ReplacedImages" >> beam.Map(lambda m: (m[0], m[1], REPLACED)))
    return (tuple(found) | "ManifestRows" >> beam.Flatten() | "OnePerImage" >> beam.Distinct()
            | "ToManifest" >> beam.Map(lambda t: {"image_sha256": t[0], "spec_id": spec_id, "status": t[2], "image_path": t[1]}))


