"""facebeam bench query: kNN latency, throughput and recall@k on the bench indices, against exact search.

    facebeam bench query --vectors 1000000 [--num-candidates 10,50,100,200,500,1000] [--queries 500] [--k 10]
                         [--batch 50] [--msearch-probes 10000] [--exact-rows 1M] [--no-levers] [--no-preload]
                         [--no-filtered] [--json FILE] [--markdown FILE] [--plot FILE.png]

Reuses the indices `facebeam bench index` left in the bench cluster (same vector
count, seed and fitted model), loading the missing ones first. Queries are new
faces of existing identities, drawn from the same synthetic model. For each index
type and num_candidates: single-query latency (sequential `search` with `knn`:
p50/p95/p99 as the client sees it), where that time goes (Elasticsearch's own
`took`, the HTTP exchange around it: transport and TLS, the client's JSON encoding
and parsing, the rest of the client), batch throughput (`msearch` of --batch
queries, back to back), and recall@k against the exact top k. Quantized indices
(int8/int4/bbq) are swept twice: as they answer, and re-ranked on the float vectors
(`rescore_vector`, --rescore-oversample).

Then, side by side on the first index type at the fewest candidates that reach the
recall target: the query levers on the path `search` and the query job take
(knn.es_search): `_source` fields or doc values, response trimming (filter_path),
orjson or the stdlib's json, a kept connection or a new one (TCP + TLS) per query,
the knn query or the top-level knn section, and index.store.preload; the batch path
(msearch) over --msearch-probes probes (q/s); and filtered kNN on Elasticsearch and the embedded index, through the stores'
own searchers: a person given to exactly 1% and 10% of the faces, and image path
prefixes keeping 1.11% and 11.1% (the rows are `synthetic/<row>.jpg`), each against
the exact filtered top k.

The exact top k is knn.ExactScan over the same vectors, kept in a float32 file (a
memory map): blocks of rows, one BLAS matmul each, on a thread pool; a single query
over many rows scans an 8-bit copy first and scores only the rows a proven bound
keeps on their float32 vectors. Its single-query ms beside float32 alone, one
thread and the scan before it (interleaved), and the amortized ms/query are printed;
--exact-rows 1M also times one query over that many random float32 vectors.
"""
import argparse
import functools
import hashlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from facebeam.pipelines import jobs, options
from facebeam.pipelines.bench import index as bench_index
from facebeam.pipelines.bench import synthetic
from facebeam.pipelines.local import elasticsearch as es_local
from facebeam.transforms import es_index, knn
from facebeam.transforms.errors import UserError
from facebeam.transforms.es_conn import EsError
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)
ANCHORS = [("NMSLIB on 1M (HNSW)", 3.4), ("brute force, Python loop", 7180.0)]
# issue 24's targets (stated at 1M): single query p50 <= 3 ms at recall@10 >= 0.95; with a 1% filter <= 6 ms;
# one exact query <= 50 ms.
TARGET_P50_MS, TARGET_RECALL, TARGET_EXACT_MS = 3.0, 0.95, 50.0
TARGET_FILTERED_P50_MS = 6.0
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
    scan = knn.ExactScan(corpus, block_rows=chunk_rows, threads=threads, block_floats=chunk_rows * query_batch)
    try:
        return scan.topk(queries, k)
    finally:
        scan.close()


def previous_scan(corpus, q: np.ndarray, k: int, chunk_rows: int = 262_144):
    """The scan bench query used before knn.ExactScan (norms and a full distance block per chunk, every query),
    timed beside it."""
    best = knn.empty_topk(len(q))
    for start in range(0, len(corpus), chunk_rows):
        x = np.asarray(corpus[start:start + chunk_rows], dtype=np.float32)
        best = knn.merge_topk(best, knn.topk_block(q, x, k, x_offset=start), k)
    return best


def single_query_ms(scans: dict, queries, k: int, reps: int = 9) -> dict:
    """Median ms of one exact query alone, per named scan (a function of (queries, k)), interleaved query by query
    after one warm-up each, so the page cache and the machine's load are the same for all."""
    for run in scans.values():
        run(queries[:1], k)
    times = {name: [] for name in scans}
    for i in range(reps):
        q = queries[i % len(queries):i % len(queries) + 1]
        for name, run in scans.items():
            t0 = time.perf_counter()
            run(q, k)
            times[name].append(1000 * (time.perf_counter() - t0))
    return {name: float(np.median(t)) for name, t in times.items()}


def _scans(corpus, default=None) -> tuple:
    """The exact scans timed side by side: the default (an 8-bit first pass from knn.ExactScan's sketch_rows on;
    `default` if already open), float32 alone, the default on one thread, and the scan before knn.ExactScan."""
    made = {"single_ms": default or knn.ExactScan(corpus),
            "single_ms_float32": knn.ExactScan(corpus, sketch_rows=len(corpus) + 1),
            "single_ms_1thread": knn.ExactScan(corpus, threads=1)}
    runs = {name: scan.topk for name, scan in made.items()}
    runs["single_ms_previous"] = functools.partial(previous_scan, corpus)
    return made, runs


def time_exact(corpus, queries, k: int) -> dict:
    t0 = time.perf_counter()
    scan = knn.ExactScan(corpus)
    open_s = time.perf_counter() - t0
    made, runs = _scans(corpus, scan)
    try:
        scan.topk(queries[:50], k)  # warm the page cache and BLAS
        t0 = time.perf_counter()
        ids, dists = scan.topk(queries, k)
        batch_s = time.perf_counter() - t0
        single = single_query_ms(runs, queries, k)
    finally:
        for s in made.values():
            s.close()
    return {"ids": ids, "distances": dists, "batch_s": batch_s, "open_s": open_s, "threads": scan.threads,
            "sketch": scan.sketch is not None, "amortized_ms": 1000 * batch_s / len(queries), "rows": len(corpus),
            **single}


def exact_at_scale(rows: int, dim: int, folder: Path, k: int = 10) -> dict:
    """One exact query on `rows` random float32 vectors in a memory map (written once, rows x dim x 4 bytes)."""
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
    made, runs = _scans(corpus)
    try:
        single = single_query_ms(runs, queries, k)
    finally:
        for s in made.values():
            s.close()
    return {"rows": rows, "threads": made["single_ms"].threads, "sketch": made["single_ms"].sketch is not None,
            **single}


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
def knn_body(vector, k: int, num_candidates: int, oversample: float = 0.0, knn_in: str = knn.KNN_IN[0]) -> dict:
    """The sweep's request: the kNN where the product puts it (knn.KNN_IN), the row from a doc value."""
    one = {"field": "embedding", "query_vector": vector, "k": k, "num_candidates": num_candidates}
    if oversample:  # quantized index: re-rank oversample * k candidates on the float vectors (ES 8.18+)
        one["rescore_vector"] = {"oversample": oversample}
    place = {"query": {"knn": one}} if knn_in == "query" else {"knn": one}
    return {**place, "size": k, "_source": False, "docvalue_fields": ["image_path"]}


def path_row(path: str) -> int:
    """The row number in image_path 'synthetic/<row>.jpg'."""
    return int(path.rsplit("/", 1)[1].split(".", 1)[0])


def hit_rows(hits) -> list:
    """Row numbers of the hits."""
    return [path_row(h["fields"]["image_path"][0]) for h in hits]


def recall(found: list, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


class TimedSerializer:
    """The client's JSON serializer, timing its own encoding and parsing (so a round trip can be split)."""

    def __init__(self, inner):
        self.inner, self.mimetype = inner, inner.mimetype
        self.encode_s = self.parse_s = 0.0

    def dumps(self, data):
        t0 = time.perf_counter()
        out = self.inner.dumps(data)
        self.encode_s += time.perf_counter() - t0
        return out

    def loads(self, data):
        t0 = time.perf_counter()
        out = self.inner.loads(data)
        self.parse_s += time.perf_counter() - t0
        return out

    def reset(self):
        self.encode_s = self.parse_s = 0.0


def timed_client(conn, fast: bool = True):
    """(client, TimedSerializer): orjson (fast) or the stdlib's json, timed."""
    from elasticsearch.serializer import JsonSerializer

    inner = knn.es_client_options().get("serializer") if fast else None
    timer = TimedSerializer(inner or JsonSerializer())
    return conn.client(request_timeout=300, serializer=timer), timer


def sweep_point(client, index: str, queries: np.ndarray, truth: np.ndarray, k: int, nc: int, batch: int,
                oversample: float = 0.0, timer: TimedSerializer = None) -> dict:
    """One setting: sequential single queries (p50 as the client sees it, split into Elasticsearch's `took`, the
    HTTP exchange around it (transport + TLS: the node's raw body arrival less took), the client's JSON encoding
    and parsing, and the rest of the client), then msearch batches."""
    vectors = queries.tolist()
    for v in vectors[-30:]:  # warm this setting
        client.search(index=index, **knn_body(v, k, nc, oversample))
    lat, took, found, http, enc, parse = [], [], [], [], [], []
    for v in vectors:
        if timer is not None:
            timer.reset()
        t0 = time.perf_counter()
        resp = client.search(index=index, **knn_body(v, k, nc, oversample))
        lat.append(1000 * (time.perf_counter() - t0))
        r = resp.body
        took.append(r["took"])
        http.append(1000 * resp.meta.duration)
        if timer is not None:
            enc.append(1000 * timer.encode_s)
            parse.append(1000 * timer.parse_s)
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
    lat, http, took = np.asarray(lat), np.asarray(http), np.asarray(took, dtype=float)
    out = {"num_candidates": nc, "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
           "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
           "took_p50_ms": float(np.percentile(took, 50)), "took_mean_ms": float(took.mean()),
           "sequential_qps": float(1000 / lat.mean()),
           "batch_qps": len(vectors) / batch_s, "recall": recall(found, truth, k),
           "batch_recall": recall(batch_found, truth, k),
           # means add up: server (took, whole ms) + transport/TLS + encode + parse + the rest of the client
           "split_mean_ms": {"server_took": float(took.mean()), "transport_tls": float((http - took).mean())}}
    if timer is not None:
        out["split_mean_ms"].update(encode=float(np.mean(enc)), parse=float(np.mean(parse)),
                                    client_rest=float((lat - http).mean() - np.mean(enc) - np.mean(parse)))
    return out


# --- query levers, side by side on one setting --------------------------------------------------
def interleaved(ways: list, queries: np.ndarray, truth, k: int, warm: int = 30) -> list:
    """[(label, send(probe) -> hits)] timed side by side: each query goes through every way in turn (the order
    rotating), so load that comes and goes falls on all of them alike. -> [{lever, p50_ms, p95_ms, mean_ms, recall}]"""
    probes = [{"embedding": v} for v in queries.tolist()]
    for _, send in ways:
        for p in probes[-warm:]:
            send(p)
    lat = [[] for _ in ways]
    found = [[] for _ in ways]
    for i, p in enumerate(probes):
        for j in [(i + r) % len(ways) for r in range(len(ways))]:
            t0 = time.perf_counter()
            hits = ways[j][1](p)
            lat[j].append(1000 * (time.perf_counter() - t0))
            found[j].append([path_row(h["image_path"]) for h in hits])
    return [{"lever": label, "p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)),
             "mean_ms": float(np.mean(t)), "recall": recall(f, truth, k)}
            for (label, _), t, f in zip(ways, lat, found)]


PRELOAD = ["vec", "vex", "vem", "veq", "vemq"]  # float vectors, HNSW graph, their metadata, quantized vectors


def set_preload(client, index: str, exts) -> None:
    """index.store.preload is static: close, set, open, wait for the shard."""
    client.indices.close(index=index)
    try:
        client.indices.put_settings(index=index, settings={"index": {"store": {"preload": exts}}})
    finally:
        client.indices.open(index=index)
        client.cluster.health(index=index, wait_for_status="yellow", timeout="120s")


def levers(conn, client, index: str, queries, truth, k: int, nc: int, spec, preload: bool) -> list:
    """Each query lever on one index and setting, single queries on the product path (knn.es_search), interleaved."""
    from elasticsearch.serializer import JsonSerializer

    search = knn.SearchSpec(k=k, num_candidates=nc)
    slow_client = conn.client(request_timeout=300, serializer=JsonSerializer())  # the stdlib's json both ways

    def way(c, **how):
        return lambda p: knn.es_search(c, index, [p], search, spec, **how)[0]

    def new_connection(p):
        c = conn.client(request_timeout=300, **knn.es_client_options())
        try:
            return knn.es_search(c, index, [p], search, spec)[0]
        finally:
            c.close()

    try:
        out = interleaved([
            ("default: _source fields, hits only (filter_path), orjson, kept connection", way(client)),
            ("doc values instead of _source", way(client, fetch="docvalues")),
            ("no response trimming (no filter_path)", way(client, filter_path=None)),
            ("stdlib json (no orjson)", way(slow_client, encode=False)),
            ("one probe through the search API, not msearch", way(client, one_by_search=True)),
            ("the top-level knn section (a DFS phase first), not the knn query", way(client, knn_in="section")),
            ("bench body: search API, _source false, image_path doc value",
             lambda p: [{"image_path": f"synthetic/{r}.jpg"} for r in hit_rows(client.search(
                 index=index, **knn_body(p["embedding"], k, nc)).body["hits"]["hits"])]),
        ], queries, truth, k)
        out += interleaved([("new connection (TCP + TLS) per query", new_connection),
                            ("kept connection (same queries)", way(client))], queries[:50], truth[:50], k, warm=5)
        if preload:  # static setting: measured after the others, not interleaved
            set_preload(client, index, PRELOAD)
            try:
                out += [{**r, "lever": f"index.store.preload {','.join(PRELOAD)} (after a reopen, not interleaved)"}
                        for r in interleaved([("preload", way(client))], queries, truth, k)]
            finally:
                set_preload(client, index, None)
    finally:
        slow_client.close()
    for r in out:
        log.info("lever %s: p50 %.2f ms, recall %.4f", r["lever"], r["p50_ms"], r["recall"])
    return out


def msearch_throughput(client, index: str, queries, truth, search, spec, batches=(64,)) -> list:
    """The batch query job's path (knn.es_search, one msearch per batch) over many probes: q/s and recall."""
    probes = [{"embedding": v} for v in queries.tolist()]
    out = []
    for batch in batches:
        knn.es_search(client, index, probes[:batch], search, spec)
        found = []
        t0 = time.perf_counter()
        for s in range(0, len(probes), batch):
            found += [[path_row(h["image_path"]) for h in hits]
                      for hits in knn.es_search(client, index, probes[s:s + batch], search, spec)]
        took = time.perf_counter() - t0
        out.append({"batch": batch, "probes": len(probes), "qps": len(probes) / took, "seconds": took,
                    "recall": recall(found, truth, search.k)})
        log.info("msearch %d probes in batches of %d: %.0f q/s, recall %.4f", len(probes), batch, out[-1]["qps"],
                 out[-1]["recall"])
    return out


# --- filtered kNN ------------------------------------------------------------------------------
def filter_sets(n: int) -> list:
    """(label, kind, value, rows kept): persons given to an exact share of rows, and image path prefixes (the bench
    rows are `synthetic/<row>.jpg`, so a prefix keeps an exact, known share)."""
    rows = np.arange(n)
    out = [("person 1%", "person", "bench-1pct", rows[rows % 100 == 7]),
           ("person 10%", "person", "bench-10pct", rows[rows % 10 == 3])]
    for prefix in ("synthetic/12", "synthetic/1"):
        kept = np.asarray([i for i in range(n) if f"synthetic/{i}.jpg".startswith(prefix)], dtype=np.int64)
        out.append((f"path {prefix}* ({100 * len(kept) / n:.2f}%)", "path_prefix", prefix, kept))
    return out


def filtered_truth(corpus, queries, rows, k: int) -> np.ndarray:
    scan = knn.ExactScan(np.asarray(corpus[rows], dtype=np.float32))
    try:
        ids, _ = scan.topk(queries, k)
    finally:
        scan.close()
    return rows[ids]


def filtered_search(searcher, queries, search) -> tuple:
    """(latencies ms, found rows) of single queries through a store's searcher."""
    lat, found = [], []
    probes = [{"embedding": v, "image_sha256": ""} for v in queries.tolist()]
    for p in probes[:20]:
        searcher.search([p], search)
    for p in probes:
        t0 = time.perf_counter()
        hits = searcher.search([p], search)[0]
        lat.append(1000 * (time.perf_counter() - t0))
        found.append([path_row(h["image_path"]) for h in hits])
    return np.asarray(lat), found


def filtered_bench(stores_: list, corpus, queries, k: int, face_ids: list) -> list:
    """Each (label, store, num_candidates) with every filter of filter_sets: p50 and recall@k against the exact
    filtered top k."""
    from facebeam.transforms.stores import push_persons_to

    sets = filter_sets(len(corpus))
    persons = {face_ids[i]: ("p-bench-1pct", "bench-1pct") for i in sets[0][3]}  # (person id, name)
    persons.update({face_ids[i]: ("p-bench-10pct", "bench-10pct") for i in sets[1][3]})
    truths = {label: filtered_truth(corpus, queries, kept, k) for label, _, _, kept in sets}
    out = []
    for name, store, nc in stores_:
        t0 = time.perf_counter()
        push_persons_to(store, persons)
        log.info("%s: %d faces given a bench person in %.1f s", name, len(persons), time.perf_counter() - t0)
        searcher = store.searcher()
        try:
            for label, kind, value, kept in sets:
                search = knn.SearchSpec(k=k, num_candidates=nc, **(
                    {"filters": (("person", value),)} if kind == "person" else {"path_prefix": value}))
                lat, found = filtered_search(searcher, queries, search)
                ok = all(set(f) <= set(kept.tolist()) for f in found)
                r = {"store": name, "filter": label, "share": len(kept) / len(corpus), "num_candidates": nc,
                     "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                     "recall": recall(found, truths[label], k), "only_matching": ok}
                out.append(r)
                log.info("%s %s: p50 %.2f ms, recall %.4f", name, label, r["p50_ms"], r["recall"])
        finally:
            searcher.close()
    return out


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


def chosen_candidates(results: list, index_type: str, sweep: list) -> int:
    """The fewest num_candidates at which `index_type` reaches the recall target (else the largest swept)."""
    ok = [r["num_candidates"] for r in results if r["index_type"] == index_type and r["recall"] >= TARGET_RECALL]
    return min(ok) if ok else max(sweep)


def run_filtered(ns, spec, faces, corpus, queries, stores_: list, results: list, sweep: list) -> dict:
    """Filtered kNN on Elasticsearch (stores_) and the embedded index, same filters, same probes."""
    from facebeam.transforms import ann
    from facebeam.transforms.stores.embedded import EmbeddedStore

    folder = bench_index.embedded_folder(ns, faces)
    if not ann.exists(str(folder)):
        bench_index.main(common_argv(ns) + ["--embedded", "only"])
    idx = ann.AnnIndex.open(str(folder))
    face_ids = idx.meta["face_id"]
    if len(face_ids) != faces.n or any(path_row(idx.meta["image_path"][i]) != i for i in (0, faces.n // 2, faces.n - 1)):
        raise RuntimeError(f"the embedded bench index {folder} does not hold the rows in order")
    emb_ef = chosen_candidates(results, next((r["index_type"] for r in results if r["index_type"].startswith(
        "embedded")), ""), sweep)
    return {"results": filtered_bench(stores_ + [("embedded", EmbeddedStore("bench", str(folder)), emb_ef)], corpus,
                                      queries, ns.k, face_ids)}


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
              f"Targets (at 1M): p50 <= {TARGET_P50_MS:g} ms at recall@10 >= {TARGET_RECALL}; "
              f"one exact query <= {TARGET_EXACT_MS:g} ms."]
    best = result.get("best")
    if best:
        lines.append(f"Fastest point meeting the recall target: {best}.")
    if result.get("best_embedded"):
        lines.append(f"Embedded index (p50 <= {TARGET_EMBEDDED_P50_MS:g} ms target): {result['best_embedded']}.")
    lines += ["", "```", *extra_lines(result)[1:], "```"]
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


def extra_lines(result: dict) -> list:
    """The where-the-time-goes split, levers, msearch, filtered and exact-at-scale sections, as text lines."""
    m, lines = result["meta"], []
    split = [r for r in result["results"] if r.get("split_mean_ms")]
    if split:
        lines += ["", "where a single query's time goes (means, ms): client round trip = server (took, whole ms) + "
                  "transport/TLS (raw HTTP body arrival less took) + encode + parse + rest of the client",
                  f"{'type':<22} {'num_cand':>8} {'client':>7} {'server':>7} {'transp.':>7} {'encode':>7} "
                  f"{'parse':>7} {'client rest':>11}"]
        for r in split:
            sp = r["split_mean_ms"]
            lines.append(f"{r['index_type']:<22} {r['num_candidates']:>8} {r['mean_ms']:>7.2f} {sp['server_took']:>7.2f} "
                         f"{sp['transport_tls']:>7.2f} {sp.get('encode', 0):>7.3f} {sp.get('parse', 0):>7.3f} "
                         f"{sp.get('client_rest', 0):>11.2f}")
    lev = result.get("levers")
    if lev:
        lines += ["", f"query levers on {lev['index_type']} at num_candidates={lev['num_candidates']}, single queries "
                  "through knn.es_search (what search and the query job send), side by side:",
                  f"{'lever':<72} {'p50 ms':>7} {'p95 ms':>7} {'mean ms':>8} {'recall':>7}"]
        for r in lev["results"]:
            lines.append(f"{r['lever']:<72} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['mean_ms']:>8.2f} "
                         f"{r['recall']:>7.4f}")
    ms = result.get("msearch")
    if ms:
        lines += ["", f"batch query path (msearch, {ms['index_type']}, num_candidates={ms['num_candidates']}):"]
        for r in ms["results"]:
            lines.append(f"  {r['probes']:,} probes in batches of {r['batch']}: {r['qps']:,.0f} q/s "
                         f"({r['seconds']:.1f} s), recall@{m['k']} {r['recall']:.4f}")
    flt = result.get("filtered")
    if flt:
        lines += ["", f"filtered kNN, single queries through each store's searcher (recall@{m['k']} against the exact "
                  f"filtered top {m['k']}; target p50 <= {TARGET_FILTERED_P50_MS:g} ms at recall >= {TARGET_RECALL} "
                  "with a 1% filter):",
                  f"{'store':<24} {'filter':<30} {'share':>7} {'cand':>5} {'p50 ms':>7} {'p95 ms':>7} {'recall':>7} "
                  f"{'only matching':>13}"]
        for r in flt["results"]:
            lines.append(f"{r['store']:<24} {r['filter']:<30} {100 * r['share']:>6.2f}% {r['num_candidates']:>5} "
                         f"{r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['recall']:>7.4f} {str(r['only_matching']):>13}")
    e = result["exact"]
    lines += ["", f"exact scan (knn.ExactScan, {e['threads']} threads, {_exact_kind(e)}, built in {e['open_s']:.2f} s): "
              f"one query {_exact_side_by_side(e, 2)} over {e['rows']:,} rows; {e['amortized_ms']:.3f} ms/query "
              f"amortized over {m['queries']}"]
    big = result.get("exact_at_scale")
    if big:
        lines.append(f"  measured on {big['rows']:,} random float32 rows (memory map, {_exact_kind(big)}): one query "
                     f"{_exact_side_by_side(big, 1)}; target <= {TARGET_EXACT_MS:g} ms: "
                     + ("met" if big["single_ms"] <= TARGET_EXACT_MS else "not met"))
    return lines


def _exact_kind(e: dict) -> str:
    return "an 8-bit first pass, then float32 on its candidates" if e.get("sketch") else "float32 blocks"


def _exact_side_by_side(e: dict, digits: int) -> str:
    """The default scan's single-query ms beside the others, all from the same interleaved queries."""
    return (f"{e['single_ms']:.{digits}f} ms (float32 alone {e['single_ms_float32']:.{digits}f} ms, "
            f"ratio {e['single_ms_float32'] / e['single_ms']:.2f}x; on one thread {e['single_ms_1thread']:.{digits}f} "
            f"ms; the scan before knn.ExactScan {e['single_ms_previous']:.{digits}f} ms; interleaved)")


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
    for line in extra_lines(result):
        print(line)
    print("anchors: " + "; ".join(f"{n} {ms:,.1f} ms/query" for n, ms in ANCHORS))
    has_es = any(not r["index_type"].startswith("embedded") for r in result["results"])
    e = result["exact"]
    exact_ms = (result.get("exact_at_scale") or {}).get("single_ms", e["single_ms"] * 1e6 / e["rows"])
    print(f"targets (stated at 1M; this run has {m['vectors']:,}): p50 <= {TARGET_P50_MS:g} ms at recall@10 >= "
          f"{TARGET_RECALL}: " + (result["best"] or ("not met" if has_es else "n/a (no Elasticsearch in this run)"))
          + f"; one exact query <= {TARGET_EXACT_MS:g} ms at 1M: {exact_ms:.1f} ms, "
          + ("met" if exact_ms <= TARGET_EXACT_MS else "not met"))
    flt = [r for r in (result.get("filtered") or {}).get("results", []) if r["filter"].startswith("person 1%")]
    for r in flt:
        ok = r["p50_ms"] <= TARGET_FILTERED_P50_MS and r["recall"] >= TARGET_RECALL
        print(f"filtered target (1% person filter) on {r['store']}: p50 {r['p50_ms']:.2f} ms at recall {r['recall']:.4f}: "
              + ("met" if ok else "not met"))
    print(f"embedded index target: p50 <= {TARGET_EMBEDDED_P50_MS:g} ms (single query) at recall@10 >= {TARGET_RECALL}: "
          + (result.get("best_embedded") or "not met"))
    print(f"{m.get('date')}, load average {m.get('loadavg_start', 0):.1f} at the start, {m['loadavg']:.1f} at the end")


# --- main --------------------------------------------------------------------------------------
BEAM = False  # every flag is the benchmark's own


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="facebeam bench query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_index.add_common_args(parser)
    parser.add_argument("--num-candidates", default="10,50,100,200,500,1000", help="sweep (default %(default)s)")
    parser.add_argument("--queries", type=options.COUNT, default=500, help="query faces (default %(default)s)")
    parser.add_argument("--k", type=options.COUNT, default=10, help="neighbours per query (default %(default)s)")
    parser.add_argument("--batch", type=options.COUNT, default=50, help="queries per msearch (default %(default)s)")
    parser.add_argument("--rescore-oversample", type=options.NON_NEGATIVE_NUMBER, default=2.0,
                        help="also sweep quantized indices re-ranked on float vectors with this oversample "
                             "(knn rescore_vector; 0 = off; default %(default)s)")
    parser.add_argument("--query-seed", type=options.NON_NEGATIVE, default=1,
                        help="seed of the query faces (default %(default)s)")
    parser.add_argument("--json", dest="json_out", help="write the results here")
    parser.add_argument("--markdown", help="write a markdown table here")
    parser.add_argument("--plot", help="write a recall-vs-queries/s PNG here")
    parser.add_argument("--no-levers", dest="levers", action="store_false",
                        help="skip the query levers (response shape, serializer, connection reuse, preload)")
    parser.add_argument("--no-preload", dest="preload", action="store_false",
                        help="skip the index.store.preload lever (it closes and reopens the index twice)")
    parser.add_argument("--msearch-probes", type=options.COUNT, default=10_000,
                        help="probes for the batch (msearch) throughput of the query job's path (0 = skip; "
                             "default %(default)s)")
    parser.add_argument("--no-filtered", dest="filtered", action="store_false",
                        help="skip filtered kNN (persons and path prefixes keeping 1%% and 10%%)")
    parser.add_argument("--exact-rows", type=bench_index.count, default=0,
                        help="also time one exact query over this many random float32 vectors, e.g. 1M "
                             "(a rows x dim x 4 byte file beside --stats, written once)")
    return parser


def configure(a, beam_args=()) -> argparse.Namespace:
    """The benchmark's settings: every flag, read once (bench index's configure)."""
    return bench_index.configure(a, beam_args)


def run(ns: argparse.Namespace, pipeline=None) -> dict:
    types = bench_index.index_types(ns.index_types)
    if ns.plot and importlib.util.find_spec("matplotlib") is None:
        raise UserError("--plot needs matplotlib: pip install 'facebeam[bench]' (or matplotlib)")
    sweep = sorted({int(x) for x in ns.num_candidates.split(",") if x.strip()})
    if not sweep or min(sweep) < ns.k:
        raise UserError(f"--num-candidates must all be >= k ({ns.k})")
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
    extra, filter_stores, running_before = {}, [], True
    if ns.embedded != "no":
        results += embedded_sweep(ns, spec, faces, queries, truth, sweep)
    if ns.embedded != "only":
        running_before = bool(es_local.node_processes(ns.es_home))
        try:
            conn, _ = bench_index.ensure_cluster(ns)
        except EsError as e:
            raise UserError(f"bench query: {e}") from None
        client, timer = timed_client(conn)
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
                        r = sweep_point(client, index, queries, truth, ns.k, nc, ns.batch, oversample, timer)
                        r.update(index_type=label, index=index, oversample=oversample)
                        results.append(r)
                        log.info("%s num_candidates=%d: p50 %.2f ms, recall %.4f, batch %.0f q/s", label, nc,
                                 r["p50_ms"], r["recall"], r["batch_qps"])
            lever_index, lever_nc = ready[types[0]], chosen_candidates(results, types[0], sweep)
            if ns.levers:
                extra["levers"] = {"index_type": types[0], "num_candidates": lever_nc,
                                   "results": levers(conn, client, lever_index, queries, truth, ns.k, lever_nc, spec,
                                                     ns.preload)}
            if ns.msearch_probes:
                many, _ = faces.queries(ns.msearch_probes, seed=ns.query_seed + 1)
                many_truth, _ = exact_topk(corpus, many, ns.k)
                extra["msearch"] = {"index_type": types[0], "num_candidates": lever_nc, "results": msearch_throughput(
                    client, lever_index, many, many_truth, knn.SearchSpec(k=ns.k, num_candidates=lever_nc), spec)}
            if ns.filtered:
                from facebeam.transforms.stores.elasticsearch import ElasticsearchStore

                filter_stores.append((f"Elasticsearch {types[0]}", ElasticsearchStore(
                    bench_index.alias_for(types[0], faces.n, faces.seed), lambda: conn), lever_nc))
        finally:
            client.close()
            if not running_before and not ns.keep and not ns.filtered:
                es_local.stop_cluster(ns.es_home)
    if ns.filtered:
        try:
            extra["filtered"] = run_filtered(ns, spec, faces, corpus, queries, filter_stores, results, sweep)
        finally:
            if ns.embedded != "only" and not running_before and not ns.keep:
                es_local.stop_cluster(ns.es_home)
    if ns.exact_rows:
        log.info("one exact query over %d random float32 vectors (memory-mapped)", ns.exact_rows)
        extra["exact_at_scale"] = exact_at_scale(ns.exact_rows, faces.dim, Path(ns.stats).parent, ns.k)

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
        **extra,
    }
    print_table(result)
    if ns.json_out:
        Path(ns.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if ns.markdown:
        Path(ns.markdown).write_text(markdown(result))
    if ns.plot:
        plot(result, ns.plot)
        print(f"plot: {ns.plot}")
    return result


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
