"""Test helpers: the sample data, reading outputs, the labeled pairs."""
import csv
import glob
import os

import numpy as np
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "faces"))
PAIRS = os.path.join(SAMPLE, "face-recognition-pivot.csv")


def sample_images():
    return sorted(glob.glob(os.path.join(SAMPLE, "*.jpg")))


def read_rows(folder: str) -> list:
    files = sorted(glob.glob(os.path.join(folder, "*.parquet")))
    assert files, f"no parquet files in {folder}"
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def largest_face_by_file(rows) -> dict:
    best = {}
    for r in rows:
        name = os.path.basename(r["image_path"])
        if name not in best or r["box_w"] * r["box_h"] > best[name]["box_w"] * best[name]["box_h"]:
            best[name] = r
    return best


def labeled_pairs():
    with open(PAIRS) as f:
        return [(os.path.basename(r["file_x"]), os.path.basename(r["file_y"]), r["decision"] == "Yes")
                for r in csv.DictReader(f)]


def pair_accuracy(vectors: dict, spec) -> float:
    """Share of the 280 labeled pairs judged right by the spec's threshold."""
    right = 0
    pairs = labeled_pairs()
    for x, y, same in pairs:
        d = float(spec.distance(np.asarray(vectors[x]), np.asarray(vectors[y])))
        right += (d <= spec.threshold) == same
    return right / len(pairs)
