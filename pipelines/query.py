"""facebeam query: batch top-k lookups for probe photos.

    facebeam query --probes PATTERN [PATTERN ...] --index NAME --k K --output DIR
                   [--num-candidates N] [--filter FIELD=VALUE ...] [--format parquet|jsonl]
                   [--exact --shards DIR] [--report FILE.html] [Beam flags]

Probes are embedded with the index's own spec. Results go to DIR/results/, failed
probes to DIR/errors/. With --exact (or when no cluster is configured) the search
is a brute-force scan over the shards: the ground truth for recall.
"""
import dataclasses
import json
import logging
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from facebeam.pipelines import jobs, options
from facebeam.pipelines.runner import defaults as runners
from facebeam.transforms import es_conn, es_index, knn, labels, metrics, records, shards, sources
from facebeam.transforms.embed import EmbedInputs
from facebeam.transforms.errors import UserError
from facebeam.transforms.sources import Inputs

log = logging.getLogger(__name__)
PROBE_FACES = "probe_faces"


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
    spec_given: tuple = ()  # (field, value) pairs the index's spec must match
    es: options.EsFlags = options.EsFlags()
    beam_args: tuple = ()


def build_parser():
    p = options.parser("facebeam query", __doc__)
    options.add_inputs(p, flag="--probes", labels=False, backfill=False)
    p.add_argument("--index", default="faces", help="alias to search (default %(default)s)")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--num-candidates", type=int, default=None, help="HNSW candidates (default max(100, 10k))")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--exclude-same-image", action="store_true", help="ignore hits on the probe's own image")
    p.add_argument("--output", required=True)
    p.add_argument("--format", choices=("parquet", "jsonl"), default="parquet")
    p.add_argument("--exact", action="store_true", help="brute force over --shards instead of Elasticsearch")
    p.add_argument("--shards", default=None, help="embed/run output folder (for --exact)")
    p.add_argument("--report", default=None, metavar="FILE.html", help="write a visual report")
    options.add_spec(p, check_only=True)
    options.add_es(p)
    return p


def configure(a: options.Args, beam_args=()) -> QueryConfig:
    return QueryConfig(probes=options.inputs_from(a, labels=False, backfill=False), output=a.output, index=a.index,
                       k=a.k, num_candidates=a.num_candidates, filters=tuple(a.filter),
                       exclude_same_image=a.exclude_same_image, format=a.format, exact=a.exact, shards=a.shards,
                       report=a.report, spec_given=tuple(options.spec_given(a).items()), es=options.es_from(a),
                       beam_args=tuple(beam_args))


def choose_backend(es: options.EsFlags, index: str, exact: bool, shards_dir, spec_given=()):
    """(mode, spec, conn or None): Elasticsearch when a cluster is configured and exact is not asked for."""
    conn = None
    if not exact:
        try:
            conn = es.connection()
        except es_conn.EsConfigError:
            if not shards_dir:
                raise
            log.info("no Elasticsearch configured: searching the shards exactly")
    if conn is None:
        if not shards_dir:
            raise UserError("--exact needs --shards DIR")
        spec = shards.spec_of(shards_dir)
    else:
        client = conn.client()
        es_conn.check(client, conn)
        target = es_index.alias_target(client, index)
        if target is None:
            raise UserError(f"no index {index!r} in Elasticsearch at {conn.url}; run `facebeam index` first")
        spec = es_index.spec_of(client, target)
    if spec_given:
        dataclasses.replace(spec, **dict(spec_given)).require_same(spec, what="index" if conn else "shards")
    return ("es" if conn else "exact"), spec, conn


class Search(beam.DoFn):
    """A batch of probe face rows -> (probe image, (probe face, hits)) per face."""

    def __init__(self, mode, spec, search: knn.SearchSpec, conn=None, alias=None, shards=None):
        self._mode, self._spec, self._search = mode, spec, search
        self._conn, self._alias, self._shards = conn, alias, shards

    def setup(self):
        if self._mode == "es":
            self._client = self._conn.client()
        else:
            self._files = shards.files(self._shards)

    def process(self, batch):
        if self._mode == "es":
            found = knn.es_search(self._client, self._alias, batch, self._search, self._spec)
        else:
            found = knn.exact_search(self._files, batch, self._search, self._spec)
        for probe, hits in zip(batch, found):
            metrics.count(PROBE_FACES)
            small = {k: probe[k] for k in ("image_path", "image_sha256", "face_index", "box_x", "box_y", "box_w", "box_h")}
            yield probe["image_path"], (small, hits)

    def teardown(self):
        if getattr(self, "_client", None) is not None:
            self._client.close()


def result_rows(item, spec, mode):
    """All faces of one probe photo -> result rows, with the photo's labels decided together."""
    path, faces = item
    faces = sorted(faces, key=lambda f: f[0]["face_index"])
    decided = labels.assign_unique({f[0]["face_index"]: labels.vote(f[1], spec.threshold) for f in faces})
    for probe, hits in faces:
        for rank, h in enumerate(hits, 1):
            yield {
                "probe_path": path, "probe_sha256": probe["image_sha256"], "probe_face_index": probe["face_index"],
                "probe_box_x": probe["box_x"], "probe_box_y": probe["box_y"],
                "probe_box_w": probe["box_w"], "probe_box_h": probe["box_h"],
                "rank": rank, "face_id": h["face_id"], "hit_image_path": h["image_path"],
                "hit_image_sha256": h["image_sha256"], "hit_face_index": h["face_index"],
                "hit_box_x": h["box_x"], "hit_box_y": h["box_y"], "hit_box_w": h["box_w"], "hit_box_h": h["box_h"],
                "hit_label": h.get("label"), "score": h["score"], "distance": h["distance"],
                "same_person": h["distance"] <= spec.threshold, "top_label": decided[probe["face_index"]],
                "mode": mode, "spec_id": spec.spec_id,
            }


def run(config: QueryConfig, pipeline=None) -> dict:
    ns = config
    mode, spec, conn = choose_backend(ns.es, ns.index, ns.exact, ns.shards, ns.spec_given)
    search = knn.SearchSpec(k=ns.k, num_candidates=ns.num_candidates or max(100, 10 * ns.k),
                            filters=knn.parse_filters(ns.filters), exclude_same_image=ns.exclude_same_image)
    sources.check_inputs(ns.probes.patterns)
    opts = runners.pipeline_options(ns.beam_args)
    p = runners.create_pipeline(opts, pipeline)
    probes = p | "EmbedProbes" >> EmbedInputs(ns.probes, spec)
    results = (probes["faces"]
               | "BatchProbes" >> beam.BatchElements(min_batch_size=1, max_batch_size=64)
               | "Search" >> beam.ParDo(Search(mode, spec, search, conn, ns.index, ns.shards))
               | "ByPhoto" >> beam.GroupByKey()
               | "Rows" >> beam.FlatMap(result_rows, spec, mode))
    join = FileSystems.join
    if ns.format == "jsonl":
        results | "ToJson" >> beam.Map(json.dumps) | "WriteResults" >> beam.io.WriteToText(
            join(ns.output, "results", "part"), file_name_suffix=".jsonl")
    else:
        results | "WriteResults" >> WriteToParquet(join(ns.output, "results", "part"), records.RESULT_SCHEMA,
                                                   codec="zstd", file_name_suffix=".parquet")
    probes["errors"] | "WriteErrors" >> WriteToParquet(join(ns.output, "errors", "part"), records.ERROR_SCHEMA,
                                                       codec="zstd", file_name_suffix=".parquet")
    result, elapsed = jobs.run(p)
    c = metrics.read_counters(result)
    summary = {**metrics.image_counts(c), "probe_faces": c.get(PROBE_FACES, 0), "mode": mode, "index": ns.index,
               "k": ns.k, "spec_id": spec.spec_id, "runner": runners.runner_name(opts), "elapsed_s": round(elapsed, 3)}
    shards.write_json(join(ns.output, "summary.json"), summary)
    if ns.report:
        from facebeam.transforms import report

        report.write(ns.report, read_results(ns.output, ns.format), spec)
        summary["report"] = ns.report
    log.info("query done (%s): %d probe photos, %d faces searched, failed %s", mode, summary["images_seen"],
             summary["probe_faces"], summary["images_failed"] or "none")
    return summary


def read_results(output: str, fmt: str = "parquet") -> list:
    import pyarrow.parquet as pq

    rows = []
    for m in FileSystems.match([FileSystems.join(output, "results", "*")])[0].metadata_list:
        with FileSystems.open(m.path) as f:
            if fmt == "jsonl":
                rows += [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
            else:
                rows += pq.read_table(f).to_pylist()
    return sorted(rows, key=lambda r: (r["probe_path"], r["probe_face_index"], r["rank"]))


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
