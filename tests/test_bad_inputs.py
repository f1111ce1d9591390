"""A corpus of bad inputs, made at test time: every file is embedded or an error row with the right reason."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facebeam.pipelines import embed
from tests.helpers import SAMPLE, read_rows

FACE = os.path.join(SAMPLE, "img5.jpg")  # small, one clear face


def png_header_only(width, height) -> bytes:
    """A PNG whose IHDR claims width x height; no pixel data is ever allocated."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def save(im, path, **kw):
    im.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad-corpus")
    face = Image.open(FACE).convert("RGB")
    with open(FACE, "rb") as f:
        raw = f.read()
    expect = {}  # file name -> reason, or "embedded"
    (d / "zero.jpg").write_bytes(b"")
    expect["zero.jpg"] = "empty"
    (d / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    expect["truncated.jpg"] = "truncated"
    (d / "text.jpg").write_text("this is not an image\n" * 20)
    expect["text.jpg"] = "not_an_image"
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 200))
    save(rgba, d / "rgba.png")
    expect["rgba.png"] = "embedded"
    sixteen = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save(Image.fromarray(sixteen), d / "sixteen.png")
    assert Image.open(d / "sixteen.png").mode.startswith("I")
    expect["sixteen.png"] = "embedded"
    save(face.convert("L"), d / "gray.jpg")
    expect["gray.jpg"] = "embedded"
    save(face.convert("CMYK"), d / "cmyk.jpg")
    assert Image.open(d / "cmyk.jpg").mode == "CMYK"
    expect["cmyk.jpg"] = "embedded"
    # Stored lying on its side, with EXIF orientation 8 (rotate 90 CW to view): upright once applied.
    exif = Image.Exif()
    exif[0x0112] = 8
    save(face.transpose(Image.Transpose.ROTATE_270), d / "exif-rotated.jpg", exif=exif.tobytes())
    expect["exif-rotated.jpg"] = "embedded"
    rng = np.random.default_rng(7)
    sky = np.linspace(60, 220, 480 * 640).reshape(480, 640)
    noface = np.dstack([sky, sky * 0.9, np.full_like(sky, 240)]) + rng.normal(0, 3, (480, 640, 3))
    save(Image.fromarray(np.clip(noface, 0, 255).astype(np.uint8)), d / "noface.jpg")
    expect["noface.jpg"] = "no_face"
    (d / "bomb.png").write_bytes(png_header_only(30000, 30000))
    expect["bomb.png"] = "too_large"
    out = tmp_path_factory.mktemp("bad-out")
    code = embed.main(["--input", str(d), "--output", str(out)])
    return d, out, expect, code


def test_job_exits_zero_and_accounts_for_every_file(corpus):
    d, out, expect, code = corpus
    assert code == 0
    faces = read_rows(str(out / "embeddings"))
    errors = read_rows(str(out / "errors"))
    embedded = {os.path.basename(r["image_path"]) for r in faces}
    failed = {os.path.basename(r["image_path"]): r["reason"] for r in errors}
    assert embedded.isdisjoint(failed)
    got = {**dict.fromkeys(embedded, "embedded"), **failed}
    assert got == expect
    assert all(r["message"] and r["stage"] for r in errors)


def test_summary_reports_failures_and_adds_up(corpus):
    _, out, expect, _ = corpus
    from facebeam.transforms.shards import read_json

    s = read_json(str(out / "summary.json"))
    wanted = {}
    for reason in expect.values():
        if reason != "embedded":
            wanted[reason] = wanted.get(reason, 0) + 1
    assert s["images_failed"] == wanted
    assert s["images_seen"] == len(expect) == s["images_embedded"] + sum(s["images_failed"].values())


def test_exif_orientation_is_applied(corpus):
    _, out, _, _ = corpus
    row = next(r for r in read_rows(str(out / "embeddings")) if r["image_path"].endswith("exif-rotated.jpg"))
    upright = Image.open(FACE).size
    assert (row["image_width"], row["image_height"]) == upright
    # The eyes of an upright face are side by side: far more apart in x than in y.
    assert abs(row["left_eye_x"] - row["right_eye_x"]) > 3 * abs(row["left_eye_y"] - row["right_eye_y"])
