"""The CNN (MMOD) detector on onnxruntime against dlib's own, turned photos, and the crowded selfie."""
import os

import cv2
import numpy as np
import pytest

from facebeam.transforms import images, mmod, weights
from facebeam.transforms.faces import FaceModel
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import SAMPLE

# dlib's own CNN runs ~1 s per photo here (no BLAS): the comparison uses photos scaled to this side.
COMPARE_SIDE = 400
COMPARE = ("selfie-many-people.jpg", "couple.jpg", "img1.jpg", "img11_reflection.jpg", "img3.jpg",
           "img17.jpg", "img29.jpg", "img44.jpg", "img5.jpg", "img61.jpg")


def _rgb(name: str, side: int) -> np.ndarray:
    bgr = cv2.imread(os.path.join(SAMPLE, name))
    scale = side / max(bgr.shape[:2])
    bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _faces(model: FaceModel, data: bytes, name: str) -> list:
    return model.embed([images.decode(name, data, "", draft=True)])[0].faces


@pytest.fixture(scope="module")
def detectors():
    import dlib

    path = weights.resolve(mmod.MMOD_FILE)
    return mmod.MmodDetector(path), dlib.cnn_face_detection_model_v1(path)


@pytest.mark.parametrize("name", COMPARE)
def test_onnx_mmod_gives_dlibs_boxes_and_scores(detectors, name):
    ours, dlibs = detectors
    rgb = _rgb(name, COMPARE_SIDE)
    got = sorted(ours(rgb), key=lambda d: -d.confidence)
    want = sorted(dlibs(rgb, 0), key=lambda d: -d.confidence)
    assert want, f"dlib finds no face in {name}: pick another photo"
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        box = (g.left, g.top, g.right, g.bottom)
        ref = (w.rect.left(), w.rect.top(), w.rect.right(), w.rect.bottom())
        assert max(abs(a - b) for a, b in zip(box, ref)) <= 2, (name, box, ref)
        assert abs(g.confidence - w.confidence) < 1e-3, (name, g.confidence, w.confidence)


@pytest.mark.parametrize("side", [257, 517])
def test_onnx_mmod_gives_dlibs_boxes_at_other_sizes(detectors, side):
    ours, dlibs = detectors
    rgb = _rgb("selfie-many-people.jpg", side)
    got = [(d.left, d.top, d.right, d.bottom) for d in sorted(ours(rgb), key=lambda d: -d.confidence)]
    want = [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom())
            for d in sorted(dlibs(rgb, 0), key=lambda d: -d.confidence)]
    assert len(got) == len(want) > 0
    assert all(max(abs(a - b) for a, b in zip(g, w)) <= 2 for g, w in zip(got, want)), (got, want)


def test_pyramid_tiles_as_dlib_does():
    rects, (rows, cols) = mmod.pyramid_rects(400, 300, 10, 11)
    assert rects[0] == (11, 11, 310, 410)  # the image itself, inside the outer padding
    sizes = [(r[3] - r[1] + 1, r[2] - r[0] + 1) for r in rects]
    assert sizes[1] == (333, 250) and all(h >= mmod.MIN_LEVEL_ROWS for h, _ in sizes)
    for a, b in zip(rects, rects[1:]):  # no two levels overlap, all inside the tiled image
        assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
        assert min(b[0], b[1]) >= 0 and b[2] < cols and b[3] < rows


def test_cnn_spec_finds_more_faces_than_hog_in_the_crowded_selfie():
    with open(os.path.join(SAMPLE, "selfie-many-people.jpg"), "rb") as f:
        data = f.read()
    hog = _faces(FaceModel(EmbeddingSpec.preset("chip"), turns="off"), data, "selfie")
    cnn = _faces(FaceModel(EmbeddingSpec.preset("mmod"), turns="off"), data, "selfie")
    assert len(cnn) > len(hog) >= 3, (len(cnn), len(hog))


def test_cnn_spec_is_a_new_spec_and_old_ids_stay():
    assert EmbeddingSpec().spec_id == "12087e652389"  # the default (HOG chip) spec, as stored in indices
    assert EmbeddingSpec.preset("deepface").spec_id == "2876f5224600"
    ids = {EmbeddingSpec.preset(p).spec_id for p in ("chip", "mmod", "cascade")}
    assert len(ids) == 3
    assert EmbeddingSpec.from_dict(EmbeddingSpec().identity()).spec_id == EmbeddingSpec().spec_id


@pytest.mark.parametrize("preset", ["chip", "mmod"])
@pytest.mark.parametrize("name", ["img1.jpg", "img3.jpg"])
def test_turned_copies_give_their_face(tmp_path, preset, name):
    """A photo turned by 90/180/270 degrees (no EXIF) gives its face: same person as upright, the
    box in the turned photo's own frame, the orientation recorded."""
    model = FaceModel(EmbeddingSpec.preset(preset), turns="always")
    bgr = cv2.imread(os.path.join(SAMPLE, name))
    upright = _faces(model, cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes(), name)
    assert len(upright) == 1 and upright[0].orientation == 0
    up = upright[0]
    h, w = bgr.shape[:2]
    # A turn of k quarters clockwise is undone by k quarters counter-clockwise: what is recorded.
    for code, undo in ((cv2.ROTATE_90_CLOCKWISE, 90), (cv2.ROTATE_180, 180), (cv2.ROTATE_90_COUNTERCLOCKWISE, 270)):
        turned = cv2.rotate(bgr, code)
        data = cv2.imencode(".jpg", turned, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        faces = _faces(model, data, f"{name}-{undo}")
        assert len(faces) == 1, (undo, faces)
        face = faces[0]
        assert face.orientation == undo
        assert float(np.linalg.norm(face.embedding - up.embedding)) < 0.25, undo
        # The upright box's corners, carried into the turned photo's frame.
        x, y, bw, bh = up.box
        corners = np.array([[x, y], [x + bw, y + bh]], np.float64)
        if code == cv2.ROTATE_90_CLOCKWISE:
            corners = np.stack([h - 1 - corners[:, 1], corners[:, 0]], 1)
        elif code == cv2.ROTATE_180:
            corners = np.stack([w - 1 - corners[:, 0], h - 1 - corners[:, 1]], 1)
        else:
            corners = np.stack([corners[:, 1], w - 1 - corners[:, 0]], 1)
        ex0, ey0 = corners.min(0)
        ex1, ey1 = corners.max(0)
        fx, fy, fw, fh = face.box
        tol = 0.15 * max(bw, bh)  # the detector runs on differently resampled pixels when turned
        assert abs(fx - ex0) < tol and abs(fy - ey0) < tol, (undo, face.box, (ex0, ey0, ex1, ey1))
        assert abs(fx + fw - ex1) < tol and abs(fy + fh - ey1) < tol, (undo, face.box, (ex0, ey0, ex1, ey1))
        th, tw = turned.shape[:2]
        assert min(fx, fy) >= 0 and fx + fw < tw and fy + fh < th
        lx, ly = face.left_eye
        assert fx <= lx <= fx + fw and fy <= ly <= fy + fh


def test_hog_finds_a_photo_on_its_side_only_when_turns_are_tried():
    bgr = cv2.rotate(cv2.imread(os.path.join(SAMPLE, "img1.jpg")), cv2.ROTATE_90_CLOCKWISE)
    data = cv2.imencode(".jpg", bgr)[1].tobytes()
    assert _faces(FaceModel(EmbeddingSpec.preset("chip"), turns="off"), data, "on-its-side") == []
    faces = _faces(FaceModel(EmbeddingSpec.preset("chip"), turns="no-face"), data, "on-its-side")
    assert [f.orientation for f in faces] == [90]


def _upright_vectors(names: list) -> dict:
    model = FaceModel(EmbeddingSpec.preset("chip"), turns="off")
    out = {}
    for name in names:
        with open(os.path.join(SAMPLE, name), "rb") as f:
            faces = _faces(model, f.read(), name)
        assert len(faces) == 1, name
        out[name] = faces[0].embedding
    return out


def test_an_upside_down_photo_where_hog_fires_weakly_upright_gives_its_face_turned_back():
    """HOG finds a weak false face in about a quarter of upside-down photos; unsure, it must not stop the turns."""
    names = [f"img{i}.jpg" for i in range(1, 20)]
    model = FaceModel(EmbeddingSpec.preset("chip"), turns="no-face")
    fooled = []
    for name in names:
        turned = cv2.rotate(cv2.imread(os.path.join(SAMPLE, name)), cv2.ROTATE_180)
        if turned is None:
            continue
        data = cv2.imencode(".jpg", turned, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        upright_finds = model.detect(images.decode(name, data, "", draft=True).detect_bgr)
        if upright_finds:
            fooled.append((name, data, max(f[4] for f in upright_finds)))
    assert len(fooled) >= 3, [n for n, _, _ in fooled]  # the sample shows the case (img1, img3, img11, ...)
    want = _upright_vectors([n for n, _, _ in fooled])
    for name, data, score in fooled:
        faces = _faces(model, data, f"{name}-180")
        assert len(faces) == 1 and faces[0].orientation == 180, (name, score, faces)
        assert float(np.linalg.norm(faces[0].embedding - want[name])) < 0.25, name
    assert all(FaceModel.sure([(0, 0, 1, 1, s)], by_hog=True) is False for _, _, s in fooled)


def test_a_weak_upright_face_with_nothing_better_turned_stays_upright():
    """The least sure upright face of the sample (HOG below SURE_HOG_SCORE) is tried turned, and kept."""
    from facebeam.transforms.faces import SURE_HOG_SCORE

    model = FaceModel(EmbeddingSpec.preset("chip"), turns="no-face")
    weakest = None
    for name in sorted(os.listdir(SAMPLE)):
        if not name.startswith("img"):
            continue
        with open(os.path.join(SAMPLE, name), "rb") as f:
            data = f.read()
        found = model.detect(images.decode(name, data, "", draft=True).detect_bgr)
        if len(found) == 1 and (weakest is None or found[0][4] < weakest[2]):
            weakest = (name, data, found[0][4])
    name, data, score = weakest
    assert score < SURE_HOG_SCORE, weakest[::2]
    faces = _faces(model, data, name)
    assert [f.orientation for f in faces] == [0]
    assert float(np.linalg.norm(faces[0].embedding - _upright_vectors([name])[name])) < 1e-5


def test_embed_with_the_cnn_spec_names_detector_providers_and_turns_in_summary_json(tmp_path):
    import json
    import shutil

    from facebeam.pipelines import embed
    from tests.helpers import job, read_rows

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("couple.jpg", "img3.jpg"):
        shutil.copy(os.path.join(SAMPLE, name), photos / name)
    turned = cv2.rotate(cv2.imread(os.path.join(SAMPLE, "img1.jpg")), cv2.ROTATE_90_COUNTERCLOCKWISE)
    cv2.imwrite(str(photos / "img1-on-its-side.jpg"), turned)
    out = str(tmp_path / "out")
    summary = job(embed, ["--input", str(photos), "--output", out, "--detector", "mmod", "--turns", "always"])
    with open(os.path.join(out, "summary.json")) as f:
        written = json.load(f)
    for s in (summary, written):
        d = s["detection"]
        assert d["detector"] == "mmod" and d["turns"] == "always"
        assert d["orientations_tried"] == [0, 90, 180, 270]
        assert d["providers"] == ["CPUExecutionProvider"]  # no accelerator here
        assert all(d["turned"][str(t) if s is written else t]["tried"] == 3 for t in (90, 180, 270))
    assert summary["spec"]["detector"] == "mmod" and summary["spec_id"] == EmbeddingSpec.preset("mmod").spec_id
    rows = read_rows(os.path.join(out, "embeddings"))
    side = [r for r in rows if r["image_path"].endswith("img1-on-its-side.jpg")]
    assert [r["orientation"] for r in side] == [270]
    assert summary["detection"]["turned"][270]["faces"] == 1
    assert all(r["orientation"] == 0 for r in rows if not r["image_path"].endswith("on-its-side.jpg"))
    assert len(rows) >= 4 and all(r["spec_id"] == summary["spec_id"] for r in rows)


def test_execution_providers_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FACEBEAM_ORT_PROVIDERS", "CUDAExecutionProvider")  # not in this CPU build
    assert mmod.providers() == ["CPUExecutionProvider"]
    monkeypatch.delenv("FACEBEAM_ORT_PROVIDERS")
    import onnxruntime as ort

    want = (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in ort.get_available_providers() else [])
    assert mmod.providers() == want + ["CPUExecutionProvider"]
    from facebeam.transforms.errors import UserError

    monkeypatch.setenv("FACEBEAM_ORT_PROVIDERS", "CUDAExecutionProvidr")  # a typo: refused, not CPU in silence
    with pytest.raises(UserError, match="FACEBEAM_ORT_PROVIDERS names CUDAExecutionProvidr, which onnxruntime"):
        mmod.providers()
    monkeypatch.delenv("FACEBEAM_ORT_PROVIDERS")
    model = FaceModel(EmbeddingSpec.preset("mmod"), turns="off")
    assert model.providers == sorted(set(want + ["CPUExecutionProvider"]))


def test_bench_variants_name_specs():
    from facebeam.pipelines.bench.embed import variant_spec

    v = variant_spec("mmod@960/up1")
    assert (v.detector, v.detect_max_side, v.upsample) == ("mmod", 960, 1)
    assert variant_spec("chip") == EmbeddingSpec.preset("chip")
    assert variant_spec("cascade/up0").detector == "dlib_mmod" and variant_spec("cascade/up0").upsample == 0
    with pytest.raises(ValueError):
        variant_spec("nope")


def test_preloaded_models_serve_one_thread_each_and_embed_as_fresh_ones():
    """A spare harness preloads the default spec's models (faces.preload, pipelines/local/workers.py):
    the first thread of a FaceModel takes that set, a second thread loads its own, and the vectors are
    a freshly loaded model's."""
    import threading

    from facebeam.transforms import faces

    spec = EmbeddingSpec()
    with open(os.path.join(SAMPLE, "img1.jpg"), "rb") as f:
        data = f.read()
    fresh = _faces(FaceModel(spec, turns="off"), data, "img1")
    (_, _, descriptor, _), = faces.preload(spec)
    model = FaceModel(spec, turns="off")
    assert model.descriptor is descriptor
    warm = _faces(model, data, "img1")
    assert len(warm) == len(fresh) == 1 and warm[0].box == fresh[0].box
    np.testing.assert_allclose(warm[0].embedding, fresh[0].embedding, atol=1e-6)
    other = []
    thread = threading.Thread(target=lambda: other.append(model.descriptor))
    thread.start()
    thread.join()
    assert other[0] is not descriptor  # that set went to the first thread only


def _group_photo(face_px: int, n: int = 15) -> tuple:
    """A phone-sized group photo (4032 x 3024, JPEG) of `n` sample faces, each about `face_px` wide, in rows:
    (JPEG bytes, [(sample photo, its upright embedding)] in row order)."""
    from PIL import Image

    model = FaceModel(EmbeddingSpec(), turns="off", closer="off")
    canvas, sources = Image.new("RGB", (4032, 3024), (96, 112, 104)), []
    names = sorted(f for f in os.listdir(SAMPLE) if f.startswith("img") and f.endswith(".jpg"))
    for name in names:
        if len(sources) == n:
            break
        with open(os.path.join(SAMPLE, name), "rb") as f:
            data = f.read()
        found = _faces(model, data, name)
        if len(found) != 1:
            continue
        x, y, w, h = found[0].box
        photo = Image.open(os.path.join(SAMPLE, name)).convert("RGB")
        crop = photo.crop((int(x - 0.7 * w), int(y - 0.7 * h), int(x + 1.7 * w), int(y + 1.7 * h)))
        crop = crop.resize((round(crop.width * face_px / w), round(crop.height * face_px / h)), Image.Resampling.LANCZOS)
        i = len(sources)
        canvas.paste(crop, (250 + (i % 5) * 750, 300 + (i // 5) * 900))
        sources.append((name, found[0].embedding))
    buf = __import__("io").BytesIO()
    canvas.save(buf, format="JPEG", quality=92)
    return buf.getvalue(), sources


def _who(found: list, sources: list) -> list:
    """The sample photo each face found is nearest to, and whether that is the one pasted where it was found."""
    vectors = np.asarray([v for _, v in sources])
    out = []
    for face in found:
        x, y, w, h = face.box
        at = (x - 250) // 750 + 5 * ((y - 300) // 900)  # the slot the face was found in
        nearest = int(np.argmin(np.linalg.norm(vectors - face.embedding, axis=1)))
        out.append(nearest == at and float(np.linalg.norm(vectors[at] - face.embedding)) < 0.3)
    return out


def test_a_closer_look_finds_a_group_photos_small_faces_and_each_is_the_person_pasted_there():
    """At phone size (4032 px), faces 150 px wide are 24 px in the 640 px detection copy, below HOG's 40 px:
    the first look finds a few near its limit, and the closer look (near-limit, the default) finds the rest."""
    data, sources = _group_photo(150)
    first = _faces(FaceModel(EmbeddingSpec(), closer="off"), data, "group150")
    closer = _faces(FaceModel(EmbeddingSpec()), data, "group150")
    assert len(first) < len(sources) * 0.6 and len(closer) >= len(sources) - 1, (len(first), len(closer))
    assert all(_who(closer, sources)), _who(closer, sources)  # real faces, each the person pasted there


def test_faces_below_the_first_looks_reach_need_look_closer_always_and_a_no_face_row_says_so():
    from facebeam.transforms.faces import no_face_words

    data, sources = _group_photo(100, n=10)
    assert _faces(FaceModel(EmbeddingSpec()), data, "group100") == []  # nothing near the limit: no closer look
    always = _faces(FaceModel(EmbeddingSpec(), closer="always"), data, "group100")
    assert len(always) >= len(sources) - 1 and all(_who(always, sources))
    assert no_face_words(EmbeddingSpec(), 4032, 3024) == (
        "the detector found no face at least 252 px wide (--look-closer always also looks for faces down to 126 px)")
    assert no_face_words(EmbeddingSpec(), 4032, 3024, "always") == "the detector found no face at least 126 px wide"
    assert no_face_words(EmbeddingSpec(), 500, 400) == "the detector found no face at least 40 px wide"


def test_a_photo_whose_faces_are_well_above_the_limit_gets_no_closer_look():
    from facebeam.transforms import metrics

    with open(os.path.join(SAMPLE, "couple.jpg"), "rb") as f:
        data = f.read()
    counted = []
    real = metrics.count
    metrics.count = lambda name, n=1: counted.append(name) if name.startswith("closer.") else real(name, n)
    try:
        found = _faces(FaceModel(EmbeddingSpec()), data, "couple.jpg")
    finally:
        metrics.count = real
    assert len(found) == 2 and counted == []
