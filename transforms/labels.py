"""Identity labels: where they come from at embed time, and how a query decides one.

The rule (`decide`): a probe face takes the label of its nearest labeled hit, if that
hit is within the same-person threshold, unless a hit of another label is nearly as
close (within MARGIN = 0.03 of it): then the match is ambiguous and the face gets no
label. Unlabeled hits are skipped. Only distances count, never how many hits a label
has, so the answer does not change with k once k reaches the two nearest labels.
Within one photo no label goes to two faces (`assign_unique`): the closer match keeps
it and the other face gets none. `photo_labels` applies both, for `query` and `search`.

With `--label-from parent-dir`, a photo's label is the folder it sits in, below an
input root: roots/alice/1.jpg -> 'alice'; a photo directly in an input root gets none.
"""
import csv
import io
import os
import posixpath

from facebeam.transforms.errors import UserError

MARGIN = 0.03


def _norm(path: str) -> str:
    return path.replace(os.sep, "/").rstrip("/")


def input_roots(patterns) -> tuple:
    """The folders labels are counted from: a folder input itself, a glob's folder before its first wildcard.

    List files name photos one by one and give no root.
    """
    from facebeam.transforms.sources import has_wildcard, is_glob, is_list

    roots = []
    for p in patterns or ():
        if is_list(p):
            continue
        parts = _norm(p).split("/")
        if is_glob(p):  # a folder named `Photos [2019]` is a root as it is
            cut = next(i for i, part in enumerate(parts) if has_wildcard(part))
            parts = parts[:cut]
        roots.append("/".join(parts) or "/")
    return tuple(roots)


class ParentDirLabeler:
    """root/alice/1.jpg -> 'alice'; root/1.jpg -> None (a photo directly in an input root has no folder of its own).

    `roots`: the input folders (absolute or as given; both forms are tried). Without roots, or for a
    path under none of them (e.g. from a list file), the parent folder's name is the label.
    """

    def __init__(self, roots=()):
        self._roots = frozenset(_norm(r) for root in roots
                                for r in ((root,) if "://" in root else (root, os.path.abspath(root))))

    def __call__(self, path: str, sha256: str = None):
        path = _norm(path)
        parent = posixpath.dirname(path)
        forms = {parent} if "://" in parent else {parent, _norm(os.path.abspath(parent or "."))}
        if forms & set(self._roots):
            return None
        return posixpath.basename(parent) or None


def csv_dicts(path: str) -> tuple:
    """(column names, rows as dicts) of a CSV as spreadsheets and editors write it: a byte-order mark is not part
    of the first name (utf-8-sig), and names are lower case without surrounding spaces ("Path", " Label ")."""
    if not os.path.isfile(path):
        raise UserError(f"CSV file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # Excel's plain "CSV" is the Windows code page, not UTF-8
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line} is not UTF-8 (byte 0x{data[e.start]:02X}): save it as UTF-8 "
                        "(Excel: 'CSV UTF-8'; or `iconv -f cp1252 -t utf-8`)") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    reader.fieldnames = [(n or "").strip().lower() for n in reader.fieldnames or ()]
    return reader.fieldnames, list(reader)


class CsvLabeler:
    """A CSV with columns path (or file) and label; a row matches by full path or by file name."""

    def __init__(self, csv_path: str):
        names, rows = csv_dicts(csv_path)
        if "label" not in names or not {"path", "file"} & set(names):
            raise UserError(f"{csv_path}: need a header with 'path' (or 'file') and 'label' columns")
        if not rows:
            raise UserError(f"{csv_path}: no rows under its header")
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


def labeler_from(spec: str, roots=()):
    """The labeler `--label-from` names; `roots` are the input patterns (parent-dir counts folders below them)."""
    if not spec:
        return None
    if spec == "parent-dir":
        return ParentDirLabeler(input_roots(roots))
    if spec.startswith("csv:"):
        return CsvLabeler(spec[4:])
    raise UserError(f"--label-from wants parent-dir or csv:FILE, got {spec!r}")


def decide(hits, threshold: float, margin: float = MARGIN):
    """(label, distance) of the nearest labeled hit within `threshold`, or (None, None).

    None too when the nearest hit of another label is within `margin` of it (a near tie).
    """
    nearest = {}
    for h in hits:
        label = h.get("label")
        if label and (label not in nearest or h["distance"] < nearest[label]):
            nearest[label] = h["distance"]
    if not nearest:
        return None, None
    ranked = sorted(nearest.items(), key=lambda kv: (kv[1], kv[0]))
    label, best = ranked[0]
    if best > threshold or (len(ranked) > 1 and ranked[1][1] - best < margin):
        return None, None
    return label, best


def assign_unique(candidates: dict) -> dict:
    """{face key: (label, distance)} -> {face key: label or None}, one face per label."""
    taken, out = set(), {}
    for key, (label, _dist) in sorted(candidates.items(), key=lambda kv: (kv[1][1] is None, kv[1][1] or 0.0)):
        if label is not None and label not in taken:
            taken.add(label)
            out[key] = label
        else:
            out[key] = None
    return out


def photo_labels(faces, threshold: float, margin: float = MARGIN) -> dict:
    """[(face_index, hits), ...] for the faces of one photo -> {face_index: label or None}."""
    return assign_unique({index: decide(hits, threshold, margin) for index, hits in faces})


SAME_WORDS = ("yes", "y", "same", "true", "1")
DIFFERENT_WORDS = ("no", "n", "different", "false", "0")


def decision(word, where: str):
    """A pairs CSV's decision cell -> True (same person), False (different) or None (blank: not labelled).
    A word that is neither is refused: read as "different", a typo would quietly turn a pair around."""
    word = (word or "").strip().lower()
    if not word:
        return None
    if word in SAME_WORDS or word in DIFFERENT_WORDS:
        return word in SAME_WORDS
    raise UserError(f"{where}: decision {word!r} is neither same ({', '.join(SAME_WORDS)}) "
                    f"nor different ({', '.join(DIFFERENT_WORDS)})")


def read_pairs(pairs_csv: str, by_name: bool = True) -> list:
    """A pairs CSV in deepface's pivot format (file_x, file_y, decision Yes/No) -> [(x, y, same)].

    With `by_name` the photos are named by file name alone (the pivot file's own convention)."""
    name = (lambda p: posixpath.basename(p.replace(os.sep, "/"))) if by_name else (lambda p: p)
    names, rows = csv_dicts(pairs_csv)
    if not {"file_x", "file_y", "decision"} <= set(names):
        raise UserError(f"{pairs_csv}: need columns file_x, file_y and decision (Yes/No)")
    out = []
    for line, r in enumerate(rows, start=2):
        same = decision(r["decision"], f"{pairs_csv} line {line}")
        if same is None:
            raise UserError(f"{pairs_csv} line {line}: no decision (Yes/No)")
        out.append((name(r["file_x"]), name(r["file_y"]), same))
    return out


def identities_from_pairs(pairs) -> dict:
    """[(x, y, same)] -> {name: identity}: union-find over the same-pairs; the identity is the group's
    smallest name; names never in a same-pair get none."""
    parent = {}

    def find(a):
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for x, y, same in pairs:
        find(x), find(y)
        if same:
            parent[find(x)] = find(y)
    groups = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    return {name: min(members) for members in groups.values() if len(members) > 1 for name in members}
