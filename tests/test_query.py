"""The query job against a real index of the sample: hit quality, ES vs exact, labels, report."""
import csv
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from facebeam.pipelines import embed, index, query, search
from tests.es_fixtures import SESSION_HOME
from tests.helpers import SAMPLE, drop_versions, identities, job, render_in_chromium

CONN = str(SESSION_HOME / "connection.json")
ALIAS = "query-sample"


@pytest.fixture(scope="module")
def labeled_index(tmp_path_factory, es_conn, es_client):
    """The sample embedded with identity labels and indexed."""
    work = tmp_path_factory.mktemp("query")
    people = identities()
    with open(work / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(sorted(people.items()))
    shards = str(work / "shards")
    job(embed, ["--input", SAMPLE, "--output", shards, "--label-from", f"csv:{work / 'labels.csv'}"])
    drop_versions(es_client, ALIAS)
    job(index, ["--shards", shards, "--index", ALIAS, "--es-conn", CONN])
    yield work, shards, people
    drop_versions(es_client, ALIAS)


@pytest.fixture(scope="module")
def both_modes(labeled_index):
    work, shards, people = labeled_index
    common = ["--probes", SAMPLE, "--index", ALIAS, "--k", "6", "--exclude-same-image", "--es-conn", CONN]
    es = job(query, common + ["--output", str(work / "es"), "--report", str(work / "report.html")])
    exact = job(query, common + ["--output", str(work / "exact"), "--exact", "--shards", shards, "--format", "jsonl"])
    return (es, query.read_results(str(work / "es"))), (exact, query.read_results(str(work / "exact"), "jsonl"))


def top_hits(rows):
    """(probe file, probe face) -> rows by rank, for the largest face of each probe photo."""
    faces = {}
    for r in rows:
        faces.setdefault((r["probe_path"], r["probe_face_index"]), []).append(r)
    best = {}
    for (path, _face), hits in faces.items():
        area = hits[0]["probe_box_w"] * hits[0]["probe_box_h"]
        if path not in best or area > best[path][0]:
            best[path] = (area, sorted(hits, key=lambda h: h["rank"]))
    return {os.path.basename(p): hits for p, (_, hits) in best.items()}


def test_top_hit_is_the_same_person(both_modes, labeled_index):
    (summary, rows), _ = both_modes
    _, _, people = labeled_index
    assert summary["mode"] == "es" and summary["images_seen"] == summary["images_embedded"]
    # The folder's README and CSVs are counted, as embed counts them (the query said nothing of them before).
    assert summary["files_skipped"] == {"not_image": 3} and summary["files_seen"] == summary["images_seen"] + 3
    hits = top_hits(rows)
    judged = [name for name in hits if name in people]
    assert len(judged) >= 40
    right = sum(people.get(os.path.basename(hits[n][0]["hit_image_path"])) == people[n] for n in judged)
    assert right / len(judged) >= 0.95, (right, len(judged))
    assert all(h["hit_image_sha256"] != h["probe_sha256"] for r in hits.values() for h in r)
    assert all(1 <= len(h) <= 6 for h in hits.values())


def test_elasticsearch_agrees_with_exact_search(both_modes):
    (_, es_rows), (exact_summary, exact_rows) = both_modes
    assert exact_summary["mode"] == "exact"

    def top5(rows):
        out = {}
        for r in rows:
            if r["rank"] <= 5:
                out.setdefault((r["probe_path"], r["probe_face_index"]), set()).add(r["face_id"])
        return out

    # The exact scan names what it searched, not an index it never used.
    assert exact_summary["backend"] == "exact" and "index" not in exact_summary
    assert exact_summary["shards"] and exact_summary["searched"].endswith(f"under {exact_summary['shards']}")
    assert "shard file" in exact_summary["searched"]
    a, b = top5(es_rows), top5(exact_rows)
    assert a.keys() == b.keys()
    overlap = sum(len(a[k] & b[k]) for k in a) / sum(len(b[k]) for k in b)
    assert overlap >= 0.99, overlap
    exact_d = {(r["probe_path"], r["probe_face_index"], r["face_id"]): r["distance"] for r in exact_rows}
    for r in es_rows:
        key = (r["probe_path"], r["probe_face_index"], r["face_id"])
        if key in exact_d:
            assert abs(r["distance"] - exact_d[key]) < 1e-3


def test_top_label_comes_from_a_vote_of_close_hits(both_modes, labeled_index):
    (_, rows), _ = both_modes
    _, _, people = labeled_index
    hits = top_hits(rows)
    labeled = [n for n in hits if n in people and hits[n][0]["top_label"]]
    assert len(labeled) >= 35
    assert sum(hits[n][0]["top_label"] == people[n] for n in labeled) / len(labeled) >= 0.95
    for h in hits.values():
        close = [r for r in h if r["same_person"] and r["hit_label"]]
        if not close:
            assert h[0]["top_label"] is None


def test_one_photo_never_gives_a_label_to_two_faces(labeled_index, tmp_path):
    work, shards, people = labeled_index
    face = Image.open(os.path.join(SAMPLE, "img1.jpg")).convert("RGB")
    face.thumbnail((600, 600))
    twice = Image.new("RGB", (face.width * 2 + 40, face.height), "white")
    twice.paste(face, (0, 0))
    twice.paste(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (face.width + 40, 0))
    twice.save(tmp_path / "twice.jpg")
    job(query, ["--probes", str(tmp_path / "twice.jpg"), "--index", ALIAS, "--k", "5", "--output", str(tmp_path / "out"),
               "--es-conn", CONN])
    rows = query.read_results(str(tmp_path / "out"))
    faces = {r["probe_face_index"]: r for r in rows}
    assert len(faces) == 2
    assert [r["hit_label"] for r in rows if r["rank"] == 1] == [people["img1.jpg"]] * 2
    assigned = sorted([f["top_label"] for f in faces.values()], key=str)
    assert assigned == sorted([people["img1.jpg"], None], key=str)
    winner = min(faces.values(), key=lambda f: min(r["distance"] for r in rows if r["probe_face_index"] == f["probe_face_index"]))
    assert winner["top_label"] == people["img1.jpg"]


def test_search_and_query_number_and_label_one_photo_alike(labeled_index, tmp_path, capsys):
    """Both commands take one code path (knn.probe_faces + knn.photo_rows): same face numbers, boxes and labels,
    and the one-label-per-face-within-a-photo rule in search too."""
    work, shards, people = labeled_index
    face = Image.open(os.path.join(SAMPLE, "img1.jpg")).convert("RGB")
    face.thumbnail((600, 600))
    twice = Image.new("RGB", (face.width * 2 + 40, face.height), "white")
    twice.paste(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0, 0))
    twice.paste(face, (face.width + 40, 0))
    photo = str(tmp_path / "twice.jpg")
    twice.save(photo)
    job(query, ["--probes", photo, "--index", ALIAS, "--k", "5", "--output", str(tmp_path / "out"), "--es-conn", CONN])
    rows = query.read_results(str(tmp_path / "out"))
    from_query = {r["probe_face_index"]: ((r["probe_box_x"], r["probe_box_y"], r["probe_box_w"], r["probe_box_h"]),
                                          r["top_label"]) for r in rows}
    assert search.main([photo, "--index", ALIAS, "--k", "5", "--es-conn", CONN]) == 0
    out = capsys.readouterr().out
    from_search = {}
    for line in out.splitlines():
        if line.strip().startswith("face "):
            head, _, label = line.strip().partition("  -> ")
            index, _, box = head[len("face "):].partition(" at ")
            from_search[int(index)] = (tuple(int(v) for v in box.strip("()").split(", ")), label or None)
    assert len(from_search) == 2 and from_search == from_query
    assert sorted([lab for _, lab in from_search.values()], key=str) == sorted([people["img1.jpg"], None], key=str)
    assert from_search[0][0][0] < from_search[1][0][0]  # numbered left to right


def test_make_demo_takes_any_sample_folder(tmp_path):
    photos = tmp_path / "my photos"
    photos.mkdir()
    for name in ("b.jpg", "a.png", "notes.txt"):
        (photos / name).write_bytes(b"x")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dry = subprocess.run(["make", "-n", "demo", f"SAMPLE={tmp_path}/photos2"], cwd=repo, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 2
    lines = [line for line in dry.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no photos" in lines[0] and "make demo SAMPLE=DIR" in lines[0], dry.stderr
    shutil.rmtree(photos)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("b.jpg", "a.png", "notes.txt"):
        (photos / name).write_bytes(b"x")
    dry = subprocess.run(["make", "-n", "demo", f"SAMPLE={photos}"], cwd=repo, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    query_line = next(line for line in dry.stdout.splitlines() if "facebeam query" in line)
    search_line = next(line for line in dry.stdout.splitlines() if "facebeam search" in line)
    assert f"--probes {photos}/a.png {photos}/b.jpg " in query_line
    assert f"search {photos}/a.png {photos}/b.jpg " in search_line
    assert "shared/data/faces" not in dry.stdout


def test_spec_mismatch_with_the_index_is_refused(labeled_index, tmp_path):
    with pytest.raises(Exception, match="embedding spec mismatch"):
        job(query, ["--probes", os.path.join(SAMPLE, "img1.jpg"), "--index", ALIAS, "--output", str(tmp_path),
                   "--es-conn", CONN, "--detect-max-side", "320"])


def test_search_prints_a_table(labeled_index, capsys, tmp_path):
    code = search.main([os.path.join(SAMPLE, "img1.jpg"), os.path.join(SAMPLE, "img2.jpg"), "--index", ALIAS,
                        "--k", "3", "--es-conn", CONN])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("answered in") == 2 and "rank" in out and "img1.jpg" in out
    first_table = out.split("img1.jpg:")[1].split("answered in")[1]
    assert "yes" in first_table.split("\n")[3]  # the first hit is the photo itself: same person
    # A folder or a named pipe among the photos is one failed line each (a pipe is never read: it would wait for
    # a writer forever); the photos after them are answered.
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    gone = tmp_path / "gone.jpg"
    code = search.main([SAMPLE, str(pipe), str(gone), os.path.join(SAMPLE, "img2.jpg"), "--index", ALIAS,
                        "--es-conn", CONN])
    out = capsys.readouterr().out
    assert code == 1 and out.count("answered in") == 1
    assert f"{SAMPLE}: cannot search: a folder, not a photo (`facebeam query --probes FOLDER`" in out
    assert f"{pipe}: cannot search: a pipe, socket or device, not a photo" in out
    assert f"{gone}: cannot search: no such file or directory\n" in out  # not Python's "[Errno 2] ..."


def test_more_candidates_than_elasticsearch_takes_is_one_line_and_leaves_the_last_answer(labeled_index, tmp_path,
                                                                                         caplog):
    """Elasticsearch answers num_candidates > 10,000 with a 400: the query job (its searcher on a worker, here
    in-process) and `search` say so in one line, with no step of Beam's in it, and the query's folder keeps its
    last answer (the failed run's temp folders go; a folder the run made goes)."""
    import logging

    probe = os.path.join(SAMPLE, "img1.jpg")
    out = tmp_path / "answer"
    assert query.main(["--probes", probe, "--index", ALIAS, "--output", str(out), "--es-conn", CONN]) == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for words in (["--num-candidates", "20000", "--output", str(out)], ["--k", "10001", "--output", str(tmp_path / "new")]):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert query.main(["--probes", probe, "--index", ALIAS, "--es-conn", CONN, *words]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("facebeam")]
        assert len(errors) == 1 and errors[0].startswith("Elasticsearch takes at most 10,000 candidates per kNN")
        assert "while running" not in errors[0], errors
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert not (tmp_path / "new").exists()
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert search.main([probe, "--index", ALIAS, "--es-conn", CONN, "--k", "10001"]) == 2
    assert [r.getMessage()[:40] for r in caplog.records if r.levelname == "ERROR" and r.name.startswith("facebeam")] == [
        "Elasticsearch takes at most 10,000 candi"]


def test_report_renders_every_image_in_chromium(both_modes, labeled_index, tmp_path):
    work, _, _ = labeled_index
    page = work / "report.html"
    html = page.read_text()
    n_images = html.count("<img ")
    assert n_images > 100 and "http" not in html.replace("http-equiv", "")  # self-contained
    (rendered, total), pixels = render_in_chromium(page, tmp_path)
    assert rendered == total == n_images
    # Face crops are photos: many distinct, non-background colours, unlike an empty page of broken images.
    colours = len(np.unique(pixels.reshape(-1, 3) // 8, axis=0))
    assert colours > 2000, colours


def test_a_second_query_into_the_same_folder_holds_only_its_own_answer(labeled_index, tmp_path):
    """The results of an earlier query into the folder go once the new one has succeeded (they were mixed in,
    so read_results and the report held probes this query never had); the folder is private like every output."""
    import stat

    work, shards, people = labeled_index
    out = tmp_path / "out"
    first, second = os.path.join(SAMPLE, "img1.jpg"), [os.path.join(SAMPLE, n) for n in ("img2.jpg", "couple.jpg")]
    common = ["--index", ALIAS, "--k", "3", "--exact", "--shards", shards, "--output", str(out)]
    job(query, ["--probes", first, *common])
    assert {r["probe_path"] for r in query.read_results(str(out))} == {first}
    summary = job(query, ["--probes", *second, *common])
    rows = query.read_results(str(out))
    assert {r["probe_path"] for r in rows} == set(second) and summary["images_seen"] == 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
