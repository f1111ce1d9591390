"""`facebeam <command>`: one entry point; each command lives in its own module.

Every module exposes `main(argv) -> int`; pipeline modules also run as
`python -m pipelines.<name>`. Modules are imported only when their command runs,
so `facebeam --help` stays fast.
"""
import importlib
import logging
import sys

COMMANDS = {
    "embed": ("pipelines.embed", "photos -> Parquet face embedding shards"),
    "index": ("pipelines.index", "Parquet shards -> Elasticsearch, in chunks with retries"),
    "run": ("pipelines.run", "embed and index in one pipeline"),
    "query": ("pipelines.query", "batch top-k lookups for probe photos"),
    "search": ("pipelines.search", "one-shot lookup of a single photo"),
    "reindex": ("pipelines.reindex", "re-embed with a new spec and swap the alias"),
    "forget": ("pipelines.forget", "erase faces from the index and the shards"),
    "es": ("pipelines.es_local", "start, stop and inspect a local Elasticsearch"),
    "flink": ("pipelines.flink_local", "start and stop a local standalone Flink cluster"),
    "spark": ("pipelines.spark_local", "start and stop a local standalone Spark cluster"),
    "models": ("pipelines.models", "check and seed offline model weights"),
    "bench": ("pipelines.bench", "benchmarks that print side-by-side ratios"),
}


def _usage() -> str:
    lines = ["usage: facebeam <command> [options]   (facebeam <command> --help for details)", "", "commands:"]
    for name, (module, text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            lines.append(f"  {name:<9} {text}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS or importlib.util.find_spec(COMMANDS[name][0]) is None:
        print(f"facebeam: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Beam's INFO chatter off; workers print their own (filtered) lines, so forwarded copies are dropped too.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
