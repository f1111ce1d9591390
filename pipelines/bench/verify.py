"""facebeam bench verify: identity verification latency on Redis (server-side Lua) and on Elasticsearch.

    facebeam bench verify [--vectors 100k] [--per-identity 10,1000] [--queries 300] [--json FILE]
                          [--redis-port 6395] [--es-home DIR] [--port P] [--keep]

For each faces-per-identity count: N synthetic faces (pipelines/bench/synthetic.py, fitted
on the sample) in identities of exactly that many faces, loaded into Redis (one hash per
identity, `transforms/redis_store.py`) and into an Elasticsearch index (the project's
mapping, label as a keyword). Then the same --queries probes (new faces of existing
identities, half verified against their own identity, half against another one) are
verified one at a time on each store: the closest face of the identity and its distance.
Printed: p50/p95/p99 latency as the client sees it, load time, and the share of verdicts
that agree with the exact numpy distance (same/different at the model's threshold).

Redis: a bench server under <FACEBEAM_HOME>/bench-redis (`facebeam redis up` code), stopped
at the end unless --keep. Elasticsearch: the bench cluster of `facebeam bench index`.
"""
import argparse
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
from facebeam.transforms import es_index, knn, redis_store
from facebeam.transforms.errors import UserError
from facebeam.transforms.es_conn import EsError
from facebeam.transforms.home import facebeam_home
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)


def percentiles(lat) -> dict:
    lat = np.asarray(lat)
    return {"p50_ms": round(float(np.percentile(lat, 50)), 3), "p95_ms": round(float(np.percentile(lat, 95)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3), "mean_ms": round(float(lat.mean()), 3)}


def make_probes(faces, n: int, seed: int = 7):
    """(vectors, identity to verify against, is it the true one) for n probes: half true, half another."""
    vectors, labels = faces.queries(n, seed=seed)
    rng = np.random.default_rng(seed)
    claim = labels.copy()
    other = rng.integers(0, faces.k, n)
    liar = np.arange(n) % 2 == 1
    claim[liar] = np.where(other[liar] == labels[liar], (other[liar] + 1) % faces.k, other[liar])
    return vectors.astype(np.float32), claim, ~liar


def exact_min(faces, vectors, claim, spec) -> np.ndarray:
    members = {}
    for i, lab in enumerate(faces.labels.tolist()):
        members.setdefault(lab, []).append(i)
    out = np.empty(len(vectors))
    every = faces.vectors(0, faces.n)
    for j, (v, lab) in enumerate(zip(vectors, claim.tolist())):
        out[j] = float(np.min(spec.distance(every[members[lab]], v[None, :])))
    return out


def bench_redis(ns, spec, faces, maker, probes, name) -> dict:
    from facebeam.pipelines.local import redis as redis_local

    home = Path(ns.redis_home)
    redis_local.up(home, ns.redis_port)
    conn = redis_store.RedisConn.resolve(conn_file=str(home / "connection.json"))
    client = conn.check()
    for key in client.scan_iter(redis_store.prefix(name) + "*", count=10_000):
        client.delete(key)
    redis_store.check_spec(client, name, spec, create=True)
    t0 = time.perf_counter()
    for start in range(0, faces.n, 10_000):
        redis_store.load_rows(client, name, maker.rows(start, min(faces.n, start + 10_000)), chunk=1000)
    load_s = time.perf_counter() - t0
    used = client.info("memory").get("used_memory")
    v = redis_store.Verifier(client, name, spec)
    vectors, claim, _ = probes
    for vec, lab in list(zip(vectors, claim))[:20]:
        v.closest(vec, f"person-{lab}")
    lat, dist = [], []
    for vec, lab in zip(vectors, claim.tolist()):
        t = time.perf_counter()
        _, d, _ = v.closest(vec, f"person-{lab}")
        lat.append(1000 * (time.perf_counter() - t))
        dist.append(d)
    if not ns.keep:
        for key in client.scan_iter(redis_store.prefix(name) + "*", count=10_000):
            client.delete(key)
    client.close()
    return {"store": "redis", "load_s": round(load_s, 2), "load_vectors_per_s": round(faces.n / load_s, 1),
            "memory_bytes": used, **percentiles(lat), "distances": dist}


def bench_es(client, ns, spec, faces, maker, probes, alias) -> dict:
    from elasticsearch import helpers

    old = list(client.indices.get(index=f"{alias}-*", ignore_unavailable=True).body)
    if old:
        client.indices.delete(index=",".join(old))
    concrete = es_index.concrete_name(alias, spec, 1)
    body = es_index.index_body(spec, "hnsw", ns.m, ns.ef_construction)
    body["mappings"]["_source"] = {"excludes": ["embedding"]}
    client.indices.create(index=concrete, aliases={alias: {}}, **body)
    t0 = time.perf_counter()
    for start in range(0, faces.n, 5_000):
        rows = maker.rows(start, min(faces.n, start + 5_000))
        actions = ({"_index": concrete, "_id": r["face_id"], "_source": {**es_index.document(r),
                                                                          "embedding": r["embedding"].tolist()}}
                   for r in rows)
        helpers.bulk(client, actions, chunk_size=1000, request_timeout=600)
    client.indices.put_settings(index=concrete, settings={"index": {"refresh_interval": None}})
    client.indices.refresh(index=concrete)
    load_s = time.perf_counter() - t0
    vectors, claim, _ = probes
    search = lambda lab: knn.SearchSpec(k=1, num_candidates=100, filters=(("label", f"person-{lab}"),))  # noqa: E731
    for vec, lab in list(zip(vectors, claim))[:20]:
        knn.es_search(client, alias, [{"embedding": vec, "image_sha256": ""}], search(lab), spec)
    lat, dist = [], []
    for vec, lab in zip(vectors, claim.tolist()):
        t = time.perf_counter()
        hits = knn.es_search(client, alias, [{"embedding": vec, "image_sha256": ""}], search(lab), spec)[0]
        lat.append(1000 * (time.perf_counter() - t))
        dist.append(hits[0]["distance"] if hits else None)
    store = client.indices.stats(index=concrete, metric="store").body["indices"][concrete]["primaries"]["store"]
    if not ns.keep:
        client.indices.delete(index=concrete)
    return {"store": "elasticsearch", "load_s": round(load_s, 2), "load_vectors_per_s": round(faces.n / load_s, 1),
            "store_bytes": store["size_in_bytes"], **percentiles(lat), "distances": dist}


def build_parser():
    p = options.Parser(prog="facebeam bench verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_index.add_common_args(p)
    p.set_defaults(vectors=100_000)
    p.add_argument("--per-identity", default="10,1000", help="faces per identity, comma-separated (default %(default)s)")
    p.add_argument("--queries", type=options.COUNT, default=300, help="verifications per store and setting (default %(default)s)")
    p.add_argument("--stores", default="redis,es", help="redis,es (default %(default)s)")
    p.add_argument("--redis-home", default=str(facebeam_home() / "bench-redis"), help="the benchmark's own Redis folder")
    p.add_argument("--redis-port", type=options.PORT, default=6395, help="the benchmark's own Redis port")
    p.add_argument("--json", dest="json_out", metavar="FILE", help="also write the figures to FILE")
    return p


BEAM = False


def configure(a, beam_args=()) -> argparse.Namespace:
    return bench_index.configure(a, beam_args)


def run(ns: argparse.Namespace, pipeline=None) -> dict:
    bench_index.quiet_client_logs()
    spec = EmbeddingSpec()
    stats = bench_index.load_stats(ns, spec)
    stores = [s.strip() for s in ns.stores.split(",") if s.strip()]
    load_start, date = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    es_client, started = None, False
    if "es" in stores:
        try:
            conn, started = bench_index.ensure_cluster(ns)
        except EsError as e:
            raise UserError(f"bench verify: {e}") from None
        es_client = conn.client(request_timeout=600)
    results = []
    try:
        for per in [int(x) for x in ns.per_identity.split(",") if x.strip()]:
            faces = synthetic.SyntheticFaces(stats, ns.vectors, seed=ns.seed, faces_per_identity=per, skew=0.0)
            maker = bench_index.RowMaker(faces, spec)
            probes = make_probes(faces, ns.queries)
            exact = exact_min(faces, probes[0], probes[1], spec)
            truth_same = exact <= spec.threshold
            for store in stores:
                log.info("%s: %d faces, %d per identity (%d identities)", store, faces.n, per, faces.k)
                name = f"bench-verify-{faces.n}-{per}"
                r = (bench_redis(ns, spec, faces, maker, probes, name) if store == "redis"
                     else bench_es(es_client, ns, spec, faces, maker, probes, name))
                d = np.asarray([np.inf if x is None else x for x in r.pop("distances")])
                r.update(vectors=faces.n, per_identity=per, identities=faces.k, queries=ns.queries,
                         verdicts_as_exact=round(float(np.mean((d <= spec.threshold) == truth_same)), 4),
                         max_abs_distance_error=round(float(np.max(np.abs(d - exact))), 6),
                         loadavg=os.getloadavg()[0])
                results.append(r)
                log.info("%s per-identity %d: p50 %.2f ms p95 %.2f ms", store, per, r["p50_ms"], r["p95_ms"])
    finally:
        if es_client is not None:
            es_client.close()
            if started and not ns.keep:
                from facebeam.pipelines.local import elasticsearch as es_local

                es_local.stop_cluster(ns.es_home)
        if "redis" in stores and not ns.keep:
            from facebeam.pipelines.local import redis as redis_local

            redis_local.down(Path(ns.redis_home))
    print(f"bench verify: {ns.vectors:,} synthetic faces per collection, {ns.queries} verifications each "
          f"(half true claims), one at a time; {os.cpu_count()} cores; {date}, load average {load_start[0]:.1f} "
          f"at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{'store':<14} {'per id':>7} {'ids':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'load v/s':>9} "
          f"{'size':>10} {'as exact':>9}")
    for r in results:
        size = r.get("memory_bytes") or r.get("store_bytes")
        print(f"{r['store']:<14} {r['per_identity']:>7} {r['identities']:>7} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['load_vectors_per_s']:>9,.0f} {size / 2**20:>8.0f}Mi {r['verdicts_as_exact']:>9.4f}")
    out = {"date": date, "loadavg_start": load_start, "results": results}
    if ns.json_out:
        Path(ns.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return out


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
