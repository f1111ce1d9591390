"""The index and query benchmarks' own machinery, small: exact top-k, the vector file, one load + sweep."""
import numpy as np
import pytest

from facebeam.pipelines.bench import index as bench_index
from facebeam.pipelines.bench import query as bench_query
from facebeam.pipelines.bench import synthetic
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import PAIRS

SPEC = EmbeddingSpec()
# The tasks and _disk_usage APIs are "technical preview"; the bench silences that in main().
pytestmark = pytest.mark.filterwarnings("ignore::elasticsearch.exceptions.GeneralAvailabilityWarning")


@pytest.fixture(scope="module")
def stats(sample_run):
    out, _ = sample_run
    return synthetic.fit_sample(f"{out}/embeddings", PAIRS, SPEC)


def test_exact_topk_matches_a_full_sort_across_chunk_and_batch_edges():
    rng = np.random.default_rng(7)
    corpus = rng.normal(size=(1_003, 16)).astype(np.float32)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    d = np.linalg.norm(queries[:, None, :] - corpus[None, :, :], axis=2)
    want = np.argsort(d, axis=1, kind="stable")[:, :10]
    ids, dist = bench_query.exact_topk(corpus, queries, 10, chunk_rows=100, query_batch=8)
    assert (ids == want).all()
    np.testing.assert_allclose(dist, np.take_along_axis(d, want, 1), rtol=1e-4, atol=1e-4)


def test_vector_file_holds_the_synthetic_vectors(stats, tmp_path):
    faces = synthetic.SyntheticFaces(stats, 2_500, seed=4)
    mm = bench_query.vector_file(faces, tmp_path, chunk_rows=1_000)
    assert mm.shape == (2_500, SPEC.dim)
    np.testing.assert_array_equal(np.asarray(mm), faces.vectors().astype(np.float32))
    again = bench_query.vector_file(faces, tmp_path)  # reused, not rewritten
    assert again.filename == mm.filename


def test_recall_counts_overlap_in_the_top_k():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert bench_query.recall([[4, 3, 2, 1], [5, 9, 9, 9]], truth, 4) == pytest.approx((1.0 + 0.25) / 2)


def test_vector_counts_parse():
    assert [bench_index.count(t) for t in ("1M", "100k", "1_000_000", "2500")] == [1_000_000, 100_000, 1_000_000, 2500]


def test_load_then_sweep_on_the_real_cluster(stats, es_conn, es_client, tmp_path):
    """A small bench index + query run on the session cluster: every vector lands, recall is real."""
    ns = bench_index.build_parser().parse_args(
        ["--vectors", "3000", "--es-home", str(tmp_path), "--driver", "threads", "--chunk-docs", "400",
         "--task-rows", "1000"])
    faces = synthetic.SyntheticFaces(stats, ns.vectors, seed=ns.seed)
    maker = bench_index.RowMaker(faces, SPEC)
    try:
        r = bench_index.bench_type(es_conn, es_client, ns, SPEC, faces, maker, "hnsw")
        assert r["docs"] == r["indexed"] == 3000 and r["failed"] == 0
        # `facebeam index`'s load: two shards, each merged to one segment (es_index.DEFAULT_TUNING)
        assert r["segments"] == r["tuning"]["shards"] == 2 and r["store_bytes"] > 3000 * SPEC.dim * 4
        state = bench_index.read_state(tmp_path)[r["alias"]]
        assert state["index"] == r["index"] and state["docs"] == 3000

        queries, _ = faces.queries(40, seed=1)
        truth, _ = bench_query.exact_topk(faces.vectors().astype(np.float32), queries, 10)
        point = bench_query.sweep_point(es_client, r["index"], queries, truth, 10, 100, 20)
        # 3,000 vectors with 100 candidates: HNSW is all but exact, single and msearch alike.
        assert point["recall"] >= 0.95 and point["batch_recall"] == pytest.approx(point["recall"])
        assert 0 < point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
    finally:
        # Wildcard deletes are refused by default (action.destructive_requires_name): name them.
        names = [i["index"] for i in es_client.cat.indices(index="bench-hnsw-3000-s0-*", format="json")]
        if names:
            es_client.indices.delete(index=",".join(names))


@pytest.mark.unit
def test_spark_scheduling_sums_each_task_sets_wait_for_its_first_task():
    """bench runners' Spark scheduling phase, on lines as the Spark job server logs them."""
    from facebeam.pipelines.bench import phases

    lines = [(100.0, "26/12/04 08:19:49 INFO TaskSchedulerImpl: Adding task set 0.0 with 2 tasks resource profile 0"),
             (115.0, "26/12/04 08:20:04 INFO TaskSetManager: Starting task 0.0 in stage 0.0 (TID 0) (localhost, ...)"),
             (116.0, "26/12/04 08:20:05 INFO TaskSetManager: Starting task 1.0 in stage 0.0 (TID 1) (localhost, ...)"),
             (130.0, "26/12/04 08:20:19 INFO TaskSchedulerImpl: Adding task set 1.0 with 2 tasks resource profile 0"),
             (131.0, "26/12/04 08:20:20 INFO TaskSetManager: Starting task 0.0 in stage 1.0 (TID 2) (localhost, ...)")]
    assert phases.spark_scheduling(lines) == 16.0
    assert phases.spark_scheduling(lines[:1]) is None
    assert phases.describe({"job submission": 9.84, "scheduling": None}) == "job submission 9.8 s, scheduling n/a"


@pytest.mark.unit
def test_a_variant_whose_type_is_left_out_of_index_types_is_refused_not_dropped():
    with pytest.raises(SystemExit, match="bbq_hnsw.*--index-types"):
        bench_index.variants("hnsw/default,bbq_hnsw/default", ["hnsw", "int8_hnsw"], "excluded")
    chosen = bench_index.variants("hnsw/default,bbq_hnsw/default", ["hnsw", "bbq_hnsw"], "excluded")
    assert [(v.index_type, v.lever) for v in chosen] == [("hnsw", "default"), ("bbq_hnsw", "default")]
    # the default list keeps to the types asked for
    assert {v.index_type for v in bench_index.variants(bench_index.DEFAULT_VARIANTS, ["hnsw"], "excluded")} == {"hnsw"}
