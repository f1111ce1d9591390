"""Inputs: folders (recursive), glob patterns and list files, on any Beam filesystem.

A folder or file that exists is read as named, whatever its characters (`is_glob`); a glob that
ends in / walks every folder it matches (`people/*/`).

The rule for files: every file a glob or a list file names is read, and decoding decides
(`not_an_image` when it is not one). A folder walk reads every file whose name has an image
extension or no extension at all (decoding decides again); a file with any other extension
(`.txt`, `.csv`, `.md`, ...) is not read but counted as skipped: the Beam counter
`facebeam/files_skipped.not_image`, `files_skipped` in the job summary and the end-of-run
log line, with the first paths in `files_skipped_examples` and the line under it. A walk also
skips what lies under a hidden or system name below the folder (`.thumbnails/`, macOS's
`._IMG_1.jpg`, a NAS's `@eaDir/` thumbnails and `#recycle/`), counted as `files_skipped.hidden`:
read, they were duplicate faces at thumbnail size or dead letters. Named on its own, in a glob or
in a list file, such a path is read. A walk leaves out facebeam's own outputs inside the folder
too (a folder holding `.facebeam.lock`), as `facebeam_output`.

Symlinks: a folder walk or a glob on local disk does not read a symlink whose target lies outside
the input's root (the folder, or the glob's folder before its first wildcard): it is counted in
`files_skipped.symlink_outside` instead, so a link to `/etc/passwd` dropped into a photo folder
is never read. `--follow-symlinks` (`Inputs.follow_symlinks`) reads them. A path named on its own
or in a list file is read as named. (Beam's local lister never descends into symlinked folders.)
A symlink to nothing (its drive not mounted, its file moved), which Beam's lister drops without a
word, is counted by a walk of a local folder as `files_skipped.broken_link`.

Pages: every page of a multi-page TIFF is an image of its own (`images.decode_pages`); the pages
after the first are counted in `images_extra_pages`. So
`files_seen = images_seen - images_extra_pages + images_done + sum(files_skipped)`, and
`images_seen = images_embedded + sum(images_failed)` as before.

Paths are canonical: a local path is stored absolute and normalised (symlinks are kept as
typed), whatever folder the job ran from; a URI (`gs://...`) is kept as it is.
"""
import dataclasses
import hashlib
import logging
import os
import posixpath
import re
import stat

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from facebeam.transforms.errors import UserError
from facebeam.transforms.images import DEFAULT_MAX_PIXELS, EXTRA_PAGES
from facebeam.transforms.locks import OUTPUT_LOCK_FILE

log = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".jfif", ".heic", ".heif", ".avif")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
SKIPPED = "files_skipped."  # Beam counters files_skipped.<why> (ExpandInputs.WHY): files listed but not read
SKIPPED_PATHS = "files_skipped_paths."  # Beam string sets files_skipped_paths.<why>: the first few, as examples
# Folders a walk does not enter besides dot-names: NAS thumbnail caches, recycle bins and snapshots.
SYSTEM_FOLDERS = ("@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN", "System Volume Information")
WILDCARDS = "*?["  # what Beam's match reads as a pattern (it has no quoting)


class InputError(UserError, ValueError):
    """An input pattern that names nothing usable."""


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What to embed, and the limits each image is checked against before decoding."""

    patterns: tuple
    label_from: str = None
    since: str = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    batch_size: int = 4
    follow_symlinks: bool = False  # read symlinks whose target leaves the input root


def has_wildcard(path: str) -> bool:
    return any(ch in path for ch in WILDCARDS)


def is_list(p: str) -> bool:
    """Whether an input is a list file (`@file`, or a .txt/.lst/.list name)."""
    return p.startswith("@") or p.lower().endswith(LIST_EXTENSIONS)


def is_glob(p: str) -> bool:
    """Whether an input is a pattern: it has a wildcard and names no local folder or file as it is
    (`Photos [2019]` that exists is a folder, not a glob)."""
    return has_wildcard(p) and not ("://" not in p and os.path.exists(p))


def _is_dir(p: str) -> bool:
    if p.endswith("/"):
        return True
    return "://" not in p and os.path.isdir(p)


def _is_file(p: str) -> bool:
    """Whether `p` names one file as it is (local disk), whatever its characters."""
    return "://" not in p and os.path.isfile(p)


def _walk(folder: str) -> list:
    """Metadata of every file under a folder input: one named as it is, or every folder a pattern matches
    (`people/*/`). A remote folder with a wildcard is tried as named first: object stores have no folder
    whose existence could say which it is."""
    if not is_glob(folder):
        return _match_named(folder, walk=True)
    found = _match_named(folder, walk=True) if "://" in folder else []
    return found or FileSystems.match([FileSystems.join(folder.rstrip("/"), "**")])[0].metadata_list


def _match_named(path: str, walk: bool = False) -> list:
    """Metadata of the file `path` as named, or with `walk` of every file under the folder `path`, whatever
    their characters (`Photos [2019]`). Beam's patterns have no quoting, so each *, ? and [ becomes ? (any one
    character), and what that wider pattern also matches is dropped."""
    pattern = re.sub(f"[{re.escape(WILDCARDS)}]", "?", path.rstrip("/"))
    found = FileSystems.match([FileSystems.join(pattern, "**") if walk else pattern])[0].metadata_list
    if walk:
        inside = canonical(path).rstrip("/") + "/"
        return [m for m in found if canonical(m.path).startswith(inside)]
    return [m for m in found if canonical(m.path) == canonical(path)]


def utf8_name(path: str) -> bool:
    """Whether a path is text the stores can hold. A name in another encoding reaches Python with surrogate
    escapes (os.fsdecode), which Beam's coders, Parquet and JSON all refuse."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def special(path: str) -> bool:
    """Whether a local path is a pipe, socket or device (a link followed): reading a named pipe waits for a
    writer forever, so such a file is never read."""
    if "://" in path:
        return False
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # gone or unreadable: reading it says so in a dead letter
        return False


def shown(path: str) -> str:
    """A path as a line can say it: bytes that are not UTF-8 as \\xNN."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def canonical(path: str) -> str:
    """A local path made absolute and normalised; a URI as it is."""
    return path if "://" in path else os.path.abspath(path)


def walk_takes(path: str) -> bool:
    """Whether a folder walk reads `path` by its name: an image extension or none (decoding decides)."""
    name = posixpath.basename(path.rstrip("/"))
    ext = os.path.splitext(name)[1].lower()
    return ext == "" or ext in IMAGE_EXTENSIONS


def hidden(name: str) -> bool:
    """Whether a walk leaves out a file or folder of this name (see the module docstring)."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def walk_skips(path: str, root: str):
    """Why a walk of the folder `root` does not read `path` ("hidden", "not_image"), or None when it does."""
    path, root = canonical(path), canonical(root).rstrip("/")
    below = path[len(root) + 1:] if path.startswith(root + "/") else posixpath.basename(path)
    if any(hidden(part) for part in below.split("/")):
        return "hidden"
    return None if walk_takes(path) else "not_image"


def walk_root(pattern: str) -> str:
    """The folder a walk's hidden names are counted below: the folder, or a glob's folder before its first
    wildcard (`people/*/` -> `people`)."""
    if not is_glob(pattern):
        return pattern
    return posixpath.dirname(pattern[:min(pattern.index(ch) for ch in WILDCARDS if ch in pattern)]) or "."


def _list_lines(path: str):
    with FileSystems.open(path) as f:
        # -sig: an editor's byte-order mark is not a path; a line in another encoding is a name expand skips
        for line in f.read().decode("utf-8-sig", "surrogateescape").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def _root(pattern: str) -> str:
    """The folder a local glob stays in: the glob's folder before its first wildcard."""
    fixed = pattern
    for i, ch in enumerate(pattern):
        if ch in WILDCARDS:
            fixed = os.path.dirname(pattern[:i])
            break
    return os.path.realpath(fixed or ".")


def broken_links(folder: str) -> list:
    """The symlinks to nothing under a local folder, sorted. Beam's lister drops them (their size cannot be
    read), so a library on a drive that is not mounted would look empty; a walk counts them instead. By hand:
    one pass of os.scandir, which knows a link without a stat; only links are stat'ed."""
    found, todo = [], [folder]
    while todo:
        try:
            with os.scandir(todo.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                    elif e.is_symlink() and not os.path.exists(e.path):
                        found.append(e.path)
        except OSError:  # a folder that cannot be listed: Beam's walk passes over it too
            continue
    return sorted(found)


def leaves(path: str, root: str) -> bool:
    """Whether a local `path` is a symlink (or lies under one) whose target is outside `root` (a realpath)."""
    real = os.path.realpath(path)
    return real != root and not real.startswith(root.rstrip(os.sep) + os.sep)


def expand(pattern: str, since: float = None, skipped=None, follow_symlinks: bool = False):
    """Yield (canonical path, size_in_bytes or None) for one user input; `since` keeps files modified at or after it.

    A folder walk or glob passes each file it does not read (see the module docstring) to
    `skipped(path, why)`, why = "not_image", "hidden", "symlink_outside" or "broken_link"; any input passes a file whose name
    is not UTF-8 there as "name_not_utf8", a pipe, socket or device as "special_file", and a file modified
    before `since` as "older_than_since". Inputs that name
    nothing were refused in the launcher (`check_inputs`); here they yield nothing.
    """
    def fresh(m):
        return since is None or m.last_updated_in_seconds >= since

    if is_list(pattern):
        for line in _list_lines(pattern.lstrip("@")):
            found = None if since is None else _match_named(line)
            why = "name_not_utf8" if not utf8_name(line) else "special_file" if special(line) else None
            if why is None and found and not fresh(found[0]):  # a missing one is read, and its row says so
                why = "older_than_since"
            if why is not None:
                if skipped is not None:
                    skipped(canonical(line), why)
                continue
            yield canonical(line), found[0].size_in_bytes if found else None
        return
    walk = _is_dir(pattern)
    named = not walk and _is_file(pattern)  # a file named as it is, even with a [ in its name
    if walk:
        listed = _walk(pattern)
    elif named:
        listed = _match_named(pattern)
    else:
        listed = FileSystems.match([pattern])[0].metadata_list
    # A glob or walk on local disk stays in its root; a path named on its own is read as named.
    glob = is_glob(pattern)
    root = None
    if (walk or glob) and "://" not in pattern and not follow_symlinks:
        root = _root(pattern) if glob else os.path.realpath(pattern)
    found = []
    top = walk_root(pattern) if walk else None
    outputs = output_folders([m.path for m in listed], top) if walk else ()
    for m in listed:
        why = None
        if not fresh(m):  # whatever else it is: a nightly --since run accounts for every file it listed
            why = "older_than_since"
        elif root is not None and leaves(m.path, root):
            why = "symlink_outside"
        elif canonical(m.path).startswith(outputs):
            why = "facebeam_output"
        elif walk:
            why = walk_skips(m.path, top)
        if why is None and not utf8_name(m.path):
            why = "name_not_utf8"
        if why is None and special(m.path):
            why = "special_file"
        if why is None:
            found.append(m)
            continue
        if skipped is not None:
            skipped(canonical(m.path), why)
    if walk and not glob and "://" not in pattern and skipped is not None:
        for path in broken_links(pattern):
            if since is not None and os.lstat(path).st_mtime < since:
                why = "older_than_since"
            elif canonical(path).startswith(outputs):
                why = "facebeam_output"
            else:
                why = walk_skips(path, top) or "broken_link"
            skipped(canonical(path), why)
    if not found:  # info: the result line counts what it skipped, and why
        log.info("input %r matched no image files%s", pattern, " modified since --since" if since else "")
    for m in found:
        yield canonical(m.path), m.size_in_bytes


class ExpandInputs(beam.DoFn):
    """Pattern -> (path, size); listing happens on workers, not in the launcher."""

    SHOWN = 5  # skipped paths logged per input
    WHY = {"not_image": "whose extension is not an image's",
           "hidden": "under hidden or system names (.name, @eaDir, #recycle)",
           "symlink_outside": "that are symlinks out of the input (--follow-symlinks reads them)",
           "broken_link": "that are symlinks to nothing (a drive not mounted, a file moved)",
           "special_file": "that are pipes, sockets or devices, not files",
           "facebeam_output": "of facebeam's own outputs inside the folder (shards, reports)",
           "older_than_since": "modified before --since",
           "name_not_utf8": "whose names are not UTF-8, which no store can hold (rename them, e.g. "
                            "`convmv -f latin1 -t utf8 -r --notest DIR`)"}

    def __init__(self, since: float = None, follow_symlinks: bool = False):
        self._since, self._follow = since, follow_symlinks

    def process(self, pattern):
        from facebeam.transforms import metrics

        skipped = {}

        def skip(path, why):
            metrics.count(SKIPPED + why)
            paths = skipped.setdefault(why, [])
            if len(paths) < self.SHOWN:  # examples for the summary, so a worker's log is not the only place
                metrics.note(SKIPPED_PATHS + why, shown(path))
            paths.append(path)

        yield from expand(pattern, self._since, skip, self._follow)
        for why, paths in skipped.items():  # info: the result line names them (files_skipped_examples)
            log.info("input %r: skipped %d file(s) %s, e.g. %s",
                        shown(pattern), len(paths), self.WHY[why], ", ".join(shown(p) for p in paths[: self.SHOWN]))


def input_counts(counters: dict, images_seen: int, notes: dict = None) -> dict:
    """The summary's file counts from the job's Beam counters: files_skipped by why, extra pages, files_seen;
    with the job's string sets (`notes`), files_skipped_examples: a few skipped paths by why."""
    from facebeam.transforms.metrics import IMAGES_DONE, by_name

    skipped = by_name(counters, SKIPPED)
    extra = counters.get(EXTRA_PAGES, 0)
    # Every file listed: read (pages after the first are not files), already done (an incremental run), skipped.
    out = {"files_skipped": skipped,
           "files_seen": images_seen - extra + counters.get(IMAGES_DONE, 0) + sum(skipped.values())}
    examples = by_name(notes, SKIPPED_PATHS, ExpandInputs.SHOWN)
    if examples:
        out["files_skipped_examples"] = examples
    if extra:
        out[EXTRA_PAGES] = extra
    return out


def parse_since(text: str) -> float:
    """'2026-11-01' or an ISO date-time (UTC unless it says otherwise) -> epoch seconds."""
    import datetime

    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--since wants an ISO date like 2026-11-01 or 2026-11-01T08:00, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def read_bytes(path: str, max_bytes: int):
    """(data, sha256); raises OSError for unreadable paths and ValueError when too big."""
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file is larger than the limit of {max_bytes} bytes")
    return data, hashlib.sha256(data).hexdigest()


def output_folders(paths, top: str) -> tuple:
    """("folder/", ...): facebeam's own outputs among a walk's `paths` (a folder holding `.facebeam.lock`).
    Their shards, reports and plots are not photos of the library, and a run would read its own earlier
    output. Strictly below the walked folder `top`: `--output photos` itself keeps its photos read."""
    top = canonical(top).rstrip("/")
    return tuple(posixpath.dirname(canonical(p)) + "/" for p in paths
                 if posixpath.basename(p) == OUTPUT_LOCK_FILE and posixpath.dirname(canonical(p)) != top)


def _folder_has_candidate(folder: str):
    """(files seen, whether one is read by the walk); stops at the first candidate on local disk."""
    if "://" not in folder and not is_glob(folder):
        seen = 0
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not os.path.exists(os.path.join(root, d, OUTPUT_LOCK_FILE))]  # as expand
            for name in names:
                if os.path.isfile(os.path.join(root, name)):
                    seen += 1
                    if walk_skips(os.path.join(root, name), folder) is None:
                        return seen, True
        return seen, False
    found, top = _walk(folder), walk_root(folder)
    outputs = output_folders([m.path for m in found], top)
    return len(found), any(walk_skips(m.path, top) is None and not canonical(m.path).startswith(outputs) for m in found)


#: The Beam extra each filesystem comes with, for the message when it is not installed.
FILESYSTEM_EXTRAS = {"gs": "gcp", "s3": "aws", "azfs": "azure", "hdfs": "hadoop"}


def check_filesystem(path: str, what: str) -> None:
    """One line, before any work, when no Beam filesystem here reads `path`'s scheme (Beam's own error is a
    ValueError from deep inside the job)."""
    if "://" not in path:
        return
    from apache_beam.io.filesystem import BeamIOError

    try:
        FileSystems.get_filesystem(path)
    except (ValueError, BeamIOError):
        scheme = path.split("://", 1)[0]
        extra = FILESYSTEM_EXTRAS.get(scheme)
        how = f"install apache-beam[{extra}]" if extra else "Beam reads local paths, gs://, s3://, azfs:// and hdfs://"
        raise InputError(f"{what} {path!r}: no filesystem for {scheme}:// is available here ({how})") from None


def check_inputs(patterns) -> None:
    """Fail before launching a job when an input names nothing (a typo should not run for an hour).

    A folder must hold at least one file a walk reads (an image extension or none); a glob must
    match something; a list file must exist and name at least one path; each must be UTF-8 text.
    """
    for p in patterns:
        check_filesystem(p.lstrip("@") if is_list(p) else p, "input")
        if not utf8_name(p):
            raise InputError(f"input '{shown(p)}' is not UTF-8, which no store can hold: rename it (e.g. `convmv -f "
                             "latin1 -t utf8 -r --notest PATH`)")
        if is_list(p):
            path = p.lstrip("@")
            if not FileSystems.exists(path):
                raise InputError(f"list file {path!r} does not exist")
            if next(_list_lines(path), None) is None:
                raise InputError(f"list file {path!r} names no files")
        elif _is_dir(p):
            seen, ok = _folder_has_candidate(p)
            if not seen:
                links = [] if is_glob(p) or "://" in p else broken_links(p)
                if links:  # a library of links into a drive that is not mounted
                    raise InputError(f"input folder {p!r} holds no files, only {len(links)} symlink(s) to nothing "
                                     f"(e.g. {shown(links[0])} -> {shown(os.readlink(links[0]))}): is their drive "
                                     "mounted?")
                raise InputError(f"input {p!r} matched no files" if is_glob(p) else f"input folder {p!r} holds no files")
            if not ok:
                raise InputError(f"input folder {p!r} holds no image files: its {seen} file(s) all have "
                                 f"non-image extensions (images: {', '.join(IMAGE_EXTENSIONS)}, or no extension) "
                                 "or lie under hidden or system names (.name, @eaDir, #recycle; name such a "
                                 "folder itself to read it)")
        elif not _is_file(p) and not FileSystems.match([p])[0].metadata_list:
            raise InputError(f"input {p!r} matched no files")


