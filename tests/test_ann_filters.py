"""The embedded index's filtered search: an exact scan while it is the cheaper way, else a graph search that
meets as many allowed faces as an unfiltered one (efSearch / share), against the exact filtered top k."""
import numpy as np
import pytest

from facebeam.transforms import ann, knn
from facebeam.transforms.spec import EmbeddingSpec
from tests.helpers import synthetic_shards

pytestmark = pytest.mark.unit
SPEC = EmbeddingSpec()


def test_the_scan_is_chosen_while_it_costs_less_than_the_graph_search():
    assert ann.scan_is_cheaper(ann.EXACT_SUBSET, 10, 10**9)  # few faces: always exact
    assert ann.scan_is_cheaper(111_111, 200, 1_000_000)  # an 11% filter at 1M: 3-4 ms exact, recall 1
    assert not ann.scan_is_cheaper(200_000, 200, 1_000_000)  # 20%: the graph, at efSearch 1,000
    assert not ann.scan_is_cheaper(500_000, 200, 1_000_000)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """20,000 faces of 400 people (tight clusters, as faces are), in an embedded index."""
    folder = tmp_path_factory.mktemp("ann")
    rows = synthetic_shards(str(folder / "shards"), 20_000, SPEC, files=1)
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((400, SPEC.dim)).astype(np.float32)
    vectors = centres[np.arange(len(rows)) % 400] + 0.35 * rng.standard_normal((len(rows), SPEC.dim), np.float32)
    for r, v in zip(rows, vectors):
        r["embedding"] = v.tolist()
    idx = ann.AnnIndex.create(str(folder / "index"), SPEC)
    idx.add_rows(rows)
    return idx, knn.prepare(vectors, SPEC.metric)  # the space the index searches in


def test_a_filtered_graph_search_finds_the_filtered_top_k(index, monkeypatch):
    idx, prepared = index
    monkeypatch.setattr(ann, "EXACT_SUBSET", 0)  # the graph path at this size, as a large collection takes it
    monkeypatch.setattr(ann, "VISIT_ROWS", 0)
    allowed = np.arange(0, idx.count, 10)  # 10% of the faces
    rng = np.random.default_rng(2)
    probes = prepared[rng.integers(0, idx.count, 40)] + 0.05 * rng.standard_normal((40, SPEC.dim), np.float32)
    truth = allowed[knn.ExactScan(prepared[allowed]).topk(probes, 10)[0]]
    found = idx.search_vectors(probes, 10, ef=100, positions=allowed)
    assert all({p for p, _ in hits} <= set(allowed.tolist()) and len(hits) == 10 for hits in found)
    recall = np.mean([len({p for p, _ in hits} & set(t.tolist())) / 10 for hits, t in zip(found, truth)])
    assert recall >= 0.95, recall  # efSearch 100 unscaled: 0.61 here (one face in ten is allowed)
