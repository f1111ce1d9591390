"""Persons: clustering quality on the sample, names in query results, incremental joins, the contact sheet."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from facebeam.pipelines import cluster, embed, query
from facebeam.pipelines import persons as persons_cmd
from facebeam.transforms import persons
from tests.helpers import PAIRS, SAMPLE, fresh_collection, identities, job, read_rows, render_in_chromium


def _truth(assignments):
    """(predicted person, true identity) for the largest face of each labeled photo."""
    people = identities()
    best = {}
    for a in assignments:
        name = os.path.basename(a["image_path"])
        if name in people and (name not in best or a["box_w"] * a["box_h"] > best[name]["box_w"] * best[name]["box_h"]):
            best[name] = a
    names = sorted(best)
    return [best[n]["person_id"] or f"none-{n}" for n in names], [people[n] for n in names]


@pytest.fixture(scope="module")
def clustered(sample_run, tmp_path_factory):
    shards, _ = sample_run
    out = str(tmp_path_factory.mktemp("persons") / "clusters")
    summary = job(cluster, ["--shards", shards, "--output", out, "--pairs", PAIRS])
    return shards, out, summary


@pytest.mark.parametrize("how", ["pairs", "distribution"])
def test_clustering_quality_on_the_sample(clustered, tmp_path, how):
    shards, out, summary = clustered
    if how == "distribution":
        out = str(tmp_path / "clusters")
        summary = job(cluster, ["--shards", shards, "--output", out])
    assert summary["threshold_from"] == how and 0.4 < summary["threshold"] < 0.65, summary
    rows = persons.read_assignments(out)
    shard_faces = {r["face_id"] for r in read_rows(os.path.join(shards, "embeddings"))}
    assert len(rows) == summary["faces"] == len(shard_faces)  # every face kept, noise and singletons marked
    pred, truth = _truth(rows)
    q = persons.quality(pred, truth)
    print(how, summary["threshold"], q)
    assert q["pairwise_precision"] >= 0.95 and q["pairwise_recall"] >= 0.90, q
    assert abs(q["clusters"] - q["true_clusters"]) <= 2, q
    table = persons.read_table(out)
    assert [r["size"] for r in table] == sorted((r["size"] for r in table), reverse=True)
    assert sum(r["size"] for r in table) == sum(1 for r in rows if r["person_id"])


def test_ids_are_stable_and_a_name_reaches_query_results(clustered, tmp_path):
    shards, out, _ = clustered
    folder = str(tmp_path / "clusters")
    shutil.copytree(out, folder)
    table = persons.read_table(folder)
    biggest = table[0]["person_id"]
    assert persons_cmd.main(["--clusters", folder, "name", biggest, "Alice Example"]) == 0
    before = {r["face_id"]: r["person_id"] for r in persons.read_assignments(folder)}
    again = job(cluster, ["--shards", shards, "--output", folder, "--pairs", PAIRS])
    after = {r["face_id"]: r["person_id"] for r in persons.read_assignments(folder)}
    assert after == before and again["named"] == 1  # same faces: same ids, the name kept
    assert persons.read_table(folder)[0]["name"] == "Alice Example"
    rep = next(r for r in table if r["person_id"] == biggest)["representative_image_path"]
    job(query, ["--probes", rep, "--k", "5", "--exact", "--shards", shards, "--output", str(tmp_path / "q"),
                "--persons", folder])
    rows = query.read_results(str(tmp_path / "q"))
    assert rows and all(r["hit_person"] == "Alice Example" for r in rows if r["hit_person_id"] == biggest)
    assert any(r["hit_person"] == "Alice Example" for r in rows if r["rank"] == 1)


def test_split_and_merge_survive_a_recluster(clustered, tmp_path):
    shards, out, _ = clustered
    folder = str(tmp_path / "clusters")
    shutil.copytree(out, folder)
    big = persons.read_table(folder)[0]["person_id"]
    faces = sorted(r["face_id"] for r in persons.read_assignments(folder) if r["person_id"] == big)
    assert persons_cmd.main(["--clusters", folder, "split", big, "--faces", faces[0], faces[1]]) == 0
    job(cluster, ["--shards", shards, "--output", folder, "--pairs", PAIRS])
    now = {r["face_id"]: r["person_id"] for r in persons.read_assignments(folder)}
    assert now[faces[0]] == now[faces[1]] != now[faces[2]]
    # a person may be named by its name: the split-off one, named, is merged by that name (in another case)
    assert persons_cmd.main(["--clusters", folder, "name", now[faces[0]], "Split Off"]) == 0
    assert persons_cmd.main(["--clusters", folder, "merge", "split off", now[faces[0]]]) == 2  # itself: refused
    assert persons_cmd.main(["--clusters", folder, "merge", "split off", now[faces[2]]]) == 0
    job(cluster, ["--shards", shards, "--output", folder, "--pairs", PAIRS])
    now = {r["face_id"]: r["person_id"] for r in persons.read_assignments(folder)}
    assert len({now[f] for f in faces}) == 1


def test_cluster_on_an_embedded_index_named_by_index_and_store_gives_it_the_names(clustered, tmp_path):
    """`cluster --index NAME --store local:DIR` is what `--index` is on Elasticsearch: the graph from that index,
    and its faces carry the persons afterwards (it was Elasticsearch only, and asked for a URL)."""
    from facebeam.pipelines import index

    shards, exact_out, _ = clustered
    ann_dir = str(tmp_path / "ann")
    job(index, ["--shards", shards, "--index", "people", "--store", f"local:{ann_dir}"])
    out = str(tmp_path / "clusters")
    summary = job(cluster, ["--shards", shards, "--output", out, "--pairs", PAIRS, "--index", "people",
                            "--store", f"local:{ann_dir}"])
    assert summary["mode"] == "ann" and summary["index_updated"] == summary["faces"], summary
    exact = {r["face_id"]: r["person_id"] for r in persons.read_assignments(exact_out)}
    graph = {r["face_id"]: r["person_id"] for r in persons.read_assignments(out)}
    assert graph == exact  # the sample's graph from the index is the exact one
    biggest = persons.read_table(out)[0]
    assert persons_cmd.main(["--clusters", out, "name", biggest["person_id"], "Grace Example", "--index", "people",
                             "--store", f"local:{ann_dir}"]) == 0
    job(query, ["--probes", biggest["representative_image_path"], "--index", "people", "--store", f"local:{ann_dir}",
                "--person", "grace example", "--k", "50", "--output", str(tmp_path / "q")])
    rows = query.read_results(str(tmp_path / "q"))
    assert rows and {r["hit_person"] for r in rows} == {"Grace Example"} and len(rows) >= biggest["size"]


def test_incremental_faces_join_their_persons(clustered, sample_run, tmp_path):
    _, out, _ = clustered
    shards = str(tmp_path / "shards")
    fresh_collection(sample_run[0], shards)
    folder = str(tmp_path / "clusters")
    shutil.copytree(out, folder)
    before = {r["face_id"]: r for r in persons.read_assignments(folder)}
    by_file = {}
    for r in before.values():
        by_file.setdefault(os.path.basename(r["image_path"]), []).append(r)
    table = persons.read_table(folder)
    named = table[1]["person_id"]
    persons_cmd.main(["--clusters", folder, "name", named, "Bob Example"])
    aug = tmp_path / "aug"
    aug.mkdir()
    sources = {}
    for name in ("img1.jpg", "img26.jpg", "img47.jpg", "img16.jpg"):
        im = Image.open(os.path.join(SAMPLE, name)).convert("RGB")
        im.thumbnail((900, 900))
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(aug / f"flip-{name}")
        ImageEnhance.Brightness(im).enhance(1.3).save(aug / f"bright-{name}")
        sources[f"flip-{name}"] = sources[f"bright-{name}"] = by_file[name][0]["person_id"]
    job(embed, ["--input", str(aug), "--output", shards, "--incremental"])
    summary = job(cluster, ["--shards", shards, "--output", folder, "--incremental"])
    assert summary["incremental"] and summary["new_faces"] == 8 and summary["joined"] == 8, summary
    after = persons.read_assignments(folder)
    for r in after:
        name = os.path.basename(r["image_path"])
        if name in sources:
            assert r["person_id"] == sources[name], (name, r)
        else:
            assert r["person_id"] == before[r["face_id"]]["person_id"]
    names = {r["person_id"]: r["name"] for r in persons.read_table(folder)}
    assert names[named] == "Bob Example"


def test_contact_sheet_renders_every_image_in_chromium(clustered, tmp_path):
    shards, out, _ = clustered
    page = tmp_path / "sheet.html"
    job(cluster, ["--shards", shards, "--output", str(tmp_path / "c"), "--pairs", PAIRS, "--contact-sheet", str(page)])
    html = page.read_text()
    n_images = html.count("<img ")
    table = persons.read_table(str(tmp_path / "c"))
    assert n_images == sum(r["size"] for r in table) and "http" not in html
    assert len(html) < 40_000 * len(table)  # small crops, never whole photos
    (rendered, total), pixels = render_in_chromium(page, tmp_path)
    assert rendered == total == n_images
    assert len(np.unique(pixels.reshape(-1, 3) // 8, axis=0)) > 2000


def test_quality_metrics_and_stable_ids_by_hand():
    q = persons.quality([1, 1, 2, 2, 3], ["a", "a", "a", "b", "b"])
    assert q["pairwise_precision"] == 0.5 and q["pairwise_recall"] == 0.25
    ids = persons.stable_ids(["f1", "f2", "f3"], [7, 7, 8], {"f1": "p-old", "f3": "p-x"})
    assert ids == {7: "p-old", 8: "p-x"}
    fresh = persons.stable_ids(["f2", "f1"], [0, 0])
    assert fresh[0] == persons.new_person_id(["f1"])
