"""facebeam search: one-shot lookup of photos, printed as a table.

    facebeam search PHOTO [PHOTO ...] [--k 5] [--index faces] [--exact --shards DIR] [--stdin]

The model loads once (the warm-up); every photo after that is answered in well
under a second. With --stdin, more photo paths are read one per line.
"""
import logging
import sys
import time

from facebeam.pipelines import options, query
from facebeam.transforms import images, knn, labels, shards, sources
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)


class Searcher:
    def __init__(self, ns):
        from facebeam.transforms.faces import FaceModel

        started = time.perf_counter()
        self.mode, self.spec, conn = query.choose_backend(options.es_from(ns), ns.index, ns.exact, ns.shards)
        self.search = knn.SearchSpec(k=ns.k, num_candidates=ns.num_candidates or max(100, 10 * ns.k),
                                     filters=knn.parse_filters(ns.filter))
        self.model = FaceModel(self.spec)
        if self.mode == "es":
            self.client, self.alias = conn.client(), ns.index
        else:
            self.files = shards.files(ns.shards)
        self.warmup_s = time.perf_counter() - started

    def __call__(self, path: str):
        data, sha = sources.read_bytes(path, 256 * 1024 * 1024)
        img = images.decode(path, data, sha, detect_max_side=self.spec.detect_max_side)
        found = self.model.embed([img])[0]
        probes = [{"embedding": f.embedding, "image_sha256": sha} for f in found.faces]
        if not probes:
            return found, []
        if self.mode == "es":
            return found, knn.es_search(self.client, self.alias, probes, self.search, self.spec)
        return found, knn.exact_search(self.files, probes, self.search, self.spec)


def print_table(path, found, results, spec, seconds, out=None):
    out = out or sys.stdout
    print(f"\n{path}: {len(found.faces)} face(s), answered in {seconds * 1000:.0f} ms", file=out)
    for i, (face, hits) in enumerate(zip(found.faces, results)):
        label, _ = labels.vote(hits, spec.threshold)
        print(f"  face {i} at {face.box}" + (f"  -> {label}" if label else ""), file=out)
        print(f"  {'rank':>4}  {'distance':>8}  {'same?':<5}  path", file=out)
        for rank, h in enumerate(hits, 1):
            same = "yes" if h["distance"] <= spec.threshold else "no"
            print(f"  {rank:>4}  {h['distance']:8.4f}  {same:<5}  {h['image_path']}", file=out)


def main(argv=None) -> int:
    parser = options.parser("facebeam search", __doc__)
    parser.add_argument("photos", nargs="*")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--index", default="faces")
    parser.add_argument("--num-candidates", type=int, default=None)
    parser.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--shards", default=None)
    parser.add_argument("--stdin", action="store_true", help="read more photo paths from standard input")
    options.add_es(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    ns, _ = options.parse(parser, argv, beam=False)
    try:
        searcher = Searcher(ns)
    except UserError as e:
        log.error("%s", e)
        return 2
    print(f"ready: {searcher.mode} search, spec {searcher.spec.spec_id}, warm-up {searcher.warmup_s:.2f} s")
    paths = list(ns.photos) + ([line.strip() for line in sys.stdin if line.strip()] if ns.stdin else [])
    failed = 0
    for path in paths:
        started = time.perf_counter()
        try:
            found, results = searcher(path)
        except (OSError, ValueError, images.ImageError) as e:
            print(f"\n{path}: cannot search: {e}")
            failed += 1
            continue
        print_table(path, found, results, searcher.spec, time.perf_counter() - started)
    return 1 if failed else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
