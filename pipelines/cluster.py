"""facebeam cluster: group every face of the shards into persons, with stable ids and names.

    facebeam cluster --shards DIR --output DIR [--ann DIR | --index NAME [--store es|local[:DIR]]]
                     [--threshold T | --pairs CSV]
                     [--method cw|infomap|leiden|density|cc|mutual] [--k 16] [--min-box PX]
                     [--min-confidence C] [--min-sharpness S] [--incremental]
                     [--contact-sheet FILE.html] [Beam flags]

The kNN graph is built on the workers: batches of faces -> their top k neighbours, from the
embedded index (--ann, or --index NAME on the embedded store; memory-mapped once per worker: batched HNSW search;
from 50k faces an IVF index of 4-bit codes that the launcher builds once, its candidates re-ranked on the index's
vectors), Elasticsearch (--index, batched msearch) or exactly over the shards (small sets; every worker holds all
vectors). --index chooses its store as `index` does (Elasticsearch when configured, else the embedded index), and
that store's faces get the persons' names.
The launcher keeps the edges within the threshold and clusters them (Chinese whispers by default; see
`facebeam bench cluster`). The threshold and its source are printed. Outputs, in DIR:
persons/*.parquet (one row per face), persons.parquet (one row per person, with its name),
cluster.json. Faces below the quality limits are kept and marked `low_quality`. With
--incremental, faces not yet in DIR join the person their neighbours within the threshold hold
most of (the workers carry the new faces' vectors; no earlier vector is read); only the rest is
clustered. Names, merges and splits (`facebeam persons`) survive every re-cluster.
"""
import dataclasses
import logging
import sys
import time

import apache_beam as beam

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.kinds import runner_name
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.transforms import copies, persons, privacy, shards, sources, stores
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    shards: str
    output: str
    index: str = None
    ann: str = None
    threshold: float = None
    pairs: str = None
    method: str = persons.DEFAULT_METHOD
    k: int = 16
    limits: persons.Limits = persons.Limits()
    incremental: bool = False
    contact_sheet: str = None
    sheet_persons: int = 200
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam cluster", __doc__)
    p.add_argument("--shards", type=options.beam_path, required=True, help="embed/run output folder")
    p.add_argument("--output", required=True, help="cluster folder (persons/, persons.parquet, cluster.json)")
    graph = p.add_mutually_exclusive_group()
    graph.add_argument("--ann", default=None, metavar="DIR",
                       help="build the kNN graph from this embedded index (`facebeam index --store local:DIR`)")
    graph.add_argument("--index", type=options.index_name, default=None,
                       help="search this index for the kNN graph, and give its faces the persons' names (the store "
                            "chosen as `index` chooses it, see --store; default: exact over the shards)")
    options.add_persons(p)
    p.add_argument("--incremental", action="store_true",
                   help="only faces not yet in --output: join the nearest person, cluster the rest")
    p.add_argument("--contact-sheet", type=options.output_file, default=None, metavar="FILE.html",
                   help="write an HTML contact sheet")
    p.add_argument("--sheet-persons", type=options.COUNT, default=200, help="persons on the contact sheet (largest first)")
    options.add_es(p)
    options.add_store(p, kinds=("es", "local"), redis=False)
    return p


def configure(a: options.Args, beam_args=()) -> ClusterConfig:
    threshold, pairs, method, k, limits = options.persons_from(a)
    return ClusterConfig(shards=a.shards, output=a.output, index=a.index, ann=options.existing_file(a.ann, "--ann index"),
                         threshold=threshold, pairs=pairs,
                         method=method, k=k, limits=limits, incremental=a.incremental,
                         contact_sheet=a.contact_sheet, sheet_persons=a.sheet_persons, es=options.es_from(a),
                         store=options.store_from(a, kinds=("es", "local"), redis=False), beam_args=tuple(beam_args))


def run(config: ClusterConfig, pipeline=None) -> dict:
    # Persons are derived from biometric data: the output is private like the shards (jobs.lock_output), and
    # one clustering at a time writes it.
    with jobs.lock_output(config.output):
        return _cluster(config, pipeline)


def _cluster(config: ClusterConfig, pipeline) -> dict:
    c = config
    started = time.perf_counter()
    spec = shards.spec_of(c.shards)
    files = shards.files(c.shards)
    faces = persons.row_count(files)  # every shard's footer, read once
    state = persons.read_state(c.output)
    if state and state.get("spec_id") != spec.spec_id:
        raise UserError(f"{c.output} holds persons of spec {state.get('spec_id')}, the shards are {spec.spec_id}")
    previous = persons.read_assignments(c.output)
    if c.incremental and not previous:
        log.info("no earlier clustering in %s: clustering everything", c.output)
    skip = frozenset(r["face_id"] for r in previous) if c.incremental else frozenset()
    ann_dir = c.ann
    conn = named = None  # named: the store --index names, whose faces get the persons' names
    if c.index:
        named = stores.for_search(c.store, c.es.connection, c.index)
        conn, index_dir = persons.graph_source(named, spec)
        ann_dir = index_dir or ann_dir
    elif c.store.given():
        raise UserError("--store says where the index of --index NAME is: name it too")
    if ann_dir is None and named is None and faces >= persons.IVF_MIN_FACES:
        ann_dir = persons.collection_index(c.shards, files, spec)
        if ann_dir:
            print(f"graph from the collection's embedded index {ann_dir} (--ann; an exact graph of this many faces "
                  "grows with their square)", file=sys.stderr)
        else:
            log.warning("%d faces and no embedded index of exactly them: the exact graph grows with the square of "
                        "the faces; `facebeam index --shards %s --store local:DIR` and --ann DIR builds it from the "
                        "index", faces, c.shards)
    to_graph = faces - len(skip)
    opts = pipeline_options(c.beam_args, graph_faces=to_graph)
    p = create_pipeline(opts, pipeline)
    graph_dir = persons.graph_folder(c.output)
    persons.clear(graph_dir)
    graph_index = None
    index_dir = persons.join(c.output, "graph-index")
    persons.clear(index_dir)  # one a killed run left
    if ann_dir and not (c.incremental and previous):  # a full graph of a large index: IVF, built once here
        graph_index = persons.graph_index_for(ann_dir, spec, index_dir)
    (p | "Files" >> beam.Create(files)
       | "Read" >> beam.io.ReadAllFromParquet(columns=list(persons.FACE_COLUMNS))
       | "New" >> beam.Filter(lambda r, done: r["face_id"] not in done, skip)
       | "Score" >> persons.ScoreFaces(c.limits)
       | "Batch" >> beam.BatchElements(min_batch_size=32, max_batch_size=512)
       | "Neighbours" >> beam.ParDo(persons.Neighbours(spec, c.k, files, conn, c.index, ann_dir=ann_dir,
                                                       keep_vectors=bool(c.incremental and previous),
                                                       graph_index=graph_index))
       | "PrivateGraph" >> beam.ParDo(privacy.PrivateWrites(privacy.shared()))
       | "WriteGraph" >> beam.io.WriteToParquet(persons.join(graph_dir, "part"), persons.GRAPH_SCHEMA,
                                                codec="zstd", file_name_suffix=".parquet"))
    try:
        result, graph_s = jobs.run(p, totals={"graph": to_graph})
    finally:
        persons.clear(index_dir)
    summary = persons.resolve(c.output, c.shards, files, spec, c.incremental, previous, state,
                              threshold=c.threshold, pairs=c.pairs, method=c.method, k=c.k, limits=c.limits)
    summary.update(graph_s=round(graph_s, 3), mode="es" if conn else ("ann" if ann_dir else "exact"),
                   graph_search="ivf" if graph_index else ("hnsw" if ann_dir else None),
                   runner=runner_name(opts))
    if named is not None:  # names reach the index through the store contract (never a partial update of a face doc)
        summary["index_updated"] = stores.push_persons_to(named, persons.lookup(c.output))
    if c.contact_sheet:
        from facebeam.transforms import contact_sheet

        contact_sheet.write(c.contact_sheet, c.output, max_persons=c.sheet_persons)
        summary["contact_sheet"] = c.contact_sheet
    summary["elapsed_s"] = round(time.perf_counter() - started, 3)
    persons.write_state(c.output, {**(state or {}), **summary, "spec_id": spec.spec_id})
    # forget reaches the persons and the sheet through the collection they copy faces of
    copies.remember(stores.shards_store(c.shards), copies.cluster_copy(
        sources.canonical(c.output), sources.canonical(c.shards),
        c.contact_sheet and sources.canonical(c.contact_sheet), c.sheet_persons))
    log.info("cluster done: %d faces -> %d persons (%d singletons, %d low quality), threshold %.4f (%s), %.1f s",
             summary["faces"], summary["persons"], summary["singletons"], summary["low_quality"],
             summary["threshold"], summary["threshold_from"], summary["elapsed_s"])
    return summary


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
