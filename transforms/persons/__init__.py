"""Persons: group the faces of a collection into people, keep their ids stable, carry names over.

One room per concern; this package re-exports the public names, so callers keep
`from facebeam.transforms import persons` and `persons.cluster(...)`:

- graph.py       the kNN graph: exact top-k, or batched top-k through a faiss HNSW graph; recall@k against
                 exact; a graph table's lists as arrays and edges
- threshold.py   the edge threshold: from labeled pairs, the shards' labels, or the distance distribution,
                 checked against a plausible range; the spec's default when it cannot be fitted
- clustering.py  kNN edges within the threshold -> labels (Infomap by default; Leiden, Immich's density
                 rule, Chinese whispers, components); new faces joined through their neighbours; quality
- ids.py         labels -> person ids that survive re-clustering (carried over by face overlap)
- edits.py       names, merges and splits: applied to the tables, logged by face, replayed on re-clusters
- limits.py      faces worth clustering (box, confidence, sharpness)
- tables.py      the cluster folder: assignments, persons table, state, the workers' graph files
- job.py         the Beam side: score faces, find their neighbours on the workers
- from_graph.py  the launcher's side (resolve): the workers' graph -> persons, tables written
- store.py       names onto the faces' documents in Elasticsearch
"""
from facebeam.transforms.persons.clustering import (
    DEFAULT_METHOD,
    METHODS,
    MIN_CORE,
    centres_of,
    chinese_whispers,
    cluster,
    components,
    density_labels,
    edge_weights,
    infomap_labels,
    join_by_neighbours,
    label_faces,
    leiden_labels,
    nearest_centre,
    quality,
    representative,
)
from facebeam.transforms.persons.edits import (
    append_edit,
    edit,
    read_edits,
    replay_edits,
)
from facebeam.transforms.persons.from_graph import (
    resolve,
)
from facebeam.transforms.persons.graph import (
    EF_SEARCH,
    drop_self,
    edges,
    exact_sample,
    knn_exact,
    knn_hnsw,
    padded_lists,
    recall_at_k,
    search_batched,
)
from facebeam.transforms.persons.ids import (
    majority,
    new_person_id,
    split_person_id,
    stable_ids,
)
from facebeam.transforms.persons.job import (
    FACES_SCORED,
    FACES_SEARCHED,
    PHOTOS_DECODED,
    Neighbours,
    ScoreFaces,
    score_photo,
)
from facebeam.transforms.persons.limits import (
    SHARP_PX,
    Limits,
    sharpness,
)
from facebeam.transforms.persons.store import (
    check_index,
)
from facebeam.transforms.persons.tables import (
    ASSIGN_SCHEMA,
    FACE_COLUMNS,
    GRAPH_SCHEMA,
    LOW_QUALITY,
    MEMBER,
    META,
    SINGLETON,
    annotate,
    assignment_files,
    clear,
    exists,
    graph_folder,
    join,
    lookup,
    read_assignments,
    read_graph,
    read_parquet,
    read_state,
    read_table,
    scan,
    table_schema,
    vectors_of,
    write_outputs,
    write_parquet,
    write_state,
)
from facebeam.transforms.persons.threshold import (
    EDGE_FAR,
    SPEC_SHARE,
    Threshold,
    checked,
    fit_threshold,
    normal_quantile,
    plausible_range,
    random_pair_distances,
    spec_default,
    threshold_for_bench,
    threshold_from_distances,
    threshold_from_pairs,
    threshold_from_vectors,
    verification_of,
)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MIN_CORE",
    "centres_of",
    "chinese_whispers",
    "cluster",
    "components",
    "density_labels",
    "edge_weights",
    "infomap_labels",
    "join_by_neighbours",
    "label_faces",
    "leiden_labels",
    "nearest_centre",
    "quality",
    "representative",
    "append_edit",
    "edit",
    "read_edits",
    "replay_edits",
    "EF_SEARCH",
    "drop_self",
    "edges",
    "exact_sample",
    "knn_exact",
    "knn_hnsw",
    "padded_lists",
    "recall_at_k",
    "search_batched",
    "majority",
    "new_person_id",
    "split_person_id",
    "stable_ids",
    "FACES_SCORED",
    "FACES_SEARCHED",
    "PHOTOS_DECODED",
    "Neighbours",
    "ScoreFaces",
    "score_photo",
    "SHARP_PX",
    "Limits",
    "sharpness",
    "resolve",
    "check_index",
    "ASSIGN_SCHEMA",
    "FACE_COLUMNS",
    "GRAPH_SCHEMA",
    "LOW_QUALITY",
    "MEMBER",
    "META",
    "SINGLETON",
    "annotate",
    "assignment_files",
    "clear",
    "exists",
    "graph_folder",
    "join",
    "lookup",
    "read_assignments",
    "read_graph",
    "read_parquet",
    "read_state",
    "read_table",
    "scan",
    "table_schema",
    "vectors_of",
    "write_outputs",
    "write_parquet",
    "write_state",
    "EDGE_FAR",
    "SPEC_SHARE",
    "Threshold",
    "checked",
    "fit_threshold",
    "normal_quantile",
    "plausible_range",
    "random_pair_distances",
    "spec_default",
    "threshold_for_bench",
    "threshold_from_distances",
    "threshold_from_pairs",
    "threshold_from_vectors",
    "verification_of",
]
