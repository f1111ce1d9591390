"""The embedding-space spec: one value that flows through every job.

It fixes what makes two vectors comparable (model, detector, alignment,
normalization, detection scale, library version). Its id is stamped on every
Parquet row, names the Elasticsearch index, and fixes dimension and distance.
"""
import dataclasses
import hashlib
import json
from importlib import metadata
from typing import Optional

from facebeam.transforms.errors import UserError

# Output sizes of deepface's recognition models (deepface/models/facial_recognition).
MODEL_DIMS = {
    "VGG-Face": 4096, "Facenet": 128, "Facenet512": 512, "OpenFace": 128,
    "DeepFace": 4096, "DeepID": 160, "Dlib": 128, "ArcFace": 512, "SFace": 128,
    "GhostFaceNet": 512, "Buffalo_L": 512,
}
METRICS = ("euclidean", "cosine", "euclidean_l2")
NORMALIZATIONS = ("base", "raw", "Facenet", "Facenet2018", "VGGFace", "VGGFace2", "ArcFace")
# How a detected face becomes the recognizer's input:
#   "chip":     dlib's own face chip (dlib.get_face_chip: 5 landmarks -> 150x150, padding 0.25, what the
#               Dlib ResNet was trained on), cut from an image decoded only as large as the face needs.
#               Applies to model Dlib + detector dlib + align + expand_percentage 0; any other spec is "deepface".
#   "deepface": deepface's own steps (rotate about the eyes, crop the box, pad-resize to 150x150):
#               equals DeepFace.represent for photos that need no downscaling (tests/test_golden.py).
ALIGN_MODES = ("chip", "deepface")
# Detectors of the chip path (faces.FaceModel.chips):
#   "dlib":      dlib's HOG detector (upright frontal faces), one 2x upsampling of the detection copy;
#   "mmod":      dlib's CNN (MMOD) detector from the same package's mmod_human_face_detector.dat, run by
#                onnxruntime (transforms/mmod.py): also profiles, tilted and partly hidden faces;
#   "dlib_mmod": a cascade: HOG first, the CNN only on photos where HOG finds no face.
CHIP_DETECTORS = ("dlib", "mmod", "dlib_mmod")
# Times the detection copy is upsampled 2x before detection when the spec does not say (detect_upsample None);
# the cascade's CNN always runs on the copy as it is (4x the pixels would cost it 4x).
DEFAULT_UPSAMPLE = {"dlib": 1, "mmod": 0, "dlib_mmod": 1}
# Specs stored before a field existed have its legacy value, and that value is left out of the
# spec_id, so their ids are unchanged: align_mode (deepface before it existed), detect_upsample.
LEGACY_DEFAULTS = {"align_mode": "deepface", "detect_upsample": None}


class SpecError(UserError, ValueError):
    """Two specs that must agree do not, or a spec is invalid."""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    model: str = "Dlib"
    detector: str = "dlib"
    align: bool = True
    normalization: str = "base"
    metric: str = "euclidean"
    # Detection runs on a copy whose longest side is at most this many pixels.
    detect_max_side: int = 640
    # Pad a downscaled detection copy the way deepface pads (4x the pixels to scan). Images that
    # need no downscaling are always padded, so they match DeepFace.represent exactly.
    pad_downscaled: bool = False
    expand_percentage: int = 0
    align_mode: str = "chip"
    # 2x upsamplings of the detection copy before the chip path's detector; None: DEFAULT_UPSAMPLE.
    detect_upsample: Optional[int] = None
    deepface_version: str = dataclasses.field(default_factory=lambda: _version("deepface"))

    def __post_init__(self):
        if self.model not in MODEL_DIMS:
            raise SpecError(f"unknown model {self.model!r}; choose one of {sorted(MODEL_DIMS)}")
        if self.metric not in METRICS:
            raise SpecError(f"unknown metric {self.metric!r}; choose one of {METRICS}")
        if self.normalization not in NORMALIZATIONS:
            raise SpecError(f"unknown normalization {self.normalization!r}")
        if self.detector == "skip":
            raise SpecError("detector 'skip' would embed whole frames as faces; pick a real detector")
        if self.detect_max_side < 64:
            raise SpecError("detect_max_side must be at least 64 pixels")
        if self.align_mode not in ALIGN_MODES:
            raise SpecError(f"unknown align_mode {self.align_mode!r}; choose one of {ALIGN_MODES}")
        if self.detector in CHIP_DETECTORS[1:] and not self.chip_applies:
            raise SpecError(f"detector {self.detector!r} runs on the chip path only (model Dlib, aligned, "
                            "expand_percentage 0)")
        if self.detector in CHIP_DETECTORS[1:] and self.align_mode != "chip":
            raise SpecError(f"detector {self.detector!r} needs align_mode 'chip'")
        if self.detect_upsample is not None and not 0 <= self.detect_upsample <= 2:
            raise SpecError("detect_upsample must be 0, 1 or 2")
        if self.align_mode == "chip" and not self.chip_applies:
            # The chip path is dlib's detector + landmarks + ResNet; everything else goes through deepface.
            object.__setattr__(self, "align_mode", "deepface")

    @property
    def chip_applies(self) -> bool:
        return (self.model == "Dlib" and self.detector in CHIP_DETECTORS and self.align
                and self.expand_percentage == 0)

    @property
    def upsample(self) -> int:
        """2x upsamplings of the detection copy before the chip path's detector."""
        return DEFAULT_UPSAMPLE.get(self.detector, 1) if self.detect_upsample is None else self.detect_upsample

    @classmethod
    def preset(cls, name: str, **overrides) -> "EmbeddingSpec":
        """A named spec (SPEC_PRESETS): "chip" (the default), "deepface", "mmod", "cascade"."""
        if name not in SPEC_PRESETS:
            raise SpecError(f"unknown spec preset {name!r}; choose one of {sorted(SPEC_PRESETS)}")
        return cls(**{**SPEC_PRESETS[name], **overrides})

    @property
    def dim(self) -> int:
        return MODEL_DIMS[self.model]

    @property
    def threshold(self) -> float:
        """deepface's tuned same-person distance threshold for this model and metric."""
        from deepface.config.threshold import thresholds

        return float(thresholds[self.model][self.metric])

    @property
    def es_similarity(self) -> str:
        return "l2_norm" if self.metric.startswith("euclidean") else "cosine"

    def identity(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def spec_id(self) -> str:
        ident = self.identity()
        for k, legacy in LEGACY_DEFAULTS.items():  # specs from before a field existed keep their id
            if ident[k] == legacy:
                del ident[k]
        blob = json.dumps(ident, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    @property
    def slug(self) -> str:
        """A readable, index-name-safe label, e.g. 'dlib-dlib-a1-640-<id>'."""
        align = ("chip" if self.align_mode == "chip" else "a1") if self.align else "a0"
        parts = [self.model, self.detector, align, str(self.detect_max_side), self.spec_id]
        return "-".join(p.lower().replace("_", "").replace(".", "") for p in parts)

    def to_json(self) -> str:
        return json.dumps(self.identity(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "EmbeddingSpec":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, d: dict) -> "EmbeddingSpec":
        """A stored spec (identity()); one stored before a field existed gets that field's legacy value."""
        return cls(**{**LEGACY_DEFAULTS, **d})

    def distance(self, a, b):
        """Distance between vector(s) a and b under this spec's metric (numpy, broadcasting)."""
        import numpy as np

        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if self.metric == "euclidean_l2":
            a = a / np.linalg.norm(a, axis=-1, keepdims=True)
            b = b / np.linalg.norm(b, axis=-1, keepdims=True)
        if self.metric == "cosine":
            an = a / np.linalg.norm(a, axis=-1, keepdims=True)
            bn = b / np.linalg.norm(b, axis=-1, keepdims=True)
            return 1.0 - np.sum(an * bn, axis=-1)
        return np.linalg.norm(a - b, axis=-1)

    def require_same(self, other: "EmbeddingSpec", what: str = "index") -> None:
        if other.spec_id != self.spec_id:
            diff = {k: (v, other.identity()[k]) for k, v in self.identity().items() if other.identity()[k] != v}
            raise SpecError(
                f"embedding spec mismatch with the {what}: "
                + ", ".join(f"{k}: {a!r} here vs {b!r} there" for k, (a, b) in diff.items())
            )


# Named specs. "chip" is the default: dlib's own chips are what the Dlib ResNet was trained on
# (better pair accuracy on the sample) and cost a fraction of deepface's steps. "deepface" is
# the spec that reproduces DeepFace.represent (1e-6) and the one every index built before
# align_mode existed uses (same spec_id as then).
# "mmod" is the chip spec with dlib's CNN detector; "cascade" runs the CNN where HOG finds nothing.
SPEC_PRESETS = {"chip": {"align_mode": "chip"}, "deepface": {"align_mode": "deepface"},
                "mmod": {"align_mode": "chip", "detector": "mmod"},
                "cascade": {"align_mode": "chip", "detector": "dlib_mmod"}}
