"""facebeam bench index: synthetic face vectors into a local Elasticsearch node, timed until searchable.

    facebeam bench index --vectors 1000000 [--index-types hnsw,int8_hnsw] [--es-home DIR] [--port P]
                         [--heap 4g] [--chunk-docs 1000] [--workers N] [--driver threads|beam]
                         [--java-home DIR] [--json FILE] [--keep]

The vectors come from `transforms.synthetic`, fitted once on the sample's real
embeddings (kept in --stats; made by running the embed job on --sample if missing).
For each index type: a fresh index (the project's mapping and load settings), bulk
loads through the Beam `IndexFaces` transform on the local runner (or
`transforms.es_sink.bulk_index` from a thread pool with --driver threads), refresh, then a force merge to one
segment, which completes the HNSW graph. "load" is the bulk phase plus refresh,
"load+merge" runs until the data is searchable as one graph. Also printed: size on
disk (_stats/store and the _disk_usage breakdown of the vector field), the node's
heap, and where the CPU went (the node, this client, the rest of the machine).

The bench cluster (one node under --es-home, port 9290) is reused if it is running
and stopped at the end unless --keep; `facebeam bench query` reuses its indices.

Side by side on the same vectors: the embedded HNSW index (`transforms/ann.py`, faiss-cpu,
same m and ef_construction; --embedded no|only), built from the same face rows and saved;
its build vectors/s and bytes on disk are printed next to Elasticsearch's. Elasticsearch
indices are loaded with the vectors left out of `_source` (the mapping facebeam uses) and, with
--source-vectors both (the default), also with them kept there (how facebeam mapped them
before), to show the store size and load rate before and after.
"""
import argparse
import concurrent.futures
import contextlib
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

from facebeam.pipelines import options
from facebeam.pipelines.bench import synthetic
from facebeam.pipelines.local import elasticsearch as es_local
from facebeam.transforms import es_index, records
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
TARGET_VECTORS_PER_S = 5000


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
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed (default %(default)s)")
    parser.add_argument("--faces-per-identity", type=float, default=20.0, help="mean faces per person (default 20)")
    parser.add_argument("--stats", type=Path, default=DEFAULT_STATS,
                        help="fitted synthetic model; fitted from --sample if missing (default %(default)s)")
    parser.add_argument("--sample", default=DEFAULT_SAMPLE, help="photos + face-recognition-pivot.csv to fit on")
    parser.add_argument("--m", type=int, default=16, help="HNSW graph degree (default 16)")
    parser.add_argument("--ef-construction", type=int, default=100, help="HNSW build beam (default 100)")
    parser.add_argument("--embedded", choices=("yes", "no", "only"), default="yes",
                        help="also the embedded HNSW index (faiss-cpu); only: no Elasticsearch (default yes)")
    g = parser.add_argument_group("bench cluster")
    g.add_argument("--es-home", type=Path, default=DEFAULT_HOME, help="cluster folder (default %(default)s)")
    g.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (default %(default)s)")
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


def load_threads(conn, maker: RowMaker, cfg: BulkConfig, workers: int, task_rows: int) -> dict:
    """bulk_index from `workers` threads, each on its own ranges of rows; one shared client."""
    client = conn.client(request_timeout=300)
    done = {"indexed": 0, "failed": 0, "retried": 0}
    lock = threading.Lock()
    failures = []

    def task(start):
        rows = maker.rows(start, min(start + task_rows, maker.faces.n))
        outcome = bulk_index(client, rows, cfg)
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
    from facebeam.pipelines import jobs
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


def wait_task(client, task_id: str, poll: float = 2.0) -> dict:
    """Poll a background task (a force merge can outlast any HTTP timeout) until it completes."""
    while True:
        t = client.tasks.get(task_id=task_id).body
        if t.get("completed"):
            if t.get("error"):
                raise RuntimeError(f"task {task_id} failed: {t['error']}")
            return t
        time.sleep(poll)


def disk_usage(client, index: str) -> dict:
    """Store size, and what the vector field takes (raw floats, quantized copy, graph) per _disk_usage."""
    store = client.indices.stats(index=index, metric="store,segments,indexing,merge,refresh,flush").body
    prim = store["indices"][index]["primaries"]
    out = {"store_bytes": prim["store"]["size_in_bytes"], "segments": prim["segments"]["count"],
           "index_time_ms": prim["indexing"]["index_time_in_millis"],
           "merge_time_ms": prim["merges"]["total_time_in_millis"], "flushes": prim["flush"]["total"]}
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


def bench_type(conn, client, ns, spec, faces, maker, index_type: str, source_vectors: bool = False) -> dict:
    """One Elasticsearch index type; `source_vectors` keeps the vectors in `_source` too (the old mapping)."""
    alias = alias_for(index_type + ("-src" if source_vectors else ""), faces.n, faces.seed)
    old = list(client.indices.get(index=f"{alias}-*", ignore_unavailable=True).body)
    if old:
        client.indices.delete(index=",".join(old))
    body = es_index.index_body(spec, index_type, ns.m, ns.ef_construction)
    if source_vectors:
        body["mappings"].pop("_source", None)
    else:
        body["mappings"]["_source"] = {"excludes": ["embedding"]}
    client.indices.create(index=es_index.concrete_name(alias, spec, 1), aliases={alias: {}}, **body)
    concrete, replicas = es_index.prepare_load(client, alias, spec, index_type, ns.m, ns.ef_construction)
    if ns.translog_async:  # no fsync per bulk request during the load; back to the default after
        client.indices.put_settings(index=concrete, settings={"index": {"translog": {"durability": "async"}}})
    cfg = BulkConfig(index=concrete, chunk_docs=ns.chunk_docs, chunk_bytes=ns.chunk_bytes)
    es_cpu0, cpu0 = node_info(client)["cpu_ms"], _own_cpu_s()
    log.info("%s: loading %d vectors into %s (%s, %d workers, %d docs/bulk)", index_type, faces.n, concrete,
             ns.driver, ns.workers, ns.chunk_docs)
    busy0, t0 = _machine_busy(), time.perf_counter()
    loader = load_beam if ns.driver == "beam" else load_threads
    loaded = loader(conn, maker, cfg, ns.workers, ns.task_rows)
    t_bulk = time.perf_counter() - t0
    if ns.translog_async:
        client.indices.put_settings(index=concrete, settings={"index": {"translog": {"durability": "request"}}})
    docs = es_index.finish_load(client, concrete, replicas)
    t_load = time.perf_counter() - t0
    es_cpu1, cpu1, busy1 = node_info(client)["cpu_ms"], _own_cpu_s(), _machine_busy()
    seg_stats = client.indices.stats(index=concrete, metric="segments").body["indices"][concrete]
    segments_before = seg_stats["primaries"]["segments"]["count"]
    task = client.indices.forcemerge(index=concrete, max_num_segments=1, wait_for_completion=False).body["task"]
    wait_task(client, task)
    client.indices.refresh(index=concrete)
    t_all = time.perf_counter() - t0
    busy2 = _machine_busy()
    client.indices.flush(index=concrete)  # commit, so the pre-merge segment files are gone from the store
    es_cpu2 = node_info(client)["cpu_ms"]
    info = node_info(client)
    disk = disk_usage(client, concrete)
    result = {
        "index_type": index_type + (" +_source vectors" if source_vectors else ""), "source_vectors": source_vectors,
        "alias": alias, "index": concrete, "vectors": faces.n, "docs": docs,
        "indexed": loaded["indexed"], "failed": loaded["failed"], "retried": loaded["retried"],
        "bulk_s": round(t_bulk, 2), "load_s": round(t_load, 2), "merge_s": round(t_all - t_load, 2),
        "total_s": round(t_all, 2), "load_vectors_per_s": round(faces.n / t_load, 1),
        "total_vectors_per_s": round(faces.n / t_all, 1), "segments_before_merge": segments_before,
        "es_cpu_load_s": round((es_cpu1 - es_cpu0) / 1000, 1), "es_cpu_merge_s": round((es_cpu2 - es_cpu1) / 1000, 1),
        "client_cpu_load_s": round(cpu1 - cpu0, 1) if ns.driver == "threads" else None,
        "machine_busy_load": _busy_share(busy0, busy1), "machine_busy_merge": _busy_share(busy1, busy2),
        "heap_used": info["heap_used"], "heap_max": info["heap_max"], "heap_peak": loaded["peak_heap"],
        **disk,
    }
    state = read_state(ns.es_home)
    state[alias] = {"index": concrete, "index_type": index_type, "source_vectors": source_vectors,
                    "vectors": faces.n, "seed": faces.seed,
                    "faces_per_identity": faces.faces_per_identity, "stats": stats_digest(faces.stats),
                    "m": ns.m, "ef_construction": ns.ef_construction, "docs": docs}
    write_state(ns.es_home, state)
    return result


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


def print_embedded(r: dict, es: list) -> None:
    print(f"embedded HNSW index ({r['library']}, m={r.get('m')}, ef_construction={r.get('ef_construction')}): "
          f"build {r['build_s']:.1f} s = {r['build_vectors_per_s']:,.0f} vectors/s, build + save "
          f"{r['load_vectors_per_s']:,.0f} vectors/s; {mib(r['bytes_on_disk'])} on disk "
          f"({r['bytes_on_disk']:,} bytes); opened memory-mapped in {r['open_mmap_ms']:.1f} ms"
          + (f"; machine {r['machine_busy_load']:.0%} busy" if r.get("machine_busy_load") is not None else ""))
    for e in es:
        rate = r["build_vectors_per_s"]
        print(f"  vs {e['index_type']:<28} load {e['load_vectors_per_s']:>8,.0f} v/s ({rate / e['load_vectors_per_s']:.2f}x), "
              f"load+merge {e['total_vectors_per_s']:>8,.0f} v/s ({rate / e['total_vectors_per_s']:.2f}x), "
              f"store {mib(e['store_bytes'])} ({e['store_bytes'] / r['bytes_on_disk']:.2f}x the embedded index)")
    lean = {e["index_type"]: e for e in es if not e.get("source_vectors")}
    for e in es:
        base = lean.get(e["index_type"].replace(" +_source vectors", ""))
        if e.get("source_vectors") and base:
            print(f"  _source without vectors ({base['index_type']}): store {mib(e['store_bytes'])} -> "
                  f"{mib(base['store_bytes'])} ({1 - base['store_bytes'] / e['store_bytes']:.0%} smaller), load "
                  f"{e['load_vectors_per_s']:,.0f} -> {base['load_vectors_per_s']:,.0f} vectors/s, _source "
                  f"{mib(e.get('source_bytes'))} -> {mib(base.get('source_bytes'))}")


def print_report(results: list, meta: dict) -> None:
    print(f"bench index: {meta['vectors']:,} synthetic {meta['dim']}-d vectors ({meta['identities']:,} identities), "
          f"{meta['cores']} cores, ES {meta['es_version']} on {meta['java']}, heap {meta['heap']}, "
          f"driver {meta['driver']} x{meta['workers']}, {meta['chunk_docs']} docs/bulk, JSON {meta['json']}")
    hdr = f"{'type':<10} {'load s':>8} {'load v/s':>9} {'merge s':>8} {'load+merge v/s':>15} {'store':>10} " \
          f"{'vectors':>10} {'heap used/max (peak)':>24} {'ES cpu load/merge':>18}"
    print(hdr)
    for r in results:
        heap = f"{mib(r['heap_used'])}/{mib(r['heap_max'])} ({mib(r['heap_peak'])})"
        print(f"{r['index_type']:<10} {r['load_s']:>8.1f} {r['load_vectors_per_s']:>9,.0f} {r['merge_s']:>8.1f} "
              f"{r['total_vectors_per_s']:>15,.0f} {mib(r['store_bytes']):>10} {mib(r.get('embedding_knn_bytes')):>10} "
              f"{heap:>24} {r['es_cpu_load_s']:>8.0f}s/{r['es_cpu_merge_s']:.0f}s")
    for r in results:
        if r["failed"] or r["docs"] != r["vectors"]:
            print(f"  WARNING {r['index_type']}: {r['docs']:,} docs searchable of {r['vectors']:,} ({r['failed']} failed)")
        busy, busy_merge = r.get("machine_busy_load"), r.get("machine_busy_merge")
        print(f"  {r['index_type']}: bulk {r['bulk_s']:.1f}s, {r['segments_before_merge']} segments before the merge; "
              f"CPU during load: node {r['es_cpu_load_s'] / r['load_s']:.2f} cores"
              + (f", this client {r['client_cpu_load_s'] / r['load_s']:.2f}" if r.get("client_cpu_load_s") is not None else "")
              + (f", whole machine {busy:.0%} busy" if busy is not None else "")
              + f"; merge: node {r['es_cpu_merge_s'] / max(r['merge_s'], 1e-9):.2f} cores"
              + (f", whole machine {busy_merge:.0%} busy" if busy_merge is not None else ""))
    print("anchors:")
    for name, rate in ANCHORS:
        print(f"  {name:<38} {rate:>8,.0f} vectors/s")
    print(f"  {'target on 2 cores':<38} {TARGET_VECTORS_PER_S:>8,} vectors/s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facebeam bench index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--chunk-docs", type=int, default=1000, help="docs per bulk request (default 1000)")
    parser.add_argument("--chunk-bytes", type=int, default=50 * 2**20, help="bytes per bulk request at most")
    parser.add_argument("--workers", type=int, default=3,
                        help="concurrent bulk senders, Beam workers or threads (default 3: one more than "
                             "the node's 2 write threads keeps them busy on 2 cores)")
    parser.add_argument("--task-rows", type=int, default=5_000, help="rows a worker generates at a time")
    parser.add_argument("--driver", choices=("beam", "threads"), default="beam",
                        help="threads: bulk_index from a thread pool; beam: IndexFaces on the local runner")
    parser.add_argument("--translog-async", action="store_true",
                        help="index.translog.durability=async during the load (restored after)")
    parser.add_argument("--source-vectors", choices=("excluded", "included", "both"), default="both",
                        help="Elasticsearch: vectors left out of _source (facebeam's mapping), kept there too "
                             "(the old mapping), or both, for the before/after (default %(default)s)")
    parser.add_argument("--json", dest="json_out", help="also write the results here")
    return parser


BEAM = False  # every flag is the benchmark's own (--driver beam runs its own local pipeline)


def configure(a, beam_args=()) -> argparse.Namespace:
    """The benchmark's settings: every flag, read once into a plain namespace."""
    return argparse.Namespace(**{d: getattr(a, d) for d in sorted(a.dests())})


def parse_args(module, argv) -> argparse.Namespace:
    """`module.configure` of `module.build_parser()`'s words (what `facebeam bench <what>` does)."""
    return module.configure(*options.parse(module.build_parser(), argv, beam=False))


def main(argv=None) -> int:
    ns = parse_args(sys.modules[__name__], argv)
    types = index_types(ns.index_types)
    quiet_client_logs()
    spec = EmbeddingSpec()
    stats = load_stats(ns, spec)
    faces = synthetic.SyntheticFaces(stats, ns.vectors, seed=ns.seed, faces_per_identity=ns.faces_per_identity)
    maker = RowMaker(faces, spec)
    meta = {"vectors": faces.n, "dim": faces.dim, "identities": faces.k, "cores": os.cpu_count(),
            "heap": ns.heap, "driver": ns.driver, "workers": ns.workers, "chunk_docs": ns.chunk_docs,
            "json": json_encoder(), "seed": ns.seed, "stats": stats_digest(stats), "m": ns.m,
            "ef_construction": ns.ef_construction, "loadavg_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    embedded = None
    if ns.embedded != "no":
        load0 = os.getloadavg()[0]
        embedded = bench_embedded(ns, spec, faces, maker)
        embedded.update(m=ns.m, ef_construction=ns.ef_construction, loadavg_before=load0,
                        loadavg_after=os.getloadavg()[0])
        log.info("embedded index done: %s", {k: embedded[k] for k in ("build_vectors_per_s", "bytes_on_disk")})
    results = []
    if ns.embedded != "only":
        try:
            conn, started = ensure_cluster(ns)
        except EsError as e:
            print(f"facebeam bench index: {e}", file=sys.stderr)
            return 1
        client = conn.client(request_timeout=600)
        variants = {"excluded": (False,), "included": (True,), "both": (False, True)}[ns.source_vectors]
        try:
            node = node_info(client)
            for index_type in types:
                for source_vectors in variants:
                    load0 = os.getloadavg()[0]
                    r = bench_type(conn, client, ns, spec, faces, maker, index_type, source_vectors)
                    r["loadavg_before"], r["loadavg_after"] = load0, os.getloadavg()[0]
                    results.append(r)
                    log.info("%s done: %s", r["index_type"],
                             {k: r[k] for k in ("load_vectors_per_s", "total_vectors_per_s", "docs", "store_bytes")})
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
    return 0 if ok and (embedded is None or embedded["docs"] == faces.n) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
