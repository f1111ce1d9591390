"""Weights come from packages; a model whose weights are absent fails at once, naming the file."""
import logging
import os
import time

from facebeam.pipelines import embed
from facebeam.transforms import weights
from tests.helpers import SAMPLE


def test_seed_places_shipped_dlib_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    placed = weights.seed()
    sizes = {os.path.basename(p): os.path.getsize(p) for p in placed}
    assert set(sizes) == {"dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat",
                          "mmod_human_face_detector.dat"}
    assert all(p.startswith(str(tmp_path)) for p in placed)
    assert sizes["mmod_human_face_detector.dat"] > 700_000  # the MMOD CNN is small (730 KB)
    assert all(n > 1_000_000 for name, n in sizes.items() if name != "mmod_human_face_detector.dat")


def test_absent_weights_fail_at_once_naming_file_and_place(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        code = embed.main(["--input", SAMPLE, "--output", str(tmp_path / "out"), "--model", "Facenet"])
    elapsed = time.monotonic() - started
    assert code == 2
    assert elapsed < 20, elapsed
    target = os.path.join(str(tmp_path), ".deepface", "weights", "facenet_weights.onnx")
    assert "facenet_weights.onnx" in caplog.text and target in caplog.text
    assert not os.path.exists(target) and not os.path.exists(tmp_path / "out")
