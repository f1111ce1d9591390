"""A job's result, typed: what `summary.json` holds, what `--json` prints and what the result line says.

`JobSummary.build(command, fields)` is the one place a summary is made: the flat fields a job
counted (the same keys summary.json has always had) plus typed views of them: `embed`
(photos in and out), `load` (faces into a store), `threshold` (the same-person distance and
where it came from). The result line is built from those views only, so the line and the
file cannot disagree. A summary reads like a mapping (`s["faces"]`) so existing callers keep
working; it is frozen.
"""
from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from typing import Any


def _int(v) -> int:
    return int(v or 0)


# files_skipped's reasons (transforms/sources.py), as the result line says them
SKIPPED_WORDS = {"not_image": "non-image file(s)", "hidden": "file(s) under hidden or system names",
                 "symlink_outside": "symlink(s) out of the input", "broken_link": "symlink(s) to nothing",
                 "name_not_utf8": "file(s) named in another encoding",
                 "special_file": "pipe(s), socket(s) or device(s)", "facebeam_output": "file(s) of facebeam outputs",
                 "older_than_since": "file(s) older than --since"}


# ... and as the line of examples under it says one path's reason
SKIPPED_WHY = {"not_image": "not an image", "hidden": "hidden or system name", "symlink_outside": "symlink out",
               "broken_link": "symlink to nothing",
               "name_not_utf8": "name not UTF-8", "special_file": "not a regular file",
               "facebeam_output": "a facebeam output", "older_than_since": "older than --since"}
EXAMPLES_SHOWN = 3  # skipped paths on the result line; summary.json's files_skipped_examples has more
# ... but not for these: the user's own --output inside the folder, and a nightly --since run's older files
QUIET_SKIPS = ("facebeam_output", "older_than_since")


def skipped_words(skipped: Mapping) -> list:
    """["2 non-image file(s)", ...] for a summary's files_skipped, one per reason."""
    return [f"{n} {SKIPPED_WORDS.get(why, why)}" for why, n in (skipped or {}).items() if n]


@dataclasses.dataclass(frozen=True)
class EmbedCounts:
    """Photos in, faces out: seen = embedded + failed; `done` were skipped as already done (incremental)."""

    seen: int
    embedded: int
    faces: int
    failed: int
    skipped: Mapping
    done: int
    elapsed_s: float | None
    per_s: float | None
    moved: int = 0  # of `done`, found only under a new path: their faces now name it (moves.py)
    replaced: int = 0  # done photos whose path holds other content now: their old faces dropped (moves.py)
    examples: Mapping = dataclasses.field(default_factory=dict)  # a few skipped paths by why (sources.py)
    runs_replaced: int = 0  # incremental runs in the output that this run without --incremental replaced
    failed_by: Mapping = dataclasses.field(default_factory=dict)  # reason -> photos (records.REASONS)
    failed_examples: Mapping = dataclasses.field(default_factory=dict)  # reason -> a few paths (embed.count_failed)

    @classmethod
    def of(cls, f: Mapping) -> EmbedCounts | None:
        if "images_seen" not in f:
            return None
        failed = f.get("images_failed") or {}
        return cls(seen=_int(f["images_seen"]), embedded=_int(f.get("images_embedded")), faces=_int(f.get("faces")),
                   failed=sum(failed.values()) if isinstance(failed, Mapping) else _int(failed),
                   skipped=dict(f.get("files_skipped") or {}), done=_int(f.get("images_done")),
                   elapsed_s=f.get("elapsed_s"), per_s=f.get("images_per_s"), moved=_int(f.get("images_moved")),
                   replaced=_int(f.get("images_replaced")), examples=dict(f.get("files_skipped_examples") or {}),
                   runs_replaced=_int(f.get("runs_replaced")),
                   failed_by=dict(failed) if isinstance(failed, Mapping) else {},
                   failed_examples=dict(f.get("images_failed_examples") or {}))

    def examples_line(self) -> str | None:
        """`skipped: a.txt (not an image), ...`: which files the counts mean, wherever the workers logged."""
        said = [f"{path} ({SKIPPED_WHY.get(why, why)})" for why, paths in self.examples.items() for path in paths
                if why not in QUIET_SKIPS]
        if not said:
            return None
        more = "; summary.json lists more" if len(said) > EXAMPLES_SHOWN else ""
        return f"skipped: {', '.join(said[:EXAMPLES_SHOWN])}" + (f" ...{more}" if more else "")

    def failed_line(self, output: str | None = None) -> str | None:
        """`failed: 2 no face (a.jpg, b.jpg), 1 too large (c.tif); OUT/errors holds each with why`."""
        if not self.failed_by:
            return None
        said = []
        for reason, n in sorted(self.failed_by.items(), key=lambda kv: -kv[1]):
            paths = list(self.failed_examples.get(reason) or ())[:EXAMPLES_SHOWN]
            more = ", ..." if paths and n > len(paths) else ""
            said.append(f"{n} {reason.replace('_', ' ')}" + (f" ({', '.join(paths)}{more})" if paths else ""))
        where = f"; {output.rstrip('/')}/errors holds each with why" if output else ""
        return f"failed: {', '.join(said)}{where}"

    def words(self, output: str | None = None) -> str:
        extra = [f"{words} skipped" for words in skipped_words(self.skipped)]
        if self.done:
            extra.append(f"{self.done} already done, skipped")
        if self.moved:
            extra.append(f"{self.moved} of them moved: their faces now name the new path")
        if self.replaced:
            extra.append(f"{self.replaced} changed in place: the old version's faces dropped")
        if self.runs_replaced:
            extra.append(f"replaced the output's {self.runs_replaced} earlier run(s); --incremental adds to them")
        text = (f"embedded {counted(self.seen, 'photo')}: {counted(self.faces, 'face')}, {self.failed} failed"
                + (f" ({', '.join(extra)})" if extra else ""))
        if output:
            text += f" -> {output}"
        if self.elapsed_s:
            text += f" ({self.elapsed_s:.1f} s" + (f", {self.per_s:.1f} photos/s)" if self.per_s else ")")
        return text


@dataclasses.dataclass(frozen=True)
class LoadCounts:
    """Faces into a store: indexed now, failed, already there; `doc_count` the store holds after."""

    backend: str
    index: str | None
    where: str | None
    indexed: int
    failed: int
    present: int
    doc_count: int | None
    kind: str | None = None  # how the store indexes the vectors (an Elasticsearch field's type: int8_hnsw, ...)

    @classmethod
    def of(cls, f: Mapping) -> LoadCounts | None:
        if "docs_indexed" in f:
            indexed, failed = f["docs_indexed"], f.get("docs_failed")
        elif "indexed" in f and "backend" in f:
            indexed, failed = f["indexed"], f.get("failed")
        else:
            return None
        backend = f.get("backend") or "elasticsearch"
        where = f.get("concrete_index") or f.get("new_index") or f.get("ann_dir") or f.get("store")
        return cls(backend=backend, index=f.get("index"), where=where, indexed=_int(indexed), failed=_int(failed),
                   present=_int(f.get("skipped_present")), doc_count=f.get("doc_count"), kind=f.get("vector_type"))

    def store_words(self) -> str:
        name = {"elasticsearch": "Elasticsearch index", "local": "embedded index", "redis": "Redis store"}.get(
            self.backend, f"{self.backend} store")
        said = [w for w in (self.where if self.where != self.index else None, self.kind) if w]
        return f"the {name} {self.index}" + (f" ({', '.join(said)})" if said else "")

    def words(self) -> str:
        text = f"indexed {counted(self.indexed, 'face')} into {self.store_words()}"
        extra = [f"{self.failed} failed"] if self.failed else []
        if self.present:
            extra.append(f"{self.present} already there")
        if self.doc_count is not None:
            extra.append(f"{self.doc_count} in all")
        return text + (f": {', '.join(extra)}" if extra else "")


@dataclasses.dataclass(frozen=True)
class Threshold:
    """The same-person distance a job judged with and where it came from (flag, calibration, model)."""

    value: float
    source: str
    fallback: str = ""  # why a job fell back to the spec's default (cluster: a fit outside its range, too few faces)

    @classmethod
    def of(cls, f: Mapping) -> Threshold | None:
        if f.get("threshold") is None:
            return None
        source = str(f.get("threshold_from") or "given")
        return cls(value=float(f["threshold"]), source=source,
                   fallback=str(f.get("threshold_note") or "") if source == "spec" else "")

    def words(self) -> str:
        return f"same person at <= {self.value:.4f} ({self.source}{'; ' + self.fallback if self.fallback else ''})"


@dataclasses.dataclass(frozen=True)
class SearchHit:
    """One ranked hit of a probe face."""

    rank: int
    distance: float
    same_person: bool
    image_path: str
    label: str | None = None

    @classmethod
    def of(cls, row: Mapping) -> SearchHit:
        return cls(rank=int(row["rank"]), distance=float(row["distance"]), same_person=bool(row["same_person"]),
                   image_path=row["hit_image_path"], label=row.get("hit_label"))


@dataclasses.dataclass(frozen=True)
class JobSummary(Mapping):
    """A command's result: its flat fields (summary.json) and the typed views its line is built from."""

    command: str
    fields: Mapping[str, Any]
    embed: EmbedCounts | None = None
    load: LoadCounts | None = None
    threshold: Threshold | None = None
    choices: tuple = ()  # what the job chose on its own, said out loud: ("store: ...", "labels: ...")

    @classmethod
    def build(cls, command: str, fields: Mapping, choices=()) -> JobSummary:
        if isinstance(fields, JobSummary):
            fields = fields.fields
        fields = types.MappingProxyType(dict(fields or {}))
        return cls(command=command, fields=fields, embed=EmbedCounts.of(fields), load=LoadCounts.of(fields),
                   threshold=Threshold.of(fields), choices=tuple(choices))

    def __getitem__(self, key):
        return self.fields[key]

    def __iter__(self):
        return iter(self.fields)

    def __len__(self):
        return len(self.fields)

    def to_dict(self) -> dict:
        return dict(self.fields)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def line(self) -> str:
        text = LINES.get(self.command.split()[0], _generic)(self)
        details = (self.embed.examples_line(), self.embed.failed_line(self.get("output"))) if self.embed else ()
        return text + "".join(f"\n  {c}" for c in tuple(d for d in details if d) + self.choices)


def counted(n, noun: str) -> str:
    """`1 photo`, `2 photos`: the main counts of a result line (its other counts say `(s)`)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _secs(f: Mapping, key: str = "elapsed_s") -> str:
    return f" in {f[key]:.1f} s" if isinstance(f.get(key), (int, float)) else ""


def _embed_line(s: JobSummary) -> str:
    return s.embed.words(s.get("output"))


def _run_line(s: JobSummary) -> str:
    text = _embed_line(s)
    return text + ("\n" + s.load.words() if s.load else "")


def _index_line(s: JobSummary) -> str:
    if s.load is None:
        return _generic(s)
    read = s.get("rows_read")
    return s.load.words() + (f" ({read} rows read{_secs(s)})" if read is not None else "")


def _query_line(s: JobSummary) -> str:
    e = s.embed
    text = (f"queried {counted(e.seen, 'probe photo')}: {counted(s.get('probe_faces', 0), 'face')} searched, "
            f"{e.failed} failed" + "".join(f", {words} skipped" for words in skipped_words(e.skipped)) + ", "
            f"top {s.get('k')} from {s.get('backend', '?')} {s.get('searched', '')}".rstrip())
    if s.threshold:
        text += f"; {s.threshold.words()}"
    if s.get("output"):
        text += f" -> {s['output']}"
    return text + (f"; report {s['report']}" if s.get("report") else "")


def _search_line(s: JobSummary) -> str:
    text = f"searched {s.get('photos', 0)} photo(s): {s.get('faces', 0)} face(s), {s.get('failed', 0)} failed"
    if s.get("searched"):
        text += f", in {s.get('backend', '')} {s['searched']}".replace("  ", " ")
    return text + (f"; {s.threshold.words()}" if s.threshold else "")


def _calibrate_line(s: JobSummary) -> str:
    best, cur = s.get("best") or {}, s.get("current") or {}
    return (f"calibrated on {s.get('pairs', 0)} pairs ({s.get('source', '')}): threshold {s.get('threshold', 0):.4f}, "
            f"{'fitted' if s.get('adopted') == 'fit' else 'the current one kept'} (best threshold "
            f"{best.get('threshold', 0):.4f} at accuracy {best.get('accuracy', 0):.4f}, current "
            f"{cur.get('threshold', 0):.4f} at {cur.get('accuracy', 0):.4f}) -> {s.get('written')}"
            + (f"; stored in index {s['index']}" if s.get("index") else ""))


def _verify_line(s: JobSummary) -> str:
    t = s.threshold.words() if s.threshold else ""
    if "pairs" in s:
        acc = f"accuracy {s['accuracy']:.4f}" if s.get("judged") else "no decisions"
        failed = f", {s['failed']} failed" if s.get("failed") else ""
        return f"{s['pairs']} pair(s) judged{failed}, {acc}, {t}"
    face = ""
    if s.get("faces_in_photo") is not None:
        face = f" (face {s['face']} of {s['faces_in_photo']} in the photo"
        face += ", the largest" if s.get("face_chosen") == "largest" else ""
        face += "; pick another with --face N)" if s["faces_in_photo"] > 1 else ")"
    dist = s.get("distance")
    dist = f"{dist:.4f}" if isinstance(dist, (int, float)) else "?"
    sign = {"same": " <=", "different": " >"}.get(s.get("verdict"), ";")
    t = t.replace("same person at <= ", "") if s.threshold else "?"
    return (f"{s.get('verdict')}: {s.get('photo')} as {s.get('identity')}{face}: distance {dist}{sign} {t} "
            f"on {s.get('backend')}")


def _cluster_line(s: JobSummary) -> str:
    text = (f"clustered {counted(s.get('faces', 0), 'face')} into {counted(s.get('persons', 0), 'person')} and "
            f"{counted(s.get('singletons', 0), 'singleton')} ({s.get('low_quality', 0)} low quality, {s.get('named', 0)} named)")
    if s.threshold:
        text += f"; {s.threshold.words()}"
    return text + (f" -> {s['output']}" if s.get("output") else "") + _secs(s)


def _persons_line(s: JobSummary) -> str:
    action = s.command.split()[1] if " " in s.command else "persons"
    if action == "list":
        shown = len(s.get("top") or ())
        return f"{s.get('persons', 0)} persons in all" + (f"; the largest {shown} shown (--top)"
                                                         if shown < s.get("persons", 0) else "")
    who, n = s.get("person_id"), s.get("faces", 0)
    text = {"name": f"named {who} ({n} faces) {s.get('name')!r}",
            "merge": f"merged {who} ({n} faces) into {s.get('into')}",
            "split": f"split {n} face(s) of {who} into the new person {s.get('new_person_id')}"}.get(action, f"{action} {who}")
    if s.get("index_updated") is not None:
        text += f"; {s['index_updated']} face(s) in the store carry a person"
    if s.get("stores_updated"):  # one line each, printed above; the shards count as one
        done = sum(": NOT updated" not in line for line in s["stores_updated"])
        text += f"; {done} of {len(s['stores_updated'])} store(s) updated"
    return text + "; re-clusters keep it"


def _reindex_line(s: JobSummary) -> str:
    old = s.get("old_index") or s.get("old_spec_id")
    new = s.get("new_index") or s.get("new_spec_id")
    comp = s.get("comparison") or {}
    text = s.embed.words(s.get("output")) if s.embed else "reindexed"
    return (text + f"\nreindexed {s.get('doc_count')} faces: {old} -> {new}"
            + (f"; top-{comp.get('k')} image overlap {comp.get('topk_image_overlap')}" if comp else ""))


def _forget_line(s: JobSummary) -> str:
    made = s.get("copies") or {}
    return (f"forget: {s.get('images', 0)} image(s), {s.get('rows', 0)} shard row(s), {s.get('docs', 0)} "
            "indexed face(s)" + (f"; erased from {len(made)} output(s) made from them" if made else ""))


def _models_line(s: JobSummary) -> str:
    if "seeded" in s:
        return f"seeded {len(s['seeded'])} weight file(s)"
    return f"models {s.get('model')} + {s.get('detector')} load offline in {s.get('load_seconds', 0):.2f} s"


def _service_line(s: JobSummary) -> str:
    ok = not s.get("code") and s.get("ok", True)
    return f"{s.command}: {'ok' if ok else 'not ok (exit 1)'}"


def _bench_line(s: JobSummary) -> str:
    """What a benchmark measured; its figures are the table it printed above the line."""
    if isinstance(s.get("cases"), list):
        what = f"{len(s['cases'])} set(s) x {len(s.get('methods') or [])} method(s) clustered side by side"
    elif isinstance(s.get("results"), list):
        n = len(s["results"]) + (1 if s.get("embedded") else 0)  # bench index: the embedded index's build too
        what = f"{n} setting(s) measured side by side"
    elif isinstance(s.get("ratio"), (int, float)):
        what = f"pipeline {s['ratio']:.1f}x the naive loop"
    else:
        runs = [k for k, v in s.items() if isinstance(v, Mapping) and "images_per_s" in v]
        what = f"{len(runs)} run(s) measured side by side" if runs else "done"
    return f"{s.command}: {what}; the figures are above"


def _generic(s: JobSummary) -> str:
    flat = ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool))
    return f"{s.command} done" + (f": {flat}" if flat else "")


LINES = {"embed": _embed_line, "run": _run_line, "index": _index_line, "query": _query_line, "search": _search_line,
         "calibrate": _calibrate_line, "verify": _verify_line, "cluster": _cluster_line, "persons": _persons_line,
         "reindex": _reindex_line, "forget": _forget_line, "models": _models_line, "es": _service_line,
         "redis": _service_line, "flink": _service_line, "spark": _service_line, "bench": _bench_line}


def write(path: str, summary: JobSummary) -> None:
    """summary.json from the typed summary (any Beam filesystem; whole or not at all on local disk)."""
    from facebeam.transforms import shards

    shards.write_json(path, json.loads(summary.to_json()))  # to_json's default=str makes every value JSON
