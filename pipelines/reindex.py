"""facebeam reindex: move an alias to a new embedding spec (a model upgrade) without downtime.

    facebeam reindex --index NAME --output DIR [--model NEW --detector ... spec flags]
                     [--input PATTERN ...] [--compare 50] [--drop-old] [index options] [Beam flags]

Builds a new concrete index for the new spec from the photos (by default those the
current index holds), carries identity labels over by image content, compares a
sample of queries between the old and the new index, and only then swaps the alias
in one atomic update. The old index stays until --drop-old.
"""
import argparse
import logging
import random
import sys

from elasticsearch import helpers

from facebeam.pipelines import embed
from facebeam.pipelines import index
from facebeam.pipelines import jobs
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import es_conn
from facebeam.transforms import es_index
from facebeam.transforms import labels
from facebeam.transforms import sources
from facebeam.transforms.spec import SpecError, spec_from_args

log = logging.getLogger(__name__)


def old_images(client, alias: str) -> dict:
    """image_sha256 -> (image_path, label) of everything in the current index."""
    out = {}
    for hit in helpers.scan(client, index=alias, _source=["image_sha256", "image_path", "label"], size=1000):
        s = hit["_source"]
        prev = out.get(s["image_sha256"], (None, None))
        out[s["image_sha256"]] = (s["image_path"], s.get("label") or prev[1])
    return out


def _largest_face(client, index_name: str, sha: str):
    hits = client.search(index=index_name, query={"term": {"image_sha256": sha}}, size=50,
                         _source=["embedding", "box", "image_sha256", "label"]).body["hits"]["hits"]
    if not hits:
        return None
    return max(hits, key=lambda h: h["_source"]["box"]["w"] * h["_source"]["box"]["h"])["_source"]


def compare(client, old: str, new: str, old_spec, new_spec, shas, k: int = 10) -> dict:
    """Same probes in both indices: top-k image overlap and top-1 same-person agreement."""
    from facebeam.transforms import knn

    search = knn.SearchSpec(k=k, num_candidates=max(100, 10 * k), exclude_same_image=True)
    overlaps, agree, n = [], 0, 0
    for sha in shas:
        a, b = _largest_face(client, old, sha), _largest_face(client, new, sha)
        if a is None or b is None:
            continue
        ha = knn.es_search(client, old, [{"embedding": a["embedding"], "image_sha256": sha}], search, old_spec)[0]
        hb = knn.es_search(client, new, [{"embedding": b["embedding"], "image_sha256": sha}], search, new_spec)[0]
        if not ha or not hb:
            continue
        n += 1
        sa, sb = {h["image_sha256"] for h in ha}, {h["image_sha256"] for h in hb}
        overlaps.append(len(sa & sb) / max(len(sa), 1))
        agree += (ha[0]["distance"] <= old_spec.threshold) == (hb[0]["distance"] <= new_spec.threshold)
    return {"probes": n, "k": k, "topk_image_overlap": round(sum(overlaps) / n, 4) if n else None,
            "same_person_agreement": round(agree / n, 4) if n else None}


def run(argv=None, test_pipeline=None) -> dict:
    parser = argparse.ArgumentParser(prog="facebeam reindex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    embed.add_input_args(parser, required=False)
    parser.add_argument("--output", required=True, help="where the new spec's shards go")
    parser.add_argument("--compare", type=int, default=50, help="probe images compared between old and new")
    parser.add_argument("--drop-old", action="store_true")
    index.add_index_args(parser)
    ns, beam_args = jobs.parse(parser, argv)
    new_spec = spec_from_args(ns)
    conn = es_conn.from_args(ns)
    client = conn.client()
    es_conn.check(client, conn)
    old = es_index.alias_target(client, ns.index)
    if old is None:
        raise ValueError(f"no alias {ns.index!r} to reindex; use `facebeam run` for a first load")
    old_spec = es_index.spec_of(client, old)
    if old_spec.spec_id == new_spec.spec_id:
        raise SpecError(f"{old} already has this spec ({new_spec.spec_id}); give the new model or settings")

    known = old_images(client, ns.index)
    ns.labeler = labels.ContentLabeler({sha: lab for sha, (_, lab) in known.items() if lab})
    if not ns.input:
        listing = ns.output.rstrip("/") + "-inputs.txt"
        with open(listing, "w") as f:
            f.write("\n".join(sorted({p for p, _ in known.values() if p})) + "\n")
        ns.input = [listing]
    sources.check_inputs(ns.input)
    embed.preflight(ns, new_spec)

    new = es_index.create_version(client, ns.index, new_spec, ns.index_type, ns.m, ns.ef_construction)
    client.indices.put_settings(index=new, settings={"index": {"refresh_interval": "-1", "number_of_replicas": ns.load_replicas}})
    replicas = ns.replicas if ns.replicas is not None else int(
        client.indices.get_settings(index=old).body[old]["settings"]["index"]["number_of_replicas"])
    target = index.Target(conn, client, ns.index, new, replicas)
    opts = runners.pipeline_options(beam_args)
    p = runners.create_pipeline(opts, test_pipeline)
    out = embed.embed_images(p, ns, new_spec)
    embed.write_outputs(out, ns.output, new_spec)
    index.index_rows(out["faces"], target, ns, ns.output, new_spec)
    with index.loading(target):
        result, elapsed = jobs.run(p)
    summary = embed.summarize(result, elapsed, new_spec, opts)
    counts = index.index_counts(jobs.counters(result))
    if counts["failed"] or (summary["faces"] and not target.count):
        raise ValueError(f"new index {new} is incomplete ({target.count} docs for {summary['faces']} faces, "
                           f"{counts['failed']} failed); the alias still points at {old}")

    sample = random.Random(0).sample(sorted(known), min(ns.compare, len(known)))
    comparison = compare(client, old, new, old_spec, new_spec, sample)
    print(f"old {old} ({old_spec.spec_id}) vs new {new} ({new_spec.spec_id}) on {comparison['probes']} probes: "
          f"top-{comparison['k']} image overlap {comparison['topk_image_overlap']}, "
          f"same-person agreement {comparison['same_person_agreement']}")
    es_index.swap_alias(client, ns.index, old, new)
    print(f"alias {ns.index}: {old} -> {new} ({target.count} docs)")
    if ns.drop_old:
        client.indices.delete(index=old)
        print(f"dropped {old}")
    summary.update(old_index=old, new_index=new, doc_count=target.count, comparison=comparison, **{f"docs_{k}": v for k, v in counts.items()})
    jobs.write_json(ns.output.rstrip("/") + "/summary.json", summary)
    return summary


def main(argv=None) -> int:
    return jobs.cli(run, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
