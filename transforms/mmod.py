"""dlib's MMOD CNN face detector, run by onnxruntime: dlib's boxes and scores to within float rounding.

The network and its weights come from the shipped `mmod_human_face_detector.dat`, turned into an
ONNX model in memory (`weights.dlib_mmod_onnx`). What dlib does around the network is redone here
step by step, because the boxes depend on it (dlib/dnn/input.h, image_pyramid.h, loss.h):

- the input layer (`input_rgb_image_pyramid<pyramid_down<6>>`) normalizes the RGB image,
  (pixel - mean) / 256, and tiles it with its pyramid (each level 5/6 of the one before, made
  from it by align-corners bilinear resizing) into one tensor, padded;
- each score above the threshold at output cell (c, r) is a detector window centred on input
  point (8c + 14, 8r + 14), mapped back through the pyramid level nearest to it;
- boxes are rounded to integers and suppressed greedily by score, with loss_mmod's own test
  (intersection over the two boxes' bounding box, or the share of either box covered).

Sessions take their execution providers from the environment (`providers()`): the same model
and weights on any provider, so the spec does not depend on it.
"""
import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np

MMOD_FILE = "mmod_human_face_detector.dat"
MMOD_URL = "https://dlib.net/files/mmod_human_face_detector.dat.bz2"
PYRAMID_RATE = 5 / 6  # pyramid_down<6>
MIN_LEVEL_ROWS = 5  # compute_tiled_image_pyramid_details stops below this height


def providers() -> list:
    """onnxruntime execution providers, best first: FACEBEAM_ORT_PROVIDERS (comma-separated) if set,
    else CUDA when this onnxruntime has it, then CPU. A name onnxruntime does not know at all (a typo) is
    refused; a known one this build lacks is left out (a launcher's build may differ from its workers')."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = os.environ.get("FACEBEAM_ORT_PROVIDERS")
    if wanted:
        unknown = [p.strip() for p in wanted.split(",") if p.strip() and p.strip() not in ort.get_all_providers()]
        if unknown:
            from facebeam.transforms.errors import UserError

            raise UserError(f"FACEBEAM_ORT_PROVIDERS names {', '.join(unknown)}, which onnxruntime does not know; "
                            f"it knows {', '.join(ort.get_all_providers())}")
        chosen = [p.strip() for p in wanted.split(",") if p.strip() in available]
    else:
        chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return chosen + ["CPUExecutionProvider"] if "CPUExecutionProvider" not in chosen else chosen


def session(model: bytes, threads: int = 1, graph_level: str = "all"):
    """An onnxruntime session on `providers()`; one thread by default (a Beam worker per core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[graph_level]
    return ort.InferenceSession(model, opts, providers=providers())


@dataclasses.dataclass(frozen=True)
class Detection:
    left: int  # dlib rectangle corners, inclusive, in the input image's pixels
    top: int
    right: int
    bottom: int
    confidence: float


def pyramid_rects(rows: int, cols: int, padding: int, outer: int):
    """dlib's compute_tiled_image_pyramid_details for pyramid_down<6>: [(left, top, right, bottom)]
    of each level in the tiled image (level 0 first), and the tiled image's (rows, cols)."""
    sizes = [(rows, cols)]
    while True:
        rows, cols = math.floor(PYRAMID_RATE * rows), math.floor(PYRAMID_RATE * cols)
        if rows * cols == 0 or rows < MIN_LEVEL_ROWS:
            break
        sizes.append((rows, cols))
    total = sum(h + padding for h, _ in sizes) - 2 * padding
    height, prev_w, width0, height0 = 0, 0, sizes[0][1], sizes[0][0]
    for h, w in sizes:  # the first column goes on until the rest fits beside it
        if w <= width0 - prev_w - padding and (height - height0) * 2 >= total - height0:
            break
        height += h + padding
        prev_w = w
    height -= padding
    rects, y, i = [], outer, 0
    while y < height + outer and i < len(sizes):
        h, w = sizes[i]
        rects.append((outer, y, outer + w - 1, y + h - 1))
        y += h + padding
        i += 1
    y -= padding
    first = rects[0]
    while i < len(sizes):  # then up the right side, bottom to top, until it would touch level 0
        h, w = sizes[i]
        r = (outer + width0 - w, y - h, outer + width0 - 1, y - 1)
        if r[0] <= first[2] and first[0] <= r[2] and r[1] <= first[3] and first[1] <= r[3]:
            break
        rects.append(r)
        y -= h + padding
        i += 1
    return rects, (height + 2 * outer, width0 + 2 * outer)


def resize_bilinear(src: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's resize_image with interpolate_bilinear on (C, H, W) floats: corners aligned,
    the right and bottom neighbours clamped to the image."""
    h, w = src.shape[1:]
    ys = np.arange(rows) * ((h - 1) / max(rows - 1, 1))
    xs = np.arange(cols) * ((w - 1) / max(cols - 1, 1))
    top, left = np.floor(ys).astype(np.intp), np.floor(xs).astype(np.intp)
    bottom, right = np.minimum(top + 1, h - 1), np.minimum(left + 1, w - 1)
    fy, fx = (ys - top)[:, None], (xs - left)[None, :]
    a, b = src[:, top], src[:, bottom]
    upper = a[:, :, left] * (1 - fx) + a[:, :, right] * fx
    lower = b[:, :, left] * (1 - fx) + b[:, :, right] * fx
    return (upper * (1 - fy) + lower * fy).astype(np.float32)


def tiled_pyramid(rgb: np.ndarray, options):
    """(1, 3, H, W) float32 tensor of dlib's tiled pyramid for an RGB uint8 image, and the level rects."""
    rows, cols = rgb.shape[:2]
    rects, (nr, nc) = pyramid_rects(rows, cols, options.pyramid_padding, options.pyramid_outer_padding)
    out = np.zeros((3, nr, nc), np.float32)
    mean = np.asarray(options.mean_rgb, np.float32)[:, None, None]
    left, top, right, bottom = rects[0]
    out[:, top:bottom + 1, left:right + 1] = (rgb.transpose(2, 0, 1).astype(np.float32) - mean) / np.float32(256)
    for (pl, pt, pr, pb), (x0, y0, x1, y1) in zip(rects, rects[1:]):
        out[:, y0:y1 + 1, x0:x1 + 1] = resize_bilinear(out[:, pt:pb + 1, pl:pr + 1], y1 - y0 + 1, x1 - x0 + 1)
    return out[None], rects


def _nearest_rect(rects, x: float, y: float) -> int:
    px, py = round(x), round(y)  # dlib converts the centre to an integer point
    best, best_d = 0, math.inf
    for i, (x0, y0, x1, y1) in enumerate(rects):
        if x0 <= px <= x1 and y0 <= py <= y1:
            return i
        d = math.hypot(min(max(px, x0), x1) - px, min(max(py, y0), y1) - py)
        if d < best_d:
            best, best_d = i, d
    return best


def _overlaps(a, b, iou: float, covered: float) -> bool:
    """loss_mmod's test_box_overlap on integer rectangles (inclusive corners)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return False
    inner = iw * ih
    outer = (max(a[2], b[2]) - min(a[0], b[0]) + 1) * (max(a[3], b[3]) - min(a[1], b[1]) + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inner / outer > iou or inner / area_a > covered or inner / area_b > covered


def detections(scores: np.ndarray, rects, options, threshold: float = 0.0) -> list:
    """dlib's loss_mmod to_label: a (h, w) score map -> boxes in image pixels, best first, after NMS."""
    rows, cols = np.nonzero(scores > threshold)
    half_w, half_h = (options.window[0] - 1) / 2, (options.window[1] - 1) / 2
    found = []
    for r, c in zip(rows.tolist(), cols.tolist()):
        x, y = options.stride * c + options.offset, options.stride * r + options.offset
        level = _nearest_rect(rects, x, y)
        ox, oy = rects[level][0], rects[level][1]
        corners = []
        for px, py in ((x - half_w - ox, y - half_h - oy), (x + half_w - ox, y + half_h - oy)):
            for _ in range(level):  # pyramid_down<6>::point_up
                px, py = px * 6 / 5 + 0.3, py * 6 / 5 + 0.3
            corners += [px, py]
        # drectangle -> rectangle rounds half away from zero (std::lround)
        box = tuple(int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1) for v in corners)
        found.append((float(scores[r, c]), (box[0], box[1], box[2], box[3])))
    found.sort(key=lambda f: -f[0])
    kept = []
    for score, box in found:
        if not any(_overlaps(k, box, options.nms_iou, options.nms_covered) for k, _ in kept):
            kept.append((box, score))
    return [Detection(*box, score) for box, score in kept]


class MmodDetector:
    """dlib's cnn_face_detection_model_v1 on onnxruntime: RGB uint8 image -> [Detection]."""

    def __init__(self, path: str, threads: int = 1, graph_level: str = "all"):
        from facebeam.transforms import weights

        model, self.options = weights.dlib_mmod_onnx(path)
        self._session = session(model, threads, graph_level)
        self.providers = self._session.get_providers()

    def __call__(self, rgb: np.ndarray, threshold: float = 0.0) -> list:
        tensor, rects = tiled_pyramid(rgb, self.options)
        scores = self._session.run(None, {"input": tensor})[0]
        return detections(scores[0, 0], rects, self.options, threshold)

    def batch(self, images: Sequence[np.ndarray], threshold: float = 0.0) -> list:
        """Images of one size in one network call (dlib's detect_mult does the same)."""
        if not images:
            return []
        tensors = [tiled_pyramid(img, self.options) for img in images]
        scores = self._session.run(None, {"input": np.concatenate([t for t, _ in tensors])})[0]
        return [detections(s[0], rects, self.options, threshold) for s, (_, rects) in zip(scores, tensors)]
