"""facebeam bench <what>: benchmarks that measure side by side in one run and print ratios.

    facebeam bench embed    [--input DIR] [--output DIR] [--naive-limit N]
    facebeam bench index    --vectors N      (Elasticsearch and embedded index load)
    facebeam bench query    --vectors N      (kNN latency / recall, Elasticsearch and embedded)
    facebeam bench runners  [--photos N]     (Direct vs Flink vs Spark)
    facebeam bench verify   --vectors N      (identity verification on Redis and Elasticsearch)
"""
import importlib
import sys

BENCHES = {
    "embed": "facebeam.pipelines.bench.embed",
    "index": "facebeam.pipelines.bench.index",
    "query": "facebeam.pipelines.bench.query",
    "runners": "facebeam.pipelines.bench.runners",
    "verify": "facebeam.pipelines.bench.verify",
    "cluster": "facebeam.pipelines.bench.cluster",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = {k: v for k, v in BENCHES.items() if importlib.util.find_spec(v) is not None}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in available:
        print(__doc__.strip() + "\n\navailable here: " + ", ".join(available))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(available[argv[0]]).main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
