"""facebeam calibrate over a folder tree made from the sample (one sub-folder per person), and the carried threshold."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from facebeam.pipelines import calibrate as calibrate_cmd
from facebeam.pipelines import embed, index, query
from facebeam.transforms import shards
from tests.es_fixtures import SESSION_HOME
from tests.helpers import SAMPLE, drop_versions, identities, job, read_rows


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The sample as people/<person>/<photo> (persons by union-find over the pivot CSV's same pairs); photos
    never paired stay loose in people/ and get no label. Embedded with no labels stored."""
    work = tmp_path_factory.mktemp("calibrate")
    root = work / "people"
    root.mkdir()
    people = identities()
    for name in sorted(os.listdir(SAMPLE)):
        if name.endswith(".jpg"):
            folder = root / people[name] if name in people else root
            folder.mkdir(exist_ok=True)
            shutil.copy(os.path.join(SAMPLE, name), folder / name)
    out = str(work / "shards")
    job(embed, ["--input", str(root), "--output", out])
    return work, root, out, people


def test_calibrate_by_parent_dir_reports_and_draws(tree, tmp_path, capsys):
    work, root, out, people = tree
    spec_before = shards.spec_of(out)
    result = job(calibrate_cmd, ["--shards", out, "--label-from", "parent-dir", "--output", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "accuracy at the current threshold 0.6000 (Dlib/euclidean default):" in printed
    assert f"best threshold {result['best']['threshold']:.4f}: accuracy {result['best']['accuracy']:.4f}" in printed
    assert "cross-validated accuracy" in printed
    print(printed)
    n = len(people)
    assert result["photos"] == n and result["pairs"] == n * (n - 1) // 2  # loose photos are not labeled
    assert result["current"]["threshold"] == pytest.approx(0.6)
    assert result["best"]["accuracy"] >= result["current"]["accuracy"] >= 0.97
    assert 0.4 < result["threshold"] < 0.8
    # what is stored: the fit only when it beat 0.6 on the same unseen pairs, and the line says which and why
    cv = result["cross_validated"]
    kept = result["best"]["threshold"] if cv["accuracy"] > cv["current_accuracy"] else 0.6
    assert result["threshold"] == pytest.approx(kept, abs=1e-4)
    assert f"threshold stored: {result['why']}" in printed and f"{cv['current_accuracy']:.4f}" in result["why"]
    assert 0.95 <= result["cross_validated"]["accuracy"] <= 1.0
    assert len(result["cross_validated"]["fold_thresholds"]) == 5
    saved = json.loads((tmp_path / "calibration.json").read_text())
    assert saved["threshold"] == result["threshold"] and saved["spec_id"] == spec_before.spec_id
    # The picture, opened in Chromium from a page that embeds it: a real plot, not a blank page.
    png = tmp_path / "roc.png"
    assert Image.open(png).size[0] >= 800
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for this test (.ci/run installs it)"
    page = tmp_path / "roc.html"
    page.write_text(f"<!doctype html><html><body style='margin:0;background:#fff'>"
                    f"<img id=p src='{png.as_uri()}'><script>addEventListener('load', () => {{"
                    f"const i = document.getElementById('p'); document.title = 'w' + i.naturalWidth; }});"
                    f"</script></body></html>")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--allow-file-access-from-files",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert f"<title>w{Image.open(png).size[0]}</title>" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, "--window-size=1200,600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    not_white = np.any(pixels < 240, axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3) // 16, axis=0))
    assert not_white > 0.02 and colours > 20, (not_white, colours)
    # The curve is drawn in the plot's blue and the two thresholds in red and green.
    for rgb in ((0x33, 0x66, 0xcc), (0xcc, 0x33, 0x33), (0x22, 0xaa, 0x22)):
        assert (np.abs(pixels - np.array(rgb)).sum(axis=2) < 60).sum() > 20, rgb


def test_pairs_csv_gives_the_280_labeled_pairs(tree, tmp_path):
    _, _, out, _ = tree
    result = job(calibrate_cmd, ["--shards", out, "--pairs", os.path.join(SAMPLE, "face-recognition-pivot.csv"),
                                 "--output", str(tmp_path)])
    assert result["pairs"] == 280 and result["same_pairs"] == 140
    assert result["best"]["accuracy"] >= result["current"]["accuracy"] >= 0.95


def test_query_uses_the_carried_threshold_and_the_spec_id_stays(tree, tmp_path):
    work, root, out, people = tree
    spec_id = shards.spec_of(out).spec_id
    before = job(query, ["--probes", str(root), "--exact", "--shards", out, "--k", "3", "--output", str(tmp_path / "a")])
    assert before["threshold"] == pytest.approx(0.6) and "default" in before["threshold_from"]
    cal = job(calibrate_cmd, ["--shards", out, "--label-from", "parent-dir", "--adopt", "always"])  # into the shards
    assert os.path.exists(os.path.join(out, "calibration.json"))
    # calibrating again judges the fit against the threshold the collection now uses, not the spec's
    again = job(calibrate_cmd, ["--shards", out, "--label-from", "parent-dir", "--output", str(tmp_path / "again")])
    assert again["current"]["threshold"] == pytest.approx(cal["threshold"]) != pytest.approx(0.6)
    assert again["current_from"] == f"calibration in {os.path.join(out, 'calibration.json')}"
    after = job(query, ["--probes", str(root), "--exact", "--shards", out, "--k", "3", "--output", str(tmp_path / "b")])
    assert after["threshold"] == pytest.approx(cal["threshold"]) and "calibration" in after["threshold_from"]
    assert after["spec_id"] == before["spec_id"] == spec_id == shards.spec_of(out).spec_id
    rows = query.read_results(str(tmp_path / "b"))
    assert all(r["same_person"] == (r["distance"] <= cal["threshold"]) for r in rows)
    assert any((r["distance"] <= 0.6) != (r["distance"] <= cal["threshold"]) for r in rows) or \
        cal["threshold"] == pytest.approx(0.6, abs=0.005)
    over = job(query, ["--probes", str(root), "--exact", "--shards", out, "--k", "3", "--threshold", "0.3",
                       "--output", str(tmp_path / "c")])
    assert over["threshold"] == 0.3 and over["threshold_from"] == "--threshold"
    assert all(r["same_person"] == (r["distance"] <= 0.3) for r in query.read_results(str(tmp_path / "c")))
    assert len(read_rows(os.path.join(out, "embeddings"))) > 0


def test_index_meta_carries_the_threshold_to_elasticsearch_queries(tree, tmp_path, es_conn, es_client):
    """`calibrate --index` keeps the threshold in the index's _meta, beside an unchanged spec;
    queries against that index use it (and the spec's default before it was there)."""
    work, root, tree_out, people = tree
    out = str(tmp_path / "shards")  # a collection not calibrated yet (a load carries a collection's calibration)
    shutil.copytree(tree_out, out, ignore=shutil.ignore_patterns("calibration.json", "stores.json"))
    conn, alias = str(SESSION_HOME / "connection.json"), "calibrate-carry"
    spec_id = shards.spec_of(out).spec_id
    drop_versions(es_client, alias)
    try:
        job(index, ["--shards", out, "--index", alias, "--es-conn", conn])
        probe = ["--probes", str(root), "--index", alias, "--k", "3", "--es-conn", conn]
        before = job(query, probe + ["--output", str(tmp_path / "a")])
        assert "default" in before["threshold_from"] and before["threshold"] == pytest.approx(0.6)
        cal = job(calibrate_cmd, ["--shards", out, "--label-from", "parent-dir", "--index", alias, "--es-conn", conn,
                                  "--output", str(tmp_path / "cal")])
        concrete = cal["index"]
        meta = es_client.indices.get_mapping(index=concrete).body[concrete]["mappings"]["_meta"]["facebeam"]
        assert meta["spec_id"] == spec_id and meta["calibration"]["spec_id"] == spec_id
        assert meta["calibration"]["threshold"] == pytest.approx(cal["threshold"])
        after = job(query, probe + ["--output", str(tmp_path / "b")])
        assert after["threshold"] == pytest.approx(cal["threshold"])
        assert after["threshold_from"] == f"calibration in index {concrete}" and after["spec_id"] == spec_id
        rows = query.read_results(str(tmp_path / "b"))
        assert rows and all(r["same_person"] == (r["distance"] <= cal["threshold"]) for r in rows)
    finally:
        drop_versions(es_client, alias)


def test_calibrate_on_the_embedded_index_and_search_store_local_uses_it(tree, tmp_path, capsys):
    """`calibrate --store local:DIR` writes the threshold into the embedded index; `search --store local:DIR`
    judges with it and says where it came from, on the ready line, on every photo's line and in the result line."""
    import re

    from facebeam.pipelines import search

    work, root, out, people = tree
    folder = str(tmp_path / "ann")
    job(index, ["--shards", out, "--store", f"local:{folder}"])
    cal = job(calibrate_cmd, ["--shards", out, "--label-from", "parent-dir", "--store", f"local:{folder}",
                              "--output", str(tmp_path / "cal"), "--adopt", "always"])  # a threshold not the default's
    t = cal["threshold"]
    assert t != pytest.approx(0.6, abs=1e-4) and cal["adopted"] == "fit"
    photos = sorted(str(p) for p in root.rglob("*.jpg") if p.is_file())[:3]
    assert search.main([*photos, "--store", f"local:{folder}"]) == 0
    printed = capsys.readouterr().out
    where = f"same person at <= {t:.4f} (calibration in embedded index {folder})"
    assert printed.count(where) == 1 + len(photos) + 1, printed  # the ready line, each photo's, the result line
    judged = re.findall(r"^\s+\d+\s+([\d.]+)\s+(yes|no)\s", printed, flags=re.M)
    assert judged and all((float(d) <= t) == (same == "yes") for d, same in judged)


def test_calibrate_index_without_store_reaches_the_embedded_index_when_no_cluster_is_configured(tree, tmp_path,
                                                                                               monkeypatch):
    """`--index NAME` alone is chosen as `index` chooses: with no Elasticsearch configured, the embedded index
    (it used to mean Elasticsearch, and stopped with 'no Elasticsearch URL'); a name no store holds is refused."""
    from facebeam.transforms.stores.embedded import EmbeddedStore

    work, root, out, people = tree
    monkeypatch.setenv("FACEBEAM_HOME", str(tmp_path / "home"))
    for name in ("FACEBEAM_ES_URL", "FACEBEAM_ES_CONN"):
        monkeypatch.delenv(name, raising=False)
    shards_copy = str(tmp_path / "shards")
    shutil.copytree(out, shards_copy)
    job(index, ["--shards", shards_copy, "--index", "cal-auto"])
    cal = job(calibrate_cmd, ["--shards", shards_copy, "--label-from", "parent-dir", "--index", "cal-auto",
                              "--output", str(tmp_path / "cal")])
    folder = str(tmp_path / "home" / "ann" / "cal-auto")
    assert EmbeddedStore("cal-auto", folder).describe() in cal["stores"]  # (others: the stores `out` was loaded into)
    assert EmbeddedStore("cal-auto", folder).calibration()["threshold"] == pytest.approx(cal["threshold"])
    assert calibrate_cmd.main(["--shards", shards_copy, "--label-from", "parent-dir", "--index", "nobody-built-this",
                               "--output", str(tmp_path / "cal2")]) == 2
