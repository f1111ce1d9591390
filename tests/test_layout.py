"""The house rules: every flag a command offers is one it reads; user errors vs bugs; installed names."""
import argparse
import ast
import importlib
import os
import subprocess
import sys
import textwrap
import zipfile

import pyarrow.parquet as pq
import pytest

from facebeam.pipelines import cli, options
from tests.helpers import ROOT, SAMPLE

PYTHON = sys.executable


def _value(action) -> list:
    if action.choices:
        return [str(next(iter(action.choices)))]
    return ["1" if action.type in (int, float) else "x"]


def _minimal_argv(parser: argparse.ArgumentParser) -> list:
    """Words that satisfy a parser's required options and positionals, with placeholder values."""
    argv, groups = [], {}
    for g in parser._mutually_exclusive_groups:
        if g.required:
            groups[id(g)] = g._group_actions[0]
    chosen = {id(a) for a in groups.values()}
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not a.option_strings:
            if a.nargs not in ("*", "?"):
                argv += _value(a)
        elif a.required or id(a) in chosen:
            argv += [a.option_strings[0]] + ([] if a.nargs == 0 else _value(a))
    return argv


def _variants(parser: argparse.ArgumentParser) -> list:
    """(argv, parser) for a parser and each of its sub-commands, recursively."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [_minimal_argv(parser)]
    out = []
    for name, sub in subs[0].choices.items():
        out += [[*_minimal_argv(parser), name, *rest] for rest in _variants(sub)]
    return out


def _modules() -> dict:
    """Every command's module; `facebeam bench` is a dispatcher, so each benchmark counts as a command."""
    from facebeam.pipelines import bench

    out = {name: module for name, (module, _) in cli.COMMANDS.items() if name != "bench"}
    out.update({f"bench {what}": module for what, module in bench.BENCHES.items()})
    return out


@pytest.mark.unit
@pytest.mark.parametrize("name", list(_modules()))
def test_every_offered_flag_is_read(name):
    """`--help` lists only what the command uses: every parsed option is read by its `configure`."""
    module = importlib.import_module(_modules()[name])
    assert hasattr(module, "build_parser") and hasattr(module, "configure"), f"{name}: no build_parser/configure"
    for argv in _variants(module.build_parser()):
        args, beam_args = options.parse(module.build_parser(), argv, beam=getattr(module, "BEAM", True))
        module.configure(args, beam_args)
        unread = args.dests() - args.read
        assert not unread, f"facebeam {name} {' '.join(argv)}: offers {sorted(unread)} but never reads them"


@pytest.mark.unit
def test_query_help_offers_no_embed_only_flags():
    text = importlib.import_module(cli.COMMANDS["query"][0]).build_parser().format_help()
    for flag in ("--incremental", "--since", "--label-from"):
        assert flag not in text


def _facebeam(*words, env=None, code=None):
    prog = code or "import sys; from facebeam.pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([PYTHON, "-c", prog, *words], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_a_bug_keeps_its_traceback_and_exits_1(tmp_path):
    """A plain ValueError inside a command is a bug, not a user error: traceback, exit 1."""
    inject = textwrap.dedent("""
        import sys
        from facebeam.transforms import sources
        def broken(patterns):
            raise ValueError("injected bug")
        sources.check_inputs = broken
        from facebeam.pipelines.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    done = _facebeam("embed", "--input", SAMPLE, "--output", str(tmp_path / "out"), code=inject)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback (most recent call last)" in done.stderr and "ValueError: injected bug" in done.stderr


@pytest.mark.parametrize("argv, says", [
    (["embed", "--input", "/no/such/folder/*.jpg", "--output", "OUT"], "matched no files"),
    (["index", "--shards", "OUT", "--index", "faces", "--chunk-bytes", "100", "--es-url", "https://127.0.0.1:9"],
     "chunk_docs must be >= 1 and chunk_bytes >= 1024"),
    (["index", "--shards", "OUT", "--index", "faces", "--max-retries", "-1"],
     "error: argument --max-retries: want a number >= 0, got '-1' (`facebeam index --help` lists every flag)"),
    (["calibrate"], "error: the following arguments are required: --shards"),
    (["es"], "error: the following arguments are required: what to do (up, down, status)"),
])
def test_a_user_error_is_one_line_and_exits_2(tmp_path, argv, says):
    done = _facebeam(*[str(tmp_path / w) if w == "OUT" else w for w in argv])
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in done.stderr, done.stderr


def test_installed_names_and_a_pipeline_of_ones_own(tmp_path):
    """`pip install .` puts only `facebeam` into site-packages; its transforms build a user's own pipeline."""
    wheels = tmp_path / "wheels"
    subprocess.run([PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), ROOT],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("facebeam-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"facebeam"}, tops
    # the Java source `facebeam flink|spark up` compiles travels with the package
    assert "facebeam/pipelines/runner/ClusterLibResources.java" in zipfile.ZipFile(wheel).namelist()
    site = tmp_path / "site"
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert not (site / "pipelines").exists() and not (site / "transforms").exists()
    out = tmp_path / "out"
    own = textwrap.dedent(f"""
        import importlib.util, sys
        import apache_beam as beam
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        from facebeam.transforms import embed, shards
        from facebeam.transforms.embed import EmbedInputs
        from facebeam.transforms.sources import Inputs
        from facebeam.transforms.spec import EmbeddingSpec
        assert embed.__file__.startswith({str(site)!r}), embed.__file__
        assert importlib.util.find_spec("pipelines") is None and importlib.util.find_spec("transforms") is None
        spec = EmbeddingSpec()
        photos = [{SAMPLE!r} + "/" + n for n in ("img1.jpg", "img2.jpg", "couple.jpg")]
        with beam.Pipeline(runner=FnApiRunner()) as p:
            found = p | EmbedInputs(Inputs(tuple(photos)), spec)
            found | shards.WriteShards({str(out)!r}, spec)
    """)
    done = subprocess.run([PYTHON, "-c", own], capture_output=True, text=True, timeout=600, cwd=str(tmp_path),
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for f in sorted((out / "embeddings").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(os.path.basename(r["image_path"]) for r in rows) == ["couple.jpg", "couple.jpg", "img1.jpg", "img2.jpg"]
    assert all(len(r["embedding"]) == 128 for r in rows)


# --- layers: the import graph and private names, read from the source --------------------------
PACKAGES = {"facebeam.pipelines": os.path.join(ROOT, "pipelines"), "facebeam.transforms": os.path.join(ROOT, "transforms")}


def _source_modules() -> dict:
    """{module name: file} for every facebeam module in the repository."""
    out = {}
    for package, folder in PACKAGES.items():
        for dirpath, _, files in os.walk(folder):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), folder)[:-3].replace(os.sep, ".")
                    rel = rel.removesuffix("__init__").rstrip(".")
                    out[f"{package}.{rel}".rstrip(".")] = os.path.join(dirpath, name)
    return out


def _imports(tree: ast.AST, known: dict) -> dict:
    """{imported facebeam module: [line, ...]} of every import in a module, inside functions too."""
    found = {}

    def add(target, line):
        while target and target not in known:  # an attribute: the module that holds it
            target = target.rpartition(".")[0]
        if target:
            found.setdefault(target, []).append(line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module,
                    node.lineno)
    return found


def import_graph() -> dict:
    """{module: {imported module: [lines]}} over facebeam's own modules."""
    known = _source_modules()
    graph = {}
    for module, path in known.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        graph[module] = {m: lines for m, lines in _imports(tree, known).items() if m != module}
    return graph


def import_cycles(graph: dict) -> list:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def _describe_cycle(graph: dict, group: list) -> str:
    inside = set(group)
    edges = [f"    {a} -> {b} (line {', '.join(map(str, graph[a][b]))})"
             for a in group for b in sorted(graph[a]) if b in inside]
    return "  " + " <-> ".join(m.removeprefix("facebeam.") for m in group) + ":\n" + "\n".join(edges)


@pytest.mark.unit
def test_no_import_cycles():
    """No loop of imports among facebeam's modules, counting imports inside functions."""
    graph = import_graph()
    assert "facebeam.pipelines.jobs" in graph and graph["facebeam.pipelines.jobs"], "the graph reads no imports"
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe_cycle(graph, g) for g in cycles)


@pytest.mark.unit
def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import():
    """The checker itself: a loop closed by an import inside a function is found."""
    known = {"facebeam.pipelines.a": "", "facebeam.pipelines.b": ""}
    a = ast.parse("from facebeam.pipelines import b\n")
    b = ast.parse("def f():\n    from facebeam.pipelines.a import thing\n")
    graph = {"facebeam.pipelines.a": _imports(a, known), "facebeam.pipelines.b": _imports(b, known)}
    assert import_cycles(graph) == [["facebeam.pipelines.a", "facebeam.pipelines.b"]]


def private_uses() -> list:
    """(module, line, 'other.module._name') for each use of another facebeam module's private name."""
    known = _source_modules()
    out = []
    for module, path in sorted(known.items()):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        aliases = {}  # local name -> facebeam module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in known:
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in known:
                        aliases[alias.asname or alias.name] = full
                    elif node.module in known and node.module != module and _private(alias.name):
                        out.append((module, node.lineno, f"{node.module}.{alias.name}"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                owner = _dotted(node.value)
                target = aliases.get(owner) if owner else None
                if target is None and owner in known:
                    target = owner
                if target and target != module:
                    out.append((module, node.lineno, f"{target}.{node.attr}"))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


@pytest.mark.unit
def test_no_module_uses_another_modules_private_names():
    uses = private_uses()
    assert not uses, "private names used from another module:\n" + "\n".join(
        f"  {m.removeprefix('facebeam.')}:{line} uses {name.removeprefix('facebeam.')}" for m, line, name in uses)


@pytest.mark.unit
@pytest.mark.parametrize("lower, higher", [("facebeam.transforms", "facebeam.pipelines"),
                                           ("facebeam.pipelines.local", "facebeam.pipelines.runner")])
def test_layers_point_one_way(lower, higher):
    """`transforms/` never imports `pipelines/`; `pipelines/local/` (services) never imports `pipelines/runner/`."""
    graph = import_graph()
    wrong = [f"  {a.removeprefix('facebeam.')} -> {b.removeprefix('facebeam.')} (line {', '.join(map(str, lines))})"
             for a, targets in sorted(graph.items()) if a.startswith(lower + ".")
             for b, lines in sorted(targets.items()) if b == higher or b.startswith(higher + ".")]
    assert not wrong, f"{lower} imports {higher}:\n" + "\n".join(wrong)
