"""Persons: group the faces of a collection into people, keep their ids stable, carry names over.

One room per concern; this package re-exports the public names, so callers keep
`from facebeam.transforms import persons` and `persons.cluster(...)`:

- graph.py       the kNN graph: exact top-k over prepared vectors; a graph table's lists as arrays and edges
- threshold.py   the edge threshold: from labeled pairs, the shards' labels, or the distance distribution
- clustering.py  kNN edges within the threshold -> labels (Chinese whispers by default); centres; quality
- ids.py         labels -> person ids that survive re-clustering (carried over by face overlap)
- edits.py       names, merges and splits: applied to the tables, logged by face, replayed on re-clusters
- limits.py      faces worth clustering (box, confidence, sharpness)
- tables.py      the cluster folder: assignments, persons table, state, the workers' graph files
- job.py         the Beam side: score faces, find their neighbours on the workers
- resolve.py     the launcher's side: the graph -> persons, tables written
- store.py       names onto the faces' documents in Elasticsearch
"""
from facebeam.transforms.persons.clustering import (
                                                    METHODS,
                                                    centres_of,
                                                    chinese_whispers,
                                                    cluster,
                                                    components,
                                                    label_faces,
                                                    nearest_centre,
                                                    quality,
                                                    representative,
)
from facebeam.transforms.persons.edits import append_edit, edit, read_edits, replay_edits
from facebeam.transforms.persons.graph import edges, knn_exact, padded_lists
from facebeam.transforms.persons.ids import majority, new_person_id, split_person_id, stable_ids
from facebeam.transforms.persons.job import FACES_SCORED, FACES_SEARCHED, PHOTOS_DECODED, Neighbours, ScoreFaces, score_photo
from facebeam.transforms.persons.limits import SHARP_PX, Limits, sharpness
from facebeam.transforms.persons.resolve import resolve
from facebeam.transforms.persons.store import check_index, es_set_person, push_names
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
                                                    fit_threshold,
                                                    normal_quantile,
                                                    random_pair_distances,
                                                    threshold_from_distances,
                                                    threshold_from_pairs,
)

__all__ = [
    "METHODS", "centres_of", "chinese_whispers", "cluster", "components", "label_faces", "nearest_centre", "quality",
    "representative", "append_edit", "edit", "read_edits", "replay_edits", "edges", "knn_exact", "padded_lists",
    "majority", "new_person_id", "split_person_id", "stable_ids", "FACES_SCORED", "FACES_SEARCHED", "PHOTOS_DECODED",
    "Neighbours", "ScoreFaces", "score_photo", "SHARP_PX", "Limits", "sharpness", "resolve", "check_index",
    "es_set_person", "push_names", "ASSIGN_SCHEMA", "FACE_COLUMNS", "GRAPH_SCHEMA", "LOW_QUALITY", "MEMBER", "META",
    "SINGLETON", "annotate", "assignment_files", "clear", "exists", "graph_folder", "join", "lookup",
    "read_assignments", "read_graph", "read_parquet", "read_state", "read_table", "scan", "table_schema",
    "vectors_of", "write_outputs", "write_parquet", "write_state", "EDGE_FAR", "fit_threshold", "normal_quantile",
    "random_pair_distances", "threshold_from_distances", "threshold_from_pairs",
]
