"""Faces worth clustering: box size, detector confidence and crop sharpness limits."""
from __future__ import annotations

import dataclasses

import numpy as np

SHARP_PX = 64


@dataclasses.dataclass(frozen=True)
class Limits:
    """Faces worth clustering; those below a limit are kept, marked `low_quality`, and not clustered."""

    # Measured (pipelines/bench/cluster.py docstring): faces scaled to 35 px move 0.46 on average from
    # their full-size embedding (max 0.50, near the edge threshold), at 45 px 0.39; blur that leaves a
    # Laplacian variance of ~45 (64 px crop) moves them 0.47 (max 0.63), at ~150 only 0.29.
    # dlib's HOG confidence did not separate bad faces (a 0.40 face clusters right), so it is off.
    min_box: int = 40
    min_confidence: float = 0.0
    min_sharpness: float = 50.0

    def passes(self, box_w, box_h, confidence, sharpness) -> np.ndarray:
        """Boolean mask of faces that meet every limit (a missing sharpness passes)."""
        side = np.minimum(np.asarray(box_w, dtype=np.float64), np.asarray(box_h, dtype=np.float64))
        ok = (side >= self.min_box) & (np.asarray(confidence, dtype=np.float64) >= self.min_confidence)
        s = np.asarray(sharpness, dtype=np.float64)
        return ok & ~(s < self.min_sharpness)


def sharpness(bgr: np.ndarray, box) -> float:
    """Variance of the Laplacian of the face crop, gray, resized to SHARP_PX square (so photo size does not count)."""
    import cv2

    x, y, w, h = (int(v) for v in box)
    crop = bgr[max(0, y):y + h, max(0, x):x + w]
    if crop.size == 0:
        return 0.0
    gray = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2GRAY)
    gray = cv2.resize(gray, (SHARP_PX, SHARP_PX), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())
