"""Identity labels: where they come from at embed time, and how a query decides one.

A probe face gets the label most hits within the model's threshold agree on (ties:
the closer group wins). Within one photo no label goes to two faces; the better
match keeps it and the other face gets none.
"""
import csv
import os
import posixpath


class ParentDirLabeler:
    """people/alice/1.jpg -> 'alice'."""

    def __call__(self, path: str, sha256: str = None):
        return posixpath.basename(posixpath.dirname(path.replace(os.sep, "/"))) or None


class CsvLabeler:
    """A CSV with columns path (or file) and label; a row matches by full path or by file name."""

    def __init__(self, csv_path: str):
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "label" not in rows[0] or not ({"path", "file"} & set(rows[0])):
            raise ValueError(f"{csv_path}: need a header with 'path' (or 'file') and 'label' columns")
        self._labels = {}
        for r in rows:
            key = r.get("path") or r.get("file")
            self._labels[key] = r["label"]
            self._labels.setdefault(posixpath.basename(key), r["label"])

    def __call__(self, path: str, sha256: str = None):
        return self._labels.get(path) or self._labels.get(posixpath.basename(path))


class ContentLabeler:
    """Labels by image content (sha256), e.g. carried over from an older index."""

    def __init__(self, by_sha256: dict):
        self._labels = dict(by_sha256)

    def __call__(self, path: str, sha256: str = None):
        return self._labels.get(sha256)


def labeler_from(spec: str):
    if not spec:
        return None
    if spec == "parent-dir":
        return ParentDirLabeler()
    if spec.startswith("csv:"):
        return CsvLabeler(spec[4:])
    raise ValueError(f"--label-from wants parent-dir or csv:FILE, got {spec!r}")


def vote(hits, threshold: float):
    """(label, best distance) agreed by hits within the threshold, or (None, None)."""
    groups = {}
    for h in hits:
        if h.get("label") and h["distance"] <= threshold:
            groups.setdefault(h["label"], []).append(h["distance"])
    if not groups:
        return None, None
    label, ds = min(groups.items(), key=lambda kv: (-len(kv[1]), sum(kv[1]) / len(kv[1])))
    return label, min(ds)


def assign_unique(candidates: dict) -> dict:
    """{face key: (label, distance)} -> {face key: label or None}, one face per label."""
    taken, out = set(), {}
    for key, (label, dist) in sorted(candidates.items(), key=lambda kv: (kv[1][1] is None, kv[1][1] or 0.0)):
        if label is not None and label not in taken:
            taken.add(label)
            out[key] = label
        else:
            out[key] = None
    return out
