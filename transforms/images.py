"""Decode image bytes once into what detection and representation need.

Pillow reads the header first, so a decompression bomb is refused before any
pixel is allocated. EXIF orientation is applied; grayscale, palette, RGBA,
16-bit and CMYK images all come out as 8-bit BGR (deepface's channel order).
"""
import dataclasses
import io
import warnings

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000


class ImageError(Exception):
    """An image that cannot be embedded; `reason` is a stable code."""

    def __init__(self, reason: str, message: str, stage: str = "decode"):
        super().__init__(message)
        self.reason, self.stage = reason, stage


@dataclasses.dataclass
class DecodedImage:
    path: str
    sha256: str
    bgr: np.ndarray  # original resolution, uint8, HxWx3
    detect_bgr: np.ndarray  # downscaled copy for detection (or the original)
    scale: float  # detect_bgr size / original size

    @property
    def height(self) -> int:
        return self.bgr.shape[0]

    @property
    def width(self) -> int:
        return self.bgr.shape[1]


def _to_rgb8(im):
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float32)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def decode(path: str, data: bytes, sha256: str, max_pixels: int = DEFAULT_MAX_PIXELS,
           detect_max_side: int = 640) -> DecodedImage:
    import cv2
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError("empty", "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "not a recognised image format")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_large", str(e))
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError("too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    if w == 0 or h == 0:
        raise ImageError("not_an_image", f"image has no pixels ({w}x{h})")
    try:
        im = ImageOps.exif_transpose(im)
        rgb = np.asarray(_to_rgb8(im))
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow raises OSError for truncated data ("image file is truncated").
        raise ImageError("truncated" if "truncat" in str(e).lower() else "corrupt", f"cannot decode: {e}")
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    scale = min(1.0, detect_max_side / max(bgr.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
        detect_bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    else:
        detect_bgr = bgr
    return DecodedImage(path=path, sha256=sha256, bgr=bgr, detect_bgr=detect_bgr, scale=scale)
