"""facebeam bench cluster: the persons clustering on synthetic identity-clustered vectors.

    facebeam bench cluster [--vectors 100000] [--k 16] [--methods cw,cc,mutual] [--threshold T]
                           [--input DIR] [--seed 0]

Vectors come from pipelines/bench/synthetic.py, fitted to the sample's real embeddings (an embed
run of --input is made first when no stats are given). The kNN graph is exact (numpy, in blocks);
then each method clusters the same graph at the threshold (default: the distance-distribution
rule of transforms/persons.py, as `facebeam cluster` uses without labels). Prints wall time of
the graph and of each clustering, the peak memory (ru_maxrss), and pairwise / BCubed scores
against the generator's identities.

Quality defaults were chosen from these measurements (sample photos, dlib): faces scaled so the box
is 35 px moved 0.46 from their full-size embedding on average (45 px: 0.39); a blur that leaves a
Laplacian variance of ~45 moved them 0.47 (max 0.63), one that leaves ~150 only 0.29.
"""
import dataclasses
import json
import logging
import os
import resource
import sys
import tempfile
import time

from facebeam.pipelines import jobs, options
from facebeam.pipelines.bench import synthetic
from facebeam.transforms import knn, persons

log = logging.getLogger(__name__)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stats(input_dir: str, stats_file):
    if stats_file:
        with open(stats_file) as f:
            return json.load(f)
    from facebeam.pipelines import embed
    from facebeam.transforms.sources import Inputs

    out = tempfile.mkdtemp(prefix="bench-cluster-")
    embed.run(embed.EmbedConfig(Inputs((input_dir,)), out, beam_args=options.QUIET_WORKERS))
    return synthetic.fit_sample(os.path.join(out, "embeddings"), os.path.join(input_dir, "face-recognition-pivot.csv"))


@dataclasses.dataclass(frozen=True)
class BenchClusterConfig:
    vectors: int = 100_000
    k: int = 16
    methods: tuple = ("cw", "cc", "mutual")
    threshold: float = None
    input: str = synthetic.DEFAULT_SAMPLE
    stats: str = None
    seed: int = 0
    json_out: str = None


def build_parser():
    p = options.parser("facebeam bench cluster", __doc__)
    p.add_argument("--vectors", type=int, default=100_000, help="synthetic faces to cluster")
    p.add_argument("--k", type=int, default=16, help="neighbours per face in the graph")
    p.add_argument("--methods", default="cw,cc,mutual", help="clustering methods to compare, comma-separated")
    p.add_argument("--threshold", type=float, default=None, help="edge distance (default: the model's)")
    p.add_argument("--input", default=synthetic.DEFAULT_SAMPLE, help="photos the synthetic faces are fitted on")
    p.add_argument("--stats", default=None, help="fitted stats JSON (skips the embed run)")
    p.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the figures to FILE")
    return p


def configure(a: options.Args, beam_args=()) -> BenchClusterConfig:
    return BenchClusterConfig(vectors=a.vectors, k=a.k, methods=tuple(a.methods.split(",")), threshold=a.threshold,
                              input=a.input, stats=a.stats, seed=a.seed, json_out=a.json_out)


def run(ns: BenchClusterConfig, pipeline=None) -> dict:
    stats = _stats(ns.input, ns.stats)
    faces = synthetic.SyntheticFaces(stats, ns.vectors, seed=ns.seed)
    x = knn.prepare(faces.vectors(), stats.get("metric", "euclidean"))
    base = _peak_mib()
    started = time.perf_counter()
    ids, dist = persons.knn_exact(x, ns.k)
    graph_s = time.perf_counter() - started
    graph_mib = _peak_mib()
    t = ns.threshold or persons.threshold_from_distances(persons.random_pair_distances(x[:3000], "euclidean"))
    results = []
    for method in ns.methods:
        started = time.perf_counter()
        labels = persons.cluster(ids, dist, t, method)
        took = time.perf_counter() - started
        q = persons.quality(labels, faces.labels)
        results.append({"method": method, "cluster_s": round(took, 2), "peak_mib": round(_peak_mib(), 1), **q})
    out = {"vectors": ns.vectors, "identities": faces.k, "k": ns.k, "threshold": t, "graph_s": round(graph_s, 2),
           "vectors_mib": round(x.nbytes / 2**20, 1), "peak_mib_before_graph": round(base, 1),
           "peak_mib_after_graph": round(graph_mib, 1), "results": results}
    print(f"{ns.vectors} vectors, {faces.k} identities, k={ns.k}, threshold {t:.4f}; exact graph {graph_s:.1f} s")
    print(f"{'method':8} {'cluster s':>9} {'peak MiB':>9} {'pair P':>7} {'pair R':>7} {'BCubed F1':>9} {'found':>7} {'true':>6}")
    for r in results:
        print(f"{r['method']:8} {r['cluster_s']:>9} {r['peak_mib']:>9} {r['pairwise_precision']:>7} "
              f"{r['pairwise_recall']:>7} {r['bcubed_f1']:>9} {r['clusters']:>7} {r['true_clusters']:>6}")
    if ns.json_out:
        with open(ns.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return out


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
