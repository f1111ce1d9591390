"""A corpus of bad inputs, made at test time: every file is embedded or an error row with the right reason."""
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facebeam.pipelines import embed
from facebeam.transforms.summary import JobSummary
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
    # Phones' formats: HEIC (pillow-heif) and AVIF (Pillow's own).
    import pillow_heif

    pillow_heif.register_heif_opener()
    for name in ("phone.heic", "phone.avif"):
        save(face, d / name, quality=80)
        expect[name] = "embedded"
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
    # the line under the result says why, by reason, with a few of the photos (Beam string sets: examples only)
    examples = s["images_failed_examples"]
    assert examples and all(expect[os.path.basename(p)] == why for why, paths in examples.items() for p in paths)
    line = JobSummary.build("embed", s).line().splitlines()[1].strip()
    assert line.startswith("failed: ") and line.endswith(f"; {s['output']}/errors holds each with why"), line
    for why, n in wanted.items():
        assert f"{n} {why.replace('_', ' ')}" in line, (why, line)


def test_exif_orientation_is_applied(corpus):
    _, out, _, _ = corpus
    row = next(r for r in read_rows(str(out / "embeddings")) if r["image_path"].endswith("exif-rotated.jpg"))
    upright = Image.open(FACE).size
    assert (row["image_width"], row["image_height"]) == upright
    # The eyes of an upright face are side by side: far more apart in x than in y.
    assert abs(row["left_eye_x"] - row["right_eye_x"]) > 3 * abs(row["left_eye_y"] - row["right_eye_y"])


def test_phone_formats_give_the_face_of_the_same_pixels(corpus):
    _, out, _, _ = corpus
    rows = {os.path.basename(r["image_path"]): r for r in read_rows(str(out / "embeddings"))}
    lossless = np.asarray(rows["rgba.png"]["embedding"])  # the same pixels, with an alpha channel
    for name in ("phone.heic", "phone.avif"):
        assert (rows[name]["image_width"], rows[name]["image_height"]) == Image.open(FACE).size
        assert float(np.linalg.norm(np.asarray(rows[name]["embedding"]) - lossless)) < 0.15, name


# --- inputs that leave the folder, pages, and the one pixel limit --------------------------------------
OTHER = os.path.join(SAMPLE, "img19.jpg")  # another person than FACE (a "No" pair in the sample's pairs)
HUGE_SIDE = 11000  # 121M pixels: over Pillow's own 89,478,485, under --max-pixels 200000000


@pytest.fixture(scope="module")
def inputs_job(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    d = base / "photos"
    (d / "data").mkdir(parents=True)
    Image.open(FACE).save(d / "face.jpg")
    pages = [Image.open(FACE).convert("RGB"), Image.open(OTHER).convert("RGB")]
    pages[0].save(d / "two-pages.tif", save_all=True, append_images=pages[1:], compression="tiff_lzw")
    assert Image.open(d / "two-pages.tif").n_frames == 2
    os.symlink("/etc/passwd", d / "passwd")  # no extension: a walk would read it, were it inside
    os.symlink(os.path.join(SAMPLE, "img1.jpg"), d / "outside.jpg")
    Image.open(os.path.join(SAMPLE, "img8.jpg")).save(d / "data" / "photo.bin", format="JPEG")  # not_image by name
    os.symlink(d / "data" / "photo.bin", d / "inside-link.jpg")  # a symlink that stays inside is read
    os.symlink(base / "unmounted" / "gone.jpg", d / "gone.jpg")  # a link to nothing: counted, not dropped unsaid
    # Hidden and system names a walk leaves out: a viewer's thumbnail cache, a NAS's, macOS's AppleDouble file.
    for cache in (".thumbnails", "@eaDir"):
        (d / cache).mkdir()
        Image.open(FACE).resize((64, 64)).save(d / cache / "face.jpg")
    (d / "._face.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\0" * 80)
    huge = Image.new("RGB", (HUGE_SIDE, HUGE_SIDE), (128, 128, 128))
    face = Image.open(FACE).convert("RGB")
    face = face.resize((face.width * 10, face.height * 10), Image.Resampling.BILINEAR)
    huge.paste(face, ((HUGE_SIDE - face.width) // 2, (HUGE_SIDE - face.height) // 2))
    huge.save(d / "huge.jpg", quality=80)
    del huge, face
    out = base / "out"
    code = embed.main(["--input", str(d), "--output", str(out), "--max-pixels", "200000000"])
    from facebeam.transforms.shards import read_json

    return d, out, code, read_json(str(out / "summary.json"))


def test_symlinks_out_of_the_input_are_not_read_but_counted(inputs_job):
    d, out, code, s = inputs_job
    assert code == 0
    rows = read_rows(str(out / "embeddings")) + read_rows(str(out / "errors"))
    read = {os.path.basename(r["image_path"]) for r in rows}
    assert "passwd" not in read and "outside.jpg" not in read
    assert all(os.path.realpath(r["image_path"]) != "/etc/passwd" for r in rows)
    assert read == {"face.jpg", "two-pages.tif", "inside-link.jpg", "huge.jpg"}
    assert s["files_skipped"] == {"not_image": 1, "symlink_outside": 2, "hidden": 3, "broken_link": 1}
    from facebeam.transforms.summary import JobSummary

    line = JobSummary.build("embed", s).line()  # each reason said as what it is, none called a non-image
    assert ("(1 symlink(s) to nothing skipped, 3 file(s) under hidden or system names skipped, 1 non-image file(s) "
            "skipped, 2 symlink(s) out of the input skipped)") in line, line
    # Which files: the summary names them, as the workers' log does (with worker processes, their log is quiet).
    assert s["files_skipped_examples"] == {
        "hidden": sorted(str(d / p) for p in ("._face.jpg", ".thumbnails/face.jpg", "@eaDir/face.jpg")),
        "not_image": [str(d / "data" / "photo.bin")], "symlink_outside": [str(d / "outside.jpg"), str(d / "passwd")],
        "broken_link": [str(d / "gone.jpg")]}
    said = line.splitlines()[1]
    assert said == (f"  skipped: {d / 'gone.jpg'} (symlink to nothing), {d / '._face.jpg'} (hidden or system name), "
                    f"{d / '.thumbnails/face.jpg'} (hidden or system name) ...; summary.json lists more"), said


def test_every_page_of_a_tiff_is_an_image_and_the_summary_adds_up(inputs_job):
    import numpy as np

    d, out, code, s = inputs_job
    faces = [r for r in read_rows(str(out / "embeddings")) if r["image_path"].endswith("two-pages.tif")]
    assert len(faces) == 2 and len({r["image_sha256"] for r in faces}) == 2 and len({r["face_id"] for r in faces}) == 2
    a, b = (np.asarray(r["embedding"]) for r in faces)
    assert np.linalg.norm(a - b) > 0.6  # two people: one per page
    single = next(r for r in read_rows(str(out / "embeddings")) if r["image_path"].endswith("face.jpg"))
    page1 = next(r for r in faces if r["image_sha256"] != single["image_sha256"] and
                 np.linalg.norm(np.asarray(r["embedding"]) - single["embedding"]) < 0.3)
    assert page1  # page 1 is the same person as face.jpg
    assert s["images_extra_pages"] == 1
    assert s["images_seen"] == 5 == s["images_embedded"] + sum(s["images_failed"].values())
    assert s["images_failed"] == {}
    assert s["files_seen"] == 11 == s["images_seen"] - s["images_extra_pages"] + sum(s["files_skipped"].values())


def test_max_pixels_is_the_only_pixel_limit(inputs_job):
    from facebeam.transforms import images

    d, out, code, s = inputs_job
    huge = [r for r in read_rows(str(out / "embeddings")) if r["image_path"].endswith("huge.jpg")]
    assert len(huge) == 1 and huge[0]["image_width"] * huge[0]["image_height"] == HUGE_SIDE ** 2
    data = (d / "huge.jpg").read_bytes()
    with pytest.raises(images.ImageError, match=f"{HUGE_SIDE ** 2} pixels exceeds the limit of 100000000") as e:
        images.decode(str(d / "huge.jpg"), data, "x")  # the documented default refuses it, by our own check
    assert e.value.reason == "too_large"


def test_follow_symlinks_reads_links_out_of_the_input(inputs_job):
    from facebeam.transforms import sources

    d = str(inputs_job[0])
    skipped = []
    kept = {os.path.basename(p) for p, _ in sources.expand(d, skipped=lambda p, why: skipped.append(why))}
    assert "passwd" not in kept and skipped.count("symlink_outside") == 2
    followed = {os.path.basename(p) for p, _ in sources.expand(d, skipped=lambda p, why: None, follow_symlinks=True)}
    assert {"passwd", "outside.jpg"} <= followed
    glob_kept = {os.path.basename(p) for p, _ in sources.expand(os.path.join(d, "*"), skipped=lambda p, why: None)}
    assert "outside.jpg" not in glob_kept and "face.jpg" in glob_kept


def test_a_name_in_another_encoding_is_counted_and_never_crashes_the_job(tmp_path, caplog):
    """A Latin-1 name (an old camera, a zip, a Samba share) reaches Python with surrogate escapes, which Beam's
    coders, Parquet and JSON refuse: in a folder or a list file it is skipped and counted; named as an argument
    it is one line before any work."""
    import shutil

    from facebeam.transforms.shards import read_json

    d = tmp_path / "in"
    d.mkdir()
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(FACE, d / latin1)
    shutil.copy(FACE, d / "ok.jpg")
    listing = tmp_path / "list.txt"
    listing.write_bytes(os.fsencode(str(d / latin1)) + b"\n" + os.fsencode(str(d / "ok.jpg")) + b"\n")
    for i, source in enumerate((str(d), str(d / "*.jpg"), str(listing))):
        out = tmp_path / f"out{i}"
        assert embed.main(["--input", source, "--output", str(out)]) == 0, source
        s = read_json(str(out / "summary.json"))
        assert s["images_embedded"] == 1 and s["files_skipped"] == {"name_not_utf8": 1}, (source, s)
        assert s["files_skipped_examples"] == {"name_not_utf8": [f"{d}/caf\\xe9.jpg"]}  # as a line can say it
        assert s["files_seen"] == 2 == s["images_seen"] + sum(s["files_skipped"].values())
        assert [os.path.basename(r["image_path"]) for r in read_rows(str(out / "embeddings"))] == ["ok.jpg"]
    for words in (["--input", str(d / latin1), "--output", str(tmp_path / "o")],
                  ["--input", str(d), "--output", str(tmp_path / os.fsdecode(b"o\xe9"))]):
        caplog.clear()
        assert embed.main(words) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "\\xe9" in errors[0] and "' is not UTF-8" in errors[0], errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "list.txt", "out0", "out1", "out2"]


def test_a_named_pipe_among_the_photos_is_counted_not_read(tmp_path):
    """Reading a named pipe waits for a writer forever: a job with one in its folder hung until it was killed.
    Pipes, sockets and devices are counted as special_file, in a folder, a list file or named on their own."""
    import shutil

    from facebeam.transforms.shards import read_json

    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(FACE, d / "ok.jpg")
    os.mkfifo(d / "pipe.jpg")
    os.symlink("/dev/zero", d / "zero.jpg")  # a device, through a link that stays inside /dev: read as named
    listing = tmp_path / "list.txt"
    listing.write_text(f"{d / 'pipe.jpg'}\n{d / 'ok.jpg'}\n")
    for i, (source, skipped) in enumerate(((str(d), 1), (str(listing), 1), (str(d / "pipe.jpg"), 1))):
        out = tmp_path / f"out{i}"
        words = ["--input", source, "--output", str(out)] + (["--follow-symlinks"] if i == 0 else [])
        assert embed.main(words) == 0, source
        s = read_json(str(out / "summary.json"))
        assert s["files_skipped"] == {"special_file": skipped + (i == 0)}, (source, s)
        assert s["images_failed"] == {} and s["images_embedded"] == (i < 2)


def test_a_filesystem_beam_has_not_here_is_one_line_before_any_work(tmp_path, caplog, capsys):
    import logging

    for words, says in ((["--input", "https://example.com/photos/*.jpg", "--output", str(tmp_path / "a")],
                         "input 'https://example.com/photos/*.jpg': no filesystem for https:// is available here"),
                        (["--input", "@nosuch://bucket/list.txt", "--output", str(tmp_path / "b")],
                         "input 'nosuch://bucket/list.txt': no filesystem for nosuch:// is available here"),
                        (["--input", SAMPLE, "--output", "nosuch://bucket/out"],
                         "output 'nosuch://bucket/out': no filesystem for nosuch:// is available here")):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert embed.main(words) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("facebeam")]
        assert len(errors) == 1 and errors[0].startswith(says), errors
    from facebeam.pipelines import cluster, index

    for main, words in ((index.main, ["--shards", "nosuch://bucket/shards", "--store", "local"]),
                        (cluster.main, ["--shards", "nosuch://bucket/shards", "--output", str(tmp_path / "c")])):
        with pytest.raises(SystemExit) as flag:  # a flag's value: argparse's one line and exit 2
            main(words)
        err = capsys.readouterr().err.strip()
        assert flag.value.code == 2 and len(err.splitlines()) == 1, err
        assert "argument --shards: path 'nosuch://bucket/shards': no filesystem for nosuch:// is available here" in err
    assert os.listdir(tmp_path) == []


def test_an_output_inside_the_photo_folder_is_not_read_as_photos(tmp_path):
    """`run --input photos --output photos/faces` is a natural layout; the next run walked its own lock file,
    shards and reports as photos of the library (a calibration's roc.png was a face-less photo)."""
    import shutil

    from facebeam.transforms.shards import read_json

    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(FACE, d / "face.jpg")
    (d / "notes.txt").write_text("x")
    out = d / "faces"
    assert embed.main(["--input", str(d), "--output", str(out)]) == 0
    Image.open(FACE).save(out / "roc.png")  # what `calibrate --output` draws there
    assert embed.main(["--input", str(d), "--output", str(out), "--incremental"]) == 0
    s = read_json(str(out / "summary.json"))
    assert s["files_skipped"]["not_image"] == 1 and s["files_skipped"]["facebeam_output"] >= 4, s["files_skipped"]
    assert "hidden" not in s["files_skipped"] and s["images_done"] == 1 and s["images_seen"] == 0
    assert s["files_seen"] == s["images_seen"] + s["images_done"] + sum(s["files_skipped"].values()) == \
        s["files_skipped"]["facebeam_output"] + 2  # face.jpg (done) and notes.txt: every file listed
    # The output may be the photo folder itself: its photos stay photos.
    assert embed.main(["--input", str(d), "--output", str(d)]) == 0
    s = read_json(str(d / "summary.json"))
    assert s["images_embedded"] == 1 and "facebeam_output" in s["files_skipped"]  # the faces/ output still is one


def test_since_reads_the_newer_photos_and_counts_the_older_ones(tmp_path):
    """A nightly `--since` run said `embedded 0 photos` without a word on the files it left out; and no test ran
    --since on a job at all. In a folder and in a list file, older files are counted, newer ones embedded."""
    import shutil

    from facebeam.transforms.shards import read_json

    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(FACE, d / "new.jpg")
    shutil.copy(OTHER, d / "old.jpg")
    (d / "old.txt").write_text("x")
    for name in ("old.jpg", "old.txt"):
        os.utime(d / name, (1577836800, 1577836800))  # 2020-01-01
    listing = tmp_path / "list.txt"
    listing.write_text(f"{d / 'new.jpg'}\n{d / 'old.jpg'}\n{d / 'gone.jpg'}\n")
    for i, (source, failed) in enumerate(((str(d), {}), (str(listing), {"unreadable": 1}))):
        out = tmp_path / f"out{i}"
        assert embed.main(["--input", source, "--output", str(out), "--since", "2025-01-01"]) == 0
        s = read_json(str(out / "summary.json"))
        assert s["images_embedded"] == 1 and s["images_failed"] == failed, (source, s)  # a missing one is a row
        assert s["files_skipped"] == {"older_than_since": 2 - i}, (source, s)  # the old .txt: older, whatever else
        assert [os.path.basename(r["image_path"]) for r in read_rows(str(out / "embeddings"))] == ["new.jpg"]
        assert s["files_seen"] == s["images_seen"] + sum(s["files_skipped"].values())


def test_a_query_into_a_collections_folder_and_back_is_refused(tmp_path, caplog):
    """`query --output` on the collection's own folder replaced its dead letters and summary.json with the
    query's; an embed into a query's folder would mix the other way. Each is one line, and nothing changes."""
    from facebeam.pipelines import query

    def files(folder):
        return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())

    out, q = tmp_path / "collection", tmp_path / "query"
    assert embed.main(["--input", FACE, "--output", str(out)]) == 0
    before = files(out)
    caplog.clear()
    assert query.main(["--probes", FACE, "--exact", "--shards", str(out), "--output", str(out)]) == 2
    assert files(out) == before
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"{out} holds a collection's output (embeddings/): a query's files (errors/, summary.json) would replace "
        "its own; choose another --output"]
    assert query.main(["--probes", FACE, "--exact", "--shards", str(out), "--output", str(q)]) == 0
    before = files(q)
    assert embed.main(["--input", FACE, "--output", str(q)]) == 2 and files(q) == before
