"""The command line as a user meets it: a result line per command that matches summary.json, typos refused
with a suggestion, help on every flag, quiet logs, and `verify` saying which face of a photo it used."""
import argparse
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facebeam.pipelines import cli, index, options
from facebeam.pipelines.bench import BENCHES
from facebeam.transforms.errors import UserError
from facebeam.transforms.summary import counted
from tests.helpers import PAIRS, ROOT, SAMPLE, job, on_a_terminal

NOISE = ("Logging handler created", "INFO", "Traceback", "ERROR:", "WARNING:", "grpc")


def command_modules():
    """(command words, module) for every command and benchmark."""
    out = [((name,), m) for name, (m, _) in cli.COMMANDS.items() if name != "bench"]
    return out + [(("bench", name), m) for name, m in BENCHES.items()]


def facebeam(*words, env=None, check=True):
    """`facebeam WORDS` in a fresh process, as a user runs it (stderr not a terminal: no bar)."""
    e = {**os.environ, **(env or {})}
    for k in ("FACEBEAM_ES_URL", "FACEBEAM_ES_CONN"):
        e.pop(k, None)
    r = subprocess.run([sys.executable, "-m", "facebeam.pipelines.cli", *words], capture_output=True, text=True,
                       cwd=ROOT, env=e, timeout=600)
    if check:
        assert r.returncode == 0, (words, r.stdout, r.stderr)
    return r


def quiet(r):
    """Nothing on stderr but facebeam's own warnings, as plain sentences."""
    for line in r.stderr.splitlines():
        assert not any(n in line for n in NOISE), line


# --- the typed summary -----------------------------------------------------------------------------------
def test_the_summary_is_typed_frozen_and_reads_like_its_file():
    import dataclasses

    from facebeam.transforms.summary import JobSummary

    fields = {"images_seen": 5, "images_embedded": 4, "faces": 6, "images_failed": {"no_face": 1},
              "files_skipped": {"not_image": 2}, "images_done": 3, "elapsed_s": 2.0, "images_per_s": 2.5,
              "output": "out/x", "docs_indexed": 6, "docs_failed": 0, "backend": "local", "index": "faces",
              "ann_dir": "/h/ann/faces", "doc_count": 9, "threshold": 0.6, "threshold_from": "calibrated"}
    s = JobSummary.build("run", fields, choices=["labels: from parent-dir"])
    assert s["faces"] == 6 and dict(s) == fields == s.to_dict() and json.loads(s.to_json()) == fields
    assert (s.embed.seen, s.embed.failed, s.embed.done, s.load.indexed, s.threshold.source) == (5, 1, 3, 6, "calibrated")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.command = "x"
    with pytest.raises(TypeError):
        s.fields["faces"] = 7
    assert s.line() == ("embedded 5 photos: 6 faces, 1 failed (2 non-image file(s) skipped, 3 already done, skipped) "
                        "-> out/x (2.0 s, 2.5 photos/s)\n"
                        "indexed 6 faces into the embedded index faces (/h/ann/faces): 9 in all\n"
                        "  failed: 1 no face; out/x/errors holds each with why\n"
                        "  labels: from parent-dir")
    one = JobSummary.build("query", {"images_seen": 1, "images_embedded": 1, "faces": 1, "probe_faces": 1, "k": 5,
                                     "backend": "local", "images_failed": {}})
    assert one.line().startswith("queried 1 probe photo: 1 face searched, 0 failed, top 5 from local")
    assert JobSummary.build("cluster", {"faces": 1, "persons": 1, "singletons": 1}).line().startswith(
        "clustered 1 face into 1 person and 1 singleton (")
    # A fallback to the spec's threshold says why on the line (it was a warning above it).
    fell = JobSummary.build("cluster", {"faces": 12, "persons": 4, "singletons": 1, "threshold": 0.57,
                                        "threshold_from": "spec", "threshold_note": "fitted 0.7321 from the "
                                        "distribution is outside [0.3, 0.66]"})
    assert "; same person at <= 0.5700 (spec; fitted 0.7321 from the distribution is outside [0.3, 0.66])" in fell.line()
    kept = JobSummary.build("cluster", {"faces": 64, "threshold": 0.61, "threshold_from": "distribution",
                                        "threshold_note": "plausible range [0.3, 0.66]"})
    assert "same person at <= 0.6100 (distribution)" in kept.line()


# --- help ----------------------------------------------------------------------------------------
def test_no_flag_without_help_and_every_command_ends_with_examples():
    missing, without_examples = [], []
    for words, module in command_modules():
        p = importlib.import_module(module).build_parser()
        options.finish_help(p)
        for q in options.all_parsers(p):
            for a in q._actions:
                if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                    continue
                if not (a.help or "").strip():
                    missing.append(f"{q.prog} {'/'.join(a.option_strings) or a.dest}")
        if "examples:" not in p.format_help():
            without_examples.append(" ".join(words))
    assert not missing, f"flags without help: {missing}"
    assert not without_examples, without_examples


def test_help_shows_defaults():
    r = facebeam("verify", "--help")
    assert re.search(r"--index faces\s+alias / store name \(default faces\)", r.stdout)
    assert "[--index faces]" in r.stdout.split("\n\n")[0]  # in the usage line too
    assert "examples:\n  facebeam verify" in r.stdout
    r = facebeam("embed", "--help")
    assert re.search(r"--batch-size 4\s+images per model batch \(default 4\)", r.stdout)
    # A switch shows no default: `--no-align  skip eye alignment (default True)` read as if skipping were it.
    assert re.search(r"--no-align\s+skip eye alignment\n", r.stdout) and "(default True)" not in r.stdout


# --- typos ---------------------------------------------------------------------------------------
# Per command: the words it needs to parse, and one of its optional flags misspelled (the suggestion).
TYPOS = {
    ("embed",): (["--input", SAMPLE, "--output", "x"], "--lable-from", "--label-from"),
    ("index",): (["--shards", "x"], "--chunk-dcos", "--chunk-docs"),
    ("run",): (["--input", SAMPLE, "--output", "x"], "--incremantal", "--incremental"),
    ("query",): (["--probes", SAMPLE, "--output", "x"], "--treshold", "--threshold"),
    ("search",): (["x.jpg"], "--treshold", "--threshold"),
    ("calibrate",): (["--shards", "x"], "--fodls", "--folds"),
    ("cluster",): (["--shards", "x", "--output", "y"], "--min-boxx", "--min-box"),
    ("persons",): (["--clusters", "x", "list"], "--topp", "--top"),
    ("reindex",): (["--input", SAMPLE, "--output", "x", "--index", "faces"], "--drop-olds", "--drop-old"),
    ("forget",): (["--shards", "x", "--label", "a"], "--dry_runn", "--dry-run"),
    ("verify",): (["x.jpg", "--as", "a"], "--threshhold", "--threshold"),
    ("es",): (["up"], "--ndoes", "--nodes"),
    ("redis",): (["status"], "--hmoe", "--home"),
    ("flink",): (["up"], "--wokrers", "--workers"),
    ("spark",): (["up"], "--wokrers", "--workers"),
    ("models",): (["check"], "--detecter", "--detector"),
    ("bench", "embed"): ([], "--inptu", "--input"),
    ("bench", "index"): ([], "--vectros", "--vectors"),
    ("bench", "query"): ([], "--vectros", "--vectors"),
    ("bench", "runners"): ([], "--phtoos", "--photos"),
    ("bench", "verify"): ([], "--querys", "--queries"),
    ("bench", "cluster"): ([], "--mehtods", "--methods"),
}


def test_every_command_refuses_a_misspelled_flag_before_any_work(tmp_path, monkeypatch, caplog):
    """In-process (the refusal comes before any work, so it is quick); `facebeam` itself is checked below."""
    assert {w for w, _ in command_modules()} == set(TYPOS), "a command without a typo case"
    monkeypatch.setenv("FACEBEAM_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    modules = dict(command_modules())
    for words, (args, typo, suggestion) in TYPOS.items():
        module = importlib.import_module(modules[words])
        caplog.clear()
        try:
            code = module.main([*args, typo, "1"])
            message = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
        except UserError as e:  # bench index/query/verify parse in their own main; `facebeam` says it (exit 2)
            code, message = 2, str(e)
        assert code == 2, words
        assert f"unknown flag {typo}" in message and suggestion in message, (words, message)
        assert "\n" not in message
    assert not os.listdir(tmp_path), "a refused command started work"
    r = facebeam("bench", "index", "--vectros", "5", check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown flag --vectros; did you mean --vectors")
    assert len(r.stderr.splitlines()) == 1


# Numeric flags the parser takes as they are: each is checked where its meaning lives (the spec checks the two
# detect flags; a detector's confidence may be any number).
UNBOUNDED = {"--detect-upsample", "--detect-max-side", "--min-confidence"}


@pytest.mark.unit
def test_every_numeric_flag_has_bounds_and_a_number_out_of_them_is_one_line(capsys, tmp_path):
    """`--k 0` was a traceback and `--max-pixels -5` a job that dead-lettered every photo: every number a
    command takes is bounded by its parser (options.number), and a store name is one every store takes."""
    bare = []
    for words, module in command_modules():
        for parser in options.all_parsers(importlib.import_module(module).build_parser()):
            bare += [f"{' '.join(words)} {a.option_strings[-1]}" for a in parser._actions
                     if a.type in (int, float) and a.option_strings[-1] not in UNBOUNDED]
    assert not bare, "numeric flags without bounds: " + ", ".join(bare)
    modules = dict(command_modules())
    for words, argv, said in ((("search",), ["x.jpg", "--k", "0"], "argument --k: want a number >= 1, got '0'"),
                              (("embed",), ["--input", "x", "--output", "y", "--max-pixels", "-5"],
                               "argument --max-pixels: want a number >= 1, got '-5'"),
                              (("es",), ["up", "--port", "70000"], "argument --port: want a number >= 1 and <= 65535"),
                              (("query",), ["--probes", "x", "--output", "y", "--threshold", "0"],
                               "argument --threshold: want a number > 0"),
                              (("bench", "index"), ["--k", "ten"], "argument --k: want a whole number, got 'ten'"),
                              (("run",), ["--input", "x", "--output", "y", "--index", "My Faces"],  # a name every
                               "argument --index: want a name of lower-case letters"),               # store takes
                              (("search",), ["x.jpg", "--index", "../elsewhere"], "got '../elsewhere'"),
                              # a report where a folder stands was a traceback after the whole query had run
                              (("query",), ["--probes", "x", "--output", "y", "--report", str(tmp_path)],
                               f"argument --report: '{tmp_path}' is a folder; want a file path"),
                              (("cluster",), ["--shards", "x", "--output", "y", "--contact-sheet",
                                              str(tmp_path / "a.txt" / "s.html")],
                               f"cannot write '{tmp_path / 'a.txt' / 's.html'}': {tmp_path / 'a.txt'} is a file")):
        (tmp_path / "a.txt").write_text("x")
        with pytest.raises(SystemExit) as e:
            importlib.import_module(modules[words]).build_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and len(err.splitlines()) == 1, (words, err)  # no usage dump


@pytest.mark.unit
def test_a_flag_that_takes_several_values_adds_them_when_repeated():
    """`embed --input a --input b` read b alone: argparse's plain store keeps the last. Every flag that takes
    several values adds them up when repeated, as `--filter` always did."""
    from facebeam.pipelines import embed

    lists = (argparse._ExtendAction, argparse._AppendAction)
    plain = [f"{' '.join(words)} {a.option_strings[-1]}" for words, module in command_modules()
             for parser in options.all_parsers(importlib.import_module(module).build_parser())
             for a in parser._actions if a.option_strings and a.nargs in ("+", "*") and not isinstance(a, lists)]
    assert not plain, "repeating these keeps the last value alone: " + ", ".join(plain)
    args, _ = options.parse(embed.build_parser(), ["--input", "a", "--output", "o", "--input", "b", "c"])
    assert args.input == ["a", "b", "c"]


def test_a_mistyped_command_is_one_line_with_a_suggestion_and_version_says_what_decides_results(capsys):
    from facebeam.pipelines import cli

    assert cli.main(["serach", "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("facebeam: unknown command 'serach'; did you mean 'search'? "
                           "(`facebeam --help` lists the commands)")
    assert cli.main(["-v", "serach"]) == 2  # the flags every command takes may come first
    assert "unknown command 'serach'" in capsys.readouterr().err
    # `facebeam help search` is `facebeam search --help`, as git's help is. In a process of its own: the entry
    # point sets up logging for the whole process (in this one, the later tests' logs went nowhere).
    assert facebeam("help", "search").stdout.startswith("usage: facebeam search ")
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    import importlib.metadata

    assert out.startswith(f"facebeam {importlib.metadata.version('facebeam')} (apache-beam "), out
    assert f"deepface {importlib.metadata.version('deepface')}" in out and len(out.splitlines()) == 1


def test_abbreviated_flags_are_refused_and_named_before_a_missing_required_one(tmp_path, monkeypatch, caplog):
    """argparse would take `--label-fro` for `--label-from`; a typo must not silently pick a flag."""
    monkeypatch.setenv("FACEBEAM_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    modules = dict(command_modules())
    for words, (args, _, flag) in TYPOS.items():
        module = importlib.import_module(modules[words])
        for argv, typo in (([*args, flag[:-1], "1"], flag[:-1]), ([flag[:-1], "1"], flag[:-1])):
            caplog.clear()
            try:
                code = module.main(argv)
                message = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
            except UserError as e:
                code, message = 2, str(e)
            assert code == 2 and f"unknown flag {typo}; did you mean {flag}" in message, (words, argv, message)
    assert not os.listdir(tmp_path), "a refused command started work"


def test_a_beam_option_passes_and_a_misspelled_one_names_beams_flag(tmp_path):
    out = tmp_path / "out"
    photos = [os.path.join(SAMPLE, n) for n in ("img1.jpg", "img2.jpg")]
    r = facebeam("embed", "--input", *photos, "--output", str(out), "--direct_num_workers", "2",
                 "--runner", "DirectRunner")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_seen"] == 2 and f"embedded 2 photos: {summary['faces']} faces" in r.stdout
    quiet(r)
    r = facebeam("embed", "--input", *photos, "--output", str(out), "--direct_num_worker", "2", check=False)
    assert r.returncode == 2 and "did you mean --direct_num_workers" in r.stderr
    # A value Beam's parser refuses is one line too, naming the flag and its choices (not Beam's whole usage).
    r = facebeam("embed", "--input", *photos, "--output", str(out), "--direct_running_mode=fast", check=False)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "--direct_running_mode: invalid choice: 'fast'" in r.stderr and "multi_processing" in r.stderr


# --- result lines on the sample ------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh FACEBEAM_HOME (no Elasticsearch configured: the store is picked automatically)."""
    return {"FACEBEAM_HOME": str(tmp_path_factory.mktemp("home"))}


@pytest.fixture(scope="module")
def ran(home, tmp_path_factory):
    """`facebeam run` on the sample, without --store: (output folder, its summary.json, the result)."""
    out = str(tmp_path_factory.mktemp("cli") / "sample")
    r = facebeam("run", "--input", SAMPLE, "--output", out, "--index", "faces", env=home)
    with open(os.path.join(out, "summary.json")) as f:
        return out, json.load(f), r


def test_run_says_what_it_did_and_which_store_it_chose(ran):
    out, s, r = ran
    failed = sum(s["images_failed"].values())
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"embedded {s['images_seen']} photos: {s['faces']} faces, {failed} failed "
                               f"({s['files_skipped']['not_image']} non-image file(s) skipped) -> {out}")
    assert lines[1].startswith(f"indexed {s['docs_indexed']} faces into the embedded index faces")
    assert f"{s['doc_count']} in all" in lines[1]
    assert "store: local, chosen automatically (no Elasticsearch configured" in r.stdout
    assert "labels: none" in r.stdout
    # which files were skipped: the sample's README and CSVs (run with worker processes, whose log is quiet)
    notes = ", ".join(f"{os.path.join(SAMPLE, n)} (not an image)" for n in sorted(os.listdir(SAMPLE))
                      if n.endswith((".md", ".csv")))
    assert lines[2] == f"  skipped: {notes}" and s["files_skipped"]["not_image"] == 3
    assert len(lines) == 5
    quiet(r)


def test_incremental_run_counts_what_it_skipped_as_done(home, tmp_path):
    photos = [os.path.join(SAMPLE, n) for n in ("img1.jpg", "img2.jpg", "couple.jpg")]
    out = str(tmp_path / "inc")
    facebeam("embed", "--input", *photos, "--output", out, "--incremental", env=home)
    r = facebeam("embed", "--input", *photos, "--output", out, "--incremental", "--json", env=home)
    printed = json.loads(r.stdout)
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == printed  # --json prints the summary itself
    assert printed["images_done"] == 3 and printed["images_seen"] == 0
    r = facebeam("embed", "--input", *photos, "--output", out, "--incremental", env=home)
    assert "embedded 0 photos: 0 faces, 0 failed (3 already done, skipped)" in r.stdout


def test_a_named_cluster_that_is_missing_is_refused_not_swapped_for_the_embedded_store(ran, home, tmp_path):
    """Only a cluster named nowhere lets the store be picked automatically: an --es-conn file that is not
    there (or a CA that is not) stops the command in one line, before anything is written anywhere."""
    out, _, _ = ran
    missing = tmp_path / "typo-connection.json"
    r = facebeam("index", "--shards", out, "--index", "named", "--es-conn", str(missing), env=home, check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(
        f"connection file not found: {missing} (start one with `facebeam es up`)"), r.stderr
    assert not glob.glob(os.path.join(home["FACEBEAM_HOME"], "**", "named*"), recursive=True)
    r = facebeam("query", "--probes", os.path.join(SAMPLE, "img1.jpg"), "--index", "faces",
                 "--es-url", "https://127.0.0.1:9", "--es-ca-certs", str(tmp_path / "no-ca.pem"),
                 "--output", str(tmp_path / "q"), env=home, check=False)
    assert r.returncode == 2 and f"CA certificate file not found: {tmp_path / 'no-ca.pem'}" in r.stderr, r.stderr


def test_index_query_search_lines_match_their_summaries(ran, home, tmp_path):
    out, s, _ = ran
    r = facebeam("index", "--shards", out, "--index", "again", "--store", "local", env=home)
    with open(os.path.join(out, "index-summary.json")) as f:
        idx = json.load(f)
    assert r.stdout.startswith(f"indexed {idx['indexed']} faces into the embedded index again (")
    assert f"{idx['doc_count']} in all ({idx['rows_read']} rows read" in r.stdout
    assert "chosen automatically" not in r.stdout  # --store given
    # A run of photos the index already holds says so, instead of "indexed 0 faces" alone.
    photos = [os.path.join(SAMPLE, n) for n in ("img1.jpg", "couple.jpg")]
    r = facebeam("run", "--input", *photos, "--output", str(tmp_path / "again"), "--index", "faces",
                 "--store", "local", env=home)
    line = r.stdout.splitlines()[1]
    assert line.startswith("indexed 0 faces into the embedded index faces (") and line.endswith(
        f"/ann/faces): 3 already there, {s['doc_count']} in all"), r.stdout

    q = str(tmp_path / "query")
    probes = [os.path.join(SAMPLE, n) for n in ("couple.jpg", "img1.jpg")]
    r = facebeam("query", "--probes", *probes, "--index", "faces", "--store", "local", "--output", q, env=home)
    with open(os.path.join(q, "summary.json")) as f:
        qs = json.load(f)
    assert r.stdout.startswith(f"queried {counted(qs['images_seen'], 'probe photo')}: "
                               f"{counted(qs['probe_faces'], 'face')} searched, "
                               f"0 failed, top 5 from local")
    assert f"same person at <= {qs['threshold']:.4f} ({qs['threshold_from']})" in r.stdout
    quiet(r)

    r = facebeam("search", *probes, "--index", "faces", "--store", "local", "--json", env=home)
    ss = json.loads(r.stdout)  # the table went to stderr, the summary to stdout
    assert ss["photos"] == 2 and ss["faces"] == qs["probe_faces"] and "couple.jpg: 2 face(s)" in r.stderr
    # ... and it holds the hits, as the rows `query` writes: a script gets the answer, not only the counts.
    from facebeam.pipelines import query as query_cmd

    def hits(rows):
        return sorted((r["probe_path"], r["probe_face_index"], r["rank"], r["face_id"], round(r["distance"], 4),
                       r["same_person"]) for r in rows)
    assert hits(ss["results"]) == hits(query_cmd.read_results(q)) and len(ss["results"]) == 5 * ss["faces"]
    assert ss["errors"] == []
    r = facebeam("search", *probes, "--index", "faces", "--store", "local", env=home)
    assert r.stdout.splitlines()[-1].startswith(f"searched 2 photo(s): {ss['faces']} face(s), 0 failed")
    r = facebeam("search", *probes, "--index", "nothere", env=home, check=False)  # no store of that name anywhere
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert "nothing to search: the embedded HNSW index at " in r.stderr and "no Elasticsearch URL" in r.stderr
    r = facebeam("search", "--index", "faces", "--store", "local", env=home, check=False)  # nothing to search
    assert r.returncode == 2 and r.stdout == "" and r.stderr == "error: name one or more photos to search (or " \
                                                               "--stdin to read their paths, one per line)\n"


def test_calibrate_cluster_persons_forget_models_lines(ran, home, tmp_path):
    out, s, _ = ran
    cal = str(tmp_path / "cal")
    r = facebeam("calibrate", "--shards", out, "--pairs", PAIRS, "--output", cal, env=home)
    with open(os.path.join(cal, "calibration.json")) as f:
        c = json.load(f)
    assert f"calibrated on {c['pairs']} pairs" in r.stdout.splitlines()[-1]
    assert f"best threshold {c['best']['threshold']:.4f}" in r.stdout.splitlines()[-1]

    cl = str(tmp_path / "persons")
    r = facebeam("cluster", "--shards", out, "--output", cl, env=home)
    with open(os.path.join(cl, "cluster.json")) as f:
        k = json.load(f)
    assert r.stdout.startswith(f"clustered {counted(k['faces'], 'face')} into {counted(k['persons'], 'person')} and "
                               f"{counted(k['singletons'], 'singleton')} ({k['low_quality']} low quality, 0 named); "
                               f"same person at <= {k['threshold']:.4f} ({k['threshold_from']}) in ")
    quiet(r)
    r = facebeam("persons", "list", "--top", "2", "--clusters", cl, env=home)  # --clusters after the action too
    table = pq.read_table(os.path.join(cl, "persons.parquet"))
    assert r.stdout.splitlines()[-1] == f"{table.num_rows} persons in all; the largest 2 shown (--top)"
    header, *rows = r.stdout.splitlines()[:3]
    assert header.split() == ["person", "faces", "name", "a", "photo", "of", "them"]
    person = rows[0].split()[0]
    size = int(rows[0].split()[1])
    listed = json.loads(facebeam("persons", "list", "--top", "2", "--clusters", cl, "--json", env=home).stdout)
    assert listed["persons"] == table.num_rows and [p["person_id"] for p in listed["top"]] == [
        line.split()[0] for line in rows] and listed["top"][0]["size"] == size
    r = facebeam("persons", "--clusters", cl, "name", person, "someone", env=home)
    assert r.stdout == f"named {person} ({size} faces) 'someone'; re-clusters keep it\n"
    r = facebeam("persons", "--clusters", cl, "name", person, "  ", env=home, check=False)
    assert r.returncode == 2 and r.stderr == "error: a person's name needs a visible character\n"
    # --index alone is chosen as `index` chooses: here the embedded index `run` built. Then --person filters on
    # the name, and a misspelt one is refused rather than answered with nothing.
    r = facebeam("persons", "--clusters", cl, "name", person, "someone", "--index", "faces", env=home)
    assert r.stdout.splitlines()[-1].startswith(f"named {person} ({size} faces) 'someone'; ")
    assert f"embedded HNSW index at {home['FACEBEAM_HOME']}/ann/faces: " in r.stdout
    photo = os.path.join(SAMPLE, "img1.jpg")
    r = facebeam("search", photo, "--index", "faces", "--person", "someone", "--k", "3", env=home)
    assert re.search(r"^\s+1\s+[\d.]+\s+(yes|no)\s+/", r.stdout, flags=re.M), r.stdout  # a hit, of that person
    typed = facebeam("search", photo, "--index", "faces", "--person", "SomeOne", "--k", "3", env=home)
    table_rows = re.compile(r"^\s+\d+\s+[\d.]+\s+(?:yes|no)\s+/.*$", flags=re.M)
    assert table_rows.findall(typed.stdout) == table_rows.findall(r.stdout)  # a name is found whatever its case
    r = facebeam("search", photo, "--index", "faces", "--person", "somone", env=home, check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "--person 'somone': no face in the embedded HNSW index" in r.stderr

    r = facebeam("forget", "--image", os.path.join(SAMPLE, "img1.jpg"), "--shards", out,  # --index alone: local
                 "--index", "faces", "--dry-run", env=home)
    # the collection was loaded into more than one store by now: every recorded store counts its faces
    per_store = [int(n) for n in re.findall(r": would remove (\d+) face doc\(s\)$", r.stdout, flags=re.M)]
    assert per_store and all(n == 1 for n in per_store), r.stdout
    # every collection loaded into those stores that holds the photo counts its rows (the sample's, and any other)
    rows = [int(n) for n in re.findall(r"^  shards .*: would remove (\d+) row\(s\)$", r.stdout, flags=re.M)]
    assert rows[0] == 1 and all(n == 1 for n in rows), r.stdout
    assert f"forget: 1 image(s), {sum(rows)} shard row(s), {sum(per_store)} indexed face(s)" in r.stdout
    assert "dry run: nothing was changed" in r.stdout

    r = facebeam("forget", "--label", "someone", "--shards", str(tmp_path / "typo"), env=home, check=False)
    assert r.returncode == 2 and r.stderr.startswith(f"error: no collection at {tmp_path / 'typo'}: ")

    r = facebeam("models", "check", env=home)
    assert re.fullmatch(r"models Dlib \+ dlib load offline in \d+\.\d\d s\n", r.stdout), r.stdout  # one line


def test_reindex_says_what_it_embedded_and_swapped(home, tmp_path):
    photos = [os.path.join(SAMPLE, n) for n in ("img1.jpg", "img2.jpg", "couple.jpg")]
    facebeam("run", "--input", *photos, "--output", str(tmp_path / "v1"), "--index", "re", "--store", "local",
             env=home)
    r = facebeam("reindex", "--output", str(tmp_path / "v2"), "--index", "re", "--store", "local",
                 "--detect-max-side", "480", env=home)
    s = json.loads((tmp_path / "v2" / "summary.json").read_text())
    lines = r.stdout.splitlines()
    assert f"\nembedded {s['images_seen']} photos: {s['faces']} faces, 0 failed (" in r.stdout
    assert lines[-1].startswith(f"reindexed {s['doc_count']} faces: {s['old_spec_id']} -> {s['new_spec_id']}; "
                                f"top-{s['comparison']['k']} image overlap")
    assert "labels:" not in r.stdout  # reindex carries the old labels by content
    quiet(r)


def test_services_say_their_state(tmp_path):
    r = facebeam("es", "status", "--home", str(tmp_path / "es"), check=False)
    assert r.returncode == 1 and r.stdout.splitlines()[-1] == "es status: not ok (exit 1)"
    r = facebeam("redis", "status", "--home", str(tmp_path / "redis"), check=False)
    assert r.returncode == 1 and r.stdout.splitlines()[-1] == "redis status: not ok (exit 1)"


@pytest.mark.parametrize("words", [("--help",), ("es", "status", "--home", "{tmp}"),
                                   ("-m", "facebeam.pipelines.local.elasticsearch", "status", "--home", "{tmp}")])
def test_a_reader_that_leaves_early_ends_the_command_quietly(words, tmp_path):
    """`facebeam ... | head -1`: the reader has closed the pipe before the command prints. The command ends as
    `git log | head` does (141, nothing on stderr), through the console script and a module's own entry."""
    read, write = os.pipe()
    os.close(read)
    words = [w.replace("{tmp}", str(tmp_path / "es")) for w in words]
    argv = [sys.executable, *words] if words[0] == "-m" else [sys.executable, "-m", "facebeam.pipelines.cli", *words]
    try:
        r = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert r.returncode == 141 and r.stderr == "", (words, r.returncode, r.stderr)


@pytest.mark.unit
def test_a_broken_pipe_that_is_not_the_reader_leaving_keeps_its_traceback(capsys):
    from facebeam.pipelines import jobs

    def socket_fault():
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):  # stdout (pytest's capture) is open: a socket's fault, not a reader's
        jobs.until_reader_leaves(socket_fault)
    assert jobs.until_reader_leaves(lambda: 0) == 0


def test_make_demo_fits_one_screen(tmp_path):
    """`make demo`, in full: a line per step, the search table, no log noise, under 40 lines."""
    r = subprocess.run(["make", "demo", f"OUT={tmp_path}/out"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "FACEBEAM_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stdout + r.stderr
    shown = (r.stdout + r.stderr).splitlines()
    assert len(shown) < 40, "\n".join(shown)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any(line.startswith(f"embedded {s['images_seen']} photos: {s['faces']} faces") for line in shown)
    assert any(line.startswith(f"indexed {s['docs_indexed']} faces into the embedded index faces") for line in shown)
    assert any(line.startswith("queried 2 probe photos") for line in shown)
    assert any(line.startswith("searched 2 photo(s)") for line in shown)
    assert sum("rank  distance  same?  path" in line for line in shown) >= 2
    for line in shown:
        assert not any(n in line for n in NOISE), line


# --- the progress bar ----------------------------------------------------------------------------------
def test_grpc_keeps_its_info_lines_to_itself_in_the_launcher():
    """A gRPC server whose port's second loopback address is taken (the dual-stack form of 127.0.0.1) logs an
    INFO line; set after gRPC's import, GRPC_VERBOSITY did not hide it, and a stopped run printed two lines."""
    code = """
import socket, sys
import facebeam.pipelines.embed  # what `facebeam embed` imports first: apache_beam, and with it gRPC
import grpc
from concurrent import futures
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::ffff:127.0.0.1", 0))
s.listen()
server = grpc.server(futures.ThreadPoolExecutor(1))
print(server.add_insecure_port(f"localhost:{s.getsockname()[1]}"))
"""
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and int(done.stdout) > 0, done.stderr
    assert "chttp2" not in done.stderr and "Address already in use" not in done.stderr, done.stderr


def test_a_progress_bar_on_a_terminal_only(tmp_path):
    photos = [os.path.join(SAMPLE, n) for n in ("img1.jpg", "img2.jpg", "img3.jpg", "img4.jpg")]
    shown = on_a_terminal("embed", "--input", *photos, "--output", str(tmp_path / "tty"))
    frames = [f for f in shown.split("\r") if f.startswith("embed:")]
    assert frames, shown[-2000:]
    assert re.search(r"\| 4/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(s/ photos| photos/s)\]", frames[-1]), frames[-1]
    assert "embedded 4 photos" in shown
    shown = on_a_terminal("cluster", "--shards", str(tmp_path / "tty"), "--output", str(tmp_path / "persons"))
    frames = [f for f in shown.split("\r") if f.startswith("graph:")]
    assert frames and re.search(r"\| (\d+)/\1 \[", frames[-1]), shown[-2000:]  # every face's neighbours, of all
    r = facebeam("embed", "--input", *photos, "--output", str(tmp_path / "pipe"))
    assert "photos/s]" not in r.stderr  # stderr is a pipe: no bar


# --- verify: which face ----------------------------------------------------------------------------
def couple_shards(sample_run, folder) -> list:
    """Shards of couple.jpg alone, each of its two faces labeled person_<face_index>; returns the rows."""
    rows = [r for name in sorted(os.listdir(os.path.join(sample_run[0], "embeddings"))) if name.endswith(".parquet")
            for r in pq.read_table(os.path.join(sample_run[0], "embeddings", name)).to_pylist()
            if os.path.basename(r["image_path"]) == "couple.jpg"]
    assert len(rows) == 2
    for r in rows:
        r["label"] = f"person_{r['face_index']}"
    os.makedirs(folder / "embeddings")
    first = pq.read_table(os.path.join(sample_run[0], "embeddings",
                                       next(n for n in os.listdir(os.path.join(sample_run[0], "embeddings"))
                                            if n.endswith(".parquet"))))
    pq.write_table(pa.Table.from_pylist(rows, schema=first.schema), folder / "embeddings" / "part-0.parquet")
    return rows


def test_verify_on_a_two_face_photo_names_the_face_and_offers_face(sample_run, redis_conn_args, tmp_path):
    """couple.jpg has two people; each face is labeled person_<face_index>. The default compares the
    largest face; --face picks the other one, which is then the same person at distance 0."""
    shards = tmp_path / "couple"
    rows = couple_shards(sample_run, shards)
    job(index, ["--shards", str(shards), "--store", "redis", "--index", "cli-couple", *redis_conn_args])

    largest = max(rows, key=lambda r: r["box_w"] * r["box_h"])["face_index"]
    other = 1 - largest
    photo = os.path.join(SAMPLE, "couple.jpg")
    args = ["--store", "redis", "--index", "cli-couple", *redis_conn_args]
    r = facebeam("verify", photo, "--as", f"person_{other}", *args, check=False)
    line = r.stdout.strip()
    assert r.returncode == 0, r.stderr
    assert line.startswith(f"different: {photo} as person_{other} (face {largest} of 2 in the photo, the largest; "
                           "pick another with --face N): distance ")
    r = facebeam("verify", photo, "--as", f"person_{other}", "--face", str(other), *args)
    assert r.stdout.startswith(f"same: {photo} as person_{other} (face {other} of 2 in the photo; pick another with "
                               "--face N): distance 0.0000 <=")
    r = facebeam("verify", photo, "--as", f"person_{other}", "--face", "5", *args, check=False)
    assert r.returncode == 2 and "has 2 face(s), numbered 0 to 1 left to right" in r.stderr


def test_verify_without_a_server_uses_the_embedded_index_that_run_builds(sample_run, tmp_path):
    """No Elasticsearch and no Redis configured: verify reads the embedded index, the zero-server default of
    `run` and `index`, and says so; with no such index it names all three places it looked."""
    env = {"FACEBEAM_HOME": str(tmp_path / "home")}
    shards = tmp_path / "couple"
    rows = couple_shards(sample_run, shards)
    facebeam("index", "--shards", str(shards), "--index", "cli-couple", env=env)
    largest = max(rows, key=lambda r: r["box_w"] * r["box_h"])["face_index"]
    photo = os.path.join(SAMPLE, "couple.jpg")
    r = facebeam("verify", photo, "--as", f"person_{largest}", "--index", "cli-couple", env=env)
    assert r.stdout.startswith(f"same: {photo} as person_{largest} (face {largest} of 2 in the photo, the largest; ")
    assert "distance 0.0000 <=" in r.stdout and " on local" in r.stdout
    assert "store: local, chosen automatically (no Elasticsearch or Redis configured" in r.stdout
    r = facebeam("verify", photo, "--as", "person_0", "--index", "nobody-built-this", env=env, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no Redis configured" in r.stderr and "nobody-built-this is not built" in r.stderr
