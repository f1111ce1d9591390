"""Row shapes: explicit pyarrow schemas, content-addressed face ids, error rows."""
import hashlib
from importlib import metadata

import pyarrow as pa

from facebeam.transforms.spec import EmbeddingSpec

try:
    FACEBEAM_VERSION = metadata.version("facebeam")
except metadata.PackageNotFoundError:
    FACEBEAM_VERSION = "0+unknown"

# Stable reason codes for images that give no face rows.
REASONS = ("empty", "unreadable", "not_an_image", "truncated", "corrupt", "too_large",
           "no_face", "detection_error", "inference_error", "internal_error")


def face_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("face_id", pa.string()),
        ("image_path", pa.string()),
        ("image_sha256", pa.string()),
        ("face_index", pa.int32()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("box_x", pa.int32()), ("box_y", pa.int32()), ("box_w", pa.int32()), ("box_h", pa.int32()),
        ("left_eye_x", pa.int32()), ("left_eye_y", pa.int32()),
        ("right_eye_x", pa.int32()), ("right_eye_y", pa.int32()),
        ("confidence", pa.float32()),
        ("label", pa.string()),
        ("model", pa.string()),
        ("detector", pa.string()),
        ("align", pa.bool_()),
        ("metric", pa.string()),
        ("spec_id", pa.string()),
        ("spec", pa.string()),
        ("deepface_version", pa.string()),
        ("facebeam_version", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        # Degrees the photo was turned counter-clockwise for the detector to find this face (0: as stored).
        ("orientation", pa.int32()),
    ], metadata={"facebeam.dim": str(dim)})


ERROR_SCHEMA = pa.schema([
    ("image_path", pa.string()),
    ("image_sha256", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),
    ("message", pa.string()),
    ("spec_id", pa.string()),
])


def face_id(image_sha256: str, box: tuple, spec: EmbeddingSpec) -> str:
    """Same image bytes + same face position + same spec -> same id, on any run or runner."""
    key = f"{image_sha256}|{','.join(str(int(v)) for v in box)}|{spec.spec_id}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def face_rows(result, spec: EmbeddingSpec, label=None) -> list:
    rows = []
    stamp = {
        "model": spec.model, "detector": spec.detector, "align": spec.align, "metric": spec.metric,
        "spec_id": spec.spec_id, "spec": spec.to_json(), "deepface_version": spec.deepface_version,
        "facebeam_version": FACEBEAM_VERSION,
    }
    # Faces are numbered left to right, top to bottom, so face_index does not depend on detector order.
    for i, face in enumerate(sorted(result.faces, key=lambda f: (f.box[0], f.box[1]))):
        le, re = face.left_eye or (None, None), face.right_eye or (None, None)
        rows.append({
            "face_id": face_id(result.sha256, face.box, spec),
            "image_path": result.path, "image_sha256": result.sha256, "face_index": i,
            "image_width": result.width, "image_height": result.height,
            "box_x": face.box[0], "box_y": face.box[1], "box_w": face.box[2], "box_h": face.box[3],
            "left_eye_x": le[0], "left_eye_y": le[1], "right_eye_x": re[0], "right_eye_y": re[1],
            "confidence": face.confidence, "label": label,
            "embedding": face.embedding.tolist(), "orientation": face.orientation,
            **stamp,
        })
    return rows


def error_row(path: str, reason: str, message: str, stage: str, spec: EmbeddingSpec, sha256=None) -> dict:
    assert reason in REASONS, reason
    return {"image_path": path, "image_sha256": sha256, "stage": stage, "reason": reason,
            "message": (message or "")[:2000], "spec_id": spec.spec_id}


RESULT_SCHEMA = pa.schema([
    ("probe_path", pa.string()), ("probe_sha256", pa.string()), ("probe_face_index", pa.int32()),
    ("probe_box_x", pa.int32()), ("probe_box_y", pa.int32()), ("probe_box_w", pa.int32()), ("probe_box_h", pa.int32()),
    ("rank", pa.int32()),
    ("face_id", pa.string()), ("hit_image_path", pa.string()), ("hit_image_sha256", pa.string()),
    ("hit_face_index", pa.int32()),
    ("hit_box_x", pa.int32()), ("hit_box_y", pa.int32()), ("hit_box_w", pa.int32()), ("hit_box_h", pa.int32()),
    ("hit_label", pa.string()), ("hit_person_id", pa.string()), ("hit_person", pa.string()),
    ("score", pa.float32()), ("distance", pa.float32()), ("same_person", pa.bool_()),
    ("top_label", pa.string()), ("mode", pa.string()), ("spec_id", pa.string()),
])
