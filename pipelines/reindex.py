"""facebeam reindex: move an alias to a new embedding spec (a model upgrade) without downtime.

    facebeam reindex --index NAME --output DIR [--model NEW --detector ... spec flags]
                     [--input PATTERN ...] [--compare 50] [--drop-old] [--store es|local[:DIR]]
                     [index options] [Beam flags]

Builds a new concrete index for the new spec from the photos (by default those the
current index holds), carries identity labels over by image content, compares a
sample of queries between the old and the new index, and only then swaps the alias
in one atomic update. The old index stays until --drop-old.

On the embedded index (--store local[:DIR], or no cluster configured) the new spec's graph
is built beside the old one in the same folder and `spec.json` is switched to it in one
atomic rename; the old generation's files stay (named in `previous.json`) until --drop-old.
"""
import dataclasses
import logging
import random
import sys

from elasticsearch import helpers

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import es_conn, es_index, es_load, labels, shards, stores
from facebeam.transforms.embed import EmbedInputs
from facebeam.transforms.errors import UserError
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import EmbeddingSpec, SpecError

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
    """The image's largest face; its vector from the dense_vector doc values (`_source` leaves it out)."""
    hits = client.search(index=index_name, query={"term": {"image_sha256": sha}}, size=50,
                         _source=["box", "image_sha256", "label"], docvalue_fields=["embedding"]).body["hits"]["hits"]
    if not hits:
        return None
    best = max(hits, key=lambda h: h["_source"]["box"]["w"] * h["_source"]["box"]["h"])
    return {**best["_source"], "embedding": best["fields"]["embedding"][0]}


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


@dataclasses.dataclass(frozen=True)
class ReindexConfig:
    inputs: Inputs  # no patterns: the photos the current index holds
    output: str
    load: es_load.LoadConfig
    spec: EmbeddingSpec = EmbeddingSpec()
    compare: int = 50
    drop_old: bool = False
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam reindex", __doc__)
    options.add_inputs(p, required=False, labels=False, backfill=False)
    p.add_argument("--output", required=True, help="where the new spec's shards go")
    p.add_argument("--compare", type=int, default=50, help="probe images compared between old and new")
    p.add_argument("--drop-old", action="store_true", help="delete the old index (generation) after the swap")
    options.add_spec(p)
    options.add_load(p)
    options.add_store(p, kinds=("es", "local"), redis=False)
    return p


def configure(a: options.Args, beam_args=()) -> ReindexConfig:
    return ReindexConfig(inputs=options.inputs_from(a, labels=False, backfill=False), output=a.output,
                         load=options.load_from(a), spec=options.spec_from(a), compare=a.compare, drop_old=a.drop_old,
                         es=options.es_from(a), store=options.store_from(a, kinds=("es", "local"), redis=False),
                         beam_args=tuple(beam_args))


def _inputs_for(config: ReindexConfig, known: dict) -> Inputs:
    """--input, else a list file of the photos the current index holds."""
    inputs = config.inputs
    if not inputs.patterns:
        listing = config.output.rstrip("/") + "-inputs.txt"
        with open(listing, "w") as f:
            f.write("\n".join(sorted({p for p, _ in known.values() if p})) + "\n")
        inputs = dataclasses.replace(inputs, patterns=(listing,))
    return inputs


def compare_local(old, new, shas, k: int = 10) -> dict:
    """`compare` for two embedded indices (transforms/ann.AnnIndex): the largest face of each probe image."""
    overlaps, agree, n = [], 0, 0
    for sha in shas:
        a, b = old.largest_face(sha), new.largest_face(sha)
        if a is None or b is None:
            continue
        ha = old.search_vectors([a[1]], k, ef=max(100, 10 * k), exclude_shas=[sha])[0]
        hb = new.search_vectors([b[1]], k, ef=max(100, 10 * k), exclude_shas=[sha])[0]
        if not ha or not hb:
            continue
        n += 1
        sa = {old.meta["image_sha256"][i] for i, _ in ha}
        sb = {new.meta["image_sha256"][i] for i, _ in hb}
        overlaps.append(len(sa & sb) / max(len(sa), 1))
        agree += (ha[0][1] <= old.spec.threshold) == (hb[0][1] <= new.spec.threshold)
    return {"probes": n, "k": k, "topk_image_overlap": round(sum(overlaps) / n, 4) if n else None,
            "same_person_agreement": round(agree / n, 4) if n else None}


def _reindex_local(config: ReindexConfig, pipeline, store) -> dict:
    """The embedded index: new spec's generation beside the old one, then one atomic switch of spec.json."""
    import contextlib
    import json
    import os

    from facebeam.transforms import ann

    new_spec, folder = config.spec, store.folder
    old = ann.AnnIndex.open(folder)  # memory-mapped; stays readable after the switch
    if old.spec.spec_id == new_spec.spec_id:
        raise SpecError(f"embedded index {folder} already has this spec ({new_spec.spec_id}); give the new model or "
                        "settings")
    known = old.images()
    labeler = labels.ContentLabeler({sha: lab for sha, (_, lab) in known.items() if lab})
    inputs = _inputs_for(config, known)
    jobs.preflight(inputs, new_spec)
    opts = runners.pipeline_options(config.beam_args)
    p = runners.create_pipeline(opts, pipeline)
    out = p | "Embed" >> EmbedInputs(inputs, new_spec, labeler=labeler)
    out | "Write" >> shards.WriteShards(config.output, new_spec)
    result, elapsed = jobs.run(p)
    summary = jobs.embed_summary(result, elapsed, new_spec, opts)
    with stores.ann_lock(folder):
        before = ann.read_info(folder)
        new = ann.AnnIndex.create(folder, new_spec, config.load.m, config.load.ef_construction)
        new.info["generation"] = before["generation"]  # the next generation number of this folder
        ann.add_shards(new, shards.files(config.output))
        if summary["faces"] and not new.count:
            raise UserError(f"the new embedded index is empty for {summary['faces']} faces; {folder} keeps "
                            f"spec {old.spec.spec_id}")
        sample = random.Random(0).sample(sorted(known), min(config.compare, len(known)))
        comparison = compare_local(old, new, sample)
        print(f"old {old.spec.spec_id} vs new {new_spec.spec_id} in {folder} on {comparison['probes']} probes: "
              f"top-{comparison['k']} image overlap {comparison['topk_image_overlap']}, "
              f"same-person agreement {comparison['same_person_agreement']}")
        with open(os.path.join(folder, "previous.json"), "w") as f:
            json.dump(before, f, indent=2, sort_keys=True)
        info = new.save()  # the switch: spec.json now names the new generation
        print(f"embedded index {folder}: spec {before['spec_id']} (generation {before['generation']}) -> "
              f"{new_spec.spec_id} (generation {info['generation']}, {new.count} faces)")
        if config.drop_old:
            for name in (before["index_file"], before["meta_file"], "previous.json"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))
            print(f"dropped generation {before['generation']}")
    summary.update(backend="local", ann_dir=folder, old_spec_id=before["spec_id"], new_spec_id=new_spec.spec_id,
                   doc_count=new.count, comparison=comparison, docs_indexed=new.count, docs_failed=0)
    jobs.write_summary(config.output.rstrip("/") + "/summary.json", summary)
    return summary


def run(config: ReindexConfig, pipeline=None) -> dict:
    store = stores.resolve(config.store, config.es.connection, config.load.alias)
    if store.kind == "local":
        return _reindex_local(config, pipeline, store)
    new_spec, alias = config.spec, config.load.alias
    conn = config.es.connection()
    client = conn.client()
    es_conn.check(client, conn)
    old = es_index.alias_target(client, alias)
    if old is None:
        raise UserError(f"no alias {alias!r} to reindex; use `facebeam run` for a first load")
    old_spec = es_index.spec_of(client, old)
    if old_spec.spec_id == new_spec.spec_id:
        raise SpecError(f"{old} already has this spec ({new_spec.spec_id}); give the new model or settings")

    known = old_images(client, alias)
    labeler = labels.ContentLabeler({sha: lab for sha, (_, lab) in known.items() if lab})
    inputs = _inputs_for(config, known)
    jobs.preflight(inputs, new_spec)

    load = config.load
    new = es_index.create_version(client, alias, new_spec, load.index_type, load.m, load.ef_construction)
    client.indices.put_settings(index=new, settings={"index": {"refresh_interval": "-1",
                                                               "number_of_replicas": load.load_replicas}})
    replicas = load.replicas if load.replicas is not None else int(
        client.indices.get_settings(index=old).body[old]["settings"]["index"]["number_of_replicas"])
    target = es_load.LoadTarget(conn, client, alias, new, replicas)
    opts = runners.pipeline_options(config.beam_args)
    p = runners.create_pipeline(opts, pipeline)
    out = p | "Embed" >> EmbedInputs(inputs, new_spec, labeler=labeler)
    out | "Write" >> shards.WriteShards(config.output, new_spec)
    out["faces"] | "Load" >> es_load.LoadFaces(target, load, config.output, new_spec)
    with es_load.loading(target):
        result, elapsed = jobs.run(p)
    summary = jobs.embed_summary(result, elapsed, new_spec, opts)
    loaded = jobs.load_summary(result, target)
    if loaded["docs_failed"] or (summary["faces"] and not target.count):
        raise UserError(f"new index {new} is incomplete ({target.count} docs for {summary['faces']} faces, "
                        f"{loaded['docs_failed']} failed); the alias still points at {old}")

    sample = random.Random(0).sample(sorted(known), min(config.compare, len(known)))
    comparison = compare(client, old, new, old_spec, new_spec, sample)
    print(f"old {old} ({old_spec.spec_id}) vs new {new} ({new_spec.spec_id}) on {comparison['probes']} probes: "
          f"top-{comparison['k']} image overlap {comparison['topk_image_overlap']}, "
          f"same-person agreement {comparison['same_person_agreement']}")
    es_index.swap_alias(client, alias, old, new)
    print(f"alias {alias}: {old} -> {new} ({target.count} docs)")
    if config.drop_old:
        client.indices.delete(index=old)
        print(f"dropped {old}")
    summary.update(old_index=old, new_index=new, doc_count=target.count, comparison=comparison,
                   **{k: v for k, v in loaded.items() if k.startswith("docs_")})
    jobs.write_summary(config.output.rstrip("/") + "/summary.json", summary)
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
