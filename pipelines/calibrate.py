"""facebeam calibrate: fit the same-person threshold to a collection of labeled faces.

    facebeam calibrate --shards DIR [--label-from parent-dir|csv:FILE [--root DIR ...]] [--pairs CSV]
                       [--output DIR] [--index NAME] [--store es|local[:DIR]|redis] [--folds 5]

Reads the faces of an embed run (`--shards DIR`), labels them (`--label-from`, else the labels
stored in the shards), and judges pairs: every two labeled photos, or the pairs `--pairs CSV`
lists (file_x, file_y, decision Yes/No, as in the sample's face-recognition-pivot.csv). Prints
the accuracy at the current threshold, the best threshold with its accuracy and its
cross-validated accuracy on unseen photos, and writes OUTPUT/calibration.json and
OUTPUT/roc.png (ROC and DET curves). OUTPUT defaults to the shards folder, where
`query --exact` and `search --exact` find it. It is also written into the metadata of the store
`--store S` names (`--index NAME` alone: Elasticsearch when a cluster is configured, else the
embedded index, as `index` and `run` choose), and of every store the shards were
loaded into (DIR/stores.json), so every verdict read from those stores uses it and says so.
The embedding spec (and its id) does not change.
"""
import dataclasses
import logging
import os
import sys

from facebeam.pipelines import jobs, options
from facebeam.transforms import calibrate, labels, shards, stores
from facebeam.transforms.errors import UserError

log = logging.getLogger(__name__)
BEAM = False


@dataclasses.dataclass(frozen=True)
class CalibrateConfig:
    shards: str
    label_from: str = None
    roots: tuple = ()
    pairs: str = None
    output: str = None
    index: str = None
    folds: int = 5
    adopt: str = "if-better"
    es: options.EsFlags = options.EsFlags()
    store: stores.StoreChoice = stores.StoreChoice()


def build_parser():
    p = options.parser("facebeam calibrate", __doc__)
    p.add_argument("--shards", type=options.beam_path, required=True, help="embed/run output folder")
    p.add_argument("--label-from", default=None, metavar="parent-dir|csv:FILE",
                   help="label the shards' photos (default: the labels stored in the shards)")
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="input folder parent-dir labels count from (default: the folder all photos share)")
    p.add_argument("--pairs", default=None, metavar="CSV", help="judge these pairs (file_x,file_y,decision)")
    p.add_argument("--output", default=None, help="where calibration.json and roc.png go (default: --shards)")
    p.add_argument("--index", type=options.index_name, default=None,
                   help="also keep the threshold in this index's metadata (the store --store names, else as "
                        "`index` chooses)")
    p.add_argument("--folds", type=options.number(int, least=2), default=5,
                   help="cross-validation folds over photos (default %(default)s)")
    p.add_argument("--adopt", choices=calibrate.ADOPT, default="if-better",
                   help="store the fitted threshold only if it beat the current one on unseen photos, or "
                        "always (default %(default)s)")
    options.add_es(p)
    options.add_store(p)
    return p


def configure(a: options.Args, beam_args=()) -> CalibrateConfig:
    if a.folds < 2:
        raise UserError("--folds must be at least 2")
    return CalibrateConfig(shards=a.shards, label_from=a.label_from, roots=tuple(a.root),
                           pairs=options.existing_file(a.pairs, "pairs CSV"), output=a.output or a.shards,
                           index=a.index, folds=a.folds, adopt=a.adopt, es=options.es_from(a), store=options.store_from(a))


def _common_folder(paths) -> str:
    local = [p for p in paths if "://" not in p]
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in local]) if local else ""


def _labeled_none(config: CalibrateConfig, rows: list) -> str:
    """Why --label-from gave no photo a label, and what to do."""
    n = len({r["image_path"] for r in rows})
    if config.label_from != "parent-dir":
        return (f"--label-from {config.label_from} labels none of the {n} photos with a face (a row matches by full "
                "path or by file name); give it rows for them, or --pairs CSV")
    roots = config.roots or (_common_folder([r["image_path"] for r in rows]),)
    return (f"--label-from parent-dir labels none of the {n} photos with a face: they lie directly in "
            f"{', '.join(roots)}, and a label is the folder a photo lies in below that (people/alice/1.jpg -> alice); "
            "put each person's photos in a folder of their own, or give --pairs CSV")


def read_faces(folder: str) -> list:
    files = shards.files(folder)
    if not files:
        raise UserError(f"no embedding shards under {folder}; run `facebeam embed` first")
    cols = ["image_path", "image_sha256", "box_w", "box_h", "label", "embedding"]
    return [row for path in files for row in shards.read_columns(path, cols).to_pylist()]


def run(config: CalibrateConfig, pipeline=None) -> dict:
    spec = shards.spec_of(config.shards)
    rows = read_faces(config.shards)
    if config.pairs:
        vectors = calibrate.largest_faces(rows)
        pairs = calibrate.csv_pairs(config.pairs, set(vectors))
        source = f"pairs in {config.pairs}"
    else:
        labeler = None
        if config.label_from == "parent-dir":
            roots = config.roots or (_common_folder([r["image_path"] for r in rows]),)
            labeler = labels.ParentDirLabeler(roots)
        elif config.label_from:
            try:
                labeler = labels.labeler_from(config.label_from)
            except (OSError, ValueError) as e:
                raise UserError(str(e)) from None
        faces = calibrate.labeled_faces(rows, labeler)
        if not faces and labeler is not None:
            raise UserError(_labeled_none(config, rows))
        vectors = {p: v for p, (_, v) in faces.items()}
        pairs = calibrate.all_pairs(faces)
        source = f"{len(faces)} labeled photos, {len({lab for lab, _ in faces.values()})} people"
    # "current" is the threshold the collection judges with now: its calibration, else the spec's
    current, current_from = calibrate.choose_threshold(spec, carried=calibrate.load(config.shards),
                                                       where=calibrate.shards_join(config.shards, calibrate.FILE))
    result = calibrate.fit(pairs, vectors, spec, current, folds=config.folds, adopt=config.adopt)
    result.update(source=source, current_from=current_from)
    os.makedirs(config.output, exist_ok=True) if "://" not in config.output else None
    picture = calibrate.shards_join(config.output, calibrate.PICTURE)
    calibrate.plot(picture, result)
    result["picture"] = picture
    result["written"] = calibrate.save(config.output, result)
    carried = carry(config, spec, result)
    cur, best, cv = result["current"], result["best"], result["cross_validated"]
    print(f"calibrate: {result['pairs']} pairs ({result['same_pairs']} same, {result['different_pairs']} different) "
          f"from {source}; {spec.model}/{spec.metric}")
    print(f"  accuracy at the current threshold {cur['threshold']:.4f} ({current_from}): {cur['accuracy']:.4f} "
          f"(false matches {cur['false_positive_rate']:.3f}, misses {1 - cur['true_positive_rate']:.3f})")
    print(f"  best threshold {best['threshold']:.4f}: accuracy {best['accuracy']:.4f} "
          f"(false matches {best['false_positive_rate']:.3f}, misses {1 - best['true_positive_rate']:.3f})")
    print(f"  cross-validated accuracy ({cv['folds']} folds over photos, threshold fitted without them): "
          f"{cv['accuracy']} (the current threshold on the same pairs: {cv['current_accuracy']})  "
          f"fold thresholds {cv['fold_thresholds']}")
    print(f"  threshold stored: {result['why']}")
    print(f"  wrote {result['written']} and {picture}" + (f"; stored in index {result['index']}" if "index" in result
                                                           else ""))
    for line in carried:
        print(f"  {line}")
    return calibrate.public(result)


def carry(config: CalibrateConfig, spec, result: dict) -> list:
    """The threshold into the metadata of the store --store/--index names and of every store the collection was
    loaded into; one line each. The named store must take it (a user error otherwise); a recorded one that cannot
    be reached is said, and keeps what it had."""
    named = None
    if config.store.given():
        named = stores.make(config.store, config.es.connection, config.index or "faces")
    elif config.index:  # chosen as a load chooses: Elasticsearch when configured, else the embedded index
        named = stores.for_loading(config.store, config.es.connection, config.index)
    lines = []
    for store in stores.recorded_stores(config.shards, config.es.connection, named)[:-1]:
        try:
            store.check(spec)
            store.set_calibration(result)
            lines.append(f"{store.describe()}: threshold {result['threshold']:.4f} stored with the collection")
            where = store.where()
            if "concrete_index" in where:  # as before: the concrete index the alias points at
                result["index"] = where["concrete_index"]
        except UserError as e:
            if store is named:
                raise
            lines.append(f"{store.describe()}: NOT updated ({e})")
        finally:
            store.close()
        result.setdefault("stores", []).append(store.describe())
    return lines


def main(argv=None) -> int:
    return jobs.main(sys.modules[__name__], argv)


if __name__ == "__main__":
    jobs.entry(main)
