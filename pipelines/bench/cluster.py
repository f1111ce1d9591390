"""facebeam bench cluster: every persons clustering method on the same kNN graph, side by side.

    facebeam bench cluster [--vectors 100000[,1000000]] [--sets sample,plain,hard]
                           [--methods cw,infomap,leiden,density] [--k 16] [--graph ivf|hnsw|exact]
                           [--recall-sample 1000] [--incremental 10000] [--threshold T]
                           [--input DIR] [--stats FILE] [--seed 0] [--json FILE]

Sets: `sample` is the real photos of --input (an embed run, identities from its labeled pairs);
`plain` is synthetic vectors fitted to them (pipelines/bench/synthetic.py: isotropic-looking
identities of similar size); `hard` is the same fit with Zipf-like identity sizes, look-alike
identities, low-quality faces spread wide and near-duplicates (synthetic.HardFaces).

For each set and size: the kNN graph (ivf: IVF cells and 4-bit PQ codes, candidates re-ranked on the
vectors, as `facebeam cluster --ann` does from 50k faces; hnsw: a faiss HNSW built as the embedded
index builds it, then batched top-k; exact: numpy blocks), its recall@k against exact search on --recall-sample
faces, the threshold with its source, then each method on that one graph, each in a forked child
so its wall time and peak memory (the child's ru_maxrss: the vectors and graph it inherits plus
what the method adds) are its own. Scores: pairwise and BCubed precision/recall/F1, persons found
against the true number. --incremental N adds N new faces of known identities to the clustering
of the default method through the same index (top-k, then the persons of neighbours within the
threshold), timed, and scores the joins.

Quality defaults were chosen from these measurements (sample photos, dlib): faces scaled so the box
is 35 px moved 0.46 from their full-size embedding on average (45 px: 0.39); a blur that leaves a
Laplacian variance of ~45 moved them 0.47 (max 0.63), one that leaves ~150 only 0.29.
"""
import dataclasses
import json
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import time

import numpy as np

from facebeam.pipelines import jobs, options
from facebeam.pipelines.bench import synthetic
from facebeam.transforms import knn, labels, persons

log = logging.getLogger(__name__)
EXACT_MAX = 20_000  # --graph hnsw still uses the exact graph up to this many faces


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(conn, fn, args):
    started = time.perf_counter()
    out = fn(*args)
    conn.send((out, time.perf_counter() - started, _peak_mib()))
    conn.close()


def measured(fn, *args):
    """fn(*args) in a forked child: (result, wall seconds, the child's peak RSS in MiB)."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    proc.start()
    child.close()
    result = parent.recv()
    proc.join()
    return result


def _embedded_sample(input_dir: str) -> str:
    from facebeam.pipelines import embed
    from facebeam.transforms.sources import Inputs

    out = tempfile.mkdtemp(prefix="bench-cluster-")
    embed.run(embed.EmbedConfig(Inputs((input_dir,)), out, beam_args=options.QUIET_WORKERS))
    return os.path.join(out, "embeddings")


def _sample_set(embeddings: str, pairs_csv: str):
    """(prepared vectors of every face, true identity per face or None): the largest face of each
    photo in a 'Yes' pair carries its identity; the scores count only those."""
    import pyarrow.parquet as pq

    rows = [r for f in sorted(os.listdir(embeddings)) if f.endswith(".parquet")
            for r in pq.read_table(os.path.join(embeddings, f), columns=["face_id", "image_path", "box_w", "box_h",
                                                                         "embedding"]).to_pylist()]
    seen, unique = set(), []
    for r in rows:  # one face per content, as the cluster job counts them
        if r["face_id"] not in seen:
            seen.add(r["face_id"])
            unique.append(r)
    ident = labels.identities_from_pairs(labels.read_pairs(pairs_csv))
    largest = {}
    for i, r in enumerate(unique):
        name = os.path.basename(r["image_path"])
        if name in ident and (name not in largest or r["box_w"] * r["box_h"] > unique[largest[name]]["box_w"] *
                              unique[largest[name]]["box_h"]):
            largest[name] = i
    truth = [None] * len(unique)
    for name, i in largest.items():
        truth[i] = ident[name]
    return knn.prepare([r["embedding"] for r in unique], "euclidean"), truth


@dataclasses.dataclass(frozen=True)
class BenchClusterConfig:
    vectors: tuple = (100_000,)
    sets: tuple = ("sample", "plain", "hard")
    methods: tuple = ("cw", "infomap", "leiden", "density")
    k: int = 16
    graph: str = "ivf"
    recall_sample: int = 1000
    ef: int = 128
    probes: int = persons.IVF_PROBES
    incremental: int = 0
    threshold: float = None
    input: str = synthetic.DEFAULT_SAMPLE
    stats: str = None
    seed: int = 0
    json_out: str = None


def build_parser():
    p = options.parser("facebeam bench cluster", __doc__)
    p.add_argument("--vectors", default="100000", help="synthetic sizes, comma-separated (default %(default)s)")
    p.add_argument("--sets", default="sample,plain,hard", help="sample, plain, hard (default %(default)s)")
    p.add_argument("--methods", default="cw,infomap,leiden,density",
                   help=f"any of {','.join(persons.METHODS)} (default %(default)s)")
    p.add_argument("--k", type=options.COUNT, default=16, help="neighbours per face in the graph")
    p.add_argument("--graph", choices=("ivf", "hnsw", "exact"), default="ivf", help="how the kNN graph is built")
    p.add_argument("--ef", type=options.COUNT, default=persons.EF_SEARCH,
                   help="HNSW efSearch for the graph (default %(default)s)")
    p.add_argument("--probes", type=options.COUNT, default=persons.IVF_PROBES,
                   help="IVF cells searched per face (default %(default)s)")
    p.add_argument("--recall-sample", type=options.COUNT, default=1000, help="faces whose top-k is checked against exact search")
    p.add_argument("--incremental", type=options.NON_NEGATIVE, default=0, metavar="N",
                   help="then add N new faces through the index")
    p.add_argument("--threshold", type=options.POSITIVE, default=None, help="edge distance (default: the model's)")
    p.add_argument("--input", default=synthetic.DEFAULT_SAMPLE, help="photos the synthetic faces are fitted on")
    p.add_argument("--stats", default=None, help="fitted stats JSON (skips the embed run unless the sample set is asked)")
    p.add_argument("--seed", type=options.NON_NEGATIVE, default=0, help="synthetic data seed")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the figures to FILE")
    return p


def configure(a: options.Args, beam_args=()) -> BenchClusterConfig:
    from facebeam.transforms.errors import UserError

    try:
        sizes = tuple(int(v) for v in a.vectors.split(","))
    except ValueError:
        raise UserError(f"--vectors: comma-separated counts, not {a.vectors!r}") from None
    methods = tuple(a.methods.split(","))
    sets = tuple(a.sets.split(","))
    for m in methods:
        if m not in persons.METHODS:
            raise UserError(f"--methods: unknown method {m!r}; choose from {', '.join(persons.METHODS)}")
    for s in sets:
        if s not in ("sample", "plain", "hard"):
            raise UserError(f"--sets: unknown set {s!r}; choose from sample, plain, hard")
    return BenchClusterConfig(vectors=sizes, sets=sets, methods=methods, k=a.k, graph=a.graph,
                              recall_sample=a.recall_sample, ef=a.ef, probes=a.probes, incremental=a.incremental,
                              threshold=a.threshold,
                              input=a.input, stats=a.stats, seed=a.seed, json_out=a.json_out)


def _graph(x: np.ndarray, k: int, how: str, recall_sample: int, seed: int, ef: int, probes: int) -> dict:
    started = time.perf_counter()
    if how == "exact" or len(x) <= EXACT_MAX:
        ids, dist = persons.knn_exact(x, k)
        how = "exact"
    elif how == "ivf":
        ids, dist = persons.knn_ivf(x, k, probes=probes, seed=seed)
    else:
        ids, dist = persons.knn_hnsw(x, k, ef_search=ef)
    took = time.perf_counter() - started
    rows = np.random.default_rng(seed).choice(len(x), min(recall_sample, len(x)), replace=False)
    exact_ids, _ = persons.exact_sample(x, rows, ids.shape[1])
    return {"ids": ids, "dist": dist, "graph": how, "graph_s": round(took, 2),
            "recall_at_k": persons.recall_at_k(ids[rows], exact_ids), "recall_faces": len(rows)}


def _graph_params(how: str, ns: BenchClusterConfig) -> str:
    if how == "ivf":
        return f"{ns.probes} probes, {persons.REFINE_FACTOR} x k re-ranked"
    return f"efSearch {ns.ef}" if how == "hnsw" else "exact"


def _run_method(ids, dist, t, method):
    return persons.cluster(ids, dist, t, method)


def _incremental(x_new, truth_new, base_x, base_labels, base_truth, k, t) -> dict:
    """New faces through an HNSW index of the clustered faces: each joins the person its neighbours
    within the threshold hold most of (nearest first breaks ties); the rest stay new persons."""
    import faiss

    index = faiss.IndexHNSWFlat(base_x.shape[1], 16)
    index.hnsw.efConstruction = 100
    index.add(base_x)
    started = time.perf_counter()
    ids, dist = persons.search_batched(index, x_new, k, persons.EF_SEARCH, own_offset=None)
    joined = persons.join_by_neighbours(ids, dist, base_labels, t)
    took = time.perf_counter() - started
    hit = joined >= 0
    # A join is right when the person it joins is mostly the new face's identity.
    majority = {}
    for lab, tr in zip(base_labels, base_truth):
        majority.setdefault(int(lab), {}).setdefault(tr, 0)
        majority[int(lab)][tr] += 1
    right = sum(1 for lab, tr in zip(joined[hit], truth_new[hit]) if max(majority[int(lab)].items(),
                                                                          key=lambda kv: kv[1])[0] == tr)
    return {"new_faces": len(x_new), "incremental_s": round(took, 2), "joined": int(hit.sum()),
            "joined_right": right}


def run(ns: BenchClusterConfig, pipeline=None) -> dict:
    embeddings = None
    if "sample" in ns.sets or not ns.stats:
        embeddings = _embedded_sample(ns.input)
    pairs_csv = os.path.join(ns.input, "face-recognition-pivot.csv")
    if ns.stats:
        with open(ns.stats) as f:
            stats = json.load(f)
    else:
        stats = synthetic.fit_sample(embeddings, pairs_csv)
    cases = []
    for s in ns.sets:
        cases += [(s, None)] if s == "sample" else [(s, n) for n in ns.vectors]
    out = {"k": ns.k, "methods": list(ns.methods), "cases": []}
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    for name, n in cases:
        if name == "sample":
            x, truth = _sample_set(embeddings, pairs_csv)
            scored = np.asarray([t is not None for t in truth])
            truth = np.asarray([t or "" for t in truth], dtype=object)
            faces = None
        else:
            maker = synthetic.HardFaces if name == "hard" else synthetic.SyntheticFaces
            faces = maker(stats, n, seed=ns.seed)
            x = knn.prepare(faces.vectors(), stats.get("metric", "euclidean"))
            truth, scored = faces.labels, np.ones(len(x), bool)
        base_mib = _peak_mib()
        g = _graph(x, ns.k, ns.graph, ns.recall_sample, ns.seed, ns.ef, ns.probes)
        t, source = persons.threshold_for_bench(x, stats, ns.threshold)
        case = {"set": name, "faces": len(x), "true_persons": int(len(np.unique(truth[scored]))),
                "graph": g["graph"], "graph_s": g["graph_s"], "recall_at_k": g["recall_at_k"],
                "recall_faces": g["recall_faces"], "threshold": t, "threshold_from": source,
                "vectors_mib": round(x.nbytes / 2**20, 1), "peak_mib_before_graph": round(base_mib, 1),
                "peak_mib_after_graph": round(_peak_mib(), 1), "results": []}
        print(f"\n{name}: {len(x)} faces, {case['true_persons']} true persons, k={ns.k}; {g['graph']} graph "
              f"{g['graph_s']} s ({_graph_params(g['graph'], ns)}), recall@{ns.k} {g['recall_at_k']} on "
              f"{g['recall_faces']} faces; "
              f"threshold {t:.4f} ({source}); peak {case['peak_mib_after_graph']} MiB after the graph")
        print(f"  {'method':8} {'wall s':>7} {'peak MiB':>9} {'pair P':>7} {'pair R':>7} {'pair F1':>7} "
              f"{'B3 P':>7} {'B3 R':>7} {'B3 F1':>7} {'found':>7} {'true':>6}")
        default_labels = None
        for method in ns.methods:
            lab, took, peak = measured(_run_method, g["ids"], g["dist"], t, method)
            q = persons.quality(lab[scored], truth[scored])
            r = {"method": method, "cluster_s": round(took, 2), "peak_mib": round(peak, 1), **q}
            case["results"].append(r)
            if method == persons.DEFAULT_METHOD:
                default_labels = lab
            print(f"  {method:8} {r['cluster_s']:>7} {r['peak_mib']:>9} {q['pairwise_precision']:>7} "
                  f"{q['pairwise_recall']:>7} {q['pairwise_f1']:>7} {q['bcubed_precision']:>7} {q['bcubed_recall']:>7} "
                  f"{q['bcubed_f1']:>7} {q['clusters']:>7} {q['true_clusters']:>6}", flush=True)
        if ns.incremental and faces is not None and default_labels is not None:
            x_new, truth_new = faces.queries(ns.incremental, seed=ns.seed + 1)
            x_new = knn.prepare(x_new, stats.get("metric", "euclidean"))
            inc = _incremental(x_new, truth_new, x, default_labels, truth, ns.k, t)
            case["incremental"] = inc
            print(f"  incremental ({persons.DEFAULT_METHOD}): {inc['new_faces']} new faces through the index in "
                  f"{inc['incremental_s']} s; {inc['joined']} joined a person, {inc['joined_right']} of them the right one")
        out["cases"].append(case)
    if ns.json_out:
        with open(ns.json_out, "w") as f:
            json.dump(out, f, indent=2)
    return out


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
