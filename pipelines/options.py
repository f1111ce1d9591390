"""Command-line options -> frozen, typed job configs. The only code that reads argparse results.

A command builds its parser from the groups here (`add_*`), and `parse(parser, argv)` gives
an `Args` plus Beam's own flags; the `*_from(args)` functions turn an `Args` into the typed
values jobs take. `Args` records which options were read, so a test can check that every
flag a command offers is one it uses.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re

from facebeam.transforms import es_conn, es_index, faces, sources
from facebeam.transforms.errors import UserError
from facebeam.transforms.es_load import LoadConfig
from facebeam.transforms.es_sink import BulkConfig
from facebeam.transforms.images import DEFAULT_MAX_PIXELS
from facebeam.transforms.sources import DEFAULT_MAX_FILE_BYTES, Inputs
from facebeam.transforms.spec import ALIGN_MODES, METRICS, MODEL_DIMS, NORMALIZATIONS, EmbeddingSpec

# Workers log errors only, except facebeam's own lines (progress, warnings); a worker's failure
# comes back to the launcher with its traceback, so the worker's own copy of it is off.
QUIET_WORKERS = (
    "--default_sdk_harness_log_level=ERROR",
    '--sdk_harness_log_level_overrides={"facebeam": "INFO", "apache_beam.runners.worker.sdk_worker": "CRITICAL", '
    '"apache_beam.runners.common": "CRITICAL", "apache_beam.runners.worker.bundle_processor": "CRITICAL"}',
)


class Args:
    """A parsed namespace that remembers which options were read."""

    def __init__(self, ns: argparse.Namespace):
        object.__setattr__(self, "_ns", ns)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._ns, name)

    def __setattr__(self, name, value):
        raise AttributeError("parsed options are read-only")

    def dests(self) -> set:
        return set(vars(self._ns))


def number(kind=int, least=None, most=None, above=None):
    """An argparse type: a `kind` number within bounds, so `--k 0` or `--max-pixels -5` is refused by the parser
    (one usage error, exit 2) rather than by a traceback, or by a job that dead-letters every photo."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"want {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if (least is not None and v < least) or (most is not None and v > most) or (above is not None and v <= above):
            bounds = [f">= {least}" if least is not None else f"> {above}" if above is not None else None,
                      f"<= {most}" if most is not None else None]
            raise argparse.ArgumentTypeError(f"want a number {' and '.join(b for b in bounds if b)}, got {text!r}")
        return v

    return parse


COUNT = number(int, least=1)  # k, batch sizes, byte and pixel limits, workers
NON_NEGATIVE = number(int, least=0)  # retries, replicas, an index from 0
PORT = number(int, least=1, most=65535)
POSITIVE = number(float, above=0)  # timeouts, distance thresholds
NON_NEGATIVE_NUMBER = number(float, least=0)  # backoffs, sharpness


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written; every flag's help ends with its default when it has one worth showing, and
    a flag with a plain default shows it as its value (`[--index faces]` in the usage line)."""

    def _get_default_metavar_for_optional(self, action):
        d = action.default
        if isinstance(d, (str, int, float)) and not isinstance(d, bool) and str(d) and " " not in str(d):
            return str(d)
        return super()._get_default_metavar_for_optional(action)

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        # A switch (no value) shows no default: `--no-align ... (default True)` read as if skipping were the default.
        if ("%(default)" in text or "default" in text.lower() or default in (None, False, argparse.SUPPRESS, [], ())
                or not action.option_strings or action.nargs == 0):
            return text
        return f"{text} (default %(default)s)"


def index_name(text: str) -> str:
    """An argparse type: a store name every store takes. Elasticsearch's rule for index names, kept for the
    embedded index and Redis too, so a collection keeps its name in any store and an embedded index's folder
    stays inside <FACEBEAM_HOME>/ann ("My Faces" or "../x" is refused here, not by one store later)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,199}", text):
        raise argparse.ArgumentTypeError(f"want a name of lower-case letters, digits, '.', '_' and '-' that starts "
                                         f"with a letter or digit (Elasticsearch's rule, kept for every store), "
                                         f"got {text!r}")
    return text


def beam_path(text: str) -> str:
    """An argparse type: a folder or file on a filesystem Beam reads here (local, or `gs://` and the like with
    their extra installed); refused before any work, not by Beam deep inside the job."""
    try:
        sources.check_filesystem(text, "path")
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def sha256_hex(text: str) -> str:
    """An argparse type: an image's content hash as the shards hold it (64 hex digits, lower case)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(f"want 64 hex digits (an image_sha256 of the shards), got {text!r}")
    return text.strip().lower()


def output_file(text: str) -> str:
    """An argparse type: a file a command writes (a report, a contact sheet). A local folder at that path, or a
    file where a folder above it should be, is refused here, not as a traceback after the work is done."""
    if "://" in text:
        return text
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; want a file path, e.g. {os.path.join(text, 'report.html')}")
    above = os.path.dirname(os.path.abspath(text))
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {above} is a file, not a folder")
    return text


class Parser(argparse.ArgumentParser):
    """A usage error is one line, as every user error is (argparse prints the whole usage first)."""

    def error(self, message):
        required = "the following arguments are required: "
        if message.startswith(required):  # a missing subcommand is named by its choices, not its dest
            choices = {a.dest: a.choices for a in self._actions if a.choices and not a.option_strings}
            message = required + ", ".join(f"what to do ({', '.join(choices[n])})" if n in choices else n
                                           for n in message[len(required):].split(", "))
        self.exit(2, f"error: {message} (`{self.prog} --help` lists every flag)\n")

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self._shared_flags_after_action(args), namespace)

    def _shared_flags_after_action(self, args):
        """`persons --clusters DIR list` as `persons list --clusters DIR`: a flag that every action takes may come
        before the action too. Each action declares it (required there), so `persons list --clusters DIR` works
        and its --help says it; argparse alone checks a parent's required flag before it sees the action's."""
        subs = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if args is None or not subs:
            return args
        choices = subs[0].choices
        shared = set.intersection(*({s for a in q._actions for s in a.option_strings if s.startswith("--")}
                                    for q in choices.values()))
        takes_value = {s for q in [self, *choices.values()] for a in q._actions for s in a.option_strings
                       if a.nargs != 0}
        before, moved, args = [], [], list(args)
        while args and args[0] not in choices:
            word = args.pop(0)
            into = moved if word.split("=", 1)[0] in shared else before
            into.append(word)
            if word in takes_value and args:  # `--flag VALUE`: its value goes with it
                into.append(args.pop(0))
        return before + args[:1] + moved + args[1:]


def parser(prog: str, doc: str) -> argparse.ArgumentParser:
    return Parser(prog=prog, description=doc, formatter_class=HelpFormatter)


def all_parsers(p: argparse.ArgumentParser):
    """The parser and every subcommand's parser under it, depth first."""
    yield p
    for action in p._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield from all_parsers(sub)


def flags_of(p: argparse.ArgumentParser) -> list:
    return sorted({s for q in all_parsers(p) for a in q._actions for s in a.option_strings if s.startswith("--")})


def json_switch(p: argparse.ArgumentParser) -> bool:
    """Has a parser of this command a `--json` switch of its own (machine-readable stdout, no value)?"""
    return any("--json" in a.option_strings and a.nargs == 0 for q in all_parsers(p) for a in q._actions)


def beam_flags(beam_args) -> tuple[list, list]:
    """(the tokens of `beam_args` no Beam pipeline option knows or takes as a value, every Beam flag name)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parsers = []
    # Beam's own option parser, handed over by its public hook, so plugins' options count too.
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    parser = parsers[0]
    known = sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})
    parser.exit_on_error = False  # a value Beam refuses is one line, not its parser's 130-line usage
    try:
        _, unknown = parser.parse_known_args(list(beam_args))
    except argparse.ArgumentError as e:
        raise UserError(f"{e}; see --help") from None
    return unknown, known


def refuse_unknown(unknown, valid) -> None:
    """One line naming the first unknown flag and the closest valid ones; raised before any work starts."""
    import difflib

    if not unknown:
        return
    flag = unknown[0].split("=", 1)[0]
    norm = {v.replace("_", "-"): v for v in valid}
    close = difflib.get_close_matches(flag.replace("_", "-"), list(norm), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(norm[c] for c in close)}?" if close else "; see --help"
    raise UserError(f"unknown flag {flag}{hint}")


# One or two real examples per command, at the end of its --help (the sample is ../shared/data/faces).
EXAMPLES = {
    "embed": ["facebeam embed --input photos/ --output out/photos --label-from parent-dir",
              "facebeam embed --input photos/ --output out/photos --incremental --direct_num_workers 2"],
    "run": ["facebeam run --input photos/ --output out/photos --index faces --store local",
            "facebeam run --input photos/ --output out/photos --incremental"],
    "index": ["facebeam index --shards out/photos --index faces --store local",
              "facebeam index --shards out/photos --index faces --store es --es-url http://localhost:9200"],
    "query": ["facebeam query --probes probes/ --index faces --store local --k 5 --output out/query "
              "--report out/query/report.html"],
    "search": ["facebeam search photos/img1.jpg --index faces --store local",
               "ls photos/*.jpg | facebeam search --stdin --k 3"],
    "calibrate": ["facebeam calibrate --shards out/photos --pairs photos/face-recognition-pivot.csv",
                  "facebeam calibrate --shards out/photos --label-from parent-dir --index faces"],
    "cluster": ["facebeam cluster --shards out/photos --output out/persons --contact-sheet out/persons/sheet.html"],
    "persons": ["facebeam persons --clusters out/persons list --top 10",
                "facebeam persons --clusters out/persons name p-3f2a9c rose_leslie"],
    "reindex": ["facebeam reindex --input photos/ --output out/photos-v2 --index faces --store local "
                "--detect-max-side 1024"],
    "forget": ["facebeam forget --image photos/img1.jpg --shards out/photos --store local --dry-run"],
    "verify": ["facebeam verify kit_with_rose.jpg --as rose_leslie --store redis",
               "facebeam verify kit_with_rose.jpg --as rose_leslie --face 2"],
    "models": ["facebeam models seed", "facebeam models check --model Dlib --detector dlib"],
    "es": ["facebeam es up --nodes 1", "facebeam es status --index faces"],
    "redis": ["facebeam redis up", "facebeam redis status"],
    "flink": ["facebeam flink up --workers 2", "facebeam flink down"],
    "spark": ["facebeam spark up --workers 2", "facebeam spark status"],
    "bench embed": ["facebeam bench embed --input ../shared/data/faces"],
    "bench runners": ["facebeam bench runners --photos 16"],
    "bench cluster": ["facebeam bench cluster --vectors 20000"],
    "bench index": ["facebeam bench index --vectors 20000 --embedded only"],
    "bench query": ["facebeam bench query --vectors 20000"],
    "bench verify": ["facebeam bench verify --vectors 20000 --stores redis"],
}
OUTPUT_HELP = (("-v", "--verbose", "show the logs: progress lines, choices, Beam's warnings"),
               ("--json", None, "print the job's summary (what summary.json holds) instead of its result line"))


def finish_help(p: argparse.ArgumentParser) -> None:
    """Every parser of a command: no abbreviated flags, defaults shown, `-v`/`--json` listed, examples at the end."""
    command = p.prog.removeprefix("facebeam ").strip()
    own = set(flags_of(p)) | {s for q in all_parsers(p) for a in q._actions for s in a.option_strings}
    for q in all_parsers(p):
        q.formatter_class = HelpFormatter
        q.allow_abbrev = False  # `--fold` must not quietly become `--folds`: refused with the closest flags
        g = q.add_argument_group("output")
        for short, long, text in OUTPUT_HELP:
            names = [n for n in (short, long) if n and n not in own]
            if names:
                g.add_argument(*names, action="store_true", default=argparse.SUPPRESS, help=text)
        examples = EXAMPLES.get(command)
        if examples and not q.epilog:
            q.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)


def choices_said(command: str, config, result) -> list:
    """What a job chose on its own, for its result line: the store picked automatically, the labels mode."""
    said = []
    store = getattr(config, "store", None)
    if store is not None and getattr(store, "kind", "") is None and result.get("backend"):
        backend = result["backend"]
        why = {"es": "an Elasticsearch cluster is configured", "elasticsearch": "an Elasticsearch cluster is configured",
               "redis": "no Elasticsearch configured, a Redis is"}.get(backend, "no Elasticsearch configured")
        if command == "verify" and backend == "local":
            why = "no Elasticsearch or Redis configured"
        said.append(f"store: {backend}, chosen automatically ({why}; --store picks another)")
    if result.get("carried"):  # registry.carry_metadata: the store had none of its own
        said.append(f"the store took the collection's {' and '.join(result['carried'])} (kept with the shards)")
    if getattr(config, "dry_run", False):
        said.append("dry run: nothing was changed (without --dry-run these go)")
    inputs = getattr(config, "inputs", None)
    if command in ("embed", "run") and inputs is not None:
        said.append(labels_said(inputs.label_from, result))
    return said


def labels_said(label_from, result) -> str:
    """`labels: from parent-dir (40 of 42 faces)`; a --label-from that labeled nothing says why that may be."""
    from facebeam.transforms.summary import counted

    if not label_from:
        return "labels: none (--label-from parent-dir|csv:FILE stores names)"
    faces, labeled = result.get("faces"), result.get("faces_labeled")
    if not faces or labeled is None:
        return f"labels: from {label_from}"
    if not labeled:
        why = ("a label is the photo's folder below the input folder: people/alice/1.jpg gives alice"
               if label_from == "parent-dir" else "no photo of this run is named in the CSV")
        return f"labels: from {label_from}, but none of {counted(faces, 'face')} got one ({why})"
    return f"labels: from {label_from} ({labeled} of {faces} faces)"


def parse(p: argparse.ArgumentParser, argv, beam: bool = True) -> tuple[Args, tuple]:
    """App flags via argparse; with `beam`, Beam's own flags pass through (with quiet worker logs).

    A flag neither argparse nor (with `beam`) Beam knows is a UserError with the closest valid flags.
    """
    for a in argv:  # a path in another encoding: Beam's coders, Parquet and JSON refuse it halfway through a job
        if not sources.utf8_name(a):
            raise UserError(f"argument '{sources.shown(a)}' is not UTF-8, which no store can hold: rename that file "
                            "or folder (e.g. `convmv -f latin1 -t utf8 -r --notest PATH`)")
    valid = flags_of(p) + (beam_flags(())[1] if beam else [])
    # Flag names first, so a misspelt flag is named even when argparse would stop at a missing required one.
    words = [a.split("=", 1)[0] for a in argv if a.startswith("--") and a != "--"]
    refuse_unknown([w for w in words if w not in valid], valid)
    intermixed = not beam and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
    # `search a.jpg --k 3 b.jpg`: positionals after a flag too. Not with Beam's flags, whose values (`--runner X`)
    # would be taken for positionals.
    ns, rest = (p.parse_known_intermixed_args if intermixed else p.parse_known_args)(argv)
    if not beam:
        refuse_unknown([r for r in rest if r.startswith("-")], flags_of(p))
        if rest:
            p.error(f"unrecognized arguments: {' '.join(rest)}")
        return Args(ns), ()
    unknown, known = beam_flags(rest)
    refuse_unknown([u for u in unknown if u.startswith("-")], flags_of(p) + known)
    stray = [u for u in unknown if not u.startswith("-")]
    if stray:  # `embed --input a --output o b`: b was read by no one, and the job ran without it
        inputs = [a.option_strings[0] for q in all_parsers(p) for a in q._actions if a.dest == "input" and a.option_strings]
        hint = f"; did you mean {inputs[0]} {stray[0]}?" if inputs else "; see --help"
        raise UserError(f"unexpected argument '{stray[0]}': no flag takes it{hint}")
    beam_args = list(rest)
    for flag in QUIET_WORKERS:
        name = flag.split("=", 1)[0]
        if not any(a == name or a.startswith(name + "=") for a in beam_args):
            beam_args.append(flag)
    return Args(ns), tuple(beam_args)


# --- inputs -------------------------------------------------------------------------------
def add_inputs(p, flag: str = "--input", required: bool = True, labels: bool = True, backfill: bool = True) -> None:
    g = p.add_argument_group("inputs")
    # extend: `--input a --input b` reads both, as `--input a b` does (a plain store kept the last alone)
    g.add_argument(flag, dest="input", nargs="+", action="extend", required=required, metavar="PATTERN",
                   help="folders (recursive), glob patterns, or list files (.txt/.lst or @FILE), on any Beam filesystem;"
                        " repeat the flag or list several")
    if labels:
        g.add_argument("--label-from", default=None, metavar="parent-dir|csv:FILE",
                       help="store an identity label with each face")
    if backfill:
        g.add_argument("--since", default=None, metavar="DATE", help="only files modified at or after DATE (ISO)")
    g.add_argument("--max-pixels", type=COUNT, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels, before decoding; the only pixel limit (default %(default)s)")
    g.add_argument("--follow-symlinks", action="store_true",
                   help="read symlinks whose target is outside the input folder/glob (default: skip and count them)")
    g.add_argument("--max-file-bytes", type=COUNT, default=DEFAULT_MAX_FILE_BYTES,
                   help="refuse files larger than this many bytes, before reading them")
    g.add_argument("--batch-size", type=COUNT, default=4, help="images per model batch")


def inputs_from(a: Args, labels: bool = True, backfill: bool = True) -> Inputs:
    if labels and a.label_from not in (None, "parent-dir"):
        from facebeam.transforms import labels as labelling

        labelling.labeler_from(a.label_from)  # its form, and a CSV's file and header, before the output is made
    return Inputs(patterns=tuple(a.input or ()), label_from=a.label_from if labels else None,
                  since=a.since if backfill else None, max_pixels=a.max_pixels,
                  max_file_bytes=a.max_file_bytes, batch_size=a.batch_size, follow_symlinks=a.follow_symlinks)


def add_incremental(p) -> None:
    p.add_argument("--incremental", action="store_true",
                   help="skip photos whose content is already done for this spec (a moved photo's faces follow it, an "
                        "edited one's old faces go); write a new run partition")


# --- the embedding spec ---------------------------------------------------------------------
SPEC_FIELDS = ("model", "detector", "align", "align_mode", "normalization", "metric", "detect_max_side",
               "expand_percentage", "detect_upsample")


def add_spec(p, check_only: bool = False) -> None:
    """The spec flags; with `check_only` they default to unset and only assert what an index must have."""
    g = p.add_argument_group("embedding spec" + (" (checked against the index's own)" if check_only else ""))
    d = {k: (None if check_only else f.default) for k, f in EmbeddingSpec.__dataclass_fields__.items()}
    g.add_argument("--model", default=d["model"], choices=sorted(MODEL_DIMS), help="face recognition model")
    g.add_argument("--detector", default=d["detector"],
                   help="dlib (HOG, default), mmod (dlib's CNN on onnxruntime), dlib_mmod (HOG, then the CNN "
                        "where HOG finds none), or a deepface detector backend with --align-mode deepface")
    g.add_argument("--detect-upsample", type=int, default=d["detect_upsample"],
                   help="2x upsamplings of the detection copy (default: the detector's own, HOG 1, CNN 0)")
    g.add_argument("--no-align", dest="align", action="store_const", const=False,
                   default=None if check_only else True, help="skip eye alignment")
    g.add_argument("--align-mode", default=d["align_mode"], choices=ALIGN_MODES,
                   help="chip: dlib's 150x150 face chips (default, Dlib only); deepface: DeepFace.represent's steps")
    g.add_argument("--normalization", default=d["normalization"], choices=NORMALIZATIONS,
                   help="input normalization before the model (deepface's names)")
    g.add_argument("--metric", default=d["metric"], choices=METRICS, help="distance between two face vectors")
    g.add_argument("--detect-max-side", type=int, default=d["detect_max_side"],
                   help="detect on a copy scaled to this longest side (default %(default)s)")
    g.add_argument("--expand-percentage", type=NON_NEGATIVE, default=d["expand_percentage"],
                   help="grow each detected box by this percentage before alignment")


DEFAULT_TURNS = faces.DEFAULT_TURNS
DEFAULT_CLOSER = faces.DEFAULT_CLOSER


def add_turns(p) -> None:
    p.add_argument("--turns", default=DEFAULT_TURNS, choices=faces.TURNS,
                   help="when to also detect on the photo turned by 90, 180 and 270 degrees: off, no-face (when "
                        "the upright photo gives no sure face: none, or only weak HOG finds; default) or always (keep the "
                        "turn HOG scores highest)")


def add_detection(p) -> None:
    """--turns and --look-closer: which faces detection finds (not part of the spec: a face's vector does not change)."""
    add_turns(p)
    add_closer(p)


def add_closer(p) -> None:
    p.add_argument("--look-closer", default=DEFAULT_CLOSER, choices=faces.CLOSER,
                   help="when to detect again on a copy twice as large, for faces smaller than the detection copy "
                        "shows (4x the detection's cost on those photos): off, near-limit (when a face found is near "
                        "the smallest the copy shows, as in group photos; default) or always (crowds far away)")


def spec_from(a: Args) -> EmbeddingSpec:
    return EmbeddingSpec(**{k: getattr(a, k) for k in SPEC_FIELDS})


def spec_given(a: Args) -> dict:
    """The spec flags given on a check-only parser: {field: value}."""
    return {k: v for k in SPEC_FIELDS if (v := getattr(a, k)) is not None}


# --- Elasticsearch ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EsFlags:
    """Where the cluster is; resolved (environment, connection file) only when a job connects."""

    url: str | None = None
    conn_file: str | None = None
    user: str | None = None
    ca_certs: str | None = None
    insecure: bool = False

    def connection(self) -> es_conn.EsConnection:
        return es_conn.EsConnection.resolve(url=self.url, conn_file=self.conn_file, username=self.user,
                                            ca_certs=self.ca_certs, insecure=self.insecure)


def add_es(p) -> None:
    """--es-url --es-conn --es-user --es-ca-certs --es-insecure; passwords only via env/file."""
    g = p.add_argument_group(
        "Elasticsearch", f"password/API key only from {es_conn.ENV_PASSWORD} / {es_conn.ENV_API_KEY} or the connection file")
    g.add_argument("--es-url", help=f"URL(s), comma-separated (env {es_conn.ENV_URL})")
    g.add_argument("--es-conn", help=f"connection file (env {es_conn.ENV_CONN}; default <FACEBEAM_HOME>/es/connection.json)")
    g.add_argument("--es-user", help=f"basic-auth user (env {es_conn.ENV_USER})")
    g.add_argument("--es-ca-certs", help=f"CA certificate (PEM) to verify the server (env {es_conn.ENV_CA_CERTS})")
    g.add_argument("--es-insecure", action="store_true", help="do NOT verify TLS certificates (warns)")


def es_from(a: Args) -> EsFlags:
    return EsFlags(url=a.es_url, conn_file=a.es_conn, user=a.es_user, ca_certs=a.es_ca_certs, insecure=a.es_insecure)


# --- loading an index -----------------------------------------------------------------------
def add_load(p, alias_required: bool = True) -> None:
    p.add_argument("--index", type=index_name, required=alias_required, default=None if alias_required else "faces",
                   help="alias name; the concrete index is versioned behind it"
                        + ("" if alias_required else " (default %(default)s)"))
    d = BulkConfig.__dataclass_fields__
    g = p.add_argument_group("bulk loading")
    g.add_argument("--chunk-docs", type=COUNT, default=d["chunk_docs"].default, help="faces per bulk request")
    g.add_argument("--chunk-bytes", type=COUNT, default=d["chunk_bytes"].default, help="bytes per bulk request, at most")
    g.add_argument("--max-retries", type=NON_NEGATIVE, default=d["max_retries"].default,
                   help="retries of a rejected (429) or failed chunk before its faces are dead-lettered")
    g.add_argument("--initial-backoff", type=NON_NEGATIVE_NUMBER, default=d["initial_backoff_s"].default, metavar="SECONDS",
                   help="first wait between retries; doubles each time")
    g.add_argument("--es-down-deadline", type=POSITIVE, default=d["down_deadline_s"].default, metavar="SECONDS",
                   help="stop the job once the cluster has answered no bulk request for this long, per worker "
                        "(unsent docs are not dead-lettered; a re-run finishes the load) (default %(default)s)")
    g.add_argument("--index-type", default=es_index.DEFAULT_INDEX_TYPE, choices=es_index.INDEX_TYPES,
                   help="Elasticsearch dense_vector index type of a new index; quantized types re-rank their "
                        "hits on the float vectors (before Elasticsearch 8.18, which cannot, the float type is "
                        "made) (default %(default)s)")
    g.add_argument("--m", type=number(int, least=2), default=16, help="HNSW graph degree")
    g.add_argument("--ef-construction", type=COUNT, default=100, help="HNSW candidates while building the graph")
    g.add_argument("--replicas", type=NON_NEGATIVE, default=None, help="replicas after the load (default: as before)")
    g.add_argument("--load-replicas", type=NON_NEGATIVE, default=0, help="replicas during the load (default 0)")
    g.add_argument("--primary-shards", type=COUNT, default=es_index.DEFAULT_TUNING.shards,
                   help="primary shards of a new index; each one's graph is built by its own merge at the end "
                        "(default %(default)s)")
    add_es(p)


def load_from(a: Args) -> LoadConfig:
    bulk = BulkConfig(index=a.index, chunk_docs=a.chunk_docs, chunk_bytes=a.chunk_bytes,
                      max_retries=a.max_retries, initial_backoff_s=a.initial_backoff,
                      down_deadline_s=a.es_down_deadline)
    return LoadConfig(alias=a.index, bulk=bulk, index_type=a.index_type, m=a.m, ef_construction=a.ef_construction,
                      replicas=a.replicas, load_replicas=a.load_replicas,
                      tuning=dataclasses.replace(es_index.DEFAULT_TUNING, shards=a.primary_shards))


# --- misc -------------------------------------------------------------------------------------
def existing_file(path: str | None, what: str) -> str | None:
    if path is not None and "://" not in path and not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    return path


# --- persons (cluster) ------------------------------------------------------------------------
def add_persons(p) -> None:
    from facebeam.transforms import persons

    d = persons.Limits()
    g = p.add_argument_group("persons", "the edge threshold and the faces worth clustering")
    g.add_argument("--threshold", type=POSITIVE, default=None,
                   help="edge distance threshold (default: fitted from --pairs or the shards' labels, "
                        "else from the collection's distance distribution)")
    g.add_argument("--pairs", default=None, metavar="CSV",
                   help="labeled pairs (file_x, file_y, decision Yes/No) to fit the threshold from")
    g.add_argument("--method", default=persons.DEFAULT_METHOD, choices=persons.METHODS,
                   help="cw (Chinese whispers, default), infomap, leiden, density (Immich's rule), cc (connected "
                        "components), mutual (mutual-kNN components); figures: `facebeam bench cluster`")
    g.add_argument("--k", type=COUNT, default=16, help="neighbours per face in the graph (default %(default)s)")
    g.add_argument("--min-box", type=NON_NEGATIVE, default=d.min_box, help="smallest face box side, pixels (default %(default)s)")
    g.add_argument("--min-confidence", type=float, default=d.min_confidence,
                   help="lowest detector confidence (default %(default)s)")
    g.add_argument("--min-sharpness", type=NON_NEGATIVE_NUMBER, default=d.min_sharpness,
                   help="lowest variance of the Laplacian of the face crop (default %(default)s; 0: not computed)")


def persons_from(a: Args):
    """(threshold, pairs file, method, k, Limits)."""
    from facebeam.transforms import persons

    if a.threshold is not None and a.threshold <= 0:
        raise UserError("--threshold must be positive")
    if a.k < 1:
        raise UserError("--k must be at least 1")
    limits = persons.Limits(min_box=a.min_box, min_confidence=a.min_confidence, min_sharpness=a.min_sharpness)
    return a.threshold, existing_file(a.pairs, "--pairs file"), a.method, a.k, limits


# --- face stores (Elasticsearch, the embedded index, Redis) -----------------------------------
def add_store(p, kinds=("es", "local", "redis"), redis: bool = True, auto: str = "local") -> None:
    """--store es|local[:DIR]|redis (default: Elasticsearch when configured, else `auto`)."""
    from facebeam.transforms import redis_store

    shown = "|".join(k + ("[:DIR]" if k == "local" else "") for k in kinds)
    what = {"es": "es (Elasticsearch)", "local": "local[:DIR] (the embedded HNSW index, default DIR "
                                                 "<FACEBEAM_HOME>/ann/<index>)", "redis": "redis (`facebeam redis up`)"}
    g = p.add_argument_group("face store", f"password only from {redis_store.ENV_PASSWORD} or the connection file"
                             if redis else None)
    g.add_argument("--store", default=None, metavar=shown,
                   help=", ".join(what[k] for k in kinds) + f"; default: es when a cluster is configured, else {auto}")
    if redis:
        g.add_argument("--redis-url", default=None, help=f"HOST:PORT (env {redis_store.ENV_URL}; default: the "
                                                         "connection file of `facebeam redis up`)")
        g.add_argument("--redis-conn", default=None, help=f"Redis connection file (env {redis_store.ENV_CONN}; default "
                                                          "<FACEBEAM_HOME>/redis/connection.json)")


def add_search_filters(p) -> None:
    """--label NAME, --person NAME, --path-prefix P: filters every searching store applies before ranking."""
    p.add_argument("--label", default=None, metavar="NAME", help="only faces with this identity label")
    p.add_argument("--person", default=None, metavar="NAME",
                   help="only faces of the person of this name (`facebeam persons name`) or person id")
    p.add_argument("--path-prefix", type=path_prefix, default=None, metavar="P",
                   help="only faces of images whose path starts with P (a relative one from this folder)")


def path_prefix(text: str) -> str:
    """An argparse type: a path prefix as the stores hold paths (sources.canonical: absolute for local files), a
    trailing / kept (`people/bob/` is not `people/bobby`). `people/bob` matched nothing, without a word."""
    if "://" in text or not text:
        return text
    return sources.canonical(text) + ("/" if text.endswith("/") else "")


def check_search_size(a: Args) -> None:
    """--num-candidates must hold the --k hits kept from it."""
    if a.num_candidates is not None and a.num_candidates < a.k:
        raise UserError(f"--num-candidates {a.num_candidates} is below --k {a.k}: the k hits are kept from the "
                        "candidates, so give at least k (or leave it out: max(200, 20k))")


def search_filters(a: Args) -> tuple:
    """--filter FIELD=VALUE, --label and --person -> knn.SearchSpec filters ((field, value), ...)."""
    from facebeam.transforms import knn

    try:
        found = knn.parse_filters(a.filter)
    except ValueError as e:
        raise UserError(str(e)) from None
    # image_path as the stores hold it (absolute for local files), as --path-prefix is
    found = tuple((f, sources.canonical(v) if f == "image_path" else v) for f, v in found)
    return found + ((("label", a.label),) if a.label else ()) + ((("person", a.person),) if a.person else ())


def store_from(a: Args, kinds=("es", "local", "redis"), redis: bool = True):
    from facebeam.transforms.stores import StoreChoice

    return StoreChoice.parse(a.store, a.redis_url if redis else None, a.redis_conn if redis else None, allowed=kinds)
