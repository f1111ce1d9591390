"""The fast embed path ("chip" spec): accuracy, equivalences, spec ids. Speed lives in `bench embed`."""
import json
import os

import numpy as np
import pytest

from facebeam.transforms import images, metrics
from facebeam.transforms.faces import FaceModel, chip_level
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import largest_face_by_file, pair_accuracy, read_rows, sample_images

NAIVE_LOOP_ACCURACY = 0.9893  # DeepFace.represent's own on the 280 pairs (bench embed)


@pytest.fixture(scope="module")
def chip_model():
    return FaceModel(EmbeddingSpec())


def _decoded(path, draft=True):
    with open(path, "rb") as f:
        data = f.read()
    return images.decode(path, data, "sha", draft=draft)


def test_default_spec_is_chip_and_deepface_keeps_its_old_id():
    spec = EmbeddingSpec()
    assert spec.align_mode == "chip" and "chip" in spec.slug
    deepface = EmbeddingSpec.preset("deepface")
    # A spec stored before align_mode existed (no such key) is the deepface spec, same id.
    legacy = deepface.identity()
    del legacy["align_mode"]
    assert EmbeddingSpec.from_json(json.dumps(legacy)) == deepface
    assert EmbeddingSpec.from_json(json.dumps(legacy)).spec_id == deepface.spec_id != spec.spec_id
    assert EmbeddingSpec.from_json(spec.to_json()) == spec and EmbeddingSpec(**spec.identity()) == spec
    # Where dlib's chip does not apply, the spec is deepface's (and keeps the id it always had).
    for other in (EmbeddingSpec(model="Facenet"), EmbeddingSpec(align=False), EmbeddingSpec(expand_percentage=10)):
        assert other.align_mode == "deepface"


def test_default_spec_pair_accuracy_is_at_least_the_naive_loops(sample_run):
    out, summary = sample_run
    assert summary["spec_id"] == EmbeddingSpec().spec_id
    rows = read_rows(os.path.join(out, "embeddings"))
    vectors = {k: r["embedding"] for k, r in largest_face_by_file(rows).items()}
    accuracy = pair_accuracy(vectors, EmbeddingSpec())
    assert accuracy >= NAIVE_LOOP_ACCURACY, accuracy


def test_draft_decode_gives_the_same_faces_as_a_full_decode(chip_model):
    # The search command decodes at full size; the chip path re-decodes the same way as the job.
    photos = [p for p in sample_images() if os.path.basename(p) in ("couple.jpg", "img1.jpg", "img3.jpg")]
    for path in photos:
        draft, full = _decoded(path, draft=True), _decoded(path, draft=False)
        assert (draft.width, draft.height) == (full.width, full.height)
        a, b = chip_model.embed([draft])[0], chip_model.embed([full])[0]
        assert [f.box for f in a.faces] == [f.box for f in b.faces] and a.faces
        for fa, fb in zip(a.faces, b.faces):
            np.testing.assert_array_equal(fa.embedding, fb.embedding)


def test_a_batch_gives_what_one_image_at_a_time_gives(chip_model):
    imgs = [_decoded(p) for p in sample_images()[:6]]
    together = chip_model.embed(imgs)
    alone = [chip_model.embed([img])[0] for img in imgs]
    for t, a in zip(together, alone):
        assert [f.box for f in t.faces] == [f.box for f in a.faces]
        for ft, fa in zip(t.faces, a.faces):
            np.testing.assert_allclose(ft.embedding, fa.embedding, rtol=0, atol=1e-6)


def test_chip_faces_match_the_deepface_paths_boxes(chip_model):
    """Same detector: the chip path finds the faces the deepface path finds, at about the same boxes."""
    deepface = FaceModel(EmbeddingSpec.preset("deepface"))
    for path in sample_images()[:8]:
        a = chip_model.embed([_decoded(path)])[0]
        b = deepface.embed([_decoded(path, draft=False)])[0]
        assert len(a.faces) == len(b.faces), path
        for fa, fb in zip(sorted(a.faces, key=lambda f: f.box), sorted(b.faces, key=lambda f: f.box)):
            assert np.abs(np.subtract(fa.box, fb.box)).max() <= 0.2 * max(fb.box[2], fb.box[3]), (path, fa.box, fb.box)
            assert fa.left_eye is not None and fa.right_eye is not None


def test_levels():
    assert images.draft_level(4352, 2903, 640) == 2  # 1088 x 726
    assert images.draft_level(1280, 800, 640) == 1 and images.draft_level(1279, 800, 640) == 1
    assert images.draft_level(600, 400, 640) == 0
    assert images.draft_level(100_000, 100, 640) == images.MAX_DRAFT_LEVEL
    assert chip_level(1000, 3) == 2 and chip_level(1000, 1) == 1 and chip_level(149, 3) == 0


def test_stage_totals_in_core_seconds():
    totals = metrics.stage_totals({"stage_ms.decode": 1500, "stage_ms.descriptor": 250, "faces": 3})
    assert totals["decode"] == 1.5 and totals["descriptor"] == 0.25 and totals["write"] == 0.0
    assert set(metrics.STAGES) <= set(totals)


def test_weights_require_checks_files_without_loading(tmp_path, monkeypatch):
    from facebeam.transforms import weights

    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    paths = weights.require(EmbeddingSpec())  # seeded from the package that ships them
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        ["dlib_face_recognition_resnet_model_v1.dat", "shape_predictor_5_face_landmarks.dat"])
    assert all(p.startswith(str(tmp_path)) and os.path.getsize(p) > 0 for p in paths)
    monkeypatch.setattr(weights, "_shipped_path", lambda name: None)
    os.remove(paths[0])
    with pytest.raises(weights.WeightsMissing, match=os.path.basename(paths[0])):
        weights.require(EmbeddingSpec())


def test_onnxruntime_resnet_reproduces_dlibs_descriptors(chip_model):
    from facebeam.transforms import weights
    from facebeam.transforms.faces import DLIB_RESNET_FILE, DlibResnet, OnnxResnet

    chips = [c for p in sample_images() for _, c in chip_model.chips(_decoded(p))]
    assert len(chips) >= 64
    path = weights.resolve(DLIB_RESNET_FILE)
    ours, theirs = OnnxResnet(path)(chips), DlibResnet(path)(chips)
    assert ours.shape == theirs.shape == (len(chips), 128) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    assert np.abs(ours - theirs).max() < 1e-5  # in practice ~4e-7


def test_summary_carries_the_stage_totals(sample_run):
    """summary.json says where the CPU went: every stage the chip path runs took measurable time."""
    _, summary = sample_run
    stages = summary["stages_core_s"]
    assert set(metrics.STAGES) <= set(stages)
    assert all(stages[s] > 0 for s in ("decode", "detect", "align", "descriptor")), stages
    # The stages are CPU inside the workers: less than the job's whole CPU, which includes start-up.
    assert sum(stages.values()) < summary["elapsed_s"] * os.cpu_count()
