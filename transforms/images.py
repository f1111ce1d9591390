"""Decode image bytes once into what detection and representation need.

Pillow reads the header first, so a decompression bomb is refused before any
pixel is allocated. EXIF orientation is applied; grayscale, palette, RGBA,
16-bit and CMYK images all come out as 8-bit BGR (deepface's channel order).

`decode(..., draft=True)` decodes a JPEG only as large as detection needs: libjpeg
scales by 1/2, 1/4 or 1/8 while decoding (`Image.draft`), so the full frame is never
made. Where a face needs more pixels, `DecodedImage.at_level(k)` decodes the same bytes
again at a larger scale (the level depends only on the bytes and the face, so any
caller gets the same pixels).

`--max-pixels` (`max_pixels`) is the one pixel limit: it is checked from the header before any
pixel is decoded, and Pillow's own `MAX_IMAGE_PIXELS` (89,478,485, a warning, then an error at
twice that) is switched off so it cannot refuse what the limit allows.

Every page of a multi-page TIFF is an image (`decode_pages`): page 1 keeps the file's sha256
and path; page k > 1 has the sha256 `page_sha256(file_sha256, k)`, so its faces get their own
ids, and is counted in the Beam counter `images_extra_pages`.
"""
import dataclasses
import functools
import hashlib
import io
import math
import warnings

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000
EXTRA_PAGES = "images_extra_pages"  # Beam counter: pages after the first of multi-page files
PAGED_FORMATS = ("TIFF",)  # formats whose frames are pages (a GIF's or WebP's frames are an animation)


class ImageError(Exception):
    """An image that cannot be embedded; `reason` is a stable code."""

    def __init__(self, reason: str, message: str, stage: str = "decode", sha256: str = None):
        super().__init__(message)
        self.reason, self.stage, self.sha256 = reason, stage, sha256


MAX_DRAFT_LEVEL = 3  # JPEG decodes at 1/2**level, level 0..3


@dataclasses.dataclass
class DecodedImage:
    path: str
    sha256: str
    bgr: np.ndarray  # uint8, HxWx3: the original resolution unless decoded as a draft (level > 0)
    detect_bgr: np.ndarray  # downscaled copy for detection (or bgr itself)
    scale: float  # detect_bgr size / original size
    level: int = 0  # bgr is the JPEG decoded at 1/2**level
    size: tuple = None  # (width, height) of the original image, after EXIF orientation
    data: bytes = dataclasses.field(default=None, repr=False)  # the file, kept to decode other levels
    draft: bool = False  # decoded by decode(draft=True)
    jpeg: bool = False  # other levels can be decoded (JPEG only)
    page: int = 0  # the page of a multi-page file (0: the first)
    pages: int = 1  # how many pages the file has
    _levels: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def height(self) -> int:
        return self.size[1] if self.size else self.bgr.shape[0]

    @property
    def width(self) -> int:
        return self.size[0] if self.size else self.bgr.shape[1]

    @property
    def bgr_scale(self) -> float:
        """bgr size / original size (x and y may differ by a pixel's rounding at draft levels)."""
        return self.bgr.shape[1] / self.width

    def at_level(self, level: int) -> np.ndarray:
        """The image decoded at 1/2**level (clamped to what the format gives), BGR uint8."""
        if level == self.level or not self.jpeg:
            return self.bgr
        if level not in self._levels:
            if self.data is None:
                raise ValueError(f"{self.path}: no file bytes kept to decode level {level}")
            self._levels[level] = np.ascontiguousarray(_decode_rgb(self.data, level, self.page)[0][:, :, ::-1])
        return self._levels[level]


def to_rgb8(im):
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


def draft_level(width: int, height: int, min_side: int) -> int:
    """The largest JPEG scale-down level whose longest side still is at least min_side."""
    longest = max(width, height)
    level = 0
    while level < MAX_DRAFT_LEVEL and -(-longest // 2 ** (level + 1)) >= min_side:
        level += 1
    return level


@functools.cache
def _formats() -> None:
    """HEIF/HEIC, phones' default photo format, through pillow-heif (libheif applies the file's own turns, so
    its EXIF orientation reads 1); AVIF is Pillow's own."""
    import pillow_heif

    pillow_heif.register_heif_opener()


def _open(data: bytes):
    from PIL import Image, UnidentifiedImageError

    _formats()
    Image.MAX_IMAGE_PIXELS = None  # --max-pixels is the one limit (decode checks it from the header)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not_an_image", "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_large", str(e)) from e
    return im


def _oriented_size(im) -> tuple:
    w, h = im.size
    try:
        swapped = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # what exif_transpose turns by 90 degrees
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):  # a broken EXIF block: decoding says so
        swapped = False
    return (h, w) if swapped else (w, h)


def _decode_rgb(data: bytes, level: int = 0, page: int = 0):
    """(RGB uint8 array, level actually used): decoded at 1/2**level where the format allows it."""
    from PIL import ImageOps

    im = _open(data)
    if page:
        im.seek(page)
    if level and im.format == "JPEG":
        w, h = im.size
        im.draft("RGB", (-(-w // 2 ** level), -(-h // 2 ** level)))
        got = round(math.log2(w / im.size[0])) if im.size[0] else 0
    else:
        got = 0
    im = ImageOps.exif_transpose(im)
    return np.asarray(to_rgb8(im)), got


def page_sha256(sha256: str, page: int) -> str:
    """The content address of page `page` (1-based) of a file whose bytes hash to `sha256`; page 1 is the file's."""
    return sha256 if page <= 1 else hashlib.sha256(f"{sha256}#page={page}".encode()).hexdigest()


def page_count(im) -> int:
    return int(getattr(im, "n_frames", 1) or 1) if im.format in PAGED_FORMATS else 1


def decode_pages(path: str, data: bytes, sha256: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 detect_max_side: int = 640, draft: bool = False):
    """Every page of the file: a DecodedImage, or the ImageError of a page that cannot be decoded.

    Page 1 is `decode(...)`; an ImageError there ends it (the file is not an image). Pages 2.. of a
    multi-page TIFF follow with their own sha256 (`page_sha256`), each counted in `images_extra_pages`.
    """
    from facebeam.transforms import metrics

    try:
        first = decode(path, data, sha256, max_pixels, detect_max_side, draft)
    except ImageError as e:
        e.sha256 = sha256
        yield e
        return
    yield first
    for page in range(1, first.pages):
        metrics.count(EXTRA_PAGES)
        sha = page_sha256(sha256, page + 1)
        try:
            yield decode(path, data, sha, max_pixels, detect_max_side, draft, page=page)
        except ImageError as e:
            yield ImageError(e.reason, f"page {page + 1} of {first.pages}: {e}", e.stage, sha)


def warm() -> None:
    """Decode one small in-memory JPEG: a process's first decode imports OpenCV and Pillow's plugins (0.1 s
    here), which a spare harness (pipelines/local/workers.py) pays before its job rather than in it."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 96, 64)).save(buf, format="JPEG")
    data = buf.getvalue()
    decode("warm.jpg", data, hashlib.sha256(data).hexdigest())


def decode(path: str, data: bytes, sha256: str, max_pixels: int = DEFAULT_MAX_PIXELS,
           detect_max_side: int = 640, draft: bool = False, page: int = 0) -> DecodedImage:
    """Bytes -> DecodedImage (of page `page`, 0-based, of a multi-page TIFF). With `draft`, a JPEG is
    decoded at the smallest scale that still gives a detection copy of detect_max_side (see the module
    doc); otherwise at full size."""
    import cv2

    if not data:
        raise ImageError("empty", "file is empty (0 bytes)")
    im = _open(data)
    pages = page_count(im)
    if page:
        try:
            im.seek(page)
        except (EOFError, OSError, ValueError) as e:
            raise ImageError("corrupt", f"cannot read page {page + 1}: {e}") from e
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError("too_large", f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    if w == 0 or h == 0:
        raise ImageError("not_an_image", f"image has no pixels ({w}x{h})")
    size = _oriented_size(im)
    level = draft_level(w, h, detect_max_side) if draft and im.format == "JPEG" else 0
    try:
        rgb, level = _decode_rgb(data, level, page)
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow raises OSError for truncated data ("image file is truncated").
        raise ImageError("truncated" if "truncat" in str(e).lower() else "corrupt", f"cannot decode: {e}") from e
    if level == 0:
        size = (rgb.shape[1], rgb.shape[0])
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    scale = min(1.0, detect_max_side / max(size))
    if scale < 1.0:
        dsize = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        detect_bgr = bgr if dsize == (bgr.shape[1], bgr.shape[0]) else cv2.resize(bgr, dsize, interpolation=cv2.INTER_AREA)
    else:
        detect_bgr = bgr
    return DecodedImage(path=path, sha256=sha256, bgr=bgr, detect_bgr=detect_bgr, scale=scale,
                        level=level, size=size, data=data, draft=draft, jpeg=im.format == "JPEG", page=page, pages=pages)
