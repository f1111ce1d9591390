"""facebeam bench embed: the pipeline vs a naive DeepFace.represent loop, same photos, one run.

Prints images/s for each, the ratio, and each one's accuracy on the 280 labeled pairs.
"""
import argparse
import glob
import json
import logging
import os
import tempfile
import time

import numpy as np

from facebeam.pipelines import embed, options
from facebeam.transforms.sources import Inputs
from facebeam.transforms.spec import EmbeddingSpec

log = logging.getLogger(__name__)
DEFAULT_SAMPLE = os.path.join("..", "shared", "data", "faces")


def naive_loop(paths, spec):
    """What people do today: one DeepFace.represent call per file, one core."""
    from deepface import DeepFace

    from facebeam.transforms import weights

    weights.seed()
    vectors, failed = {}, 0
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="facebeam bench embed", description=__doc__)
    parser.add_argument("--input", default=DEFAULT_SAMPLE)
    parser.add_argument("--output", default=None, help="pipeline output folder (default: a temp dir)")
    parser.add_argument("--naive-limit", type=int, default=0, help="time the naive loop on the first N photos only")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    ns, beam_args = parser.parse_known_args(argv)
    spec = EmbeddingSpec()
    photos = sorted(glob.glob(os.path.join(ns.input, "*.jpg")))
    pairs_csv = os.path.join(ns.input, "face-recognition-pivot.csv")
    out = ns.output or tempfile.mkdtemp(prefix="facebeam-bench-")

    summary = embed.run(embed.EmbedConfig(Inputs((ns.input,)), out, spec, beam_args=(*beam_args, *options.QUIET_WORKERS)))
    fast_rate = summary["images_seen"] / summary["elapsed_s"]
    fast_acc, n_pairs = pair_accuracy(pipeline_vectors(out), spec, pairs_csv)

    subset = photos[: ns.naive_limit] if ns.naive_limit else photos
    vectors, naive_failed, naive_s = naive_loop(subset, spec)
    naive_rate = len(subset) / naive_s
    naive_acc, naive_pairs = pair_accuracy(vectors, spec, pairs_csv)

    result = {
        "photos": len(photos), "cores": os.cpu_count(),
        "pipeline": {"images_per_s": round(fast_rate, 3), "elapsed_s": summary["elapsed_s"],
                     "pair_accuracy": round(fast_acc, 4), "pairs": n_pairs, "runner": summary["runner"]},
        "naive": {"images_per_s": round(naive_rate, 3), "elapsed_s": round(naive_s, 2), "images": len(subset),
                  "failed": naive_failed, "pair_accuracy": round(naive_acc, 4), "pairs": naive_pairs},
        "ratio": round(fast_rate / naive_rate, 2),
    }
    print(f"pipeline: {fast_rate:6.2f} images/s  accuracy {fast_acc:.4f} on {n_pairs} pairs  ({summary['runner']})")
    print(f"naive   : {naive_rate:6.2f} images/s  accuracy {naive_acc:.4f} on {naive_pairs} pairs  (DeepFace.represent loop)")
    print(f"ratio   : {result['ratio']:.1f}x on {os.cpu_count()} cores")
    if ns.json_out:
        with open(ns.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0
