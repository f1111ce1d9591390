"""Faults of the output's own filesystem: a full disk (before and during the job), a read-only folder,
a folder deleted mid-run. Each is one line and exit 2, leaves no Beam temp files, no partial shards,
no summary or commit, and no lock held; a re-run once the fault is gone completes.

The small filesystems are tmpfs mounts made here (root), unmounted at teardown."""
import contextlib
import fcntl
import glob
import logging
import os
import shutil
import subprocess
import threading
import time

import pytest

from facebeam.pipelines import embed
from facebeam.transforms import locks, shards
from tests.helpers import SAMPLE

PHOTOS = ("img1.jpg", "img5.jpg", "img19.jpg")


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for name in PHOTOS:
        shutil.copy(os.path.join(SAMPLE, name), d / name)
    return d


@contextlib.contextmanager
def tmpfs(where, size):
    """A tmpfs of `size` (e.g. "4m") mounted at `where`; needs root (CI runs as root)."""
    assert os.geteuid() == 0, "these tests mount a small tmpfs: run them as root"
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(folder, leave=0):
    """Write a filler file until the filesystem has at most `leave` bytes free."""
    block = b"\0" * 65536
    with contextlib.suppress(OSError), open(os.path.join(folder, "filler"), "wb", buffering=0) as f:
        while shards.free_bytes(folder) > leave + len(block):
            f.write(block)
        while not leave:  # to the last byte: ENOSPC ends it
            f.write(b"\0" * 4096)


def error_lines(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("facebeam")]


def assert_nothing_left(out):
    """No Beam temp folder, no shard, no summary or commit, and the lock is free."""
    left = [p for p in glob.glob(os.path.join(str(out), "**", "*"), recursive=True)
            if "beam-temp" in p or p.endswith((".parquet", ".json")) or ".tmp-" in p]
    assert left == [], left
    lock = os.path.join(str(out), locks.OUTPUT_LOCK_FILE)
    if os.path.exists(lock):
        with open(lock, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a job still held it


def when_writing(out, action, timeout=300):
    """Run `action()` in a thread once the job holds its lock and Beam made its temp folder (the write began)."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if glob.glob(os.path.join(str(out), "embeddings", "**", "beam-temp-*"), recursive=True):
                action()
                return
            time.sleep(0.05)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_a_full_disk_is_refused_before_the_job_in_one_line(tmp_path, photos, caplog):
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        fill(mnt, leave=1024 * 1024)
        out = mnt / "out"
        started = time.monotonic()
        with caplog.at_level(logging.ERROR):
            code = embed.main(["--input", str(photos), "--output", str(out)])
        errors = error_lines(caplog)
        assert code == 2 and len(errors) == 1, errors
        assert "free on its filesystem" in errors[0] and str(out) in errors[0]
        assert time.monotonic() - started < 10  # before any worker started
        assert_nothing_left(out)


def test_a_disk_that_fills_during_the_job_is_one_line_and_leaves_nothing(tmp_path, photos, caplog):
    with tmpfs(tmp_path / "mnt", "24m") as mnt:
        out = mnt / "out"
        filler = when_writing(out, lambda: fill(mnt))
        with caplog.at_level(logging.ERROR):
            code = embed.main(["--input", str(photos), "--output", str(out), "--incremental"])
        filler.join(5)
        errors = error_lines(caplog)
        assert code == 2 and len(errors) == 1, errors
        assert "no space left" in errors[0] and str(out) in errors[0], errors[0]
        assert "Traceback" not in errors[0] and "\n" not in errors[0]
        assert_nothing_left(out)
        os.remove(mnt / "filler")  # room again: the same command completes
        summary = embed.run(embed.configure(*_parsed(["--input", str(photos), "--output", str(out), "--incremental"])))
        assert summary["images_seen"] == len(PHOTOS) == summary["images_embedded"]
        assert len(shards.files(str(out))) >= 1 and shards.committed_runs(str(out)) == [summary["run_id"]]


def _parsed(argv):
    from facebeam.pipelines import options

    return options.parse(embed.build_parser(), argv)


def test_a_read_only_output_is_one_line(tmp_path, photos, caplog):
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        (mnt / "out").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        for out in (mnt / "out", mnt / "new"):
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                code = embed.main(["--input", str(photos), "--output", str(out)])
            errors = error_lines(caplog)
            assert code == 2 and len(errors) == 1, errors
            assert "read-only filesystem" in errors[0] and str(out) in errors[0]
        assert os.listdir(mnt) == ["out"] and os.listdir(mnt / "out") == []


def test_an_output_deleted_mid_run_is_one_line_and_commits_nothing(tmp_path, photos, caplog):
    out = tmp_path / "out"
    deleter = when_writing(out, lambda: shutil.rmtree(out, ignore_errors=True))
    with caplog.at_level(logging.ERROR):
        code = embed.main(["--input", str(photos), "--output", str(out), "--incremental"])
    deleter.join(5)
    errors = error_lines(caplog)
    assert code == 2 and len(errors) == 1, errors
    assert "deleted or moved while the job ran" in errors[0] and str(out) in errors[0]
    assert shards.committed_runs(str(out)) == []
    assert_nothing_left(out)


def test_an_output_that_cannot_be_made_is_one_line_and_a_refused_job_leaves_no_folder(tmp_path, photos, caplog):
    from facebeam.pipelines import cluster, index

    for words, says in ((["--output", ""], "no output folder given"),
                        (["--output", "/proc/facebeam-test/out"], "'/proc/facebeam-test/out' cannot be made: No such "
                                                                 "file or directory"),
                        (["--output", str(tmp_path / "out"), "--detector", "nope"], "unknown detector 'nope': choose "
                                                                                    "dlib, mmod, dlib_mmod")):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert embed.main(["--input", str(photos), *words]) == 2
        errors = error_lines(caplog)
        assert len(errors) == 1 and says in errors[0], errors
    # Refused once its folder was made (no shards to cluster): no folder is left behind where there was none.
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cluster.main(["--shards", str(tmp_path / "nothing"), "--output", str(tmp_path / "persons")]) == 2
    errors = error_lines(caplog)
    assert len(errors) == 1 and "no Parquet shards" in errors[0], errors
    assert not (tmp_path / "persons").exists() and not (tmp_path / "out").exists()
    # An embedded index whose folder cannot be made is one line too.
    assert embed.main(["--input", str(photos), "--output", str(tmp_path / "shards")]) == 0
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert index.main(["--shards", str(tmp_path / "shards"), "--store", "local:/proc/facebeam-test/ann"]) == 2
    errors = error_lines(caplog)
    assert errors == ["folder /proc/facebeam-test/ann cannot be made: No such file or directory"], errors


def test_an_embedded_index_on_a_full_disk_is_one_line_and_stays_as_it_was(tmp_path, photos, caplog, capfd):
    """The embedded index's filesystem fills while a load writes it: one line that names the index's folder (it
    named the shards' folder, with 60 GiB free, after faiss printed its own error), no half-written generation,
    and the index answers as before."""
    from facebeam.pipelines import index
    from facebeam.transforms import ann
    from facebeam.transforms.spec import EmbeddingSpec

    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(os.path.join(SAMPLE, "img2.jpg"), more / "img2.jpg")
    for source, shards_dir in ((photos, "shards"), (more, "more-shards")):
        assert embed.main(["--input", str(source), "--output", str(tmp_path / shards_dir)]) == 0
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        into = ["--store", f"local:{mnt / 'ann'}"]
        assert index.main(["--shards", str(tmp_path / "shards"), *into]) == 0
        before = sorted(os.listdir(mnt / "ann"))
        faces = ann.AnnIndex.open(str(mnt / "ann"), EmbeddingSpec()).count
        fill(mnt)
        capfd.readouterr()
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert index.main(["--shards", str(tmp_path / "more-shards"), *into]) == 2
        errors = error_lines(caplog)
        assert len(errors) == 1 and errors[0].startswith(f"no space left on the filesystem of the embedded index "
                                                         f"{mnt / 'ann'} ("), errors
        assert "error" not in capfd.readouterr().err.replace(errors[0], "")
        assert sorted(os.listdir(mnt / "ann")) == before
        assert ann.AnnIndex.open(str(mnt / "ann"), EmbeddingSpec()).count == faces > 0


def test_forget_on_a_full_disk_is_one_line_leaves_the_shards_whole_and_a_rerun_erases(tmp_path, photos, caplog):
    from facebeam.pipelines import forget
    from tests.helpers import read_rows

    with tmpfs(tmp_path / "mnt", "24m") as mnt:
        out = mnt / "out"
        assert embed.main(["--input", str(photos), "--output", str(out)]) == 0
        victim = str(photos / PHOTOS[0])
        before = read_rows(str(out / "embeddings"))
        assert any(r["image_path"] == victim for r in before)
        fill(mnt)
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert forget.main(["--image", victim, "--shards", str(out)]) == 2
        errors = error_lines(caplog)
        assert len(errors) == 1 and errors[0].startswith("no space left to rewrite "), errors
        assert not glob.glob(str(out / "**" / "*tmp*"), recursive=True)
        assert sorted(r["face_id"] for r in read_rows(str(out / "embeddings"))) == sorted(r["face_id"] for r in before)
        os.remove(mnt / "filler")
        assert forget.main(["--image", victim, "--shards", str(out)]) == 0
        after = read_rows(str(out / "embeddings"))
        assert len(after) < len(before) and not any(r["image_path"] == victim for r in after)


def test_calibrate_and_naming_on_a_full_disk_are_one_line_naming_the_file(tmp_path, sample_run, caplog):
    """Writes outside a job's output (calibrate's chart and threshold beside the shards, persons' names on them)
    are whole or not at all, and a full disk there is one line that names the file, not a traceback."""
    from facebeam.pipelines import calibrate, cluster, persons
    from tests.helpers import PAIRS

    with tmpfs(tmp_path / "mnt", "24m") as mnt:
        shards_dir = mnt / "shards"
        shutil.copytree(sample_run[0], shards_dir)
        assert cluster.main(["--shards", str(shards_dir), "--output", str(tmp_path / "persons")]) == 0
        first = persons_of(tmp_path / "persons")
        fill(mnt)
        for main, words in ((calibrate.main, ["--shards", str(shards_dir), "--pairs", PAIRS]),
                            (persons.main, ["--clusters", str(tmp_path / "persons"), "name", first, "Ada",
                                            "--shards", str(shards_dir)])):
            caplog.clear()
            with caplog.at_level(logging.ERROR):
                assert main(words) == 2
            errors = error_lines(caplog)
            assert len(errors) == 1 and errors[0].startswith(f"no space left on the filesystem of {shards_dir}/"), errors
            assert "MiB free now): free some space and run the same command again" in errors[0]
        assert not [p for p in glob.glob(str(shards_dir / "**"), recursive=True) if ".tmp-" in p]


def persons_of(folder) -> str:
    """The largest person's id in a cluster folder."""
    import pyarrow.parquet as pq

    rows = pq.read_table(str(folder / "persons.parquet")).to_pylist()
    return max(rows, key=lambda r: r["size"])["person_id"]
