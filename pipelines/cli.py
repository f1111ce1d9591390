"""`facebeam <command>`: one entry point; each command lives in its own module.

Every module exposes `main(argv) -> int`; pipeline modules also run as
`python -m facebeam.pipelines.<name>`. Modules are imported only when their command runs,
so `facebeam --help` stays fast.
"""
import difflib
import importlib
import importlib.metadata
import logging
import sys

COMMANDS = {
    "embed": ("facebeam.pipelines.embed", "photos -> Parquet face embedding shards"),
    "index": ("facebeam.pipelines.index", "Parquet shards -> a store: Elasticsearch (chunks, retries), embedded, Redis"),
    "run": ("facebeam.pipelines.run", "embed and index in one pipeline"),
    "query": ("facebeam.pipelines.query", "batch top-k lookups for probe photos"),
    "search": ("facebeam.pipelines.search", "look photos up at once, as a table (no job)"),
    "calibrate": ("facebeam.pipelines.calibrate", "fit the same-person threshold to labeled faces"),
    "cluster": ("facebeam.pipelines.cluster", "group every face into persons (stable ids, names kept)"),
    "persons": ("facebeam.pipelines.persons", "name, merge and split persons of a cluster folder"),
    "reindex": ("facebeam.pipelines.reindex", "re-embed with a new spec and swap the alias"),
    "forget": ("facebeam.pipelines.forget", "erase photos' faces from every store, shard and copy"),
    "verify": ("facebeam.pipelines.verify", "same person or not: a photo against a named identity"),
    "es": ("facebeam.pipelines.local.elasticsearch", "start, stop and inspect a local Elasticsearch"),
    "redis": ("facebeam.pipelines.local.redis", "start, stop and inspect a local Redis (identity store)"),
    "flink": ("facebeam.pipelines.local.flink", "start and stop a local standalone Flink cluster"),
    "spark": ("facebeam.pipelines.local.spark", "start and stop a local standalone Spark cluster"),
    "models": ("facebeam.pipelines.models", "check and seed offline model weights"),
    "bench": ("facebeam.pipelines.bench", "benchmarks that print side-by-side ratios"),
}


def _usage() -> str:
    lines = ["usage: facebeam <command> [options] [-v] [--json]   (facebeam <command> --help for details)", "",
             "Every command ends with one result line (--json: the summary itself); -v shows the logs.", "",
             "commands:"]
    for name, (module, text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            lines.append(f"  {name:<9} {text}")
    lines += ["", "example (no server needed):",
              "  facebeam run --input photos/ --output out/photos --index faces --store local",
              "  facebeam search photos/img1.jpg --index faces --store local"]
    return "\n".join(lines)


def _version() -> str:
    """facebeam's version and the versions of what decides its results, from package metadata (no import)."""
    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    used = ", ".join(f"{d} {version(d)}" for d in ("apache-beam", "deepface", "elasticsearch", "pyarrow", "numpy"))
    return f"facebeam {version('facebeam')} ({used}; Python {sys.version.split()[0]})"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "help":  # `facebeam help embed [index]`: that command's --help
        argv = [*argv[1:], "--help"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(_version())
        return 0
    lead = []  # `facebeam -v run ...`: the flags every command takes may come before it
    while len(argv) > 1 and argv[0] in ("-v", "--verbose", "--json"):
        lead.append(argv.pop(0))
    name, rest = argv[0], argv[1:] + lead
    if name not in COMMANDS or importlib.util.find_spec(COMMANDS[name][0]) is None:
        # One line, as for a wrong flag: the list of commands is one `facebeam --help` away.
        close = difflib.get_close_matches(name, [c for c in COMMANDS if importlib.util.find_spec(COMMANDS[c][0])], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"facebeam: unknown command {name!r}{hint} (`facebeam --help` lists the commands)", file=sys.stderr)
        return 2
    from facebeam.pipelines import jobs
    from facebeam.transforms.errors import UserError

    jobs.setup_logging(verbose=any(a in jobs.VERBOSE_FLAGS for a in rest))
    jobs.interrupt_on_sigterm()
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as e:  # commands with their own main (bench index/query/verify) parse through options too
        logging.getLogger("facebeam").error("%s", e)
        return 2


def entry() -> None:
    """The `facebeam` console script and `python -m facebeam.pipelines.cli`."""
    from facebeam.pipelines import jobs

    jobs.exit_process(jobs.until_reader_leaves(main))


if __name__ == "__main__":
    entry()
