"""facebeam bench query: kNN latency, throughput and recall@k on the bench indices, against exact search.

    facebeam bench query --vectors 1000000 [--num-candidates 10,50,100,200,500,1000] [--queries 500] [--k 10]
                         [--batch 50] [--json FILE] [--markdown FILE] [--plot FILE.png]

Reuses the indices `facebeam bench index` left in the bench cluster (same vector
count, seed and fitted model), loading the missing ones first. Queries are new
faces of existing identities, drawn from the same synthetic model. For each index
type and num_candidates: single-query latency (sequential `search` with `knn`:
p50/p95/p99 as the client sees it, and Elasticsearch's own `took`), batch
throughput (`msearch` of --batch queries, back to back), and recall@k against the
exact top k. Quantized indices (int8/int4/bbq) are swept twice: as they answer, and
re-ranked on the float vectors (`rescore_vector`, --rescore-oversample).

The exact top k is a brute-force scan in numpy over the same vectors, kept in a
float32 file (a memory map) and read in chunks: memory stays at one chunk times
the query batch. Its amortized ms/query (all queries in one pass) and single-query
ms are printed too.
"""
import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from facebeam.pipelines.bench import index as bench_index
from facebeam.pipelines.bench import synthetic
from facebeam.pipelines.local import elasticsearch as es_local
from facebeam.transforms import es_index
from facebeam.transforms.es_conn import EsError
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)
ANCHORS = [("NMSLIB on 1M (HNSW)", 3.4), ("brute force, Python loop", 7180.0)]
TARGET_P50_MS, TARGET_RECALL, TARGET_EXACT_MS = 10.0, 0.95, 100.0
TARGET_EMBEDDED_P50_MS = 2.0  # the embedded index, single query, at recall@10 >= TARGET_RECALL


# --- exact search ------------------------------------------------------------------------------
def vector_file(faces: synthetic.SyntheticFaces, folder: Path, chunk_rows: int = 50_000) -> np.memmap:
    """The N synthetic vectors as a float32 memory map (written once, chunk by chunk)."""
    key = hashlib.sha256(f"{bench_index.stats_digest(faces.stats)}|{faces.n}|{faces.seed}|"
                         f"{faces.faces_per_identity}|{faces.skew}".encode()).hexdigest()[:12]
    path = Path(folder) / f"vectors-{faces.n}-s{faces.seed}-{key}.f32"
    if not path.is_file() or path.stat().st_size != faces.n * faces.dim * 4:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        mm = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(faces.n, faces.dim))
        for start, x in faces.chunks(chunk_rows):
            mm[start:start + len(x)] = x
        mm.flush()
        del mm
        os.replace(tmp, path)
    return np.memmap(path, dtype=np.float32, mode="r", shape=(faces.n, faces.dim))


def exact_topk(corpus, queries: np.ndarray, k: int, chunk_rows: int = 131_072, query_batch: int = 64,
               threads: int = None):
    """(ids, distances) of the k nearest corpus rows (euclidean) per query, on the project's one exact scan
    (knn.ExactScan: float32 blocks, one BLAS matmul each, on a thread pool).

    Memory: query_batch x chunk_rows floats per block in flight, plus the running top k.
    """
    from facebeam.transforms import knn

    scan = knn.ExactScan(corpus, block_rows=chunk_rows, threads=threads, block_floats=chunk_rows * query_batch)
    try:
        return scan.topk(queries, k)
    finally:
        scan.close()


def single_query_ms(scan, queries, k: int, reps: int = 9) -> float:
    """Median ms of one exact query alone (after one warm-up)."""
    scan.topk(queries[:1], k)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        scan.topk(queries[i % len(queries):i % len(queries) + 1], k)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def time_exact(corpus, queries, k: int) -> dict:
    from facebeam.transforms import knn

    t0 = time.perf_counter()
    scan = knn.ExactScan(corpus)
    open_s = time.perf_counter() - t0
    try:
        scan.topk(queries[:50], k)  # warm the page cache and BLAS
        t0 = time.perf_counter()
        ids, dists = scan.topk(queries, k)
        batch_s = time.perf_counter() - t0
        single = single_query_ms(scan, queries, k)
        one_thread = knn.ExactScan(corpus, threads=1)
        single_1t = single_query_ms(one_thread, queries, k)
    finally:
        scan.close()
    return {"ids": ids, "distances": dists, "batch_s": batch_s, "open_s": open_s, "threads": scan.threads,
            "amortized_ms": 1000 * batch_s / len(queries), "single_ms": single, "single_ms_1thread": single_1t,
            "rows": len(corpus)}


def exact_at_scale(rows: int, dim: int, folder: Path, k: int = 10) -> dict:
    """One exact query on `rows` random float32 vectors in a memory map (written once, rows x dim x 4 bytes)."""
    from facebeam.transforms import knn

    path = Path(folder) / f"random-{rows}x{dim}.f32"
    if not path.is_file() or path.stat().st_size != rows * dim * 4:
        rng = np.random.default_rng(0)
        tmp = path.with_suffix(".tmp")
        mm = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(rows, dim))
        for s in range(0, rows, 100_000):
            mm[s:s + 100_000] = rng.standard_normal((min(100_000, rows - s), dim), dtype=np.float32)
        mm.flush()
        del mm
        os.replace(tmp, path)
    corpus = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, dim))
    queries = np.random.default_rng(1).standard_normal((9, dim), dtype=np.float32)
    scan = knn.ExactScan(corpus)
    try:
        out = {"rows": rows, "threads": scan.threads, "single_ms": single_query_ms(scan, queries, k)}
    finally:
        scan.close()
    one = knn.ExactScan(corpus, threads=1)
    out["single_ms_1thread"] = single_query_ms(one, queries, k)
    return out


# --- the embedded index ---------------------------------------------------------------------
def embedded_sweep(ns, spec, faces, queries, truth, sweep) -> list:
    """The embedded HNSW index bench index built (or builds now), memory-mapped: single queries, efSearch = sweep."""
    from facebeam.transforms import ann

    folder = bench_index.embedded_folder(ns, faces)
    if not ann.exists(str(folder)) or ann.AnnIndex.open(str(folder)).count != faces.n:
        log.info("no embedded bench index with these %d vectors: building it (bench index --embedded only)", faces.n)
        bench_index.main(common_argv(ns) + ["--embedded", "only"])
    idx = ann.AnnIndex.open(str(folder), spec)
    import faiss

    faiss.omp_set_num_threads(1)  # one query at a time, as a service answering one request
    out = []
    for ef in sweep:
        for v in queries[:30]:
            idx.search_vectors([v], ns.k, ef=ef)
        lat, found = [], []
        for v in queries:
            t0 = time.perf_counter()
            hits = idx.search_vectors([v], ns.k, ef=ef)[0]
            lat.append(1000 * (time.perf_counter() - t0))
            found.append([i for i, _ in hits])
        t0 = time.perf_counter()
        batch = idx.search_vectors(queries, ns.k, ef=ef)
        batch_s = time.perf_counter() - t0
        lat = np.asarray(lat)
        r = {"index_type": f"embedded ({ann.library()})", "num_candidates": ef, "p50_ms": float(np.percentile(lat, 50)),
             "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
             "mean_ms": float(lat.mean()), "took_p50_ms": float(np.percentile(lat, 50)),
             "sequential_qps": float(1000 / lat.mean()), "batch_qps": len(queries) / batch_s,
             "recall": recall(found, truth, ns.k), "batch_recall": recall([[i for i, _ in h] for h in batch], truth, ns.k),
             "index": str(folder), "oversample": 0.0}
        out.append(r)
        log.info("embedded efSearch=%d: p50 %.3f ms, p95 %.3f ms, recall %.4f", ef, r["p50_ms"], r["p95_ms"], r["recall"])
    return out


# --- Elasticsearch ----------------------------------------------------------------------------
def knn_body(vector, k: int, num_candidates: int, oversample: float = 0.0) -> dict:
    knn = {"field": "embedding", "query_vector": vector, "k": k, "num_candidates": num_candidates}
    if oversample:  # quantized index: re-rank oversample * k candidates on the float vectors (ES 8.18+)
        knn["rescore_vector"] = {"oversample": oversample}
    return {"knn": knn, "size": k, "_source": False, "docvalue_fields": ["image_path"]}


def hit_rows(hits) -> list:
    """Row numbers of the hits, from image_path 'synthetic/<row>.jpg'."""
    return [int(h["fields"]["image_path"][0].rsplit("/", 1)[1].split(".", 1)[0]) for h in hits]


def recall(found: list, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def sweep_point(client, index: str, queries: np.ndarray, truth: np.ndarray, k: int, nc: int, batch: int,
                oversample: float = 0.0) -> dict:
    vectors = queries.tolist()
    for v in vectors[-30:]:  # warm this setting
        client.search(index=index, **knn_body(v, k, nc, oversample))
    lat, took, found = [], [], []
    for v in vectors:
        t0 = time.perf_counter()
        r = client.search(index=index, **knn_body(v, k, nc, oversample)).body
        lat.append(1000 * (time.perf_counter() - t0))
        took.append(r["took"])
        found.append(hit_rows(r["hits"]["hits"]))
    t0 = time.perf_counter()
    batch_found = []
    for s in range(0, len(vectors), batch):
        body = []
        for v in vectors[s:s + batch]:
            body += [{"index": index}, knn_body(v, k, nc, oversample)]
        for resp in client.msearch(searches=body).body["responses"]:
            if "error" in resp:
                raise RuntimeError(f"msearch failed: {resp['error']}")
            batch_found.append(hit_rows(resp["hits"]["hits"]))
    batch_s = time.perf_counter() - t0
    lat = np.asarray(lat)
    return {"num_candidates": nc, "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
            "took_p50_ms": float(np.percentile(took, 50)), "sequential_qps": float(1000 / lat.mean()),
            "batch_qps": len(vectors) / batch_s, "recall": recall(found, truth, k),
            "batch_recall": recall(batch_found, truth, k)}


def indices_ready(client, ns, faces, types) -> dict:
    """index type -> concrete index, for the bench indices that hold exactly these vectors."""
    state = bench_index.read_state(ns.es_home)
    digest = bench_index.stats_digest(faces.stats)
    ready = {}
    for t in types:
        entry = state.get(bench_index.alias_for(t, faces.n, faces.seed))
        built_as = (digest, faces.faces_per_identity, ns.m, ns.ef_construction)
        if not entry or tuple(entry.get(f) for f in ("stats", "faces_per_identity", "m", "ef_construction")) != built_as:
            continue
        if not client.indices.exists(index=entry["index"]):
            continue
        if int(client.count(index=entry["index"]).body["count"]) == faces.n:
            ready[t] = entry["index"]
    return ready


def common_argv(ns) -> list:
    """The shared flags, to hand to bench index."""
    argv = ["--vectors", str(ns.vectors), "--seed", str(ns.seed), "--faces-per-identity", str(ns.faces_per_identity),
            "--stats", str(ns.stats), "--sample", ns.sample, "--m", str(ns.m), "--ef-construction",
            str(ns.ef_construction), "--es-home", str(ns.es_home), "--port", str(ns.port), "--heap", ns.heap]
    if ns.java_home:
        argv += ["--java-home", ns.java_home]
    if ns.no_security:
        argv.append("--no-security")
    for key, value in ns.node_setting:
        argv += ["--node-setting", f"{key}={value}"]
    return argv


# --- output ------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [f"### kNN on {m['vectors']:,} synthetic {m['dim']}-d face vectors ({m['identities']:,} identities)", "",
             f"{m['queries']} queries (new faces of existing identities), k={m['k']}, msearch batches of {m['batch']}; "
             f"ES {m['es_version']} ({m['java']}), 1 node, {m['cores']} cores; HNSW m={m['m']}, "
             f"ef_construction={m['ef_construction']}.", "",
             f"| index | num_candidates | p50 ms | p95 ms | p99 ms | ES took p50 ms | seq. q/s | batch q/s | recall@{m['k']} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        lines.append(f"| {r['index_type']} | {r['num_candidates']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['took_p50_ms']:.1f} | {r['sequential_qps']:.0f} | {r['batch_qps']:.0f} | "
                     f"{r['recall']:.4f} |")
    e = result["exact"]
    lines += [f"| exact (numpy, chunked) | - | {e['single_ms']:.1f} (1 query) | | | | | "
              f"{1000 / e['amortized_ms']:.0f} | 1.0000 |", "",
              f"Exact scan: {e['amortized_ms']:.2f} ms/query amortized over {m['queries']} queries "
              f"({e['batch_s']:.2f} s), {e['single_ms']:.1f} ms for one query alone.", "",
              "Anchors: " + "; ".join(f"{n} {ms:,.1f} ms/query" for n, ms in ANCHORS) + ".",
              f"Targets: p50 <= {TARGET_P50_MS:.0f} ms at recall@10 >= {TARGET_RECALL}; "
              f"exact <= {TARGET_EXACT_MS:.0f} ms/query amortized."]
    best = result.get("best")
    if best:
        lines.append(f"Fastest point meeting the recall target: {best}.")
    if result.get("best_embedded"):
        lines.append(f"Embedded index (p50 <= {TARGET_EMBEDDED_P50_MS:g} ms target): {result['best_embedded']}.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for t in dict.fromkeys(r["index_type"] for r in result["results"]):
        pts = [r for r in result["results"] if r["index_type"] == t]
        for key, style, what in (("sequential_qps", "o-", "sequential"), ("batch_qps", "s--", "msearch")):
            ax.plot([p[key] for p in pts], [p["recall"] for p in pts], style, label=f"{t} ({what})")
        for p in pts:
            ax.annotate(str(p["num_candidates"]), (p["batch_qps"], p["recall"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=7)
    e = result["exact"]
    ax.plot([1000 / e["amortized_ms"]], [1.0], "k*", markersize=12, label="exact numpy scan (batch)")
    ax.axhline(TARGET_RECALL, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("queries/s (log)")
    ax.set_ylabel(f"recall@{result['meta']['k']}")
    m = result["meta"]
    ax.set_title(f"kNN recall vs throughput, {m['vectors']:,} vectors, {m['cores']} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(result: dict) -> None:
    m = result["meta"]
    print(f"bench query: {m['vectors']:,} vectors, {m['queries']} queries, k={m['k']}, msearch batch {m['batch']}, "
          f"ES {m['es_version']} ({m['java']}), {m['cores']} cores")
    print(f"{'type':<22} {'num_cand':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'took p50':>9} {'seq q/s':>8} "
          f"{'batch q/s':>10} {'recall@' + str(m['k']):>10}")
    for r in result["results"]:
        print(f"{r['index_type']:<22} {r['num_candidates']:>8} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['took_p50_ms']:>9.1f} {r['sequential_qps']:>8.0f} {r['batch_qps']:>10.0f} "
              f"{r['recall']:>10.4f}")
    e = result["exact"]
    print(f"exact numpy scan: {e['amortized_ms']:.2f} ms/query amortized over {m['queries']} queries "
          f"({e['batch_s']:.2f} s), {e['single_ms']:.1f} ms for a single query")
    print("anchors: " + "; ".join(f"{n} {ms:,.1f} ms/query" for n, ms in ANCHORS))
    has_es = any(not r["index_type"].startswith("embedded") for r in result["results"])
    print(f"targets: p50 <= {TARGET_P50_MS:.0f} ms at recall@10 >= {TARGET_RECALL}: "
          + (result["best"] or ("not met" if has_es else "n/a (no Elasticsearch in this run)"))
          + f"; exact <= {TARGET_EXACT_MS:.0f} ms/query: "
          + ("met" if e["amortized_ms"] <= TARGET_EXACT_MS else "not met"))
    print(f"embedded index target: p50 <= {TARGET_EMBEDDED_P50_MS:g} ms (single query) at recall@10 >= {TARGET_RECALL}: "
          + (result.get("best_embedded") or "not met"))
    print(f"{m.get('date')}, load average {m.get('loadavg_start', 0):.1f} at the start, {m['loadavg']:.1f} at the end")


# --- main --------------------------------------------------------------------------------------
BEAM = False  # every flag is the benchmark's own


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facebeam bench query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_index.add_common_args(parser)
    parser.add_argument("--num-candidates", default="10,50,100,200,500,1000", help="sweep (default %(default)s)")
    parser.add_argument("--queries", type=int, default=500, help="query faces (default %(default)s)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default %(default)s)")
    parser.add_argument("--batch", type=int, default=50, help="queries per msearch (default %(default)s)")
    parser.add_argument("--rescore-oversample", type=float, default=2.0,
                        help="also sweep quantized indices re-ranked on float vectors with this oversample "
                             "(knn rescore_vector; 0 = off; default %(default)s)")
    parser.add_argument("--query-seed", type=int, default=1, help="seed of the query faces (default %(default)s)")
    parser.add_argument("--json", dest="json_out", help="write the results here")
    parser.add_argument("--markdown", help="write a markdown table here")
    parser.add_argument("--plot", help="write a recall-vs-queries/s PNG here")
    return parser


def configure(a, beam_args=()) -> argparse.Namespace:
    """The benchmark's settings: every flag, read once (bench index's configure)."""
    return bench_index.configure(a, beam_args)


def main(argv=None) -> int:
    ns = bench_index.parse_args(sys.modules[__name__], argv)
    types = bench_index.index_types(ns.index_types)
    if ns.plot and importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("--plot needs matplotlib: pip install 'facebeam[bench]' (or matplotlib)")
    sweep = sorted({int(x) for x in ns.num_candidates.split(",") if x.strip()})
    if not sweep or min(sweep) < ns.k:
        raise SystemExit(f"--num-candidates must all be >= k ({ns.k})")
    bench_index.quiet_client_logs()

    spec = EmbeddingSpec()
    stats = bench_index.load_stats(ns, spec)
    faces = synthetic.SyntheticFaces(stats, ns.vectors, seed=ns.seed, faces_per_identity=ns.faces_per_identity)
    load_start = os.getloadavg()
    log.info("exact top %d for %d queries over %d vectors (numpy, chunked)", ns.k, ns.queries, faces.n)
    corpus = vector_file(faces, Path(ns.stats).parent)
    queries, _ = faces.queries(ns.queries, seed=ns.query_seed)
    exact = time_exact(corpus, queries, ns.k)
    truth = exact["ids"]
    results, node = [], {"version": None, "java": None}
    if ns.embedded != "no":
        results += embedded_sweep(ns, spec, faces, queries, truth, sweep)
    if ns.embedded != "only":
        running_before = bool(es_local.node_processes(ns.es_home))
        try:
            conn, _ = bench_index.ensure_cluster(ns)
        except EsError as e:
            print(f"facebeam bench query: {e}", file=sys.stderr)
            return 1
        client = conn.client(request_timeout=300)
        try:
            ready = indices_ready(client, ns, faces, types)
            missing = [t for t in types if t not in ready]
            if missing:
                log.info("no bench index with these %d vectors for %s: loading them (bench index)", faces.n, missing)
                rc = bench_index.main(common_argv(ns) + ["--index-types", ",".join(missing), "--keep",
                                                         "--embedded", "no", "--source-vectors", "excluded"])
                if rc:
                    log.warning("bench index returned %d", rc)
                ready = indices_ready(client, ns, faces, types)
                missing = [t for t in types if t not in ready]
                if missing:
                    raise RuntimeError(f"could not load bench indices for {missing}")
            node = bench_index.node_info(client)
            for t in types:
                index = ready[t]
                log.info("%s: warming %s", t, index)
                for v in queries[:100].tolist():
                    client.search(index=index, **knn_body(v, ns.k, max(sweep)))
                variants = [(t, 0.0)]
                if es_index.quantized(t) and ns.rescore_oversample:
                    variants.append((f"{t}+rescore{ns.rescore_oversample:g}x", ns.rescore_oversample))
                for label, oversample in variants:
                    for nc in sweep:
                        r = sweep_point(client, index, queries, truth, ns.k, nc, ns.batch, oversample)
                        r.update(index_type=label, index=index, oversample=oversample)
                        results.append(r)
                        log.info("%s num_candidates=%d: p50 %.2f ms, recall %.4f, batch %.0f q/s", label, nc,
                                 r["p50_ms"], r["recall"], r["batch_qps"])
        finally:
            client.close()
            if not running_before and not ns.keep:
                es_local.stop_cluster(ns.es_home)

    ok = [r for r in results if r["recall"] >= TARGET_RECALL and r["p50_ms"] <= TARGET_P50_MS
          and not r["index_type"].startswith("embedded")]
    best = min(ok, key=lambda r: r["p50_ms"]) if ok else None
    emb_ok = [r for r in results if r["index_type"].startswith("embedded") and r["recall"] >= TARGET_RECALL
              and r["p50_ms"] <= TARGET_EMBEDDED_P50_MS]
    best_embedded = min(emb_ok, key=lambda r: r["p50_ms"]) if emb_ok else None
    result = {
        "meta": {"vectors": faces.n, "dim": faces.dim, "identities": faces.k, "queries": ns.queries, "k": ns.k,
                 "batch": ns.batch, "cores": os.cpu_count(), "es_version": node["version"], "java": node["java"],
                 "m": ns.m, "ef_construction": ns.ef_construction, "seed": ns.seed, "query_seed": ns.query_seed,
                 "stats": bench_index.stats_digest(stats), "loadavg": os.getloadavg()[0],
                 "loadavg_start": load_start[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "results": results,
        "exact": {k: v for k, v in exact.items() if k not in ("ids", "distances")},
        "best": (f"{best['index_type']} num_candidates={best['num_candidates']}: p50 {best['p50_ms']:.2f} ms, "
                 f"recall {best['recall']:.4f}") if best else None,
        "best_embedded": (f"ef={best_embedded['num_candidates']}: p50 {best_embedded['p50_ms']:.3f} ms, recall "
                          f"{best_embedded['recall']:.4f}") if best_embedded else None,
        "anchors_ms": dict(ANCHORS),
    }
    print_table(result)
    if ns.json_out:
        Path(ns.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if ns.markdown:
        Path(ns.markdown).write_text(markdown(result))
    if ns.plot:
        plot(result, ns.plot)
        print(f"plot: {ns.plot}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
