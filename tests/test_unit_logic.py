"""The pure logic, without a server, a JVM or a Beam pipeline: the `make unit` tier.

Spec and ids, records, the calibration maths, the clustering graph, the bulk retry policy
(faults injected under a real Elasticsearch client), option parsing, runner kinds and the
local services' plumbing. Every test here is marked `unit` (tests/conftest.py), which also
refuses any network port and any `java` process while one runs.
"""
import hashlib
import json
import os
import time
from typing import NamedTuple

import elastic_transport
import numpy as np
import pytest
from elasticsearch import Elasticsearch

from facebeam.pipelines import embed, index, jobs, options
from facebeam.pipelines.local import service, toolkit
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner import job_options, kinds
from facebeam.transforms import calibrate, persons, privacy, records
from facebeam.transforms.errors import UserError
from facebeam.transforms.es_sink import BulkConfig, bulk_index
from facebeam.transforms.spec import EmbeddingSpec, SpecError
from tests.helpers import SAMPLE, synthetic_shards

pytestmark = pytest.mark.unit


# --- spec and ids ------------------------------------------------------------------------------
def test_spec_id_names_the_embedding_space_and_survives_a_round_trip():
    spec = EmbeddingSpec()
    assert spec.dim == 128 and len(spec.spec_id) == 12
    assert EmbeddingSpec.from_json(spec.to_json()) == spec
    assert EmbeddingSpec.from_json(spec.to_json()).spec_id == spec.spec_id
    other = EmbeddingSpec(detect_max_side=800)
    assert other.spec_id != spec.spec_id and other.slug.endswith(other.spec_id)
    with pytest.raises(SpecError, match="detect_max_side: 640 here vs 800 there"):
        spec.require_same(other)


@pytest.mark.parametrize("fields, says", [({"model": "NoSuchNet"}, "unknown model"),
                                          ({"detector": "skip"}, "whole frames"),
                                          ({"detect_max_side": 10}, "at least 64")])
def test_spec_refuses_what_it_cannot_embed(fields, says):
    with pytest.raises(SpecError, match=says):
        EmbeddingSpec(**fields)


def test_distances_under_each_metric():
    a, b = np.array([3.0, 4.0]), np.array([0.0, 4.0])
    assert EmbeddingSpec(metric="euclidean").distance(a, b) == pytest.approx(3.0)
    assert EmbeddingSpec(metric="cosine").distance(a, a * 7) == pytest.approx(0.0, abs=1e-6)
    assert EmbeddingSpec(metric="cosine").distance(a, b) == pytest.approx(1 - 16 / 20)
    # broadcasting: one probe against many
    many = EmbeddingSpec(metric="euclidean").distance(a, np.stack([a, b]))
    assert many.shape == (2,) and many[0] == pytest.approx(0.0)


def test_face_id_is_content_addressed():
    """Same bytes + same box + same spec -> same id; any of the three changed -> another id."""
    with open(os.path.join(SAMPLE, "img1.jpg"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    spec = EmbeddingSpec()
    box = (10, 20, 30, 40)
    fid = records.face_id(sha, box, spec)
    assert fid == records.face_id(sha, (10.0, 20.0, 30.0, 40.0), spec) and len(fid) == 32
    assert fid != records.face_id(sha, (11, 20, 30, 40), spec)
    assert fid != records.face_id(sha[::-1], box, spec)
    assert fid != records.face_id(sha, box, EmbeddingSpec(detect_max_side=800))


def test_error_rows_carry_a_known_reason_and_the_spec():
    spec = EmbeddingSpec()
    reason = sorted(records.REASONS)[0]
    row = records.error_row("/x.jpg", reason, "m" * 5000, "decode", spec)
    assert row["reason"] == reason and row["spec_id"] == spec.spec_id and len(row["message"]) == 2000
    with pytest.raises(AssertionError):
        records.error_row("/x.jpg", "no-such-reason", "", "decode", spec)


def test_face_schema_fixes_the_vector_size():
    schema = records.face_schema(128)
    assert schema.field("embedding").type.list_size == 128
    assert {"face_id", "spec_id", "image_sha256"} <= set(schema.names)


# --- thresholds and calibration ------------------------------------------------------------------
def test_best_threshold_cuts_between_the_classes():
    d = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = np.array([True, True, True, False, False, False])
    t, acc = calibrate.best_threshold(d, same)
    assert t == pytest.approx(0.5) and acc == 1.0
    assert calibrate.accuracy(d, same, 0.25) == pytest.approx(5 / 6)
    assert calibrate.roc(d, same)["auc"] == pytest.approx(1.0)


def test_best_threshold_never_cuts_between_equal_distances():
    d = np.array([0.2, 0.5, 0.5, 0.9])
    same = np.array([True, True, False, False])
    t, _ = calibrate.best_threshold(d, same)
    assert not (0.5 - 1e-9 < t < 0.5 + 1e-9) and (t < 0.5 or t > 0.5)


def test_fit_on_labeled_pairs_and_its_refusals():
    spec = EmbeddingSpec(metric="euclidean")
    vectors = {"a": np.array([0.0, 0.0]), "b": np.array([0.0, 0.1]), "c": np.array([5.0, 5.0]),
               "d": np.array([5.0, 5.2])}
    pairs = [("a", "b", True), ("c", "d", True), ("a", "c", False), ("b", "d", False), ("a", "d", False)]
    fit = calibrate.fit(pairs, vectors, spec, current=1.0, folds=2)
    assert fit["pairs"] == 5 and fit["same_pairs"] == 2 and fit["best"]["accuracy"] == 1.0
    assert 0.2 < fit["threshold"] < 7.0 and fit["roc_auc"] == 1.0
    with pytest.raises(calibrate.CalibrationError, match="no labeled pairs"):
        calibrate.fit([], vectors, spec, current=1.0)
    with pytest.raises(calibrate.CalibrationError, match="both same-person and different-person"):
        calibrate.fit(pairs[:2], vectors, spec, current=1.0)


def test_calibration_keeps_the_fit_only_when_it_beats_the_current_threshold_on_unseen_photos():
    """20 people, 3 photos each, on a line: a person's photos lie within 0.8 of each other, people 10 apart."""
    spec = EmbeddingSpec(metric="euclidean")
    rng = np.random.default_rng(7)
    vectors = {f"p{i}-{j}": np.array([10.0 * i + rng.uniform(0, 0.8), 0.0]) for i in range(20) for j in range(3)}
    faces = {name: (name.split("-")[0], v) for name, v in vectors.items()}
    pairs = calibrate.all_pairs(faces)
    # 0.5 misses some same-person pairs on every fold: the fit beats it on unseen photos and is kept
    fit = calibrate.fit(pairs, vectors, spec, current=0.5)
    cv = fit["cross_validated"]
    assert cv["accuracy"] == 1.0 > cv["current_accuracy"] and cv["held_out_pairs"] > 0
    assert fit["adopted"] == "fit" and fit["threshold"] == round(fit["best"]["threshold"], 4) != 0.5
    # 5.0 is already right everywhere: a tie is no evidence, and the current threshold stays
    fit = calibrate.fit(pairs, vectors, spec, current=5.0)
    assert fit["cross_validated"]["current_accuracy"] == fit["cross_validated"]["accuracy"] == 1.0
    assert (fit["adopted"], fit["threshold"]) == ("current", 5.0) and "no better than 5.0000's 1.0000" in fit["why"]
    always = calibrate.fit(pairs, vectors, spec, current=5.0, adopt="always")
    assert always["adopted"] == "fit" and always["threshold"] == round(always["best"]["threshold"], 4) != 5.0
    # two photos: no fold can hold one out and still fit, so nothing shows the fit generalizes
    two = {k: vectors[k] for k in ("p0-0", "p0-1", "p1-0")}
    few = calibrate.fit([("p0-0", "p0-1", True), ("p0-0", "p1-0", False)], two, spec, current=0.5, folds=2)
    assert few["cross_validated"]["accuracy"] is None
    assert (few["adopted"], few["threshold"]) == ("current", 0.5) and "too few photos" in few["why"]


def test_a_threshold_comes_from_the_flag_then_a_calibration_of_this_spec_then_the_spec():
    spec = EmbeddingSpec()
    assert calibrate.choose_threshold(spec, override=0.3, carried={"spec_id": spec.spec_id, "threshold": 0.5}) == \
        (0.3, "--threshold")
    t, where = calibrate.choose_threshold(spec, carried={"spec_id": spec.spec_id, "threshold": 0.5}, where="idx")
    assert (t, where) == (0.5, "calibration in idx")
    t, where = calibrate.choose_threshold(spec, carried={"spec_id": "other", "threshold": 0.5}, where="idx")
    assert t == spec.threshold and where == "Dlib/euclidean default"


# --- the clustering graph -----------------------------------------------------------------------
def _knn_of(points: np.ndarray, k: int):
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    ids = np.argsort(d, axis=1)[:, :k]
    return ids, np.take_along_axis(d, ids, axis=1)


def test_edges_are_undirected_within_the_threshold_and_mutual_keeps_both_ways():
    ids = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    dist = np.array([[0.0, 0.3, 0.9], [0.0, 0.3, 0.4], [0.0, 0.4, 0.9]])
    a, b, d = persons.edges(ids, dist, threshold=0.5)
    assert sorted(zip(a.tolist(), b.tolist())) == [(0, 1), (1, 2)] and sorted(d.tolist()) == [0.3, 0.4]
    a, b, _ = persons.edges(np.array([[0, 1], [1, 2], [2, 1]]), np.array([[0, 0.3], [0, 0.4], [0, 0.4]]), 0.5,
                            mutual=True)
    assert list(zip(a.tolist(), b.tolist())) == [(1, 2)]  # 0 -> 1 is listed one way only


def test_components_and_clusters_of_two_separate_groups():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 0.05, (6, 2)), rng.normal(5, 0.05, (5, 2))])
    ids, dist = _knn_of(points, 6)
    for method in ("cc", "mutual", "cw"):
        labels = persons.cluster(ids, dist, threshold=0.5, method=method)
        assert len(set(labels[:6].tolist())) == 1 and len(set(labels[6:].tolist())) == 1
        assert labels[0] != labels[6]
    with pytest.raises(ValueError, match="unknown clustering method"):
        persons.cluster(ids, dist, 0.5, method="nope")
    # a chain 0-1-2 and a lone 3: union-find joins the chain
    parent = persons.components(4, np.array([0, 1]), np.array([1, 2]))
    assert parent[0] == parent[1] == parent[2] != parent[3]


def test_person_ids_stay_with_their_faces_and_edits_replay():
    ids = persons.stable_ids(["f1", "f2", "f3"], [7, 7, 8], {"f1": "p-old", "f3": "p-x"})
    assert ids == {7: "p-old", 8: "p-x"}
    assert persons.new_person_id(["f2", "f1"]) == persons.new_person_id(["f1", "f9"])


def test_a_person_is_named_by_id_or_by_the_name_of_one_person():
    table = {"p-1a2b": {"name": "Ann Lee"}, "p-3c4d": {"name": "Bo"}, "p-5e6f": {"name": "bo"}, "p-7a8b": {"name": None}}
    assert persons.person_named_by(table, "p-7a8b", "c") == "p-7a8b"
    assert persons.person_named_by(table, "Ann Lee", "c") == persons.person_named_by(table, "ann lee", "c") == "p-1a2b"
    assert persons.person_named_by(table, "Bo", "c") == "p-3c4d"  # as given first; in any case only when none is
    with pytest.raises(UserError, match=r"^2 persons in c are named 'BO' \(p-3c4d, p-5e6f\): give one's id$"):
        persons.person_named_by(table, "BO", "c")
    with pytest.raises(UserError, match=r"^no person 'p-1a2c' in c; did you mean 'p-1a2b'\?$"):
        persons.person_named_by(table, "p-1a2c", "c")
    with pytest.raises(UserError, match=r"^no person 'Zed' in c \(`facebeam persons list --clusters c` shows them\)$"):
        persons.person_named_by(table, "Zed", "c")


# --- the bulk retry policy, faults injected under a real client ----------------------------------
class FaultyNode(elastic_transport.BaseNode):
    """A transport node with no server behind it: the N-th bulk call fails as scripted, others index every doc.

    By hand: the retry policy must be tested without a cluster, and the transport's node is the one
    seam where a real `Elasticsearch` client meets the network."""

    plan: dict = {}
    calls: list = []

    def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
        FaultyNode.calls.append(target)
        fault = FaultyNode.plan.get(len(FaultyNode.calls))
        if fault == "connection":
            raise elastic_transport.ConnectionError("injected: connection reset")
        lines = [json.loads(x) for x in (body or b"").decode().splitlines() if x.strip()]
        heads = lines[0::2]
        status = fault if isinstance(fault, int) else 201
        items = [{"index": {"_index": h["index"]["_index"], "_id": h["index"]["_id"], "status": status,
                            **({"error": {"type": "injected", "reason": f"HTTP {status}"}} if status >= 300 else {})}}
                 for h in heads]
        answer = json.dumps({"took": 1, "errors": status >= 300, "items": items}).encode()
        meta = elastic_transport.ApiResponseMeta(status=200, http_version="1.1",
                                                 headers=elastic_transport.HttpHeaders({"x-elastic-product": "Elasticsearch",
                                                                                        "content-type": "application/json"}),
                                                 duration=0.0, node=self.config)
        return NodeAnswer(meta, answer)


class NodeAnswer(NamedTuple):
    """What a transport node returns (the transport reads `.meta` and `.body`)."""

    meta: elastic_transport.ApiResponseMeta
    body: bytes


@pytest.fixture
def faulty_client():
    def make(plan):
        FaultyNode.plan, FaultyNode.calls = plan, []
        return Elasticsearch("http://127.0.0.1:9", node_class=FaultyNode, retry_on_timeout=False, max_retries=0)
    return make


@pytest.fixture
def rows(tmp_path):
    return synthetic_shards(str(tmp_path), 90, EmbeddingSpec())


def test_connection_errors_and_item_5xx_are_retried_with_growing_backoff(faulty_client, rows):
    client = faulty_client({2: "connection", 3: 503, 5: 429})
    sleeps = []
    out = bulk_index(client, rows, BulkConfig(index="faces", chunk_docs=30, initial_backoff_s=0.1),
                     sleep=sleeps.append, url="http://test")
    assert out.indexed == 90 and out.failed == [] and out.retried > 0
    assert len(sleeps) >= 2 and sleeps[1] >= 0.1  # the second wait is on the doubled scale
    assert all(t.startswith("/_bulk") for t in FaultyNode.calls)


def test_client_errors_are_dead_letters_and_retries_give_up(faulty_client, rows):
    out = bulk_index(faulty_client({1: 400}), rows[:5], BulkConfig(index="faces"), sleep=lambda s: None, url="x")
    assert out.indexed == 0 and [s for _, s, _ in out.failed] == [400] * 5 and len(FaultyNode.calls) == 1
    assert "injected: HTTP 400" in out.failed[0][2]
    out = bulk_index(faulty_client(dict.fromkeys(range(1, 100), 503)), rows[:10], BulkConfig(index="faces", max_retries=3),
                     sleep=lambda s: None, url="x")
    assert out.indexed == 0 and len(out.failed) == 10 and len(FaultyNode.calls) == 4


def test_backoff_is_capped_and_jittered():
    cfg = BulkConfig(index="x", initial_backoff_s=1.0, max_backoff_s=8.0)
    waits = [cfg.backoff(attempt) for attempt in range(8)]
    assert all(0.5 <= w <= 1.0 for w in waits[:1]) and all(4.0 <= w <= 8.0 for w in waits[4:])
    with pytest.raises(UserError, match="non-negative"):
        BulkConfig(index="x", max_retries=-1)


# --- option parsing -----------------------------------------------------------------------------
def test_app_flags_and_beam_flags_are_split_and_workers_kept_quiet():
    args, beam_args = options.parse(embed.build_parser(), ["--input", SAMPLE, "--output", "/tmp/o",
                                                           "--runner=FlinkRunner", "--parallelism=2"])
    config = embed.configure(args, beam_args)
    assert config.output == "/tmp/o" and "--runner=FlinkRunner" in config.beam_args
    assert all(q in beam_args for q in options.QUIET_WORKERS)
    assert not args.dests() - args.read  # every flag offered is read


def test_a_word_no_flag_takes_is_refused_and_beam_flags_keep_their_values():
    # `embed --input a --output o more`: `more` was dropped, and the job ran without it.
    with pytest.raises(UserError, match="unexpected argument 'more': no flag takes it; did you mean --input more"):
        options.parse(embed.build_parser(), ["--input", "a", "--output", "o", "more"])
    with pytest.raises(UserError, match="unexpected argument 'x': no flag takes it; see --help"):
        options.parse(index.build_parser(), ["--shards", "/s", "--index", "faces", "x"])
    _, beam_args = options.parse(embed.build_parser(), ["--input", "a", "--output", "o", "--runner", "DirectRunner",
                                                        "--direct_num_workers", "2"])
    assert beam_args[:4] == ("--runner", "DirectRunner", "--direct_num_workers", "2")
    # A command without Beam's flags takes its photos after a flag too (`search a.jpg --k 3 b.jpg` was refused).
    from facebeam.pipelines import search

    args, _ = options.parse(search.build_parser(), ["a.jpg", "--k", "3", "b.jpg"], beam=False)
    assert args.photos == ["a.jpg", "b.jpg"] and args.k == 3
    # A relative path filter is taken from this folder, as stored paths are (it matched nothing, without a word).
    config = search.configure(*options.parse(search.build_parser(), ["a.jpg", "--path-prefix", "people/bob/",
                                                                     "--filter", "image_path=people/x.jpg"], beam=False))
    assert config.path_prefix == os.path.join(os.getcwd(), "people", "bob") + "/"
    assert config.filters == (("image_path", os.path.join(os.getcwd(), "people", "x.jpg")),)
    assert options.path_prefix("gs://b/people/") == "gs://b/people/" and options.path_prefix("/p/2019-") == "/p/2019-"


def test_persons_takes_clusters_before_or_after_its_action():
    from facebeam.pipelines import persons

    for argv in (["--clusters", "c", "list"], ["list", "--clusters", "c"], ["name", "p-1", "Ada", "--clusters", "c"]):
        assert persons.configure(*options.parse(persons.build_parser(), argv, beam=False)).clusters == "c", argv
    with pytest.raises(SystemExit) as e:  # required, and said so by the action's own --help
        options.parse(persons.build_parser(), ["list"], beam=False)
    assert e.value.code == 2
    # A value that reads like an action stays the flag's value.
    assert persons.configure(*options.parse(persons.build_parser(), ["--clusters", "list", "list"],
                                            beam=False)).clusters == "list"


def test_a_bad_option_is_a_user_error(capsys):
    with pytest.raises(SystemExit) as e:  # the parser's bounds (options.number)
        options.parse(index.build_parser(), ["--shards", "/s", "--index", "faces", "--max-retries", "-1"])
    assert e.value.code == 2 and "argument --max-retries: want a number >= 0, got '-1'" in capsys.readouterr().err
    with pytest.raises(UserError, match="chunk_docs must be >= 1 and chunk_bytes >= 1024"):  # the config's own
        index.configure(*options.parse(index.build_parser(), ["--shards", "/s", "--index", "faces", "--chunk-bytes",
                                                              "100", "--es-url", "https://127.0.0.1:9"]))


# --- runner kinds and the options a job gets -----------------------------------------------------
@pytest.mark.parametrize("name, kind", [(None, "direct"), ("DirectRunner", "direct"), ("FlinkRunner", "flink"),
                                        ("apache_beam.runners.portability.spark_runner.SparkRunner", "spark"),
                                        ("ManagedFlinkRunner", "flink"), ("DataflowRunner", "other")])
def test_runner_kinds(name, kind):
    assert kinds.runner_kind(name) == kind


def test_direct_runs_on_every_core_a_small_job_in_process_and_explicit_flags_win():
    for photos in (None, job_options.IN_PROCESS_MAX_PHOTOS + 1):  # unknown, or past the worker processes' cost
        opts = job_options.pipeline_options([], photos=photos)
        assert opts.get_all_options()["direct_running_mode"] == "multi_processing"
        assert opts.get_all_options()["direct_num_workers"] == 0
        assert kinds.runner_name(opts) == f"DirectRunner(FnApiRunner, {os.cpu_count()} processes)"
    load = job_options.pipeline_options([], faces=job_options.IN_PROCESS_MAX_FACES + 1)
    assert load.get_all_options()["direct_running_mode"] == "multi_processing"
    assert job_options.pipeline_options([], faces=job_options.IN_PROCESS_MAX_FACES).get_all_options()[
        "direct_running_mode"] == "in_memory"
    assert job_options.pipeline_options([], graph_faces=job_options.IN_PROCESS_MAX_GRAPH_FACES + 1).get_all_options()[
        "direct_running_mode"] == "multi_processing"
    assert job_options.pipeline_options([], graph_faces=job_options.IN_PROCESS_MAX_GRAPH_FACES).get_all_options()[
        "direct_running_mode"] == "in_memory"
    small = job_options.pipeline_options([], photos=job_options.IN_PROCESS_MAX_PHOTOS)
    assert small.get_all_options()["direct_running_mode"] == "in_memory"
    assert small.get_all_options()["direct_num_workers"] == 1
    assert kinds.runner_name(small) == "DirectRunner(FnApiRunner, in_memory)"
    for flags in (["--direct_num_workers=2"], ["--direct_running_mode=multi_processing"]):  # the user's word wins
        assert job_options.pipeline_options(flags, photos=1).get_all_options()["direct_running_mode"] == \
            "multi_processing"
    mine = job_options.pipeline_options(["--direct_num_workers=3", "--direct_running_mode=in_memory"])
    assert mine.get_all_options()["direct_num_workers"] == 3
    assert mine.get_all_options()["direct_running_mode"] == "in_memory"
    assert job_options.flag_given(["--a=1", "--b"], "b") and not job_options.flag_given(["--bb"], "b")


def test_a_job_asking_for_blocking_exchanges_gets_them_on_flink_only_and_the_users_flag_wins():
    served = ["--runner=FlinkRunner", "--job_endpoint=localhost:1"]  # a running job service: nothing is probed
    mode = "execution_mode_for_batch"
    assert job_options.pipeline_options(served, blocking=True).get_all_options()[mode] == \
        job_options.BLOCKING_EXCHANGES == "BATCH"
    assert job_options.pipeline_options(served).get_all_options()[mode] is None  # Beam's own default
    mine = [*served, f"--{mode}=PIPELINED"]
    assert job_options.pipeline_options(mine, blocking=True).get_all_options()[mode] == "PIPELINED"
    assert job_options.pipeline_options([], blocking=True).get_all_options()[mode] is None  # Direct
    with pytest.raises(SystemExit):  # a value Flink does not know is refused before any work
        job_options.pipeline_options([*served, f"--{mode}=FAST"]).get_all_options()


# --- the local services' plumbing ---------------------------------------------------------------
def test_poll_returns_the_first_true_answer_or_gives_up_at_the_deadline():
    answers = iter([None, 0, "ready"])
    assert toolkit.poll(lambda: next(answers), timeout=5, interval=0.01) == "ready"
    started = time.monotonic()
    assert toolkit.poll(lambda: False, timeout=0.3, interval=0.05) is False
    assert 0.25 <= time.monotonic() - started < 2
    ok, last = toolkit.wait_ready(lambda: None, alive=lambda: False, timeout=30)
    assert not ok and last is None  # the process died: no waiting for the deadline


def test_file_lock_waits_then_names_what_holds_it(tmp_path):
    with toolkit.file_lock(tmp_path / "x.lock", timeout=1, what="testing"):
        started = time.monotonic()
        with pytest.raises(RunnerSetupError, match="waiting for another process installing x"), \
                toolkit.file_lock(tmp_path / "x.lock", timeout=0.5, what="installing x"):
            pass
        assert time.monotonic() - started >= 0.4
    with toolkit.file_lock(tmp_path / "x.lock", timeout=0.5):
        pass  # free again


def test_output_folder_lock_refuses_a_second_job_naming_the_holder(tmp_path):
    with jobs.lock_output(str(tmp_path)):
        assert (tmp_path / ".facebeam.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"is in use by another facebeam job \\(pid {os.getpid()}\\)"), \
                jobs.lock_output(str(tmp_path)):
            pass
    assert (tmp_path / ".facebeam.lock").read_text() == ""


def test_an_output_folder_with_a_wildcard_in_its_path_is_refused_before_anything_is_made(tmp_path):
    for name in ("out [1]", "out*", "out?"):
        with pytest.raises(UserError, match="has a \\*, \\? or \\[ in its path"), jobs.lock_output(str(tmp_path / name)):
            pass
        assert not (tmp_path / name).exists()


def test_inputs_named_with_brackets_stars_and_question_marks_are_read_as_named(tmp_path):
    from facebeam.transforms import sources

    folder = tmp_path / "Photos [2019]"
    folder.mkdir()
    names = ["a[1].jpg", "b*.jpg", "c?.jpg", "d.jpg"]
    for n in names:
        (folder / n).write_bytes(b"x")
    sources.check_inputs([str(folder), str(folder / "a[1].jpg")])
    assert sorted(os.path.basename(p) for p, _ in sources.expand(str(folder))) == sorted(names)
    assert [os.path.basename(p) for p, _ in sources.expand(str(folder / "b*.jpg"))] == ["b*.jpg"]  # not a glob
    (tmp_path / "list.txt").write_text(f"{folder / 'a[1].jpg'}\n")
    assert [os.path.basename(p) for p, _ in sources.expand(str(tmp_path / "list.txt"), since=0.0)] == ["a[1].jpg"]
    # A glob still globs: the files of the folder's own wildcard-free twin.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "e.jpg").write_bytes(b"x")
    assert [os.path.basename(p) for p, _ in sources.expand(str(plain / "*.jpg"))] == ["e.jpg"]


def test_an_output_where_a_file_stands_is_one_line_and_the_file_is_untouched(tmp_path):
    from facebeam.transforms.errors import UserError

    (tmp_path / "notes").write_text("mine")
    for output in ("notes", "notes/run1"):
        with pytest.raises(UserError, match=f"{tmp_path / 'notes'} is a file, not a folder"), \
                jobs.lock_output(str(tmp_path / output)):
            pass
    assert (tmp_path / "notes").read_text() == "mine"


def test_a_walk_leaves_out_hidden_and_system_names_below_its_folder_and_counts_them(tmp_path):
    from facebeam.transforms import progress, sources

    root = tmp_path / ".photos"  # a folder named on its own is read, even a hidden one
    for rel in ("a.jpg", "trip/b.jpg", "trip/.thumbnails/b.jpg", "._a.jpg", "@eaDir/a.jpg/SYNOFILE_THUMB_XL.jpg",
                "#recycle/c.jpg", "notes.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    skipped = []
    read = sorted(os.path.relpath(p, root) for p, _ in sources.expand(str(root), skipped=lambda p, why: skipped.append(why)))
    assert read == ["a.jpg", "trip/b.jpg"]
    assert sorted(skipped) == ["hidden"] * 4 + ["not_image"]
    assert progress.count_files([str(root)]) == 2
    (root / "faces").mkdir()  # a facebeam output inside (`--output photos/faces`): its plots are not photos
    for name in (".facebeam.lock", "roc.png"):
        (root / "faces" / name).write_bytes(b"x")
    assert progress.count_files([str(root)]) == 2
    os.utime(root / "a.jpg", (1577836800, 1577836800))  # 2020-01-01: a --since run's bar counts what it reads
    assert progress.count_files([str(root)], since=sources.parse_since("2025-01-01")) == 1
    assert [os.path.basename(p) for p, _ in sources.expand(str(root / "trip/.thumbnails"))] == ["b.jpg"]
    assert [os.path.basename(p) for p, _ in sources.expand(str(root / "*/.thumbnails/*.jpg"))] == ["b.jpg"]
    assert sorted(os.path.relpath(p, root) for p, _ in sources.expand(str(root) + "/*/")) == ["trip/b.jpg"]
    for rel in ("a.jpg", "trip/b.jpg"):
        (root / rel).unlink()
    with pytest.raises(sources.InputError, match="hidden or system names"):
        sources.check_inputs([str(root)])


def test_a_glob_ending_in_a_slash_walks_the_folders_it_matches_and_a_bracketed_folder_is_a_label_root(tmp_path):
    from facebeam.transforms import labels, progress, sources

    for folder, name in (("alice", "1.jpg"), ("bob", "2.jpg"), ("Photos [2019]", "3.jpg")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"x")
    walked = str(tmp_path) + "/*/"
    sources.check_inputs([walked])
    assert sorted(os.path.basename(p) for p, _ in sources.expand(walked)) == ["1.jpg", "2.jpg", "3.jpg"]
    assert progress.count_files([walked]) == 3
    with pytest.raises(sources.InputError, match="matched no files"):
        sources.check_inputs([str(tmp_path) + "/nobody*/"])
    # parent-dir labels: a folder named with a [ is the root as it is, so a photo directly in it has no label.
    bracketed = str(tmp_path / "Photos [2019]")
    assert labels.labeler_from("parent-dir", [bracketed])(bracketed + "/3.jpg") is None
    assert labels.labeler_from("parent-dir", [walked])(str(tmp_path / "alice/1.jpg")) == "alice"


def test_a_spreadsheets_csv_and_an_editors_list_file_with_a_byte_order_mark_are_read(tmp_path):
    from facebeam.transforms import labels, sources

    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "labels.csv").write_bytes("\ufeffPath, Label\r\na.jpg,alice\r\n".encode())
    assert labels.CsvLabeler(str(tmp_path / "labels.csv"))(str(tmp_path / "a.jpg")) == "alice"
    (tmp_path / "list.txt").write_bytes(f"\ufeff{tmp_path / 'a.jpg'}\r\n".encode())
    assert [p for p, _ in sources.expand(str(tmp_path / "list.txt"), since=0.0)] == [str(tmp_path / "a.jpg")]
    (tmp_path / "pairs.csv").write_bytes("\ufeffFile_x,file_y,Decision\r\na.jpg,b.jpg,Yes\r\n".encode())
    assert labels.read_pairs(str(tmp_path / "pairs.csv")) == [("a.jpg", "b.jpg", True)]


def test_a_pairs_decision_is_read_one_way_everywhere_and_a_word_that_is_neither_is_refused(tmp_path):
    from facebeam.pipelines import verify
    from facebeam.transforms import labels
    from facebeam.transforms.errors import UserError

    rows = [("a.jpg", "b.jpg", "Same"), ("a.jpg", "c.jpg", " N "), ("b.jpg", "c.jpg", "different")]
    (tmp_path / "pairs.csv").write_text("file_x,file_y,decision\n" + "".join(f"{x},{y},{d}\n" for x, y, d in rows))
    want = [True, False, False]
    assert [same for _, _, same in labels.read_pairs(str(tmp_path / "pairs.csv"))] == want
    assert [same for _, _, same in verify.read_pairs(str(tmp_path / "pairs.csv"))] == want
    (tmp_path / "typo.csv").write_text("file_x,file_y,decision\na.jpg,b.jpg,yes\na.jpg,c.jpg,noo\n")
    for read in (labels.read_pairs, verify.read_pairs):
        with pytest.raises(UserError, match=r"typo.csv line 3: decision 'noo' is neither"):
            read(str(tmp_path / "typo.csv"))
    (tmp_path / "blank.csv").write_text("file_x,file_y,decision\na.jpg,b.jpg,\n")
    assert verify.read_pairs(str(tmp_path / "blank.csv"))[0][2] is None  # verify: unlabelled, judged only
    with pytest.raises(UserError, match="blank.csv line 2: no decision"):
        labels.read_pairs(str(tmp_path / "blank.csv"))  # calibration needs every pair's answer


def test_beams_noise_is_dropped_also_when_a_worker_relays_it(caplog):
    import logging

    import facebeam.pipelines  # noqa: F401  (installs the filter on the root logger)

    with caplog.at_level(logging.WARNING):
        logging.warning("%s", "Resource module is not available for current platform, memory usage cannot be fetched.")
        logging.warning("apitools not found, and bigquery client libraries are not available")
        logging.warning("%s", "a warning of the user's own")
    assert [r.getMessage() for r in caplog.records] == ["a warning of the user's own"]


def test_private_files_are_owner_only(tmp_path):
    privacy.write_private(tmp_path / "d" / "secret.json", '{"password": "x"}')
    assert (tmp_path / "d" / "secret.json").stat().st_mode & 0o777 == 0o600
    assert json.loads((tmp_path / "d" / "secret.json").read_text()) == {"password": "x"}


def test_processes_alive_and_cmdline():
    assert toolkit.alive(os.getpid(), must_contain="python")
    assert not toolkit.alive(os.getpid(), must_contain="no-such-program-name")
    assert "python" in toolkit.cmdline(os.getpid()) and toolkit.cmdline(2**22 + 7) == ""


def test_maven_reason_finds_the_line_that_says_why():
    out = "[INFO] x\n[ERROR] Failed ... org.apache:x:jar:1.0 was not found in https://repo.example/m2 during ...\n"
    assert toolkit.maven_reason(out).startswith("Could not find artifact org.apache:x:jar:1.0 in https://repo.example/m2")
    assert toolkit.maven_reason("") == "Maven failed"


def test_a_service_that_fails_says_one_line_and_logs_the_rest(caplog, capsys):
    def fails():
        raise RunnerSetupError("the cluster did not start\nlog tail line 1\nlog tail line 2")

    actions = {"up": service.Action(fails, str), "status": service.Action(lambda: {"up": False}, lambda st: "not running",
                                                                          ok=lambda st: st["up"])}
    with pytest.raises(RunnerSetupError) as err:
        service.run_action("flink", "up", actions)
    assert str(err.value) == "the cluster did not start" and isinstance(err.value, UserError)
    assert "log tail line 2" in caplog.text
    assert service.run_action("flink", "status", actions) == {"up": False, "ok": False}
    assert capsys.readouterr().out == "not running\n"


def test_embed_workers_of_a_local_cluster_count_into_the_launchers_bar_folder(tmp_path, monkeypatch):
    """A local cluster's harnesses do not inherit FACEBEAM_PROGRESS_DIR: the transform carries it to them."""
    import pickle

    from facebeam.transforms import embed as embed_transforms
    from facebeam.transforms import progress
    from facebeam.transforms.faces import ImageFaces

    monkeypatch.setenv(progress.ENV_DIR, str(tmp_path))
    fn = pickle.loads(pickle.dumps(embed_transforms.ToRows(EmbeddingSpec())))  # as Beam ships it
    monkeypatch.delenv(progress.ENV_DIR)  # the worker's own environment
    monkeypatch.setattr(progress.EMBED, "folder", None)
    monkeypatch.setattr(progress.EMBED, "share_s", 0.0)
    monkeypatch.setattr(progress.EMBED, "counts", __import__("collections").Counter())
    fn.setup()
    rows = list(fn.process(ImageFaces(path="a.jpg", sha256="0" * 64, width=10, height=10, faces=[])))
    assert len(rows) == 1 and rows[0].tag == "errors"
    assert progress.shared_counts(str(tmp_path), "embed") == {"images": 1, "failed": 1}


def test_a_dead_worker_is_named_from_the_failure_text():
    """The texts the engines handed back when a worker was killed mid-embed (tests/test_worker_death.py)."""
    grpc = "org.apache.beam.vendor.grpc.v1p60p1.io.grpc.StatusRuntimeException"
    seen = {
        "flink": (f"Pipeline BeamApp-root-1 failed in state FAILED: {grpc}: {grpc}: CANCELLED: call already "
                  "cancelled. Use ServerCallStreamObserver.setOnCancelHandler() to disable this exception",
                  "an SDK harness"),
        "spark": ("Job aborted: Lost task 1.3 in stage 2.0 (TID 9): ExecutorLostFailure (executor 0 exited caused "
                  f"by one of the running tasks) Reason: Command exited with code 137\n{grpc}: CANCELLED", "executor"),
    }
    tm = ("Pipeline BeamApp-root-2 failed in state FAILED: org.apache.flink.runtime.jobmaster.JobMasterException: "
          "TaskManager with id localhost:46301-b74b52 is no longer reachable.")
    for kind, (text, died) in seen.items():
        err = jobs.worker_lost(RuntimeError(text), kind)
        assert isinstance(err, UserError) and died in str(err) and f"the {kind} job failed" in str(err)
        assert "\n" not in str(err) and "run the same command again" in str(err)
    assert "the Flink TaskManager died" in str(jobs.worker_lost(RuntimeError(tm), "flink"))
    assert "facebeam flink status" in str(jobs.worker_lost(RuntimeError(tm), "flink"))
    tm_gone = ("Pipeline BeamApp-root-3 failed in state FAILED: org.apache.flink.runtime.rpc.exceptions."
               "RecipientUnreachableException: Could not send message [RemoteRpcInvocation(TaskExecutorGateway."
               "submitTask(TaskDeploymentDescriptor, JobMasterId, Duration))]")
    assert "the Flink TaskManager died" in str(jobs.worker_lost(RuntimeError(tm_gone), "flink"))
    assert jobs.worker_lost(RuntimeError("ValueError: bad photo [while running 'Embed']"), "flink") is None


def test_a_finished_run_drops_the_temp_folders_of_restarted_attempts(tmp_path):
    """What a sink's restarted attempt leaves (`beam-temp-*` with part files, flat or in the run's partition)
    goes; shards, other partitions and folders merely named alike stay."""
    from facebeam.transforms import shards

    keep = [tmp_path / "embeddings" / "run=A" / "part-0.parquet", tmp_path / "embeddings" / "part-1.parquet",
            tmp_path / "manifest" / "run=B" / "beam-temp-x" / "other-run.parquet",
            tmp_path / "photos" / "beam-temp-y" / "f"]
    gone = [tmp_path / "embeddings" / "run=A" / "beam-temp-part-1" / "a.parquet",
            tmp_path / "manifest" / "run=A" / "beam-temp-part-2" / "b.parquet",
            tmp_path / "errors" / "beam-temp-part-3" / "c.parquet"]
    for f in keep + gone:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    dropped = shards.drop_temp(str(tmp_path), "A")
    assert sorted(dropped) == sorted(str(f.parent) for f in gone)
    assert all(f.exists() for f in keep) and not any(f.parent.exists() for f in gone)
    assert shards.drop_temp(str(tmp_path), "A") == []


def test_a_clusters_status_names_its_processes_in_words():
    from facebeam.pipelines.local import service

    assert service.pids_words({"master": [12], "worker": [13, 14]}) == "master pid 12, worker pids 13 14"
    assert service.pids_words({"standalonesession": [], "taskexecutor": []}) == "no process of it left"


def test_a_done_photo_listed_only_under_a_new_path_moved_and_a_second_copy_is_a_duplicate():
    """manifest.keep_new and changed_in_place: what an incremental run embeds, skips, and records as moved or
    replaced (moves.py)."""
    from apache_beam.pvalue import TaggedOutput

    from facebeam.transforms import manifest

    there = {"/lib/a.jpg", "/lib/b.jpg"}.__contains__  # the paths that exist now
    asked = []

    def exists(path):
        asked.append(path)
        return there(path)

    def keep(new, done=(), gone=(), changed=(), sha="s1"):
        groups = {"new": [(p, 10) for p in new], "done": list(done), "gone": list(gone), "changed": list(changed)}
        return [(o.tag, o.value) if isinstance(o, TaggedOutput) else o
                for o in manifest.keep_new((sha, groups), exists=exists)]

    assert keep(["/lib/a.jpg"]) == [("/lib/a.jpg", 10)]  # never done: embedded
    assert keep(["/lib/a.jpg"], done=["/lib/a.jpg"]) == []  # done where it is
    assert keep(["/lib/b.jpg"], done=["/lib/a.jpg"]) == []  # a copy: its first path is still there
    assert keep(["/new/x.jpg", "/new/c.jpg"], done=["/old/x.jpg", None]) == [(manifest.MOVED, ("s1", "/new/c.jpg"))]
    assert keep(["/new/x.jpg", "/old/x.jpg"], done=["/old/x.jpg"]) == []  # still listed where it was done
    assert keep(["/new/x.jpg"], done=["/old/x.jpg"], gone=[None]) == []  # erased: never comes back, moved or not
    assert keep(["/x.jpg"], done=["/old/x.jpg"], sha=None) == [("/x.jpg", 10)]  # unreadable: stays new
    # Its path holds other content now: listed elsewhere it moved there (two photos swapped names), else replaced.
    assert keep(["/lib/b.jpg"], done=["/lib/a.jpg"], changed=["/lib/a.jpg"]) == [(manifest.MOVED, ("s1", "/lib/b.jpg"))]
    assert keep([], done=["/lib/a.jpg"], changed=["/lib/a.jpg"]) == [(manifest.REPLACED, ("s1", "/lib/a.jpg"))]
    assert keep([], done=["/lib/a.jpg", "/lib/b.jpg"], changed=["/lib/a.jpg"]) == []  # a copy at b still holds it
    asked.clear()
    assert keep([], done=["/old/x.jpg"]) == [] and asked == [], "done and not listed now: no file is asked about"

    def changed(path, now, was):
        return manifest.changed_in_place((path, {"now": now, "was": was}))

    assert changed("/lib/a.jpg", ["s2"], ["s1", "s2"]) == [("s1", "/lib/a.jpg")]  # edited in place
    assert changed("/lib/a.jpg", ["s1"], ["s1"]) == []  # unchanged
    assert changed("/lib/a.jpg", [None], ["s1"]) == []  # unreadable now: nothing known
    assert changed("/lib/a.jpg", [], ["s1"]) == []  # not listed in this run


def test_a_store_down_during_a_library_change_is_warned_of_and_the_rest_follow(tmp_path, caplog):
    """moves.follow with one store failing (a fault injected): the shards and the other stores still follow, and the
    failing one is named in a warning, whatever the verbosity."""
    from facebeam.transforms import moves
    from facebeam.transforms.stores import StoreError
    from facebeam.transforms.stores.embedded import EmbeddedStore
    from facebeam.transforms.stores.exact import ShardsStore

    spec = EmbeddingSpec()
    rows = synthetic_shards(str(tmp_path / "shards"), 6, spec)
    local = EmbeddedStore("faces", str(tmp_path / "ann"))
    local.load_shards(shards_files(tmp_path / "shards"), spec)

    class Down(EmbeddedStore):
        def relocate(self, rows):
            raise StoreError(f"{self.describe()}: connection refused")

    moved = {rows[0]["image_sha256"]: "/library/moved.jpg"}
    replaced = {rows[1]["image_sha256"]: rows[1]["image_path"]}
    done = moves.follow(str(tmp_path / "shards"), moved, replaced,
                        [Down("other", str(tmp_path / "down")), local, ShardsStore(str(tmp_path / "shards"))])
    assert done["faces_moved"] == 1 and done["faces_replaced"] == 1
    assert done["changes"][0].startswith("embedded HNSW index at") and "NOT updated" in done["changes"][0]
    assert "NOT updated" in caplog.text and len(done["changes"]) == 3
    held = {r["face_id"]: r["image_path"] for r in read_parquet_rows(tmp_path / "shards")}
    assert held[rows[0]["face_id"]] == "/library/moved.jpg" and rows[1]["face_id"] not in held and len(held) == 5
    idx = ann_index(local.folder)
    assert dict(zip(idx.meta["face_id"], idx.meta["image_path"]))[rows[0]["face_id"]] == "/library/moved.jpg"
    assert idx.count == 5


def shards_files(folder) -> list:
    return sorted(str(p) for p in (folder / "embeddings").glob("*.parquet"))


def read_parquet_rows(folder) -> list:
    import pyarrow.parquet as pq

    return [r for p in shards_files(folder) for r in pq.read_table(p).to_pylist()]


def ann_index(folder):
    from facebeam.transforms import ann

    return ann.AnnIndex.open(folder)


def test_a_held_lock_refuses_at_once_or_waits_and_its_file_is_private(tmp_path):
    """transforms.locks.held: timeout 0 refuses a second holder at once with the caller's words; a waiter gets the
    lock when the holder lets go; the kept lock file is empty and 0600 (the private umask)."""
    import threading

    from facebeam.transforms import locks

    folder = str(tmp_path / "index")
    order = []
    with locks.held(folder, ".x.lock"):
        with pytest.raises(UserError, match="busy here"), locks.held(folder, ".x.lock", timeout=0, busy="busy here"):
            pass
        def wait_for_it():
            with locks.held(folder, ".x.lock", timeout=10):
                order.append("waiter")

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(0.3)
        order.append("holder lets go")
    waiter.join(10)
    assert order == ["holder lets go", "waiter"]
    lock_file = tmp_path / "index" / ".x.lock"
    assert lock_file.stat().st_size == 0 and (lock_file.stat().st_mode & 0o777) == privacy.FILE_MODE


def test_overlapping_private_umasks_in_two_threads_leave_the_users_umask(monkeypatch):
    """The umask is the process's, shared by threads: the first narrows it, the last one out restores it. (Each
    body restoring what it saw on entry left it narrowed for good when they overlapped: every server home made
    later in that process was unreadable to the server's own user.)"""
    import threading

    monkeypatch.delenv(privacy.ENV_SHARED, raising=False)
    before = os.umask(0o022)
    try:
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        seen = {}

        def first():
            with privacy.private_umask():
                first_in.set()
                second_in.wait(5)
            first_out.set()

        def second():
            first_in.wait(5)
            with privacy.private_umask():
                second_in.set()
                first_out.wait(5)
                seen["while the second is in"] = privacy.current_umask()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen["while the second is in"] & privacy.PRIVATE == privacy.PRIVATE
        assert privacy.current_umask() == 0o022
    finally:
        os.umask(before)


def test_an_image_hash_flag_takes_64_hex_digits_in_either_case():
    import argparse

    digest = hashlib.sha256(b"x").hexdigest()
    assert options.sha256_hex(digest.upper()) == digest == options.sha256_hex(f" {digest} ")
    for typo in ("xyz", digest[:-1], digest + "0", digest[:-1] + "g"):
        with pytest.raises(argparse.ArgumentTypeError, match="want 64 hex digits"):
            options.sha256_hex(typo)


def test_a_filter_on_a_field_no_store_keeps_alike_is_refused_before_any_work():
    from facebeam.transforms import knn

    assert knn.parse_filters(["label=a=b", "face_index=1"]) == (("label", "a=b"), ("face_index", "1"))
    for typo in ("lable=alice", "box_x=10", "embedding=1"):
        with pytest.raises(ValueError, match=f"cannot filter on '{typo.split('=')[0]}': the fields are label"):
            knn.parse_filters([typo])


def test_the_default_candidates_stay_within_what_elasticsearch_takes_unless_k_is_more():
    from facebeam.transforms import knn

    assert [knn.default_candidates(k) for k in (1, 5, 10, 20, 499, 500, 600, 10_000, 12_000)] == [
        200, 200, 200, 400, 9_980, 10_000, 10_000, 10_000, 12_000]


def test_a_missing_index_says_state_lives_in_the_folder_a_command_runs_in(tmp_path, monkeypatch):
    """`facebeam run` in one folder and `facebeam search` in another: the index was 'not built', with no word on
    why; the line now says where facebeam keeps its state, unless FACEBEAM_HOME or a .facebeam here says it."""
    from facebeam.transforms import ann

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FACEBEAM_HOME", raising=False)
    folder = str(tmp_path / ".facebeam" / "ann" / "faces")
    hint = f"and {tmp_path} has none: run it from the folder you built them in, or set FACEBEAM_HOME"
    assert hint in ann.missing(folder)
    assert hint not in ann.missing(str(tmp_path / "elsewhere"))  # --store local:DIR: the folder was named
    monkeypatch.setenv("FACEBEAM_HOME", str(tmp_path / "h"))
    assert "FACEBEAM_HOME" not in ann.missing(str(tmp_path / "h" / "ann" / "faces"))
    monkeypatch.delenv("FACEBEAM_HOME")
    (tmp_path / ".facebeam").mkdir()
    assert ann.missing(folder) == f"no embedded index at {folder}: build one with `facebeam run` or `facebeam index " \
                                  f"--store local:{folder}`"


def test_shards_named_below_the_collections_folder_are_pointed_at_it():
    from facebeam.transforms import shards

    for given in ("out/embeddings", "out/embeddings/", "out/embeddings/part-0.parquet",
                  "out/embeddings/run=1/part-0.parquet", "out/errors"):
        assert shards.collection_hint(given).endswith("the one `embed` or `run` wrote: out)"), given
    assert shards.collection_hint("out") == shards.collection_hint("photos/2019") == ""



def test_failed_photos_are_noted_a_few_per_reason_and_afresh_for_each_job(monkeypatch):
    """The result line's examples (embed.count_failed): three per reason per worker, not a backfill's every one;
    each job's DoFns hold their own Examples, so a harness that serves many jobs still notes each job's."""
    import pickle

    from facebeam.transforms import embed as embed_transforms
    from facebeam.transforms import metrics

    noted = []
    monkeypatch.setattr(metrics, "note", lambda name, text: noted.append((name, text)))
    job_one = pickle.loads(pickle.dumps(metrics.Examples()))
    for i in range(5):
        embed_transforms.count_failed("no_face", f"/p/{i}.jpg", job_one)
    embed_transforms.count_failed("too_large", "/p/big.tif", job_one)
    assert noted == [("images_failed_paths.no_face", f"/p/{i}.jpg") for i in range(3)] + [
        ("images_failed_paths.too_large", "/p/big.tif")]
    noted.clear()
    embed_transforms.count_failed("no_face", "/p/next-job.jpg", pickle.loads(pickle.dumps(metrics.Examples())))
    assert noted == [("images_failed_paths.no_face", "/p/next-job.jpg")]
