"""deepface behind one Beam ModelHandler: detect, align, represent.

Detection runs on a downscaled copy, padded the way deepface pads it when it
aligns; alignment and representation run on the original pixels with deepface's
own functions. For an image that needs no downscaling the result equals
`DeepFace.represent`. deepface is imported only inside the worker (`load_model`).
"""
import dataclasses
import logging
import threading
import time
from typing import Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from facebeam.transforms.images import DecodedImage
from facebeam.transforms.spec import EmbeddingSpec, SpecError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Face:
    box: tuple  # x, y, w, h in original-image pixels
    left_eye: Optional[tuple]
    right_eye: Optional[tuple]
    confidence: float
    embedding: np.ndarray  # float32[dim]


@dataclasses.dataclass
class ImageFaces:
    path: str
    sha256: str
    width: int
    height: int
    faces: list
    error: Optional[tuple] = None  # (reason, message) when this one image failed


class FaceModel:
    """The detector and recognizer for one spec, loaded once per worker process.

    Runners may call one process from several threads (Spark and Flink LOOPBACK do);
    dlib's models are not thread-safe, so each thread gets its own pair. They are
    built directly, not through deepface's global model cache, which has no lock.
    """

    def __init__(self, spec: EmbeddingSpec):
        self.spec = spec
        self._local = threading.local()
        started = time.perf_counter()
        detector, recognizer = self._pair()
        if int(recognizer.output_shape) != spec.dim:
            raise SpecError(f"{spec.model} gives {recognizer.output_shape}-d vectors, spec says {spec.dim}")
        self.load_seconds = time.perf_counter() - started

    def _pair(self):
        pair = getattr(self._local, "pair", None)
        if pair is None:
            from deepface.modules import modeling

            from facebeam.transforms import weights

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

        out = []
        target = self.recognizer.input_shape
        for r in self._regions(img):
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

    def embed(self, images: Sequence[DecodedImage]) -> list:
        """One recognizer call for all faces of all images in the batch."""
        found, results = [], []
        for img in images:
            result = ImageFaces(img.path, img.sha256, img.width, img.height, [])
            try:
                found.append((result, self.crops(img)))
            except Exception as e:  # one bad image must not fail its whole batch
                log.warning("detection failed for %s: %r", img.path, e)
                result.error = ("detection_error", repr(e))
            results.append(result)
        vectors = self.represent([crop for _, pairs in found for _, crop in pairs])
        i = 0
        for result, pairs in found:
            for face, _ in pairs:
                face.embedding = vectors[i]
                result.faces.append(face)
                i += 1
        return results


class FaceModelHandler(ModelHandler[DecodedImage, ImageFaces, FaceModel]):
    """Beam ModelHandler: small picklable settings here, the model in load_model()."""

    def __init__(self, spec: EmbeddingSpec, max_batch_size: int = 4):
        super().__init__()
        self._spec = spec
        self._max_batch_size = max_batch_size

    def load_model(self) -> FaceModel:
        return FaceModel(self._spec)

    def run_inference(self, batch: Sequence[DecodedImage], model: FaceModel,
                      inference_args: Optional[dict] = None) -> Iterable[ImageFaces]:
        return model.embed(batch)

    def get_num_bytes(self, batch: Sequence[DecodedImage]) -> int:
        return sum(img.bgr.nbytes for img in batch)

    def get_metrics_namespace(self) -> str:
        return "facebeam"

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": self._max_batch_size}
