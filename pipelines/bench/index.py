"""facebeam bench index: load levers side by side on the same synthetic vectors, each timed until it answers.

    facebeam bench index --vectors 100000 [--variants TYPE/LEVER,...] [--index-types hnsw,int8_hnsw]
                         [--probes 200] [--target-recall 0.95] [--hnswlib yes|no] [--es-home DIR] [--port P]
                         [--heap 4g] [--chunk-docs N] [--workers N] [--driver threads|beam] [--java-home DIR]
                         [--json FILE] [--keep]

The vectors come from `transforms.synthetic`, fitted once on the sample's real
embeddings (kept in --stats; made by running the embed job on --sample if missing).
Each variant (--variants; LEVERS below) loads them into a fresh index the way `facebeam index`
does with that variant's `es_index.LoadTuning` (translog durability, merge threads, a two-phase
flat -> HNSW build, a force merge) and bulk shape (docs per request, concurrent senders). Two
times per variant: the bulk phase, and from the first bulk request until the index answers at
the query target: recall@10 >= --target-recall on --probes fixed probes against the exact top
10, at the first num_candidates of --sweep that reaches it (its p50 is printed), whatever the
segment count. It is checked after the settings are restored (the segments the bulk left) and
again after the force merge if the variant has one; the merge counts, the searches do not. The
flat segments of a two-phase load before its merge are an exact scan, printed but not counted.

Side by side on the same vectors, the anchors: hnswlib's 2-thread build (--hnswlib, the `bench`
extra) with the same m and ef_construction, and the embedded HNSW index (`transforms/ann.py`,
faiss-cpu; --embedded no|only). Every variant's rate is printed as a ratio to hnswlib's, against
the target of 0.5x. Also printed: store size, the node's peak heap during the load, where the
CPU went (the node, this client, the rest of the machine).

The bench cluster (one node under --es-home, port 9290) is reused if it is running and stopped at
the end unless --keep. `facebeam bench query` reuses the last index of each type merged to a segment per shard
(alias `bench-<type>-<n>-s<seed>`); --source-vectors included|both also loads the vectors kept in
`_source` (the mapping before), for the store size before and after.
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import resource
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import numpy as np

from facebeam.pipelines import jobs, options
from facebeam.pipelines.bench import synthetic
from facebeam.pipelines.local import elasticsearch as es_local
from facebeam.transforms import es_index, records
from facebeam.transforms.errors import UserError
from facebeam.transforms.es_conn import EsConnection, EsError
from facebeam.transforms.es_sink import BulkConfig, bulk_index
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)

DEFAULT_HOME = Path(".facebeam/bench-es")
DEFAULT_PORT = 9290
DEFAULT_HEAP = "4g"
DEFAULT_STATS = Path(".facebeam/bench/synthetic-stats.json")
DEFAULT_SAMPLE = os.path.join("..", "shared", "data", "faces")
STATE_FILE = "bench-indices.json"  # inside the bench home: what bench query may reuse
ANCHORS = [
    ("managed vector DB (14 min per 100k)", 100_000 / (14 * 60)),
    ("NMSLIB (1M in 264 s)", 1_000_000 / 264),
]
TARGET_HNSWLIB_RATIO = 0.5  # issue 24: load until the index answers >= 0.5x hnswlib's 2-thread build


# --- shared with bench query ------------------------------------------------------------------
def count(text: str) -> int:
    """1000000, 1M, 100k, 1_000_000."""
    t = str(text).strip().lower().replace("_", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    value = int(float(t[:-1] if mult > 1 else t) * mult)
    if value < 1:
        raise argparse.ArgumentTypeError(f"need a positive count, got {text!r}")
    return value


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vectors", type=count, default=1_000_000, help="vectors per index (1M, 100k, ...)")
    parser.add_argument("--index-types", default="hnsw,int8_hnsw",
                        help=f"comma-separated, of {','.join(es_index.INDEX_TYPES)} (default %(default)s)")
    parser.add_argument("--seed", type=options.NON_NEGATIVE, default=0, help="synthetic data seed (default %(default)s)")
    parser.add_argument("--faces-per-identity", type=options.POSITIVE, default=20.0, help="mean faces per person (default 20)")
    parser.add_argument("--stats", type=Path, default=DEFAULT_STATS,
                        help="fitted synthetic model; fitted from --sample if missing (default %(default)s)")
    parser.add_argument("--sample", default=DEFAULT_SAMPLE, help="photos + face-recognition-pivot.csv to fit on")
    parser.add_argument("--m", type=options.number(int, least=2), default=16, help="HNSW graph degree (default 16)")
    parser.add_argument("--ef-construction", type=options.COUNT, default=100, help="HNSW build beam (default 100)")
    parser.add_argument("--embedded", choices=("yes", "no", "only"), default="yes",
                        help="also the embedded HNSW index (faiss-cpu); only: no Elasticsearch (default yes)")
    g = parser.add_argument_group("bench cluster")
    g.add_argument("--es-home", type=Path, default=DEFAULT_HOME, help="cluster folder (default %(default)s)")
    g.add_argument("--port", type=options.PORT, default=DEFAULT_PORT, help="HTTP port (default %(default)s)")
    g.add_argument("--heap", default=DEFAULT_HEAP, help="node heap (default %(default)s)")
    g.add_argument("--java-home", help="JDK for the node (default: ES_JAVA_HOME, JAVA_HOME, then java on PATH)")
    g.add_argument("--no-security", action="store_true", help="plain http (default: TLS + a generated user)")
    g.add_argument("--node-setting", type=es_local.setting_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="elasticsearch.yml setting when the bench starts the node (repeatable)")
    g.add_argument("--keep", action="store_true", help="leave the bench cluster running at the end")


def index_types(text: str) -> list:
    types = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in types if t not in es_index.INDEX_TYPES]
    if bad or not types:
        raise SystemExit(f"--index-types: unknown {bad or text!r}; choose from {','.join(es_index.INDEX_TYPES)}")
    return types


def load_stats(ns, spec: EmbeddingSpec) -> dict:
    """The fitted synthetic model: from --stats, or fitted on the sample (embed job) and saved there."""
    path = Path(ns.stats)
    if path.is_file():
        stats = json.loads(path.read_text())
        if stats.get("spec_id") not in (None, spec.spec_id):
            log.warning("stats in %s were fitted on spec %s, this run is %s", path, stats.get("spec_id"), spec.spec_id)
        return stats
    from facebeam.pipelines import embed

    out = path.parent / "sample-embed"
    log.info("fitting the synthetic model: embedding %s into %s (once)", ns.sample, out)
    embed.run(embed.EmbedConfig(Inputs((ns.sample,)), str(out), spec, beam_args=options.QUIET_WORKERS))
    stats = synthetic.fit_sample(str(out / "embeddings"), os.path.join(ns.sample, "face-recognition-pivot.csv"), spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stats))
    return stats


def stats_digest(stats: dict) -> str:
    return hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:12]


def alias_for(index_type: str, n: int, seed: int) -> str:
    return f"bench-{index_type.replace('_', '')}-{n}-s{seed}"


def _orjson_serializer():
    try:
        from elasticsearch.serializer import OrjsonSerializer
    except ImportError:  # orjson not installed
        return None
    return OrjsonSerializer()


class FastJsonConnection(EsConnection):
    """EsConnection whose clients encode with orjson when it is installed (~17x faster on vectors)."""

    def client(self, **overrides):
        serializer = _orjson_serializer()
        if serializer is not None:
            overrides.setdefault("serializer", serializer)
        return super().client(**overrides)


def json_encoder() -> str:
    return "orjson" if _orjson_serializer() is not None else "json (stdlib)"


def quiet_client_logs() -> None:
    """No per-request INFO lines, no 'technical preview' warnings (tasks, _disk_usage)."""
    import warnings

    try:
        from elasticsearch.exceptions import GeneralAvailabilityWarning
    except ImportError:
        GeneralAvailabilityWarning = None
    if GeneralAvailabilityWarning is not None:
        warnings.simplefilter("ignore", GeneralAvailabilityWarning)
    for name in ("elastic_transport", "elasticsearch"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)


def ensure_cluster(ns) -> tuple:
    """(FastJsonConnection, started_here): reuse the node running under --es-home, else start one."""
    home = Path(ns.es_home)
    if es_local.node_processes(home) and (home / "connection.json").is_file():
        conn = es_local.connection(home)
        conn.check()
        log.info("reusing the bench cluster under %s at %s (its heap, JVM and settings apply, not --heap, "
                 "--java-home, --node-setting)", home, conn.url)
        started = False
    else:
        if ns.java_home:
            os.environ["ES_JAVA_HOME"] = ns.java_home
        t0 = time.perf_counter()
        conn = es_local.start_cluster(home, nodes=1, port=ns.port, heap=ns.heap, security=not ns.no_security,
                                      settings=dict(ns.node_setting))
        log.info("bench cluster up in %.1f s at %s", time.perf_counter() - t0, conn.url)
        started = True
    return FastJsonConnection(**{f: getattr(conn, f) for f in conn.__dataclass_fields__}), started


def read_state(home) -> dict:
    try:
        return json.loads((Path(home) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(home, state: dict) -> None:
    (Path(home) / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def node_info(client) -> dict:
    """Heap, CPU and JVM of the (single) node."""
    nodes = client.nodes.stats(metric="jvm,process").body["nodes"]
    info = client.nodes.info(metric="jvm").body["nodes"]
    node_id, n = next(iter(nodes.items()))
    jvm = info.get(node_id, {}).get("jvm", {})
    return {"heap_used": n["jvm"]["mem"]["heap_used_in_bytes"], "heap_max": n["jvm"]["mem"]["heap_max_in_bytes"],
            "cpu_ms": n["process"]["cpu"]["total_in_millis"], "version": info.get(node_id, {}).get("version", "?"),
            "java": f"Java {jvm.get('version', '?')} ({jvm.get('vm_vendor', '?')})"}


# --- documents ---------------------------------------------------------------------------------
class RowMaker:
    """Face rows (the embed job's shape) for synthetic vectors; ids are content-addressed as usual."""

    def __init__(self, faces: synthetic.SyntheticFaces, spec: EmbeddingSpec):
        self.faces, self.spec = faces, spec
        self._const = {"model": spec.model, "detector": spec.detector, "spec_id": spec.spec_id, "face_index": 0,
                       "box_x": 0, "box_y": 0, "box_w": 150, "box_h": 150, "image_width": 640,
                       "image_height": 480, "confidence": 1.0}
        self._tag = f"synthetic-{faces.seed}-{faces.n}-".encode()

    def rows(self, start: int, stop: int) -> list:
        vectors = self.faces.vectors(start, stop)
        labels = self.faces.labels[start:stop]
        out = []
        for i, (vector, label) in enumerate(zip(vectors, labels.tolist()), start):
            sha = hashlib.sha256(self._tag + str(i).encode()).hexdigest()
            # float32 rows: orjson writes the shortest float32 text (~1.9 kB/doc instead of ~3 kB).
            out.append({**self._const, "face_id": records.face_id(sha, (0, 0, 150, 150), self.spec),
                        "image_path": f"synthetic/{i}.jpg", "image_sha256": sha, "label": f"person-{label}",
                        "embedding": vector})
        return out


# --- loading -----------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """Polls the node once a second: peak heap; logs a progress line every `every` seconds."""

    def __init__(self, client, progress=None, every: float = 15.0):
        super().__init__(daemon=True)
        self.client, self.progress, self.every = client, progress, every
        self.peak_heap, self.stop_flag = 0, threading.Event()

    def run(self):
        last = time.monotonic()
        while not self.stop_flag.wait(1.0):
            with contextlib.suppress(Exception):  # a missed sample is fine
                self.peak_heap = max(self.peak_heap, node_info(self.client)["heap_used"])
            if self.progress and time.monotonic() - last >= self.every:
                last = time.monotonic()
                log.info("progress: %s", self.progress())

    def stop(self):
        self.stop_flag.set()
        self.join(5)


def load_threads(conn, maker: RowMaker, cfg: BulkConfig, workers: int, task_rows: int, rows=None) -> dict:
    """bulk_index from `workers` threads, each on its own ranges of rows (made there, or sliced from
    `rows` made before the clock starts); one shared client."""
    client = conn.client(request_timeout=300)
    done = {"indexed": 0, "failed": 0, "retried": 0}
    lock = threading.Lock()
    failures = []

    def task(start):
        stop = min(start + task_rows, maker.faces.n)
        outcome = bulk_index(client, rows[start:stop] if rows is not None else maker.rows(start, stop), cfg)
        with lock:
            done["indexed"] += outcome.indexed
            done["retried"] += outcome.retried
            done["failed"] += len(outcome.failed)
            failures.extend((s, e) for _, s, e in outcome.failed[:3])

    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bulk") as pool:
        started = time.perf_counter()
        sampler = Sampler(client, lambda: f"{done['indexed']:,} / {maker.faces.n:,} docs, "
                                          f"{done['indexed'] / (time.perf_counter() - started):,.0f} docs/s")
        sampler.start()
        try:
            list(pool.map(task, range(0, maker.faces.n, task_rows)))
        finally:
            sampler.stop()
    client.close()
    if failures:
        log.warning("bulk failures, first ones: %s", failures[:3])
    return {**done, "peak_heap": sampler.peak_heap}


def load_beam(conn, maker: RowMaker, cfg: BulkConfig, workers: int, task_rows: int) -> dict:
    """The project's IndexFaces transform on the local runner (multi-process FnApiRunner)."""
    from facebeam.pipelines.runner.job_options import pipeline_options
    from facebeam.pipelines.runner.launch import create_pipeline
    from facebeam.transforms import metrics
    from facebeam.transforms.es_sink import IndexFaces

    faces = maker.faces
    opts = pipeline_options([f"--direct_num_workers={workers}", *options.QUIET_WORKERS])
    p = create_pipeline(opts)
    ranges = [(s, min(s + task_rows, faces.n)) for s in range(0, faces.n, task_rows)]
    (p | "Ranges" >> beam.Create(ranges)
       | "Spread" >> beam.Reshuffle()
       | "Rows" >> beam.ParDo(_SyntheticRows(faces.stats, faces.n, faces.seed, faces.faces_per_identity,
                                             faces.skew, maker.spec.to_json()))
       | "Index" >> IndexFaces(conn, cfg))
    client = conn.client()
    sampler = Sampler(client)
    sampler.start()
    try:
        result, _ = jobs.run(p)
    finally:
        sampler.stop()
        client.close()
    return {**metrics.index_counts(metrics.read_counters(result)), "peak_heap": sampler.peak_heap}


class _SyntheticRows(beam.DoFn):
    """A (start, stop) range -> its synthetic face rows; the generator is built once per worker."""

    def __init__(self, stats, n, seed, faces_per_identity, skew, spec_json):
        self._args = (stats, n, seed, faces_per_identity, skew, spec_json)

    def setup(self):
        stats, n, seed, fpi, skew, spec_json = self._args
        self._maker = RowMaker(synthetic.SyntheticFaces(stats, n, seed, fpi, skew), EmbeddingSpec.from_json(spec_json))

    def process(self, rng):
        yield from self._maker.rows(*rng)


def disk_usage(client, index: str, breakdown: bool = True) -> dict:
    """Store size, and (`breakdown`) what the vector field takes (raw floats, quantized copy, graph) per _disk_usage."""
    store = client.indices.stats(index=index, metric="store,segments,indexing,merge,refresh,flush").body
    prim = store["indices"][index]["primaries"]
    live = client.indices.segments(index=index).body["indices"][index]["shards"]
    out = {"store_bytes": prim["store"]["size_in_bytes"], "segments": prim["segments"]["count"],
           # the live segments alone: the store can still hold files a merge replaced
           "segments_bytes": sum(seg["size_in_bytes"] for copies in live.values() for c in copies
                                 if c["routing"]["primary"] for seg in c["segments"].values()),
           "index_time_ms": prim["indexing"]["index_time_in_millis"],
           "merge_time_ms": prim["merges"]["total_time_in_millis"], "flushes": prim["flush"]["total"]}
    if not breakdown:
        return out
    try:
        usage = client.options(request_timeout=600).indices.disk_usage(index=index, run_expensive_tasks=True).body
        fields = usage[index]["fields"]
        emb = fields.get("embedding", {})
        out["embedding_bytes"] = emb.get("total_in_bytes")
        out["embedding_knn_bytes"] = emb.get("knn_vectors_in_bytes")
        out["source_bytes"] = fields.get("_source", {}).get("total_in_bytes")
        out["disk_usage_total_bytes"] = usage[index].get("store_size_in_bytes")
    except Exception as e:  # noqa: BLE001 - the breakdown is a bonus
        log.warning("_disk_usage failed: %s", e)
    return out


def embedded_folder(ns, faces) -> Path:
    return Path(ns.stats).parent / f"ann-{faces.n}-s{faces.seed}-{stats_digest(faces.stats)}-m{ns.m}-ef{ns.ef_construction}"


def bench_embedded(ns, spec, faces, maker) -> dict:
    """The same face rows into a fresh embedded HNSW index (transforms/ann.py), saved; row i = position i."""
    import shutil

    from facebeam.transforms import ann

    folder = embedded_folder(ns, faces)
    shutil.rmtree(folder, ignore_errors=True)
    busy0, cpu0, t0 = _machine_busy(), _own_cpu_s(), time.perf_counter()
    idx = ann.AnnIndex.create(str(folder), spec, ns.m, ns.ef_construction)
    make_s = 0.0
    for start in range(0, faces.n, ns.task_rows):
        t1 = time.perf_counter()
        rows = maker.rows(start, min(faces.n, start + ns.task_rows))
        make_s += time.perf_counter() - t1
        idx.add_rows(rows)
    t_build = time.perf_counter() - t0
    info = idx.save()
    t_all = time.perf_counter() - t0
    busy1, cpu1 = _machine_busy(), _own_cpu_s()
    t2 = time.perf_counter()
    opened = ann.AnnIndex.open(str(folder), spec)
    open_ms = 1000 * (time.perf_counter() - t2)
    index_file = folder / info["index_file"]
    return {"index_type": "embedded", "library": info["library"], "folder": str(folder), "vectors": faces.n,
            "docs": opened.count, "indexed": opened.count, "failed": 0, "retried": 0,
            "make_rows_s": round(make_s, 2), "build_s": round(t_build - make_s, 2), "load_s": round(t_all - make_s, 2),
            "build_vectors_per_s": round(faces.n / max(t_build - make_s, 1e-9), 1),
            "load_vectors_per_s": round(faces.n / max(t_all - make_s, 1e-9), 1),
            "bytes_on_disk": opened.disk_bytes(), "index_file_bytes": index_file.stat().st_size,
            "open_mmap_ms": round(open_ms, 2), "cpu_s": round(cpu1 - cpu0, 1),
            "machine_busy_load": _busy_share(busy0, busy1)}


# --- load variants -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to load: the bulk shape and the index settings (`es_index.LoadTuning`) of the load."""

    lever: str
    index_type: str  # what the index answers with at the end
    tuning: es_index.LoadTuning
    chunk_docs: int = 1000
    workers: int = 3
    source_vectors: bool = False  # vectors kept in _source too (the mapping before)

    @property
    def name(self) -> str:
        return f"{self.index_type}/{self.lever}" + ("+src" if self.source_vectors else "")


BEFORE = es_index.LoadTuning(translog_async=False, two_phase=False, force_merge=True)  # facebeam index until now
LEVERS = {
    # name: (tuning, docs per bulk request, senders)
    "before": (BEFORE, 1000, 3),
    "async": (es_index.LoadTuning(translog_async=True, two_phase=False, force_merge=True), 1000, 3),
    "merge2": (es_index.LoadTuning(merge_threads=2), 1000, 3),
    "async-merge2": (es_index.LoadTuning(translog_async=True, merge_threads=2), 1000, 3),
    "async-nomerge": (es_index.LoadTuning(translog_async=True), 1000, 3),
    "direct-500x2": (es_index.LoadTuning(), 500, 2),
    "direct-2000x4": (es_index.LoadTuning(), 2000, 4),
    "two-phase": (es_index.LoadTuning(translog_async=True, two_phase=True, force_merge=True), 1000, 3),
    "two-phase-sync": (es_index.LoadTuning(translog_async=False, two_phase=True, force_merge=True), 1000, 3),
    # two primary shards: two graphs, one per shard, each merged to one segment
    "two-phase-2shards": (es_index.LoadTuning(two_phase=True, force_merge=True, shards=2), 1000, 3),
    # bulk shape only: a flat load, not merged (no graph: its time to answer is not counted)
    "bulk-500x2": (es_index.LoadTuning(translog_async=True, two_phase=True), 500, 2),
    "bulk-1000x3": (es_index.LoadTuning(translog_async=True, two_phase=True), 1000, 3),
    "bulk-2000x4": (es_index.LoadTuning(translog_async=True, two_phase=True), 2000, 4),
    "plain": (es_index.LoadTuning(), 1000, 3),  # HNSW built in the bulk, no merge: `facebeam index` until 2026-12-05
    "default": (es_index.DEFAULT_TUNING, 1000, 3),  # what `facebeam index` does now
}
DEFAULT_VARIANTS = "hnsw/before,hnsw/two-phase,int8_hnsw/before"  # each ends merged: bench query reuses it


def variants(text: str, types: list, source_vectors: str) -> list:
    """`TYPE/LEVER,...` (or a bare LEVER: for each of `types`) -> Variants, in order. The default list keeps the
    types of `types`; a TYPE the user named outside them is refused."""
    out = []
    for word in [w.strip() for w in text.split(",") if w.strip()]:
        index_type, _, lever = word.rpartition("/")
        if lever not in LEVERS or (index_type and index_type not in es_index.INDEX_TYPES):
            raise SystemExit(f"--variants: unknown {word!r}; TYPE/LEVER with LEVER one of {','.join(LEVERS)}")
        tuning, chunk, workers = LEVERS[lever]
        if index_type and index_type not in types and text != DEFAULT_VARIANTS:  # was dropped without a word
            raise SystemExit(f"--variants: {word!r} names {index_type}, which --index-types "
                             f"({','.join(types)}) leaves out; add it there")
        out += [Variant(lever, t, tuning, chunk, workers) for t in ([index_type] if index_type else types) if t in types]
    if source_vectors in ("included", "both"):
        extra = [dataclasses.replace(v, source_vectors=True) for v in out if v.lever in ("default", "before")]
        out = extra if source_vectors == "included" else out + extra
    return out


def exact_truth(faces, queries, k: int):
    """The exact top k of each probe among all N vectors (numpy, chunk by chunk)."""
    from facebeam.transforms import knn

    q = np.ascontiguousarray(queries, dtype=np.float32)
    best = knn.empty_topk(len(q))
    for start, x in faces.chunks(50_000):
        best = knn.merge_topk(best, knn.topk_block(q, np.asarray(x, dtype=np.float32), k, x_offset=start), k)
    return best[0]


def knn_body(vector, k: int, num_candidates: int) -> dict:
    return {"knn": {"field": "embedding", "query_vector": vector, "k": k, "num_candidates": num_candidates},
            "size": k, "_source": False, "docvalue_fields": ["image_path"]}


def answer_at_target(client, index: str, probes, truth, k: int, sweep, target: float) -> dict:
    """recall@k and p50 of single searches at each num_candidates of `sweep` until recall reaches `target`.

    Returns the first point that reaches it (reached=True), else the last one.
    """
    vectors = probes.tolist()
    point = {}
    for nc in sweep:
        for v in vectors[:20]:  # warm this setting
            client.search(index=index, **knn_body(v, k, nc))
        lat, took, hits = [], [], 0
        for v, want in zip(vectors, truth):
            t0 = time.perf_counter()
            r = client.search(index=index, **knn_body(v, k, nc)).body
            lat.append(1000 * (time.perf_counter() - t0))
            took.append(r["took"])
            rows = {int(h["fields"]["image_path"][0].rsplit("/", 1)[1].split(".", 1)[0]) for h in r["hits"]["hits"]}
            hits += len(rows & set(want[:k].tolist()))
        point = {"num_candidates": nc, "recall": round(hits / (k * len(vectors)), 4),
                 "p50_ms": round(float(np.percentile(lat, 50)), 2), "took_p50_ms": float(np.percentile(took, 50))}
        if point["recall"] >= target:
            return {**point, "reached": True}
    return {**point, "reached": False}


def segments(client, index: str) -> int:
    """Segments of all primary shards together."""
    return client.indices.stats(index=index, metric="segments").body["indices"][index]["primaries"]["segments"]["count"]


def bench_variant(conn, client, ns, spec, faces, maker, variant: Variant, probes=None, truth=None, rows=None,
                  alias=None) -> dict:
    """One load, timed from the first bulk request until the index answers at the target.

    The index is loaded as `facebeam index` would with the variant's tuning (`es_index.plan_load`,
    `finish_plan`), except that the searches that check the target are not counted in the time:
    after the settings are restored (the segments the bulk phase left) and after the merge.
    """
    alias = alias or alias_for(f"{variant.index_type}-{variant.lever}" + ("-src" if variant.source_vectors else ""),
                               faces.n, faces.seed)
    old = list(client.indices.get(index=f"{alias}-*", ignore_unavailable=True).body)
    if old:
        client.indices.delete(index=",".join(old))
    body = es_index.index_body(spec, es_index.load_type(variant.index_type) if variant.tuning.two_phase
                               else variant.index_type, ns.m, ns.ef_construction, shards=variant.tuning.shards,
                               final_type=variant.index_type)
    if variant.source_vectors:
        body["mappings"].pop("_source", None)
    client.indices.create(index=es_index.concrete_name(alias, spec, 1), aliases={alias: {}}, **body)
    plan = es_index.plan_load(client, alias, spec, variant.index_type, ns.m, ns.ef_construction, tuning=variant.tuning)
    # plan_load joined the index made above: the switch and the merge are this variant's own.
    plan = dataclasses.replace(plan, merge=variant.tuning.force_merge, segments=variant.tuning.merge_segments,
                               index_options=es_index.vector_options(variant.index_type, ns.m, ns.ef_construction)
                               if variant.tuning.two_phase else None)
    concrete = plan.concrete
    cfg = BulkConfig(index=concrete, chunk_docs=variant.chunk_docs, chunk_bytes=ns.chunk_bytes)
    es_cpu0, cpu0 = node_info(client)["cpu_ms"], _own_cpu_s()
    log.info("%s: loading %d vectors into %s (%s, %d senders, %d docs/bulk)", variant.name, faces.n, concrete,
             ns.driver, variant.workers, variant.chunk_docs)
    busy0, t0 = _machine_busy(), time.perf_counter()
    if ns.driver == "beam":
        loaded = load_beam(conn, maker, cfg, variant.workers, ns.task_rows)
    else:
        loaded = load_threads(conn, maker, cfg, variant.workers, ns.task_rows, rows=rows)
    t_bulk = time.perf_counter() - t0
    es_cpu1, cpu1, busy1 = node_info(client)["cpu_ms"], _own_cpu_s(), _machine_busy()
    # The end of the load in two steps, to time a search before the merge: restore (+ switch), then merge.
    # finish_load's first step (settings back, switch, refresh), with the merge threads kept for the merge
    if plan.index_options:
        es_index.switch_vector(client, concrete, plan.index_options)
    client.indices.put_settings(index=concrete, settings=es_index.restored_settings(plan.replicas, merge_threads=False))
    client.indices.refresh(index=concrete)
    docs = int(client.count(index=concrete).body["count"])
    t_settle = time.perf_counter() - t0
    segments_before = segments(client, concrete)
    points = []
    if probes is not None:
        t1 = time.perf_counter()
        point = answer_at_target(client, concrete, probes, truth, ns.k, ns.sweep, ns.target_recall)
        paused = time.perf_counter() - t1
        if plan.index_options:  # its segments are still flat: an exact scan, whose time grows with N, not an answer
            point = {**point, "reached": False, "flat": True}
        points.append({"after": "bulk + restore" + (" + switch" if plan.index_options else ""), "s": t_settle,
                       "segments": segments_before, **point})
    else:
        paused = 0.0
    t_merge = 0.0
    if plan.merge:
        t2 = time.perf_counter()
        if plan.index_options:
            es_index.second_segments(client, concrete)
        es_index.force_merge(client, concrete, plan.segments)
        t_merge = time.perf_counter() - t2
        if probes is not None:
            points.append({"after": f"+ force merge to {plan.segments}", "s": t_settle + t_merge,
                           "segments": segments(client, concrete),
                           **answer_at_target(client, concrete, probes, truth, ns.k, ns.sweep, ns.target_recall)})
    t_all = time.perf_counter() - t0 - paused
    busy2 = _machine_busy()
    client.indices.put_settings(index=concrete, settings=es_index.restored_settings(plan.replicas))
    client.indices.flush(index=concrete)  # commit, so the pre-merge segment files are gone from the store
    es_cpu2 = node_info(client)["cpu_ms"]
    info = node_info(client)
    disk = disk_usage(client, concrete) if ns.disk_usage else disk_usage(client, concrete, breakdown=False)
    reached = next((p for p in points if p["reached"]), None)
    result = {
        "variant": variant.name, "lever": variant.lever, "index_type": variant.name,
        "final_type": variant.index_type, "source_vectors": variant.source_vectors,
        "tuning": dataclasses.asdict(variant.tuning), "chunk_docs": variant.chunk_docs, "workers": variant.workers,
        "alias": alias, "index": concrete, "vectors": faces.n, "docs": docs,
        "indexed": loaded["indexed"], "failed": loaded["failed"], "retried": loaded["retried"],
        "bulk_s": round(t_bulk, 2), "bulk_vectors_per_s": round(faces.n / t_bulk, 1),
        "load_s": round(t_settle, 2), "merge_s": round(t_merge, 2), "total_s": round(t_all, 2),
        "load_vectors_per_s": round(faces.n / t_settle, 1), "total_vectors_per_s": round(faces.n / t_all, 1),
        "points": points, "answer_s": round(reached["s"], 2) if reached else None,
        "answer_vectors_per_s": round(faces.n / reached["s"], 1) if reached else None,
        "segments_before_merge": segments_before,
        "es_cpu_load_s": round((es_cpu1 - es_cpu0) / 1000, 1), "es_cpu_merge_s": round((es_cpu2 - es_cpu1) / 1000, 1),
        "client_cpu_load_s": round(cpu1 - cpu0, 1) if ns.driver == "threads" else None,
        "machine_busy_load": _busy_share(busy0, busy1), "machine_busy_merge": _busy_share(busy1, busy2),
        "heap_used": info["heap_used"], "heap_max": info["heap_max"], "heap_peak": loaded["peak_heap"],
        **disk,
    }
    return result


def register(ns, client, faces, r: dict, alias: str) -> None:
    """An index merged to one segment per shard, for bench query: `alias` points at it, and the state file
    says what it holds."""
    current = client.indices.get_alias(name=alias, ignore_unavailable=True).body if \
        client.indices.exists_alias(name=alias) else {}
    actions = [{"remove": {"index": i, "alias": alias}} for i in current if i != r["index"]]
    client.indices.update_aliases(actions=actions + [{"add": {"index": r["index"], "alias": alias}}])
    state = read_state(ns.es_home)
    state[alias] = {"index": r["index"], "index_type": r["final_type"], "source_vectors": r["source_vectors"],
                    "lever": r["lever"], "vectors": faces.n, "seed": faces.seed,
                    "faces_per_identity": faces.faces_per_identity, "stats": stats_digest(faces.stats),
                    "m": ns.m, "ef_construction": ns.ef_construction, "docs": r["docs"]}
    write_state(ns.es_home, state)


def bench_type(conn, client, ns, spec, faces, maker, index_type: str, source_vectors: bool = False) -> dict:
    """`facebeam index`'s load of one index type, merged to one segment per shard (what bench query measures),
    registered for bench query under `alias_for(index_type)`; no searches."""
    tuning, chunk, workers = LEVERS["default"]
    alias = alias_for(index_type + ("-src" if source_vectors else ""), faces.n, faces.seed)
    merged = dataclasses.replace(tuning, force_merge=True)
    r = bench_variant(conn, client, ns, spec, faces, maker,
                      Variant("default+merge", index_type, merged, chunk, workers, source_vectors), alias=alias)
    register(ns, client, faces, r, alias)
    return r


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine_busy():
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    try:
        parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


def _busy_share(a, b):
    """Share of all cores busy between two _machine_busy() readings."""
    if not a or not b:
        return None
    return round((b[0] - a[0]) / max(b[1] - a[1], 1), 3)


def mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f} MiB"


def bench_hnswlib(ns, faces, threads: int = 2) -> dict:
    """The anchor: hnswlib's build of the same vectors (same m, ef_construction) with `threads` threads."""
    try:
        import hnswlib
    except ImportError:
        raise UserError("bench index: the hnswlib anchor needs `pip install hnswlib` (the `bench` extra); "
                        "or --hnswlib no") from None
    x = np.ascontiguousarray(faces.vectors(), dtype=np.float32)
    idx = hnswlib.Index(space="l2", dim=faces.dim)
    cpu0, t0 = _own_cpu_s(), time.perf_counter()
    idx.init_index(max_elements=faces.n, ef_construction=ns.ef_construction, M=ns.m)
    idx.add_items(x, np.arange(faces.n), num_threads=threads)
    build_s, cpu_s = time.perf_counter() - t0, _own_cpu_s() - cpu0
    return {"library": f"hnswlib {getattr(hnswlib, '__version__', '')}".strip(), "threads": threads,
            "build_s": round(build_s, 2), "build_vectors_per_s": round(faces.n / build_s, 1), "cpu_s": round(cpu_s, 1),
            # the rate on `threads` free cores: what a shared machine's wall clock hides
            "free_cores_vectors_per_s": round(faces.n * threads / max(cpu_s, 1e-9), 1)}


def print_embedded(r: dict, es: list) -> None:
    print(f"embedded HNSW index ({r['library']}, m={r.get('m')}, ef_construction={r.get('ef_construction')}): "
          f"build {r['build_s']:.1f} s = {r['build_vectors_per_s']:,.0f} vectors/s, build + save "
          f"{r['load_vectors_per_s']:,.0f} vectors/s; {mib(r['bytes_on_disk'])} on disk "
          f"({r['bytes_on_disk']:,} bytes); opened memory-mapped in {r['open_mmap_ms']:.1f} ms"
          + (f"; machine {r['machine_busy_load']:.0%} busy" if r.get("machine_busy_load") is not None else ""))
    for e in es:
        rate = r["build_vectors_per_s"]
        print(f"  vs {e['variant']:<28} bulk {e['bulk_vectors_per_s']:>8,.0f} v/s ({rate / e['bulk_vectors_per_s']:.2f}x), "
              f"load+merge {e['total_vectors_per_s']:>8,.0f} v/s ({rate / e['total_vectors_per_s']:.2f}x), "
              f"store {mib(e['store_bytes'])} ({e['store_bytes'] / r['bytes_on_disk']:.2f}x the embedded index)")
    lean = {(e["final_type"], e["lever"]): e for e in es if not e.get("source_vectors")}
    for e in es:
        base = lean.get((e["final_type"], e["lever"]))
        if e.get("source_vectors") and base:
            print(f"  _source without vectors ({base['variant']}): store {mib(e['store_bytes'])} -> "
                  f"{mib(base['store_bytes'])} ({1 - base['store_bytes'] / e['store_bytes']:.0%} smaller), bulk "
                  f"{e['bulk_vectors_per_s']:,.0f} -> {base['bulk_vectors_per_s']:,.0f} vectors/s")


def _point(p: dict) -> str:
    return (f"{p['after']} ({p['segments']} segments, at {p['s']:.1f} s): recall@10 {p['recall']:.3f} at "
            f"num_candidates {p['num_candidates']}, p50 {p['p50_ms']:.2f} ms (took {p['took_p50_ms']:.0f} ms)"
            + (" - flat segments, an exact scan: not counted" if p.get("flat") else "" if p["reached"]
               else " - below the target"))


def print_report(results: list, meta: dict) -> None:
    print(f"bench index: {meta['vectors']:,} synthetic {meta['dim']}-d vectors ({meta['identities']:,} identities), "
          f"{meta['cores']} cores, ES {meta['es_version']} on {meta['java']}, heap {meta['heap']}, "
          f"driver {meta['driver']}, JSON {meta['json']}; target: recall@{meta['k']} >= {meta['target_recall']} "
          f"on {meta['probes']} fixed probes against exact search")
    hdr = (f"{'variant':<26} {'bulk':>6} {'bulk v/s':>9} {'segs':>5} {'merge s':>8} {'answers at':>11} "
           f"{'v/s to answer':>14} {'nc':>5} {'recall':>7} {'p50 ms':>7} {'store':>9} {'heap peak':>10}")
    print(hdr)
    for r in results:
        reached = next((p for p in r["points"] if p["reached"]), r["points"][-1] if r["points"] else None)
        answer = f"{r['answer_s']:.1f} s" if r["answer_s"] else "not reached"
        rate = f"{r['answer_vectors_per_s']:,.0f}" if r["answer_vectors_per_s"] else "-"
        nc, rec, p50 = (reached["num_candidates"], f"{reached['recall']:.3f}", f"{reached['p50_ms']:.2f}") \
            if reached else ("-", "-", "-")
        print(f"{r['variant']:<26} {r['bulk_s']:>5.1f}s {r['bulk_vectors_per_s']:>9,.0f} {r['segments_before_merge']:>5} "
              f"{r['merge_s']:>8.1f} {answer:>11} {rate:>14} {nc:>5} {rec:>7} {p50:>7} {mib(r.get('segments_bytes')):>9} "
              f"{mib(r['heap_peak']):>10}")
    for r in results:
        if r["failed"] or r["docs"] != r["vectors"]:
            print(f"  WARNING {r['variant']}: {r['docs']:,} docs searchable of {r['vectors']:,} ({r['failed']} failed)")
        busy, busy_merge = r.get("machine_busy_load"), r.get("machine_busy_merge")
        t = r["tuning"]
        print(f"  {r['variant']}: {r['chunk_docs']} docs/bulk x {r['workers']} senders, translog "
              f"{'async' if t['translog_async'] else 'request'}, merge threads {t['merge_threads'] or 'default'}, "
              f"{'two-phase (flat load, then ' + r['final_type'] + ')' if t['two_phase'] else r['final_type'] + ' throughout'}"
              f"; CPU during the bulk: node {r['es_cpu_load_s'] / r['load_s']:.2f} cores"
              + (f", this client {r['client_cpu_load_s'] / r['load_s']:.2f}" if r.get("client_cpu_load_s") is not None else "")
              + (f", whole machine {busy:.0%} busy" if busy is not None else "")
              + (f"; merge: node {r['es_cpu_merge_s'] / max(r['merge_s'], 1e-9):.2f} cores" if r["merge_s"] else "")
              + (f", whole machine {busy_merge:.0%} busy" if busy_merge is not None and r["merge_s"] else ""))
        for p in r["points"]:
            print(f"    {_point(p)}")
    hn = meta.get("hnswlib")
    best = max((r for r in results if r["answer_vectors_per_s"]), key=lambda r: r["answer_vectors_per_s"], default=None)
    print("anchors:")
    if hn:
        print(f"  {hn['library'] + ', ' + str(hn['threads']) + ' threads, same vectors':<38} "
              f"{hn['build_vectors_per_s']:>8,.0f} vectors/s (build {hn['build_s']:.1f} s)")
    for name, rate in ANCHORS:
        print(f"  {name:<38} {rate:>8,.0f} vectors/s")
    if hn and best:
        for r in results:
            if r["answer_vectors_per_s"]:
                print(f"  {r['variant']:<26} first bulk -> answers at the target: {r['answer_vectors_per_s']:>8,.0f} "
                      f"vectors/s = {r['answer_vectors_per_s'] / hn['build_vectors_per_s']:.2f}x hnswlib "
                      f"(bulk phase alone {r['bulk_vectors_per_s'] / hn['build_vectors_per_s']:.2f}x)")
        print(f"  on free cores (core-seconds, load-independent): hnswlib {hn['cpu_s']:.1f} core-s = "
              f"{hn['free_cores_vectors_per_s']:,.0f} vectors/s on {hn['threads']} cores")
        for r in results:
            if r["answer_vectors_per_s"]:
                core_s = r["es_cpu_load_s"] + (r["client_cpu_load_s"] or 0) + (
                    r["es_cpu_merge_s"] if r["points"] and not r["points"][0]["reached"] else 0)
                free = r["vectors"] * hn["threads"] / max(core_s, 1e-9)
                print(f"  {r['variant']:<26} {core_s:.1f} core-s (node + client) to answer = {free:,.0f} vectors/s on "
                      f"{hn['threads']} cores = {free / hn['free_cores_vectors_per_s']:.2f}x hnswlib")
        ratio = best["answer_vectors_per_s"] / hn["build_vectors_per_s"]
        print(f"best: {best['variant']} at {ratio:.2f}x hnswlib's {hn['threads']}-thread build, target "
              f"{TARGET_HNSWLIB_RATIO}x: {'met' if ratio >= TARGET_HNSWLIB_RATIO else 'missed'}")


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="facebeam bench index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="loads to measure, TYPE/LEVER (or a bare LEVER: for each --index-types) with LEVER of "
                             f"{','.join(LEVERS)} (default %(default)s)")
    parser.add_argument("--chunk-docs", type=options.COUNT, default=None,
                        help="docs per bulk request, for every variant (default: each lever's own)")
    parser.add_argument("--chunk-bytes", type=options.COUNT, default=50 * 2**20, help="bytes per bulk request at most")
    parser.add_argument("--workers", type=options.COUNT, default=None,
                        help="concurrent bulk senders, Beam workers or threads, for every variant (default: each "
                             "lever's own; 3, one more than the node's 2 write threads, keeps them busy on 2 cores)")
    parser.add_argument("--task-rows", type=options.COUNT, default=5_000, help="rows a worker generates at a time")
    parser.add_argument("--driver", choices=("beam", "threads"), default="threads",
                        help="threads (default): bulk_index from a thread pool, on rows made before the clock starts; "
                             "beam: IndexFaces on the local runner, rows made in the workers")
    parser.add_argument("--translog-async", action="store_true",
                        help="index.translog.durability=async during every variant's load (restored after)")
    parser.add_argument("--source-vectors", choices=("excluded", "included", "both"), default="excluded",
                        help="Elasticsearch: vectors left out of _source (facebeam's mapping), kept there too "
                             "(the old mapping: the before/default levers), or both (default %(default)s)")
    parser.add_argument("--probes", type=options.COUNT, default=200, help="fixed probe set for the target (default 200)")
    parser.add_argument("--k", type=options.COUNT, default=10, help="recall@k (default 10)")
    parser.add_argument("--target-recall", type=options.number(float, above=0.0, most=1.0), default=0.95,
                        help="the query target (default 0.95)")
    parser.add_argument("--sweep", type=lambda t: [int(x) for x in t.split(",")], default=[50, 100, 200, 400],
                        help="num_candidates tried, in order, until the target is reached (default 50,100,200,400)")
    parser.add_argument("--hnswlib", choices=("yes", "no"), default="yes",
                        help="hnswlib's 2-thread build of the same vectors, the anchor (default yes)")
    parser.add_argument("--disk-usage", action="store_true",
                        help="also the _disk_usage breakdown of each index (slow at 1M)")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    return parser


BEAM = False  # every flag is the benchmark's own (--driver beam runs its own local pipeline)


def configure(a, beam_args=()) -> argparse.Namespace:
    """The benchmark's settings: every flag, read once into a plain namespace."""
    return argparse.Namespace(**{d: getattr(a, d) for d in sorted(a.dests())})


def parse_args(module, argv) -> argparse.Namespace:
    """`module.configure` of `module.build_parser()`'s words (what `facebeam bench <what>` does)."""
    return module.configure(*options.parse(module.build_parser(), argv, beam=False))


def run(ns: argparse.Namespace, pipeline=None) -> dict:
    types = index_types(ns.index_types)
    chosen = variants(ns.variants, types, ns.source_vectors)
    chosen = [dataclasses.replace(v, chunk_docs=ns.chunk_docs or v.chunk_docs, workers=ns.workers or v.workers,
                                  tuning=dataclasses.replace(v.tuning, translog_async=True) if ns.translog_async
                                  else v.tuning) for v in chosen]
    quiet_client_logs()
    spec = EmbeddingSpec()
    stats = load_stats(ns, spec)
    faces = synthetic.SyntheticFaces(stats, ns.vectors, seed=ns.seed, faces_per_identity=ns.faces_per_identity)
    maker = RowMaker(faces, spec)
    meta = {"vectors": faces.n, "dim": faces.dim, "identities": faces.k, "cores": os.cpu_count(),
            "heap": ns.heap, "driver": ns.driver, "json": json_encoder(), "seed": ns.seed, "stats": stats_digest(stats),
            "m": ns.m, "ef_construction": ns.ef_construction, "k": ns.k, "target_recall": ns.target_recall,
            "probes": ns.probes, "variants": [v.name for v in chosen], "loadavg_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    embedded = None
    if ns.embedded != "no":
        load0 = os.getloadavg()[0]
        embedded = bench_embedded(ns, spec, faces, maker)
        embedded.update(m=ns.m, ef_construction=ns.ef_construction, loadavg_before=load0,
                        loadavg_after=os.getloadavg()[0])
        log.info("embedded index done: %s", {k: embedded[k] for k in ("build_vectors_per_s", "bytes_on_disk")})
    if ns.hnswlib == "yes" and ns.embedded != "only" and chosen:
        meta["hnswlib"] = bench_hnswlib(ns, faces)
        log.info("hnswlib: %s", meta["hnswlib"])
    results = []
    if ns.embedded != "only" and chosen:
        try:
            conn, started = ensure_cluster(ns)
        except EsError as e:
            raise UserError(f"bench index: {e}") from None
        client = conn.client(request_timeout=600)
        probes, _ = faces.queries(ns.probes, seed=1)
        truth = exact_truth(faces, probes, ns.k)
        rows = maker.rows(0, faces.n) if ns.driver == "threads" else None
        try:
            node = node_info(client)
            for v in chosen:
                load0 = os.getloadavg()[0]
                r = bench_variant(conn, client, ns, spec, faces, maker, v, probes, truth, rows)
                r["loadavg_before"], r["loadavg_after"] = load0, os.getloadavg()[0]
                results.append(r)
                log.info("%s done: %s", v.name, {k: r[k] for k in ("bulk_vectors_per_s", "answer_vectors_per_s",
                                                                      "docs", "store_bytes")})
            kept = set()
            for t in types:  # bench query's index of each type: the last load of it merged to a segment per shard
                merged = [r for r in results if r["final_type"] == t and r["segments"] == r["tuning"]["shards"]
                          and not r["source_vectors"]]
                if merged:
                    register(ns, client, faces, merged[-1], alias_for(t, faces.n, faces.seed))
                    kept.add(merged[-1]["index"])
            dropped = [r["index"] for r in results if r["index"] not in kept]
            if dropped:  # the other variants' indices: measured, no longer needed
                client.indices.delete(index=",".join(dropped))
        finally:
            client.close()
            if started and not ns.keep:
                es_local.stop_cluster(ns.es_home)
        meta.update(es_version=node["version"], java=node["java"], kept_running=bool(ns.keep or not started))
        print_report(results, meta)
    if embedded:
        print_embedded(embedded, results)
    meta["loadavg_end"] = os.getloadavg()
    print(f"{meta['date']}, load average {meta['loadavg_start'][0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} at the end "
          f"({os.cpu_count()} cores)")
    if ns.json_out:
        Path(ns.json_out).write_text(json.dumps({"meta": meta, "results": results, "embedded": embedded,
                                                 "anchors": dict(ANCHORS)}, indent=2) + "\n")
    ok = all(r["docs"] == r["vectors"] and not r["failed"] for r in results)
    return {"meta": meta, "results": results, "embedded": embedded,
            "all_docs_loaded": ok and (embedded is None or embedded["docs"] == faces.n)}


def main(argv=None) -> int:
    """Exit 1 when a variant did not load every vector."""
    return jobs.main(sys.modules[__name__], argv, failed=lambda summary: not summary.get("all_docs_loaded"))


if __name__ == "__main__":
    jobs.entry(main)
