"""facebeam verify: is the person in this photo NAME? Same or different, with the distance.

    facebeam verify PHOTO --as NAME [--store redis|es|local] [--index faces] [--threshold T]
    facebeam verify --pairs CSV [--photos DIR] [--store redis|es|local] ...

Without --store: Elasticsearch when a cluster is configured, else Redis when one is, else the
embedded index when one is built (what `facebeam run` makes without a server).
The photo's largest face is embedded with the store's own spec and compared with every
face labeled NAME (`facebeam index --store redis` loads labeled faces by identity; on
Elasticsearch the faces carry a `label`). The closest one decides: same person when its
distance is at most the threshold (--threshold, else the calibrated one the index carries,
else the model's). On Redis the distance is computed on the server by a Lua script over
the label's vectors; on Elasticsearch by a kNN search filtered by label (exact for an
identity's few faces).

--pairs CSV verifies many at once, the model loaded once: columns photo,identity[,decision]
or the layout of face-recognition-pivot.csv (file_x,file_y,decision: PHOTO = file_x,
NAME = file_y's file name, for a collection labeled by file name). With a decision column
(Yes/No) it prints the accuracy.
"""
import dataclasses
import logging
import os
import sys
import time

from facebeam.pipelines import jobs, options
from facebeam.transforms import images, knn, labels, sources
from facebeam.transforms.errors import UserError, reason
from facebeam.transforms.sources import DEFAULT_MAX_FILE_BYTES

log = logging.getLogger(__name__)
BEAM = False
KINDS = ("redis", "es", "local")


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    photo: str = None
    name: str = None
    pairs: str = None
    photos: str = None
    index: str = "faces"
    threshold: float = None
    face: int = None  # the photo's face to compare (face_index, left to right); None: the largest
    store: object = None  # stores.StoreChoice
    es: options.EsFlags = options.EsFlags()


def build_parser():
    p = options.parser("facebeam verify", __doc__)
    p.add_argument("photo", nargs="?", help="the photo to verify (its largest face, or --face N)")
    p.add_argument("--face", type=options.NON_NEGATIVE, default=None, metavar="N",
                   help="compare face N of the photo, numbered left to right from 0 as `facebeam search` shows "
                        "them (default: the largest face)")
    p.add_argument("--as", dest="name", default=None, metavar="NAME", help="the identity label to verify against")
    p.add_argument("--pairs", default=None, metavar="CSV", help="verify many: photo,identity[,decision] rows")
    p.add_argument("--photos", default=None, metavar="DIR", help="folder the --pairs photo names are in "
                                                                 "(default: the CSV's folder)")
    p.add_argument("--index", type=options.index_name, default="faces", help="alias / store name (default %(default)s)")
    p.add_argument("--threshold", type=options.POSITIVE, default=None,
                   help="same-person distance (default: calibrated, else the model's)")
    options.add_store(p, kinds=KINDS, auto="redis when configured, else local when built")
    options.add_es(p)
    return p


def configure(a: options.Args, beam_args=()) -> VerifyConfig:
    return VerifyConfig(photo=a.photo, name=a.name, pairs=a.pairs, photos=a.photos, index=a.index,
                        threshold=a.threshold, face=a.face, store=options.store_from(a, kinds=KINDS), es=options.es_from(a))


def read_pairs(path: str, photos: str = None) -> list:
    """(photo path, identity, expected same or None) per CSV row."""
    base = photos or os.path.dirname(os.path.abspath(path))
    out = []
    _, rows = labels.csv_dicts(path)
    for line, r in enumerate(rows, start=2):
        if "photo" in r and "identity" in r:
            photo, name = r["photo"], r["identity"]
        elif "file_x" in r and "file_y" in r:  # face-recognition-pivot.csv: paths of another layout, by file name
            photo, name = os.path.basename(r["file_x"]), os.path.basename(r["file_y"])
        else:
            raise UserError(f"{path}: want columns photo,identity[,decision] or file_x,file_y[,decision]")
        expected = labels.decision(r.get("decision") or r.get("expected"), f"{path} line {line}")
        out.append((photo if os.path.isabs(photo) else os.path.join(base, photo), name, expected))
    return out


class Backend:
    """The store behind verification, chosen once: closest(vector, name) -> (face_id, distance, faces of name)."""

    def __init__(self, config: VerifyConfig):
        from facebeam.transforms import stores

        self.store = stores.for_verify(config.store, config.es.connection, config.index)
        self.spec = self.store.spec()
        self.where = self.store.describe()
        self.threshold, self.threshold_from = self.store.threshold(self.spec, config.threshold)

    def closest(self, vector, name: str) -> tuple:
        return self.store.closest(vector, name)

    def close(self):
        self.store.close()


class Prober:
    """Photo -> one face's vector (the largest, or face N) and how many faces it had; the model loaded once
    (faces cached by content)."""

    def __init__(self, spec):
        from facebeam.transforms.faces import FaceModel

        self.spec, self.model, self.cache = spec, FaceModel(spec), {}

    def __call__(self, path: str, face: int = None) -> tuple:
        """(vector, the face's index, faces in the photo, "largest" or "given")."""
        try:
            data, sha = sources.read_bytes(path, DEFAULT_MAX_FILE_BYTES)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {reason(e)}") from None
        if sha not in self.cache:
            img = images.decode(path, data, sha, detect_max_side=self.spec.detect_max_side)
            found = self.model.embed([img])[0]
            found.path, found.sha256 = path, sha
            faces = knn.probe_faces(found, self.spec)
            self.cache[sha] = faces
        faces = self.cache[sha]
        if not faces:
            raise UserError(f"no face found in {path}")
        if face is None:
            best = max(faces, key=lambda f: f["box_w"] * f["box_h"])
            return best["embedding"], best["face_index"], len(faces), "largest"
        given = [f for f in faces if f["face_index"] == face]
        if not given:
            raise UserError(f"{path} has {len(faces)} face(s), numbered 0 to {len(faces) - 1} left to right; "
                            f"--face {face} is not one of them")
        return given[0]["embedding"], face, len(faces), "given"


def verify_one(backend: Backend, prober: Prober, photo: str, name: str, face: int = None) -> dict:
    vector, index, n_faces, chosen = prober(photo, face)
    which = {"face": index, "faces_in_photo": n_faces, "face_chosen": chosen}
    started = time.perf_counter()
    face_id, distance, n = backend.closest(vector, name)
    ms = (time.perf_counter() - started) * 1000
    if face_id is None:
        return {"photo": photo, "identity": name, "verdict": "unknown", "distance": None, "latency_ms": round(ms, 3),
                **which}
    return {"photo": photo, "identity": name, "verdict": "same" if distance <= backend.threshold else "different",
            "distance": round(float(distance), 6), "closest_face_id": face_id, "faces_of_identity": n,
            "latency_ms": round(ms, 3), **which}


def run(config: VerifyConfig, pipeline=None) -> dict:
    if config.pairs is None and not (config.photo and config.name):
        raise UserError("give PHOTO --as NAME, or --pairs CSV")
    if config.pairs is not None and config.face is not None:
        raise UserError("--face goes with PHOTO --as NAME, not with --pairs")
    if config.pairs is not None and (config.photo or config.name):
        raise UserError("give either PHOTO --as NAME or --pairs CSV, not both")
    options.existing_file(config.pairs, "--pairs file")
    backend = Backend(config)
    try:
        prober = Prober(backend.spec)
        head = {"backend": backend.store.where()["backend"], "store": backend.where,
                "threshold": backend.threshold, "threshold_from": backend.threshold_from, "spec_id": backend.spec.spec_id}
        if config.pairs is None:
            res = verify_one(backend, prober, config.photo, config.name, config.face)
            if res["verdict"] == "unknown":
                raise UserError(f"no face labeled {config.name!r} in {backend.where} (a label matches exactly; faces "
                                "get labels from `run`/`embed --label-from parent-dir|csv:FILE`)")
            return {**head, **res, "ok": True}
        results = []
        for photo, name, expected in read_pairs(config.pairs, config.photos):
            try:
                res = verify_one(backend, prober, photo, name)
            except (UserError, images.ImageError) as e:  # one photo that cannot be read or has no face: its row
                print(f"{photo}: cannot verify: {e}")
                res = {"photo": photo, "identity": name, "verdict": "failed", "error": str(e), "distance": None}
            res["expected"] = None if expected is None else ("same" if expected else "different")
            results.append(res)
        judged = [r for r in results if r["expected"] is not None and r["verdict"] in ("same", "different")]
        right = sum(r["verdict"] == r["expected"] for r in judged)
        latencies = sorted(r["latency_ms"] for r in results if r["verdict"] in ("same", "different"))
        failed = sum(r["verdict"] == "failed" for r in results)
        summary = {**head, "pairs": len(results), "unknown": sum(r["verdict"] == "unknown" for r in results),
                   "failed": failed,
                   "judged": len(judged), "right": right, "accuracy": round(right / len(judged), 4) if judged else None,
                   "latency_p50_ms": latencies[len(latencies) // 2] if latencies else None, "results": results,
                   "ok": True}
        print(f"verified {len(results)} pair(s) on {backend.where}: {failed} failed, {summary['unknown']} unknown "
              "identit(ies); "
              + (f"accuracy {summary['accuracy']:.4f} ({right}/{len(judged)})" if judged else "no decisions to score")
              + (f"; lookup p50 {summary['latency_p50_ms']:.2f} ms" if latencies else ""))
        return summary
    finally:
        backend.close()


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv, failed=lambda s: s.get("failed", 0))


if __name__ == "__main__":
    jobs.entry(main)
