"""facebeam search: one-shot lookup of photos, printed as a table.

    facebeam search PHOTO [PHOTO ...] [--k 5] [--index faces] [--exact --shards DIR] [--threshold T] [--stdin]

The model loads once (the warm-up); every photo after that is answered in well
under a second. With --stdin, more photo paths are read one per line. Faces are
numbered, judged and labeled exactly as `facebeam query` does it (knn.photo_rows),
with the same carried threshold (see `facebeam calibrate`).
"""
import dataclasses
import logging
import os
import sys
import time

from facebeam.pipelines import jobs, options
from facebeam.transforms import images, knn, sources, stores
from facebeam.transforms.errors import UserError, reason
from facebeam.transforms.summary import SearchHit

log = logging.getLogger(__name__)
BEAM = False  # answered in this process, photo by photo


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    photos: tuple
    index: str = "faces"
    k: int = 5
    num_candidates: int = None
    filters: tuple = ()
    exact: bool = False
    shards: str = None
    threshold: float = None
    path_prefix: str = None
    stdin: bool = False
    es: options.EsFlags = options.EsFlags()
    store: object = None  # stores.StoreChoice: es | local[:DIR]


def build_parser():
    p = options.parser("facebeam search", __doc__)
    p.add_argument("photos", nargs="*", metavar="PHOTO", help="photos to look up (their faces, each)")
    p.add_argument("--k", type=options.COUNT, default=5, help="hits per face")
    p.add_argument("--index", type=options.index_name, default="faces", help="alias / store name")
    p.add_argument("--num-candidates", type=options.COUNT, default=None, help="HNSW candidates (default max(200, 20k))")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="only hits whose FIELD equals VALUE (repeatable)")
    p.add_argument("--exact", action="store_true", help="brute force over --shards instead of an index")
    p.add_argument("--shards", type=options.beam_path, default=None, help="embed/run output folder (for --exact)")
    p.add_argument("--threshold", type=options.POSITIVE, default=None,
                   help="same-person distance (default: the calibrated one the index or shards carry)")
    p.add_argument("--stdin", action="store_true", help="read more photo paths from standard input")
    options.add_search_filters(p)
    options.add_es(p)
    options.add_store(p)  # redis is refused by its capability: it verifies, it does not rank
    return p


def configure(a: options.Args, beam_args=()) -> SearchConfig:
    options.check_search_size(a)
    return SearchConfig(photos=tuple(a.photos), index=a.index, k=a.k, num_candidates=a.num_candidates,
                        filters=options.search_filters(a), exact=a.exact, shards=a.shards, threshold=a.threshold,
                        path_prefix=a.path_prefix, stdin=a.stdin, es=options.es_from(a),
                        store=options.store_from(a))


class Searcher:
    def __init__(self, config: SearchConfig):
        from facebeam.transforms.faces import FaceModel

        started = time.perf_counter()
        self.backend = stores.open_search(config.store, config.es.connection, config.index, config.shards,
                                          config.exact, threshold=config.threshold, filters=config.filters)
        self.spec = self.backend.spec
        self.search = knn.SearchSpec(k=config.k, num_candidates=config.num_candidates or knn.default_candidates(config.k),
                                     filters=self.backend.filters, path_prefix=config.path_prefix)
        self.model = FaceModel(self.spec)
        self.open = self.backend.store.searcher()
        self.warmup_s = time.perf_counter() - started

    def __call__(self, path: str):
        data, sha = sources.read_bytes(path, sources.DEFAULT_MAX_FILE_BYTES)
        img = images.decode(path, data, sha, detect_max_side=self.spec.detect_max_side)
        found = self.model.embed([img])[0]
        found.path, found.sha256 = path, sha
        probes = knn.probe_faces(found, self.spec)
        if not probes:
            return probes, []
        hits = self.open.search(probes, self.search)
        return probes, knn.photo_rows(sources.canonical(path), list(zip(probes, hits)), self.spec, self.backend.threshold,
                                      self.backend.mode)


def print_table(path, probes, rows, seconds, out=None, threshold_note=None):
    """One photo's faces (knn.probe_faces) and result rows (knn.photo_rows) as text."""
    out = out or sys.stdout
    note = f"; same person at <= {threshold_note}" if threshold_note else ""
    print(f"\n{path}: {len(probes)} face(s), answered in {seconds * 1000:.0f} ms{note}", file=out)
    for p in probes:
        mine = [r for r in rows if r["probe_face_index"] == p["face_index"]]
        label = mine[0]["top_label"] if mine else None
        box = (p["box_x"], p["box_y"], p["box_w"], p["box_h"])
        print(f"  face {p['face_index']} at {box}" + (f"  -> {label}" if label else ""), file=out)
        print(f"  {'rank':>4}  {'distance':>8}  {'same?':<5}  path", file=out)
        for hit in map(SearchHit.of, mine):
            same = "yes" if hit.same_person else "no"
            print(f"  {hit.rank:>4}  {hit.distance:8.4f}  {same:<5}  {hit.image_path}", file=out)


def run(config: SearchConfig, pipeline=None) -> dict:
    if not config.photos and not config.stdin:  # else it would warm up, search nothing and call that a success
        raise UserError("name one or more photos to search (or --stdin to read their paths, one per line)")
    searcher = Searcher(config)
    b = searcher.backend
    settings = b.store.search_settings(searcher.search)
    print(f"ready: {b.where['backend']} search of {b.where['searched']}, spec {searcher.spec.spec_id}, "
          f"same person at <= {b.threshold:.4f} ({b.threshold_from}), warm-up {searcher.warmup_s:.2f} s")
    print("search settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    paths = list(config.photos) + ([line.strip() for line in sys.stdin if line.strip()] if config.stdin else [])
    failed = faces = 0
    results, errors = [], []  # for --json: the rows `query` writes (records.RESULT_SCHEMA), and the photos that failed
    try:
        for path in paths:
            started = time.perf_counter()
            try:
                if os.path.isdir(path):
                    raise ValueError("a folder, not a photo (`facebeam query --probes FOLDER` searches every photo "
                                     "in one)")
                if sources.special(path):  # a named pipe would wait for a writer forever
                    raise ValueError("a pipe, socket or device, not a photo")
                probes, rows = searcher(path)
            except (OSError, ValueError, images.ImageError) as e:
                why = reason(e)
                print(f"\n{path}: cannot search: {why}")
                failed += 1
                errors.append({"photo": path, "error": why})
                continue
            faces += len(probes)
            results += [{k: v.item() if hasattr(v, "item") else v for k, v in r.items()} for r in rows]  # numpy -> JSON
            print_table(path, probes, rows, time.perf_counter() - started,
                        threshold_note=f"{b.threshold:.4f} ({b.threshold_from})")
    finally:
        searcher.open.close()
    return {"photos": len(paths), "faces": faces, "failed": failed, **b.where, "search_settings": settings,
            "threshold": b.threshold, "threshold_from": b.threshold_from, "results": results, "errors": errors}


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s["failed"])


if __name__ == "__main__":
    jobs.entry(main)
