"""facebeam bench embed: the pipeline vs a naive DeepFace.represent loop, same photos, one run.

    facebeam bench embed [--input DIR] [--photos N] [--spec-preset chip|deepface|mmod|cascade]
                         [--compare chip,mmod,...] [--turns no-face] [--turn-scores] [--json FILE]

Prints images/s for each, the ratio, each one's accuracy on the 280 labeled pairs, where the
pipeline's time goes (core-seconds per photo for each stage, from Beam counters), and the
pipeline's throughput against the descriptor alone (the Dlib ResNet's own cost per face on
this machine: the physical limit). `--photos N` embeds N augmented copies of the sample made
at run time (as `bench runners` does); the naive loop then times `--naive-limit` of them
(default 64, spread over the copies) and accuracy is taken on the first copy of each photo.

Detection side by side: `--compare` runs the pipeline once per detection variant on the same
photos (PRESET[@MAX_SIDE][/upN][:CLOSER], e.g. `chip`, `mmod`, `mmod@960`, `chip@1280/up0`, `cascade`,
`chip:off`: CLOSER is --look-closer's mode, default near-limit)
and prints photos/s, core-seconds per photo by stage, faces found and pair accuracy for each;
then each detector alone on the sample's detection copies, one thread: HOG's upsampling and
scale, the CNN's onnxruntime graph and thread settings, and the CNN batched over photos.
"""
import dataclasses
import glob
import json
import logging
import os
import tempfile
import time

import numpy as np

from facebeam.pipelines import embed, jobs, options
from facebeam.pipelines.bench.runners import augmented_copies
from facebeam.pipelines.bench.synthetic import DEFAULT_SAMPLE
from facebeam.transforms import metrics
from facebeam.transforms.errors import UserError
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import SPEC_PRESETS, EmbeddingSpec

log = logging.getLogger(__name__)


def naive_loop(paths, spec):
    """What people do today: one DeepFace.represent call per file, one core."""
    from deepface import DeepFace

    from facebeam.transforms import weights

    weights.seed()
    vectors, failed = {}, 0
    cpu = time.process_time()
    started = time.perf_counter()
    for i, path in enumerate(paths, 1):
        try:
            faces = DeepFace.represent(path, model_name=spec.model, detector_backend=spec.detector)
            big = max(faces, key=lambda f: f["facial_area"]["w"] * f["facial_area"]["h"])
            vectors[os.path.basename(path)] = np.asarray(big["embedding"], np.float32)
        except ValueError:  # deepface raises for a face-less image
            failed += 1
        if i % 10 == 0:
            log.info("naive loop: %d/%d images, %.2f images/s", i, len(paths), i / (time.perf_counter() - started))
    naive_loop.cpu_s = time.process_time() - cpu
    return vectors, failed, time.perf_counter() - started


def pair_accuracy(vectors, spec, pairs_csv):
    import csv

    right = total = 0
    with open(pairs_csv) as f:
        for r in csv.DictReader(f):
            x, y = os.path.basename(r["file_x"]), os.path.basename(r["file_y"])
            if x in vectors and y in vectors:
                total += 1
                right += (float(spec.distance(vectors[x], vectors[y])) <= spec.threshold) == (r["decision"] == "Yes")
    return (right / total if total else float("nan")), total


def pipeline_vectors(out):
    import pyarrow.parquet as pq

    best = {}
    for f in glob.glob(os.path.join(out, "embeddings", "*.parquet")):
        for r in pq.read_table(f).to_pylist():
            k = os.path.basename(r["image_path"])
            if k not in best or r["box_w"] * r["box_h"] > best[k]["box_w"] * best[k]["box_h"]:
                best[k] = r
    return {k: np.asarray(r["embedding"], np.float32) for k, r in best.items()}


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the runner's worker processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_pipeline(photos_dir, out, spec, beam_args, turns=None, closer=None):
    """embed.run on a pipeline whose result is kept, so the bench reads its counters: (summary, counters)."""
    from facebeam.pipelines.runner.job_options import pipeline_options
    from facebeam.pipelines.runner.launch import create_pipeline

    args = (*beam_args, *options.QUIET_WORKERS)
    p = create_pipeline(pipeline_options(args))
    kept = {}
    run = p.run

    def run_and_keep(*a, **k):
        kept["result"] = run(*a, **k)
        return kept["result"]

    p.run = run_and_keep
    summary = embed.run(embed.EmbedConfig(Inputs((photos_dir,)), out, spec, beam_args=args,
                                          turns=turns or options.DEFAULT_TURNS,
                                          closer=closer or options.DEFAULT_CLOSER), pipeline=p)
    return summary, metrics.read_counters(kept["result"])


def descriptor_alone(photos, spec, n_faces: int = 48) -> dict:
    """The recognizer alone, one thread, on chips of the sample's faces: CPU seconds per face for
    the engine the pipeline uses and for dlib's own code (the reference)."""
    from facebeam.transforms import images, weights
    from facebeam.transforms.faces import DLIB_RESNET_FILE, DlibResnet, FaceModel

    model = FaceModel(EmbeddingSpec.preset("chip") if spec.align_mode != "chip" else spec)
    chips = []
    for path in photos:
        with open(path, "rb") as f:
            data = f.read()
        chips += [c for _, c in model.chips(images.decode(path, data, "", draft=True))]
        if len(chips) >= n_faces:
            break
    engine = model.descriptor
    out = {"faces": len(chips), "engine": engine.name}
    for key, run in (("core_s_per_face", engine), ("dlib_core_s_per_face", DlibResnet(weights.resolve(DLIB_RESNET_FILE)))):
        run(chips[:2])  # warm
        started = time.thread_time()
        run(chips)
        out[key] = round((time.thread_time() - started) / len(chips), 4)
    return out


def variant_closer(text: str) -> str:
    """PRESET[...][:CLOSER] -> the closer look's mode (faces.CLOSER; default near-limit)."""
    from facebeam.transforms.faces import CLOSER

    closer = text.partition(":")[2] or options.DEFAULT_CLOSER
    if closer not in CLOSER:
        raise UserError(f"variant {text!r}: the closer look is one of {', '.join(CLOSER)}")
    return closer


def variant_spec(text: str) -> EmbeddingSpec:
    """PRESET[@MAX_SIDE][/upN][:CLOSER] -> the spec, e.g. "mmod@960", "chip@1280/up0" (CLOSER: variant_closer)."""
    head, _, up = text.partition(":")[0].partition("/up")
    preset, _, side = head.partition("@")
    overrides = {}
    if side:
        overrides["detect_max_side"] = int(side)
    if up:
        overrides["detect_upsample"] = int(up)
    return EmbeddingSpec.preset(preset, **overrides)


def compare_detection(variants, photos_dir, work, names, pairs_csv, beam_args, turns, done=None) -> list:
    """The pipeline once per detection variant on the same photos: one row each."""
    rows = []
    for text in variants:
        spec, closer = variant_spec(text), variant_closer(text)
        if done and done[0] == (spec, closer):
            summary, counters, out, job_cpu = done[1:]
        else:
            out = os.path.join(work, f"compare-{len(rows)}")
            cpu = cpu_seconds()
            summary, counters = run_pipeline(photos_dir, out, spec, beam_args, turns, closer)
            job_cpu = cpu_seconds() - cpu
        n = summary["images_seen"]
        vectors = pipeline_vectors(out)
        if names:
            vectors = {names[k]: v for k, v in vectors.items() if k in names}
        acc, n_pairs = pair_accuracy(vectors, spec, pairs_csv)
        stages = {k: round(v / n, 4) for k, v in metrics.stage_totals(counters).items()} if n else {}
        rows.append({"variant": text, "spec_id": spec.spec_id, "detector": spec.detector,
                     "detect_max_side": spec.detect_max_side, "upsample": spec.upsample,
                     "images_per_s": round(n / summary["elapsed_s"], 3), "images": n, "faces": summary["faces"],
                     "images_with_face": summary["images_embedded"], "pair_accuracy": round(acc, 4), "pairs": n_pairs,
                     "stage_core_s_per_photo": stages, "core_s_per_photo": round(sum(stages.values()), 4),
                     "job_core_s_per_photo": round(job_cpu / n, 4) if n else None,
                     # what 2 free cores would give, from the job's CPU (load-independent): the 30/s target
                     "images_per_s_on_free_cores": round(os.cpu_count() * n / job_cpu, 2) if job_cpu else None,
                     "turned_faces": sum(v["faces"] for v in summary["detection"]["turned"].values()),
                     "closer": summary["detection"]["closer"],
                     "providers": summary["detection"]["providers"]})
    return rows


def collages(photos, n: int = 4, cell: int = 640, count: int = 3) -> list:
    """JPEG bytes of `count` n x n collages of single-face sample photos, each fitted to a cell: photos
    no detector here was tuned on, with faces 1/n as large in the detection copy (a crowd's sizes)."""
    import cv2

    out = []
    for k in range(min(count, len(photos) // (n * n))):  # full collages only
        canvas = np.zeros((n * cell, n * cell, 3), np.uint8)
        for i, path in enumerate(photos[k * n * n:(k + 1) * n * n]):
            img = cv2.imread(path)
            s = cell / max(img.shape[:2])
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            r, c = divmod(i, n)
            canvas[r * cell:r * cell + img.shape[0], c * cell:c * cell + img.shape[1]] = img
        out.append(cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    return out


def small_face_recall(variants, photos, turns) -> list:
    """Faces each variant finds in collages of single-face photos (one face per cell), in this process."""
    from facebeam.transforms import images
    from facebeam.transforms.faces import FaceModel

    singles = [p for p in photos if os.path.basename(p).startswith("img") and "reflection" not in p]
    data = collages(singles)
    cells = 16 * len(data)  # one face per cell
    rows = []
    for text in variants:
        model = FaceModel(variant_spec(text), turns, variant_closer(text))
        cpu = time.process_time()
        found = sum(len(model.embed([images.decode("collage", d, "", draft=True)])[0].faces) for d in data)
        rows.append({"variant": text, "faces": found, "cells": cells,
                     "core_s_per_collage": round((time.process_time() - cpu) / len(data), 3)})
    return rows


def detectors_alone(photos, n: int = 24) -> list:
    """Each detector setting alone on the sample's detection copies (640 px, as the pipeline makes
    them), one after the other in this process: core-seconds per photo and faces found."""
    import cv2

    from facebeam.transforms import images, mmod, weights

    copies = []
    for path in photos[:n]:
        with open(path, "rb") as f:
            copies.append(images.decode(path, f.read(), "", draft=True).detect_bgr)
    import dlib

    hog = dlib.get_frontal_face_detector()
    path = weights.resolve(mmod.MMOD_FILE)
    rows = []

    def timed(name, fn, items, threads=1):
        fn(items[:1])  # warm
        cpu, wall = time.process_time(), time.perf_counter()
        faces = fn(items)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows.append({"setting": name, "photos": len(items), "faces": faces, "threads": threads,
                     "core_s_per_photo": round(cpu / len(items), 4), "wall_s_per_photo": round(wall / len(items), 4)})

    def hog_run(up, scale=1.0):
        def run(items):
            found = 0
            for bgr in items:
                gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                if scale != 1.0:
                    gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                found += len(hog.run(gray, up)[0])
            return found
        return run

    timed("hog 640 upsample 1 (today)", hog_run(1), copies)
    timed("hog 640 upsample 0", hog_run(0), copies)
    timed("hog 480 upsample 1", hog_run(1, 0.75), copies)
    for threads, graph in ((1, "all"), (1, "basic"), (2, "all")):
        det = mmod.MmodDetector(path, threads=threads, graph_level=graph)
        timed(f"cnn 640 ort threads {threads} graph {graph}", lambda items, d=det: sum(len(d(c[:, :, ::-1])) for c in items),
              copies, threads)
    det = mmod.MmodDetector(path)
    small = [cv2.resize(c, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA) for c in copies]
    timed("cnn 480", lambda items: sum(len(det(c[:, :, ::-1])) for c in items), small)
    # Batching needs photos of one size (dlib's detect_mult asks the same): 640x480 copies.
    same = [np.ascontiguousarray(cv2.resize(c, (640, 480), interpolation=cv2.INTER_AREA)[:, :, ::-1]) for c in copies]
    timed("cnn 640x480 one at a time", lambda items: sum(len(det(c)) for c in items), same)
    timed("cnn 640x480 batches of 4", lambda items: sum(len(f) for i in range(0, len(items), 4)
                                                        for f in det.batch(items[i:i + 4])), same)
    return rows


def turn_scores(photos) -> dict:
    """HOG's best score on each photo's detection copy, upright and turned 90, 180 and 270 degrees (the photos
    are upright, so a turned find is a false face), and the fit behind faces.SURE_HOG_SCORE: the lowest tenth
    above every false find of the photos turned 180 degrees, with what each threshold costs and misses."""
    from facebeam.transforms import images
    from facebeam.transforms.faces import SURE_HOG_SCORE, FaceModel

    model = FaceModel(EmbeddingSpec.preset("chip"), turns="off")
    upright, false = [], {90: [], 180: [], 270: []}
    for path in photos:
        with open(path, "rb") as f:
            bgr = images.decode(path, f.read(), "", draft=True).detect_bgr
        for turn in (0, 90, 180, 270):
            found = model.detect(np.ascontiguousarray(np.rot90(bgr, turn // 90)))
            if found:
                (upright if turn == 0 else false[turn]).append(max(f[4] for f in found))
    up, f180 = np.asarray(upright), np.asarray(false[180])
    fitted = round(float(np.floor(f180.max() * 10) + 1) / 10, 1) if len(f180) else None
    grid = [round(0.1 * i, 1) for i in range(5, 16)]
    return {"photos": len(photos), "upright_with_face": len(up), "false_finds": {t: len(v) for t, v in false.items()},
            "false_180_max": float(f180.max()) if len(f180) else None,
            "upright_quantiles": {q: float(np.quantile(up, q)) for q in (0.01, 0.02, 0.05)} if len(up) else {},
            "thresholds": [{"score": t, "upright_below": int((up < t).sum()), "false_180_at_or_above": int((f180 >= t).sum())}
                           for t in grid],
            "fitted": fitted, "shipped": SURE_HOG_SCORE}


def print_turn_scores(r: dict) -> None:
    n = r["photos"]
    print(f"HOG's best score on {n} photos' detection copies (turns: false finds of upright photos turned):")
    print(f"  upright: a face in {r['upright_with_face']}; false finds turned 90/180/270: "
          f"{r['false_finds'][90]} / {r['false_finds'][180]} / {r['false_finds'][270]} photos "
          f"(180: {100 * r['false_finds'][180] / n:.0f}%, best score {r['false_180_max'] or 0:.3f})")
    print(f"  {'threshold':>9} {'upright below (pay the turns)':>30} {'false 180 at or above (kept)':>29}")
    for t in r["thresholds"]:
        print(f"  {t['score']:9.1f} {t['upright_below']:22d} ({100 * t['upright_below'] / max(1, r['upright_with_face']):4.1f}%)"
              f" {t['false_180_at_or_above']:28d}")
    print(f"turn-scores: fitted SURE_HOG_SCORE {r['fitted']} (the lowest tenth above every false 180 find); "
          f"shipped {r['shipped']}")


@dataclasses.dataclass(frozen=True)
class BenchEmbedConfig:
    input: str = DEFAULT_SAMPLE
    photos: int = 0
    output: str = None
    spec_preset: str = "chip"
    naive_limit: int = None
    json_out: str = None
    compare: tuple = ("chip", "mmod")
    turns: str = options.DEFAULT_TURNS
    turn_scores: bool = False
    beam_args: tuple = ()


def build_parser():
    parser = options.parser("facebeam bench embed", __doc__)
    parser.add_argument("--input", default=DEFAULT_SAMPLE, help="photos to embed")
    parser.add_argument("--photos", type=options.NON_NEGATIVE, default=0,
                        help="embed N augmented copies of the sample, made at run time (default: the sample as is)")
    parser.add_argument("--output", default=None, help="pipeline output folder (default: a temp dir)")
    parser.add_argument("--spec-preset", default="chip", choices=sorted(SPEC_PRESETS),
                        help="the pipeline's spec (default %(default)s, the default spec)")
    parser.add_argument("--naive-limit", type=options.NON_NEGATIVE, default=None,
                        help="time the naive loop on N photos only (default: all of the sample; 64 with --photos)")
    parser.add_argument("--compare", default="chip,mmod",
                        help="detection variants run side by side on the same photos, "
                             "PRESET[@MAX_SIDE][/upN][:off|near-limit|always] (the closer look) comma-separated "
                             "(default %(default)s; '' for none)")
    options.add_turns(parser)
    parser.add_argument("--turn-scores", action="store_true",
                        help="only score HOG's finds on the photos upright and turned, and fit the score that "
                             "makes an upright find sure (what --turns no-face needs); no pipeline runs")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    return parser


def configure(a: options.Args, beam_args=()) -> BenchEmbedConfig:
    return BenchEmbedConfig(input=a.input, photos=a.photos, output=a.output, spec_preset=a.spec_preset,
                            naive_limit=a.naive_limit, json_out=a.json_out,
                            compare=tuple(v for v in a.compare.split(",") if v), turns=a.turns,
                            turn_scores=a.turn_scores, beam_args=tuple(beam_args))


def run(ns: BenchEmbedConfig, pipeline=None) -> dict:
    beam_args = ns.beam_args
    spec = EmbeddingSpec.preset(ns.spec_preset)
    sample = sorted(glob.glob(os.path.join(ns.input, "*.jpg")))
    pairs_csv = os.path.join(ns.input, "face-recognition-pivot.csv")
    work = ns.output or tempfile.mkdtemp(prefix="facebeam-bench-")
    if ns.photos:
        photos_dir = os.path.join(work, "photos")
        os.makedirs(photos_dir, exist_ok=True)
        photos = augmented_copies(ns.input, ns.photos, photos_dir)
        # The first copy of each sample photo (a re-encode) stands for it in the labeled pairs.
        names = {os.path.basename(c): os.path.basename(s) for c, s in zip(photos, sample)}
    else:
        photos_dir, photos, names = ns.input, sample, None
    if ns.turn_scores:
        result = turn_scores(photos)
        print_turn_scores(result)
        if ns.json_out:
            with open(ns.json_out, "w") as f:
                json.dump(result, f, indent=2)
        return result
    out = os.path.join(work, "pipeline")

    cpu_before = cpu_seconds()
    for text in ns.compare:
        variant_spec(text), variant_closer(text)  # a bad variant fails before any photo is embedded
    summary, counters = run_pipeline(photos_dir, out, spec, beam_args, ns.turns)
    job_cpu = cpu_seconds() - cpu_before  # launcher + workers, start-up included: independent of other load
    n = summary["images_seen"]
    fast_rate = n / summary["elapsed_s"]
    vectors = pipeline_vectors(out)
    if names:
        vectors = {names[k]: v for k, v in vectors.items() if k in names}
    fast_acc, n_pairs = pair_accuracy(vectors, spec, pairs_csv)
    stages = metrics.stage_totals(counters)
    per_photo = {k: round(v / n, 4) for k, v in stages.items()} if n else {}

    limit = ns.naive_limit if ns.naive_limit is not None else (64 if ns.photos else 0)
    subset = photos[:: max(1, len(photos) // limit)][:limit] if limit else photos
    naive_vectors, naive_failed, naive_s = naive_loop(subset, spec)
    naive_rate = len(subset) / naive_s
    if names:
        naive_vectors = {names[k]: v for k, v in naive_vectors.items() if k in names}
    naive_acc, naive_pairs = pair_accuracy(naive_vectors, spec, pairs_csv)

    desc = descriptor_alone(sample, spec)
    cores = os.cpu_count()
    faces_per_photo = summary["faces"] / n if n else 0.0
    # The physical limit: every core running the descriptor and nothing else.
    limit_rate = cores / (desc["core_s_per_face"] * faces_per_photo) if faces_per_photo else float("nan")
    result = {
        "photos": len(photos), "augmented": bool(ns.photos), "cores": cores, "spec_id": spec.spec_id,
        "spec": spec.identity(), "load_average": list(os.getloadavg()),
        "pipeline": {"images_per_s": round(fast_rate, 3), "elapsed_s": summary["elapsed_s"], "images": n,
                     "faces": summary["faces"], "failed": summary["images_failed"],
                     "pair_accuracy": round(fast_acc, 4), "pairs": n_pairs, "runner": summary["runner"],
                     "stage_core_s": stages, "stage_core_s_per_photo": per_photo,
                     "stage_core_s_per_photo_sum": round(sum(per_photo.values()), 4),
                     "job_core_s": round(job_cpu, 2), "job_core_s_per_photo": round(job_cpu / n, 4) if n else None},
        "naive": {"images_per_s": round(naive_rate, 3), "elapsed_s": round(naive_s, 2), "images": len(subset),
                  "core_s_per_photo": round(naive_loop.cpu_s / len(subset), 4),
                  "failed": naive_failed, "pair_accuracy": round(naive_acc, 4), "pairs": naive_pairs},
        "descriptor_alone": {**desc, "faces_per_photo": round(faces_per_photo, 3),
                             "images_per_s_limit": round(limit_rate, 3)},
        "ratio": round(fast_rate / naive_rate, 2),
        # Load-independent: CPU per photo, naive loop vs the whole job, times the cores the job can use.
        "cpu_ratio": round(cores * (naive_loop.cpu_s / len(subset)) / (job_cpu / n), 2) if n else None,
        "ratio_to_descriptor_limit": round(fast_rate / limit_rate, 3),
    }
    print(f"pipeline: {fast_rate:6.2f} images/s  accuracy {fast_acc:.4f} on {n_pairs} pairs  "
          f"({n} photos, {summary['elapsed_s']:.1f} s with start-up, {summary['runner']}, spec {ns.spec_preset} {spec.spec_id})")
    print(f"naive   : {naive_rate:6.2f} images/s  accuracy {naive_acc:.4f} on {naive_pairs} pairs  "
          f"(DeepFace.represent loop, {len(subset)} photos)")
    print(f"ratio   : {result['ratio']:.1f}x on {cores} cores  (by CPU per photo: naive "
          f"{result['naive']['core_s_per_photo']:.3f} vs whole job {job_cpu / n:.3f} core-s, x {cores} cores = "
          f"{result['cpu_ratio']:.1f}x: the ratio with both cores free for the job, an upper bound)")
    print("where the pipeline's time goes, core-seconds per photo (worker thread CPU):")
    for k, v in per_photo.items():
        print(f"  {k:<11} {v:7.4f}")
    print(f"  {'sum':<11} {result['pipeline']['stage_core_s_per_photo_sum']:7.4f}   "
          f"(wall x cores per photo: {summary['elapsed_s'] * cores / n:.4f})")
    print(f"  {'whole job':<11} {job_cpu / n:7.4f}   (CPU of the launcher and the workers, start-up, Beam and "
          f"writing included: {job_cpu:.1f} core-s; unlike wall time, not inflated by other load)")
    print(f"descriptor alone ({desc['engine']}): {desc['core_s_per_face']:.4f} core-s/face x {faces_per_photo:.2f} "
          f"faces/photo -> limit {limit_rate:.2f} images/s on {cores} cores; pipeline at "
          f"{result['ratio_to_descriptor_limit']:.3f} of it (dlib's own code: {desc['dlib_core_s_per_face']:.4f} core-s/face)")
    print(f"load average during the bench: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if ns.compare:
        result["detection"] = compare_detection(ns.compare, photos_dir, work, names, pairs_csv, beam_args, ns.turns,
                                                done=((spec, options.DEFAULT_CLOSER), summary, counters, out, job_cpu))
        result["detectors_alone"] = detectors_alone(sample)
        result["small_faces"] = small_face_recall(ns.compare, sample, ns.turns)
        print_detection(result, ns.turns)
    if ns.json_out:
        with open(ns.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return result


def print_detection(result: dict, turns: str) -> None:
    rows = result["detection"]
    stages = [k for k in metrics.STAGES if any(k in r["stage_core_s_per_photo"] for r in rows)]
    print(f"detection side by side on the same {rows[0]['images']} photos (turns {turns}; "
          f"providers {', '.join(sorted({p for r in rows for p in r['providers']})) or '-'}):")
    print(f"  {'variant':<16} {'photos/s':>8} {'faces':>6} {'w/face':>6} {'turned':>6} {'closer':>6} {'pairs acc':>9} "
          + " ".join(f"{k:>10}" for k in stages) + f" {'stages':>9} {'whole job':>9} {'free-core/s':>11}")
    for r in rows:
        print(f"  {r['variant']:<16} {r['images_per_s']:8.2f} {r['faces']:6d} {r['images_with_face']:6d} "
              f"{r['turned_faces']:6d} {r['closer']['tried']:6d} {r['pair_accuracy']:9.4f} "
              + " ".join(f"{r['stage_core_s_per_photo'].get(k, 0):10.4f}" for k in stages)
              + f" {r['core_s_per_photo']:9.4f} {r['job_core_s_per_photo']:9.4f} {r['images_per_s_on_free_cores']:11.2f}")
    base = rows[0]
    for r in rows[1:]:
        print(f"  {r['variant']} / {base['variant']}: photos/s x{r['images_per_s'] / base['images_per_s']:.2f}, "
              f"stage core-s per photo x{r['core_s_per_photo'] / base['core_s_per_photo']:.2f}, "
              f"whole-job core-s per photo x{r['job_core_s_per_photo'] / base['job_core_s_per_photo']:.2f}, "
              f"faces {r['faces'] - base['faces']:+d}")
    print(f"  (free-core/s: {os.cpu_count()} cores / whole-job core-s per photo, what the job would do with "
          "the cores to itself; photos/s above is under the machine's load)")
    print("each detector alone on the sample's detection copies (core-s per photo, faces found):")
    for r in result["detectors_alone"]:
        print(f"  {r['setting']:<34} {r['core_s_per_photo']:7.4f} core-s  {r['wall_s_per_photo']:7.4f} wall-s  "
              f"{r['faces']:3d} faces on {r['photos']}")
    print("faces found in collages of 16 single-face sample photos (2560 px: faces 1/4 as large, as in a crowd):")
    for r in result["small_faces"] if result["small_faces"][0]["cells"] else ():
        print(f"  {r['variant']:<16} {r['faces']:3d} of {r['cells']}  ({r['core_s_per_collage']:.3f} core-s per collage)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv=None) -> int:
    import sys

    return jobs.main(sys.modules[__name__], argv)
