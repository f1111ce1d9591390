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

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.transforms import copies, es_load, labels, privacy, shards, sources, stores
from facebeam.transforms.embed import EmbedInputs
from facebeam.transforms.errors import UserError
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import EmbeddingSpec
from facebeam.transforms.stores import registry

log = logging.getLogger(__name__)


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
    turns: str = options.DEFAULT_TURNS
    closer: str = options.DEFAULT_CLOSER


def build_parser():
    p = options.parser("facebeam reindex", __doc__)
    options.add_inputs(p, required=False, labels=False, backfill=False)
    p.add_argument("--output", required=True, help="where the new spec's shards go")
    p.add_argument("--compare", type=options.COUNT, default=50, help="probe images compared between old and new")
    p.add_argument("--drop-old", action="store_true", help="delete the old index (generation) after the swap")
    options.add_spec(p)
    options.add_detection(p)
    options.add_load(p)
    options.add_store(p, kinds=("es", "local"), redis=False)
    return p


def configure(a: options.Args, beam_args=()) -> ReindexConfig:
    return ReindexConfig(inputs=options.inputs_from(a, labels=False, backfill=False), output=a.output,
                         load=options.load_from(a), spec=options.spec_from(a), compare=a.compare, drop_old=a.drop_old,
                         es=options.es_from(a), store=options.store_from(a, kinds=("es", "local"), redis=False),
                         beam_args=tuple(beam_args), turns=a.turns, closer=a.look_closer)


def _inputs_for(config: ReindexConfig, known: dict) -> Inputs:
    """--input, else a list file of the photos the current index holds."""
    inputs = config.inputs
    if not inputs.patterns:
        listing = config.output.rstrip("/") + "-inputs.txt"
        with privacy.private_umask(), open(listing, "w") as f:  # the photos' paths: private like the shards
            f.write("\n".join(sorted({p for p, _ in known.values() if p})) + "\n")
        inputs = dataclasses.replace(inputs, patterns=(listing,))
    return inputs


def run(config: ReindexConfig, pipeline=None) -> dict:
    # The new spec's collection gets a folder of its own: into the old one, its shards sat beside the old spec's
    # and the load read both (one collection, one spec).
    sources.check_filesystem(config.output, "output")
    shards.check_output_kind(config.output, "collection")
    if shards.files(config.output):
        raise UserError(f"{config.output} already holds a collection's shards: reindex writes the new spec's "
                        "collection into a folder of its own; choose another --output")
    store = stores.for_loading(config.store, config.es.connection, config.load.alias)
    if not store.capabilities.reindex:
        raise UserError(f"{store.describe()} {store.capabilities.lacks('reindex')}")
    job = store.reindexer(config.spec, config.load)  # refuses a missing store and the spec it already has
    made = store.copies()  # the outputs and collections made from the old faces: still `forget`'s to reach
    try:
        try:
            with jobs.lock_output(config.output):  # private, one job at a time, nothing half-written left
                summary = _reindex(config, pipeline, job)
        finally:
            job.close()  # the store's lock goes with it
        for copy in made:  # onto the new generation's metadata (an Elasticsearch index keeps its own)
            copies.remember(store, copy, refresh=False)
        registry.remember(config.output, store)  # the new shards: forget through either collection reaches both
        return summary
    finally:
        store.close()


def _reindex(config: ReindexConfig, pipeline, job) -> dict:
    new_spec = config.spec
    known = job.images()
    labeler = labels.ContentLabeler({sha: lab for sha, (_, lab) in known.items() if lab})
    inputs = _inputs_for(config, known)
    photos = jobs.preflight(inputs, new_spec)
    loading = job.begin_load(config.output)
    opts = pipeline_options(config.beam_args, photos=photos)
    p = create_pipeline(opts, pipeline)
    out = p | "Embed" >> EmbedInputs(inputs, new_spec, labeler=labeler, turns=config.turns, closer=config.closer)
    out | "Write" >> shards.WriteShards(config.output, new_spec)
    loading.attach(out["faces"])
    with loading.running():
        result, elapsed = jobs.run(p, totals={"embed": photos})
    summary = jobs.embed_summary(result, elapsed, new_spec, opts, config.turns, config.closer)
    loaded = loading.finish(result)
    if loaded["docs_failed"] or (summary["faces"] and not loaded["doc_count"]):
        raise UserError(f"the new {new_spec.spec_id} collection is incomplete ({loaded['doc_count']} faces for "
                        f"{summary['faces']} embedded, {loaded['docs_failed']} failed); {loaded['incomplete_note']}")
    sample = random.Random(0).sample(sorted(known), min(config.compare, len(known)))
    comparison = job.compare(sample)
    print(f"{job.comparing()} on {comparison['probes']} probes: "
          f"top-{comparison['k']} image overlap {comparison['topk_image_overlap']}, "
          f"same-person agreement {comparison['same_person_agreement']}")
    print(job.switch())
    if config.drop_old:
        print(job.drop_old())
    summary.update({k: v for k, v in loaded.items() if k.startswith("docs_")}, comparison=comparison)
    summary.update(job.summary())
    jobs.write_summary(config.output.rstrip("/") + "/summary.json", summary)
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
