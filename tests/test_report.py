"""The HTML report: captions that tell photos apart, and bounded memory over many probes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from facebeam.pipelines import embed, query
from facebeam.transforms import knn, shards
from tests.helpers import ROOT, SAMPLE, job, read_rows

# Peak RSS a report over 300+ probe faces of the sample may add above the interpreter with its imports.
# The sample's 62 photos decode to 359 MB of pixels (the largest, 4600x3061, to 42 MB); keeping them all,
# as the report used to, added 428 MB; decoding photo by photo (JPEGs scaled down as far as the smallest
# face allows) and keeping only 112 px crops added 52 MB (measured on the 2-core dev machine).
RSS_BOUND_MB = 100

MEASURE = r"""
import json, sys
from facebeam.transforms import report
from facebeam.transforms.spec import EmbeddingSpec

def status(key):  # kB, from /proc/self/status (VmHWM: this process's peak RSS since the last reset)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

rows = json.load(open(sys.argv[1]))
spec = EmbeddingSpec.from_json(open(sys.argv[2]).read())
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak to the current RSS: what follows measures the report alone
before = status("VmRSS")
report.write(sys.argv[3], rows, spec)
print(json.dumps({"before_mb": before / 1024, "after_mb": status("VmHWM") / 1024}))
"""

def test_captions_show_label_and_enough_path_to_tell_photos_apart(tmp_path):
    """Two people's photos both named img1.jpg, in folders alice/ and bob/: captions say which is which."""
    root = tmp_path / "people"
    for person, photo in (("alice", "img1.jpg"), ("bob", "img17.jpg")):
        (root / person).mkdir(parents=True)
        shutil.copy(os.path.join(SAMPLE, photo), root / person / "img1.jpg")
    out = str(tmp_path / "shards")
    job(embed, ["--input", str(root), "--output", out, "--label-from", "parent-dir"])
    page = tmp_path / "report.html"
    job(query, ["--probes", str(root), "--exact", "--shards", out, "--k", "2", "--output", str(tmp_path / "q"),
                "--report", str(page)])
    html = page.read_text()
    captions = [c.split("</figcaption>")[0] for c in html.split("<figcaption>")[1:]]
    assert len(captions) == 6  # 2 probes x (itself + 2 hits)
    probe_captions = [c for c in captions if "label:" in c]
    assert sorted(probe_captions) == ["alice/img1.jpg #0<br>label: alice", "bob/img1.jpg #0<br>label: bob"]
    hit_captions = [c for c in captions if "label:" not in c]
    assert sorted(c.split("<br>")[0][3:] for c in hit_captions) == ["alice/img1.jpg #0"] * 2 + ["bob/img1.jpg #0"] * 2
    assert all(c.split("<br>")[1] in ("alice", "bob") for c in hit_captions)
    assert all(c.split("<br>")[1] == c.split("<br>")[0][3:].split("/")[0] for c in hit_captions)

    # A photo deleted since it was indexed: its face is a blank with its caption, and the report is still written.
    os.remove(root / "bob" / "img1.jpg")
    job(query, ["--probes", str(root / "alice"), "--exact", "--shards", out, "--k", "2", "--output",
                str(tmp_path / "q2"), "--report", str(page)])
    figures = page.read_text().split("<figure")[1:]
    assert len(figures) == 3 and html.count("<img") == 6
    assert [f.split("<figcaption>")[1].split("<br>")[0] for f in figures if "photo not readable now" in f] == [
        "2. bob/img1.jpg #0"]


@pytest.fixture(scope="module")
def many_probe_rows(sample_run, tmp_path_factory):
    """Over 300 probe faces of result rows from real sample results: every face of the sample searched
    (exact, k=6) and repeated as further probe faces of the same photos."""
    out, _ = sample_run
    faces = read_rows(os.path.join(out, "embeddings"))
    spec = shards.spec_of(out)
    hits = knn.exact_search(shards.files(out), faces, knn.SearchSpec(k=6), spec)
    by_photo = {}
    for face, h in zip(faces, hits):
        by_photo.setdefault(face["image_path"], []).append((face, h))
    rows = []
    for copy in range(5):
        for path, found in by_photo.items():
            shifted = [({**f, "face_index": f["face_index"] + 100 * copy}, h) for f, h in found]
            rows += knn.photo_rows(path, shifted, spec, spec.threshold, "exact")
    work = tmp_path_factory.mktemp("report-rss")
    (work / "rows.json").write_text(json.dumps(rows))
    (work / "spec.json").write_text(spec.to_json())
    return work, rows


def test_report_over_many_probes_stays_under_a_peak_rss(many_probe_rows):
    work, rows = many_probe_rows
    probe_faces = {(r["probe_path"], r["probe_face_index"]) for r in rows}
    photos = {r["probe_path"] for r in rows} | {r["hit_image_path"] for r in rows}
    assert len(probe_faces) >= 300 and len(photos) >= 60
    (work / "measure.py").write_text(MEASURE)
    env = {**os.environ, "PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, str(work / "measure.py"), str(work / "rows.json"), str(work / "spec.json"),
                          str(work / "report.html")], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rss = json.loads(res.stdout.strip().splitlines()[-1])
    added = rss["after_mb"] - rss["before_mb"]
    print(f"report over {len(probe_faces)} probe faces, {len(photos)} photos: peak RSS {rss['after_mb']:.0f} MB, "
          f"{added:.0f} MB above the {rss['before_mb']:.0f} MB before it")
    assert added < RSS_BOUND_MB, rss
    html = (work / "report.html").read_text()
    assert html.count("<img ") == len(rows) + len(probe_faces)
