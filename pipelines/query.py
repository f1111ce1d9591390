"""facebeam query: batch top-k lookups for probe photos.

    facebeam query --probes PATTERN [PATTERN ...] --index NAME --k K --output DIR
                   [--num-candidates N] [--filter FIELD=VALUE ...] [--format parquet|jsonl]
                   [--exact --shards DIR] [--threshold T] [--report FILE.html] [Beam flags]

Probes are embedded with the index's own spec. Results go to DIR/results/, failed
probes to DIR/errors/. With --exact (or when no cluster is configured) the search
is a brute-force scan over the shards: the ground truth for recall.

Same-person verdicts and labels use the threshold `facebeam calibrate` carried (the
index's _meta, or SHARDS/calibration.json for --exact), else the model's default;
--threshold overrides both.
"""
import dataclasses
import json
import logging
import posixpath
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner.job_options import pipeline_options
from facebeam.pipelines.runner.kinds import runner_name
from facebeam.pipelines.runner.launch import create_pipeline
from facebeam.transforms import copies, knn, metrics, persons, progress, records, shards, sources, stores
from facebeam.transforms.embed import EmbedInputs
from facebeam.transforms.sources import Inputs

log = logging.getLogger(__name__)
PROBE_FACES = "probe_faces"
SEARCH_US = "search_us"  # wall time inside the store's search (one msearch per batch on Elasticsearch)


@dataclasses.dataclass(frozen=True)
class QueryConfig:
    probes: Inputs
    output: str
    index: str = "faces"
    k: int = 5
    num_candidates: int = None
    filters: tuple = ()
    exclude_same_image: bool = False
    format: str = "parquet"
    exact: bool = False
    shards: str = None
    report: str = None
    persons: str = None
    threshold: float = None
    path_prefix: str = None
    spec_given: tuple = ()  # (field, value) pairs the index's spec must match
    es: options.EsFlags = options.EsFlags()
    store: object = None  # stores.StoreChoice: es | local[:DIR] (Redis verifies, it does not rank)
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam query", __doc__)
    options.add_inputs(p, flag="--probes", labels=False, backfill=False)
    p.add_argument("--index", type=options.index_name, default="faces", help="alias to search (default %(default)s)")
    p.add_argument("--k", type=options.COUNT, default=5, help="hits per probe face")
    p.add_argument("--num-candidates", type=options.COUNT, default=None, help="HNSW candidates (default max(200, 20k))")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="only hits whose FIELD equals VALUE (repeatable), e.g. label=rose_leslie")
    p.add_argument("--exclude-same-image", action="store_true", help="ignore hits on the probe's own image")
    p.add_argument("--output", required=True, help="folder for results/, errors/ and summary.json")
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", help="results file format")
    p.add_argument("--exact", action="store_true", help="brute force over --shards instead of Elasticsearch")
    p.add_argument("--shards", type=options.beam_path, default=None, help="embed/run output folder (for --exact)")
    p.add_argument("--report", type=options.output_file, default=None, metavar="FILE.html", help="write a visual report")
    p.add_argument("--persons", default=None, metavar="CLUSTERS",
                   help="a `facebeam cluster` output: give each hit its person id and name")
    p.add_argument("--threshold", type=options.POSITIVE, default=None,
                   help="same-person distance (default: the calibrated one the index or shards carry, else the model's)")
    options.add_search_filters(p)
    options.add_spec(p, check_only=True)
    options.add_es(p)
    options.add_store(p)  # redis is refused by its capability: it verifies, it does not rank
    return p


def configure(a: options.Args, beam_args=()) -> QueryConfig:
    options.check_search_size(a)
    return QueryConfig(probes=options.inputs_from(a, labels=False, backfill=False), output=a.output, index=a.index,
                       k=a.k, num_candidates=a.num_candidates, filters=options.search_filters(a),
                       exclude_same_image=a.exclude_same_image, format=a.format, exact=a.exact, shards=a.shards,
                       report=a.report, persons=a.persons, threshold=a.threshold, path_prefix=a.path_prefix,
                       spec_given=tuple(options.spec_given(a).items()),
                       es=options.es_from(a), store=options.store_from(a),
                       beam_args=tuple(beam_args))


class Search(beam.DoFn):
    """A batch of probe face rows -> (probe image, (probe face, hits)) per face."""

    def __init__(self, store, search: knn.SearchSpec, persons_dir=None):
        self._store, self._search, self._persons_dir = store, search, persons_dir

    def setup(self):
        self._open = self._store.searcher()
        self._persons = persons.lookup(self._persons_dir) if self._persons_dir else None

    def process(self, batch):
        import time

        started = time.perf_counter()
        found = self._open.search(batch, self._search)
        metrics.count(SEARCH_US, int((time.perf_counter() - started) * 1e6))
        if self._persons is not None:
            persons.annotate(found, self._persons)
        for probe, hits in zip(batch, found):
            metrics.count(PROBE_FACES)
            yield probe["image_path"], ({k: probe[k] for k in knn.PROBE_FIELDS}, hits)

    def teardown(self):
        if getattr(self, "_open", None) is not None:
            self._open.close()


def result_rows(item, spec, mode, threshold=None):
    """All faces of one probe photo -> result rows (knn.photo_rows, the path `search` takes too)."""
    path, faces = item
    yield from knn.photo_rows(path, list(faces), spec, spec.threshold if threshold is None else threshold, mode)


def run(config: QueryConfig, pipeline=None) -> dict:
    ns = config
    backend = stores.open_search(ns.store, ns.es.connection, ns.index, ns.shards, ns.exact, ns.spec_given, ns.threshold,
                                 ns.filters)
    sources.check_inputs(ns.probes.patterns)  # both refuse before the output folder is made
    # Private like every job's output, one query at a time into a folder, and the answer of this query alone.
    with jobs.lock_output(config.output, "query"):
        return _query(ns, backend, pipeline)


def _query(ns: QueryConfig, backend, pipeline) -> dict:
    spec, mode, where, threshold = backend.spec, backend.mode, backend.where, backend.threshold
    search = knn.SearchSpec(k=ns.k, num_candidates=ns.num_candidates or knn.default_candidates(ns.k),
                            filters=backend.filters,
                            exclude_same_image=ns.exclude_same_image, path_prefix=ns.path_prefix)
    photos = progress.count_files(ns.probes.patterns)
    opts = pipeline_options(ns.beam_args, photos=photos)
    p = create_pipeline(opts, pipeline)
    probes = p | "EmbedProbes" >> EmbedInputs(ns.probes, spec)
    results = (probes["faces"]
               | "BatchProbes" >> beam.BatchElements(min_batch_size=1, max_batch_size=64)
               | "Search" >> beam.ParDo(Search(backend.store, search, ns.persons))
               | "ByPhoto" >> beam.GroupByKey()
               | "Rows" >> beam.FlatMap(result_rows, spec, mode, threshold))
    join = FileSystems.join
    part = f"part-{shards.new_run_id()}"  # this query's files; an earlier query's go once it has succeeded
    if ns.format == "jsonl":
        results | "ToJson" >> beam.Map(json.dumps) | "WriteResults" >> beam.io.WriteToText(
            join(ns.output, "results", part), file_name_suffix=".jsonl")
    else:
        results | "WriteResults" >> WriteToParquet(join(ns.output, "results", part), records.RESULT_SCHEMA,
                                                   codec="zstd", file_name_suffix=".parquet")
    probes["errors"] | "WriteErrors" >> WriteToParquet(join(ns.output, "errors", part), records.ERROR_SCHEMA,
                                                       codec="zstd", file_name_suffix=".parquet")
    result, elapsed = jobs.run(p, totals={"embed": photos})
    earlier = [m.path for sub in ("results", "errors")
               for m in FileSystems.match([join(ns.output, sub, "*")])[0].metadata_list
               if not posixpath.basename(m.path).startswith(part)]
    if earlier:  # a second query into the folder mixed its rows with the first one's
        FileSystems.delete(earlier)
    c = metrics.read_counters(result)
    search_s = c.get(SEARCH_US, 0) / 1e6
    notes = metrics.read_notes(result)
    counts = metrics.image_counts(c, notes)
    summary = {**counts, **sources.input_counts(c, counts["images_seen"], notes),
               "probe_faces": c.get(PROBE_FACES, 0), "mode": mode, **where,
               "search_settings": backend.store.search_settings(search), "search_s": round(search_s, 3),
               "search_faces_per_s": round(c.get(PROBE_FACES, 0) / search_s, 1) if search_s else None,
               "k": ns.k, "threshold": threshold, "threshold_from": backend.threshold_from, "spec_id": spec.spec_id,
               "runner": runner_name(opts), "elapsed_s": round(elapsed, 3), "output": ns.output}
    jobs.write_summary(join(ns.output, "summary.json"), summary)
    if ns.report:
        from facebeam.transforms import report

        report.write(ns.report, read_results(ns.output, ns.format), spec, threshold)
        summary["report"] = ns.report
    # forget reaches these results and the report through the store they copy faces of
    copies.remember(backend.store, copies.query_copy(sources.canonical(ns.output), ns.format,
                                                     ns.report and sources.canonical(ns.report), spec, threshold))
    log.info("query done (%s search of %s, same person at <= %.4f from %s): %d probe photos, %d faces searched "
             "(%s faces/s in the search step; %s), failed %s", where["backend"], where["searched"], threshold,
             backend.threshold_from, summary["images_seen"], summary["probe_faces"], summary["search_faces_per_s"],
             ", ".join(f"{k} {v}" for k, v in summary["search_settings"].items()), summary["images_failed"] or "none")
    return summary


read_results = copies.read_results  # what a query output holds, by probe photo, face and rank


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
