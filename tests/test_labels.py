"""Identity labels: the distance rule for a probe's label, and parent-dir labels below the input roots."""
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facebeam.transforms import knn, labels, shards
from tests.helpers import ROOT, SAMPLE, identities, read_rows


def _old_count_vote(hits, threshold):
    """The rule labels.py used to have: the label with the most hits within the threshold."""
    groups = {}
    for h in hits:
        if h.get("label") and h["distance"] <= threshold:
            groups.setdefault(h["label"], []).append(h["distance"])
    return min(groups.items(), key=lambda kv: (-len(kv[1]), sum(kv[1]) / len(kv[1])))[0] if groups else None


def _index_without(rows, dropped, people, folder, schema):
    """A shards folder holding `rows` except the photos named in `dropped`, labeled from the pivot CSV's identities."""
    kept = [{**r, "label": people.get(os.path.basename(r["image_path"]))} for r in rows
            if os.path.basename(r["image_path"]) not in dropped]
    index = folder / "embeddings"
    index.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(kept, schema=schema), index / "part.parquet")
    return shards.files(str(folder))


def _cases(rows, people, spec):
    """(probe row, the one photo of its person kept, the photos of its person dropped): real sample photos where the probe's
    person is nearer than any photo of another person that has two photos within the threshold."""
    faces = {}
    for r in rows:
        name = os.path.basename(r["image_path"])
        if name in people and (name not in faces or r["box_w"] * r["box_h"] > faces[name]["box_w"] * faces[name]["box_h"]):
            faces[name] = r
    dist = lambda a, b: float(spec.distance(faces[a]["embedding"], faces[b]["embedding"]))  # noqa: E731
    for p in sorted(faces):
        mine = sorted((q for q in faces if q != p and people[q] == people[p]), key=lambda q: dist(p, q))
        for other in sorted(set(people.values()) - {people[p]}):
            theirs = sorted(dist(p, q) for q in faces if people[q] == other)
            if len(theirs) < 2 or theirs[1] > spec.threshold:
                continue
            for a in mine:
                if dist(p, a) < theirs[0] - labels.MARGIN:
                    yield faces[p], a, [q for q in mine if q != a]
                    break


def test_a_clear_nearest_match_is_not_outvoted_by_farther_hits(sample_run, tmp_path):
    """A probe whose person has one other photo in the index, while another person has two photos a bit
    farther but still within the threshold (on the sample: e.g. img17 with img16 kept vs img34/img36).
    The count vote gave the other person at k=5; the nearest labeled hit decides now, whatever k is."""
    out, _ = sample_run
    people = identities()
    rows = read_rows(os.path.join(out, "embeddings"))
    spec = shards.spec_of(out)
    found = None
    for n, (probe, kept, dropped) in enumerate(_cases(rows, people, spec)):
        files = _index_without(rows, set(dropped), people, tmp_path / f"case{n}",
                               pq.read_schema(shards.files(out)[0]))
        hits5 = knn.exact_search(files, [probe], knn.SearchSpec(k=5, exclude_same_image=True), spec)[0]
        if _old_count_vote(hits5, spec.threshold) not in (None, people[kept]):
            found = probe, kept, files, hits5
            break
    assert found, "no photo in the sample where a count of farther hits outvotes the nearest (spec changed?)"
    probe, kept, files, hits5 = found
    me = people[kept]
    close = [(h["label"], round(h["distance"], 3)) for h in hits5 if h["distance"] <= spec.threshold]
    assert close[0][0] == me and len(close) >= 3, close
    assert sum(lab == me for lab, _ in close) == 1  # one hit of the right person, outnumbered
    for k in range(1, 11):
        hits = knn.exact_search(files, [probe], knn.SearchSpec(k=k, exclude_same_image=True), spec)[0]
        label, dist = labels.decide(hits, spec.threshold)
        assert label == me, (k, label, close)
        assert dist == pytest.approx(close[0][1], abs=1e-3)
    # The same through the shared per-photo rows that query and search both build.
    rows5 = knn.photo_rows(probe["image_path"], [(probe, hits5)], spec, spec.threshold, "exact")
    assert {r["top_label"] for r in rows5} == {me}
    # A near tie (another person within the margin of the nearest) gives no label rather than a guess.
    tie = [hits5[0], {**hits5[1], "label": "someone else", "distance": hits5[0]["distance"] + labels.MARGIN / 2}]
    assert labels.decide(tie, spec.threshold) == (None, None)
    # Nearest beyond the threshold: no label.
    assert labels.decide(hits5, close[0][1] - 0.01) == (None, None)


@pytest.fixture(scope="module")
def tree_embed(tmp_path_factory):
    """`facebeam embed --label-from parent-dir` as a user runs it, on root/alice/img1.jpg and a loose root/img2.jpg."""
    work = tmp_path_factory.mktemp("parent-dir")
    root = work / "photos"
    (root / "alice").mkdir(parents=True)
    shutil.copy(os.path.join(SAMPLE, "img1.jpg"), root / "alice" / "img1.jpg")
    shutil.copy(os.path.join(SAMPLE, "img2.jpg"), root / "img2.jpg")
    out = work / "out"
    res = subprocess.run([os.path.join(ROOT, ".venv", "bin", "facebeam"), "embed", "--input", str(root),
                          "--output", str(out), "--label-from", "parent-dir", "-v",  # -v: workers' logs too
                          "--direct_running_mode=multi_processing"],  # worker processes (2 photos run in-process)
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_parent_dir_labels_only_files_inside_a_subfolder(tree_embed):
    out, res = tree_embed
    got = {os.path.basename(r["image_path"]): r["label"] for r in read_rows(str(out / "embeddings"))}
    assert got == {"img1.jpg": "alice", "img2.jpg": None}
    assert "\n  labels: from parent-dir (1 of 2 faces)" in res.stdout  # how many it labeled, said


def test_a_label_source_that_labels_nothing_says_so(tmp_path, capsys, caplog):
    """--label-from parent-dir on a folder of loose photos stored no label, and the line said `labels: from
    parent-dir` as if it had: a user learnt it only when verify found no one."""
    from facebeam.pipelines import calibrate, embed
    from facebeam.transforms.shards import read_json

    (tmp_path / "loose").mkdir()
    shutil.copy(os.path.join(SAMPLE, "img1.jpg"), tmp_path / "loose" / "img1.jpg")
    (tmp_path / "names.csv").write_text("path,label\nelsewhere.jpg,x\n")
    for spec, why in (("parent-dir", "(a label is the photo's folder below the input folder: people/alice/1.jpg "
                                     "gives alice)"),
                      (f"csv:{tmp_path / 'names.csv'}", "(no photo of this run is named in the CSV)")):
        out = tmp_path / spec[:3]
        assert embed.main(["--input", str(tmp_path / "loose"), "--output", str(out), "--label-from", spec]) == 0
        s = read_json(str(out / "summary.json"))
        assert (s["faces"], s["faces_labeled"]) == (1, 0)
        assert f"\n  labels: from {spec}, but none of 1 face got one {why}\n" in capsys.readouterr().out
        # calibrate with the same source says why it has no pairs, not only that it has none
        caplog.clear()
        assert calibrate.main(["--shards", str(out), "--label-from", spec, "--output", str(out / "cal")]) == 2
        (err,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert err.startswith(f"--label-from {spec} labels none of the 1 photos with a face"), err
        assert ("they lie directly in " + str(tmp_path / "loose") if spec == "parent-dir" else "by file name") in err


def test_parent_dir_labeler_knows_its_roots(tmp_path):
    lab = labels.labeler_from("parent-dir", [str(tmp_path) + "/"])
    assert lab(str(tmp_path / "bob" / "x.jpg")) == "bob"
    assert lab(str(tmp_path / "x.jpg")) is None
    assert lab(os.path.relpath(tmp_path / "x.jpg")) is None
    assert labels.labeler_from("parent-dir", ["gs://b/people/*/*.jpg"])("gs://b/people/x.jpg") is None
    assert labels.labeler_from("parent-dir", ["gs://b/people/*/*.jpg"])("gs://b/people/eve/x.jpg") == "eve"


def test_workers_do_not_print_the_apitools_warning(tree_embed):
    """Beam's multi-process workers used to log 'apitools not found ... bigquery' at start-up, one per worker."""
    _, res = tree_embed
    assert "Logging handler created" in res.stderr  # the workers' own stderr is in what was captured
    assert "apitools" not in res.stderr and "apitools" not in res.stdout
    assert sys.executable


def test_a_bad_label_source_is_one_line_before_the_output_is_made(tmp_path, caplog):
    """A misspelt mode, a CSV that is not there, one in Excel's code page, or one without path/label columns: a
    user error (exit 2, one line) before the output folder is made, not a traceback after it."""
    from facebeam.pipelines import embed, run

    (tmp_path / "names.csv").write_text("name,who\na.jpg,x\n")
    (tmp_path / "header.csv").write_text("path,label\n")
    (tmp_path / "excel.csv").write_bytes("path,label\na.jpg,José\n".encode("cp1252"))  # Excel's plain "CSV"
    for module, spec, says in ((embed, "parent", "--label-from wants parent-dir or csv:FILE, got 'parent'"),
                               (embed, f"csv:{tmp_path / 'excel.csv'}", "excel.csv line 2 is not UTF-8 (byte 0xE9)"),
                               (run, f"csv:{tmp_path / 'none.csv'}", "CSV file not found"),
                               (embed, f"csv:{tmp_path / 'names.csv'}", "need a header with 'path' (or 'file') and "
                                                                        "'label' columns"),
                               (embed, f"csv:{tmp_path / 'header.csv'}", "header.csv: no rows under its header")):
        caplog.clear()
        out = tmp_path / "out"
        assert module.main(["--input", SAMPLE, "--output", str(out), "--label-from", spec]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and says in errors[0] and "\n" not in errors[0], errors
        assert not out.exists()


@pytest.mark.unit
def test_a_csv_as_spreadsheets_write_it_reads_with_its_names(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufeffPath , Label\r\na.jpg,José\r\n\"b, c.jpg\",\"Ann\nMarie\"\r\n".encode())
    names, rows = labels.csv_dicts(str(tmp_path / "bom.csv"))
    assert names == ["path", "label"]
    assert rows == [{"path": "a.jpg", "label": "José"}, {"path": "b, c.jpg", "label": "Ann\nMarie"}]
