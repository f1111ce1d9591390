"""The embed job on the real sample photos: accuracy, determinism, accounting."""
import os

from facebeam.pipelines import embed
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import job, largest_face_by_file, pair_accuracy, read_rows, sample_images


def test_every_sample_photo_gives_faces_and_the_summary_adds_up(sample_run):
    out, summary = sample_run
    rows = read_rows(os.path.join(out, "embeddings"))
    photos = {os.path.basename(p) for p in sample_images()}
    assert {os.path.basename(r["image_path"]) for r in rows} == photos
    assert summary["images_seen"] == len(photos)
    assert summary["images_seen"] == summary["images_embedded"] + sum(summary["images_failed"].values())
    assert summary["faces"] == len(rows)
    assert all(len(r["embedding"]) == 128 and r["model"] == "Dlib" for r in rows)
    assert len({r["face_id"] for r in rows}) == len(rows)
    couple = [r for r in rows if os.path.basename(r["image_path"]) == "couple.jpg"]
    assert len(couple) >= 2
    # No whole-frame "faces": every box is well inside its image.
    assert all(r["box_w"] < r["image_width"] and r["box_h"] < r["image_height"] for r in rows)
    assert summary["images_per_s"] > 0 and summary["runner"].startswith("DirectRunner")


def test_labeled_pairs_reach_the_accuracy_bar(sample_run):
    out, _ = sample_run
    vectors = {k: r["embedding"] for k, r in largest_face_by_file(read_rows(os.path.join(out, "embeddings"))).items()}
    accuracy = pair_accuracy(vectors, EmbeddingSpec())
    assert accuracy >= 0.98, accuracy


def test_two_runs_give_identical_ids_and_embeddings(sample_run, tmp_path):
    out, _ = sample_run
    subset = sorted(sample_images())[:12]
    listing = tmp_path / "subset.txt"
    listing.write_text("\n".join(subset) + "\n")
    again = tmp_path / "again"
    job(embed, ["--input", str(listing), "--output", str(again)])
    first = {r["face_id"]: r for r in read_rows(os.path.join(out, "embeddings")) if r["image_path"] in subset}
    second = {r["face_id"]: r for r in read_rows(str(again / "embeddings"))}
    assert first.keys() == second.keys() and len(first) >= 12
    for fid, row in first.items():
        assert row["embedding"] == second[fid]["embedding"]
        assert (row["box_x"], row["box_y"], row["box_w"], row["box_h"]) == (
            second[fid]["box_x"], second[fid]["box_y"], second[fid]["box_w"], second[fid]["box_h"])
