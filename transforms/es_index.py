"""Index management from the embedding spec: versioned concrete indices behind an alias.

`NAME` is an alias; it points at `NAME-<spec slug>-v<N>`. The spec is kept in the
index's `_meta`, so a job can refuse shards of another spec before writing.
"""
import logging
import re

from facebeam.transforms.spec import EmbeddingSpec, SpecError

log = logging.getLogger(__name__)
# int4_* and bbq_* (1-bit, dims >= 64) quantize harder; ES 8.19 keeps the float vectors for rescoring.
INDEX_TYPES = ("hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw", "flat", "int8_flat", "int4_flat", "bbq_flat")


def quantized(index_type: str) -> bool:
    return index_type.split("_", 1)[0] in ("int8", "int4", "bbq")


def concrete_name(alias: str, spec: EmbeddingSpec, version: int) -> str:
    return f"{alias}-{spec.slug}-v{version}"


def index_body(spec: EmbeddingSpec, index_type="hnsw", m=16, ef_construction=100, shards=1) -> dict:
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}")
    if index_type.startswith("bbq") and spec.dim < 64:
        raise SpecError(f"{index_type} needs at least 64 dimensions; {spec.model} has {spec.dim}")
    vector = {"type": "dense_vector", "dims": spec.dim, "index": True, "similarity": spec.es_similarity,
              "index_options": {"type": index_type}}
    if "hnsw" in index_type:
        vector["index_options"].update(m=m, ef_construction=ef_construction)
    keyword = {"type": "keyword"}
    return {
        "settings": {"number_of_shards": shards, "number_of_replicas": 0, "refresh_interval": "-1"},
        "mappings": {
            "dynamic": "strict",
            "_meta": {"facebeam": {"spec": spec.identity(), "spec_id": spec.spec_id, "dim": spec.dim}},
            "properties": {
                "face_id": keyword, "image_path": keyword, "image_sha256": keyword, "label": keyword,
                "model": keyword, "detector": keyword, "spec_id": keyword,
                "face_index": {"type": "integer"},
                "box": {"properties": {k: {"type": "integer"} for k in ("x", "y", "w", "h")}},
                "image_size": {"properties": {k: {"type": "integer"} for k in ("width", "height")}},
                "confidence": {"type": "float"},
                "embedding": vector,
            },
        },
    }


def document(row: dict) -> dict:
    """The Elasticsearch source for one face row."""
    return {
        "face_id": row["face_id"], "image_path": row["image_path"], "image_sha256": row["image_sha256"],
        "label": row.get("label"), "model": row["model"], "detector": row["detector"],
        "spec_id": row["spec_id"], "face_index": row["face_index"],
        "box": {"x": row["box_x"], "y": row["box_y"], "w": row["box_w"], "h": row["box_h"]},
        "image_size": {"width": row["image_width"], "height": row["image_height"]},
        "confidence": row["confidence"], "embedding": list(row["embedding"]),
    }


def spec_of(client, index: str) -> EmbeddingSpec:
    mapping = client.indices.get_mapping(index=index)
    meta = next(iter(mapping.body.values()))["mappings"].get("_meta", {}).get("facebeam")
    if not meta:
        raise SpecError(f"index {index!r} was not made by facebeam (no spec in its _meta)")
    return EmbeddingSpec(**meta["spec"])


def alias_target(client, alias: str):
    """The concrete index an alias points at, or None if the alias does not exist."""
    if not client.indices.exists_alias(name=alias):
        if client.indices.exists(index=alias):
            raise ValueError(f"{alias!r} is a concrete index, not a facebeam alias; pick another --index name")
        return None
    targets = sorted(client.indices.get_alias(name=alias).body)
    if len(targets) != 1:
        raise ValueError(f"alias {alias!r} points at {len(targets)} indices ({targets}); expected one")
    return targets[0]


def next_version(client, alias: str, spec: EmbeddingSpec) -> int:
    pattern = re.compile(re.escape(concrete_name(alias, spec, 0))[:-1] + r"(\d+)$")
    existing = client.indices.get(index=f"{alias}-*", expand_wildcards="all", ignore_unavailable=True).body
    versions = [int(m.group(1)) for name in existing if (m := pattern.match(name))]
    return max(versions, default=0) + 1


def create_version(client, alias: str, spec: EmbeddingSpec, index_type="hnsw", m=16, ef_construction=100) -> str:
    """A new, empty concrete index for `spec`, not yet behind the alias."""
    concrete = concrete_name(alias, spec, next_version(client, alias, spec))
    client.indices.create(index=concrete, **index_body(spec, index_type, m, ef_construction))
    log.info("created index %s (%s, %d-d, %s)", concrete, index_type, spec.dim, spec.es_similarity)
    return concrete


def swap_alias(client, alias: str, old: str, new: str) -> None:
    """One atomic alias update: readers see the old index or the new one, never neither."""
    client.indices.update_aliases(actions=[{"remove": {"index": old, "alias": alias}},
                                           {"add": {"index": new, "alias": alias}}])


def data_nodes(client) -> int:
    return int(client.cluster.health().body["number_of_data_nodes"])


def prepare_load(client, alias: str, spec: EmbeddingSpec, index_type="hnsw", m=16, ef_construction=100,
                 load_replicas=0, create_alias=True) -> tuple:
    """Find or create the concrete index for `spec` behind `alias`; set it up for a bulk load.

    With create_alias=False a new version is always made and the alias is left alone (reindex).
    Returns (concrete index, replicas it had before). Raises SpecError on a spec mismatch,
    before anything is written.
    """
    current = alias_target(client, alias)
    if current is not None and create_alias:
        spec.require_same(spec_of(client, current), what=f"index {current!r} behind alias {alias!r}")
        concrete = current
        before = int(client.indices.get_settings(index=concrete).body[concrete]["settings"]["index"]["number_of_replicas"])
    else:
        concrete = create_version(client, alias, spec, index_type, m, ef_construction)
        before = 1 if data_nodes(client) > 1 else 0
    client.indices.put_settings(index=concrete, settings={"index": {"refresh_interval": "-1", "number_of_replicas": load_replicas}})
    if current is None and create_alias:
        # The alias appears only once the index exists with the right mapping; readers never see a half-made index.
        client.indices.update_aliases(actions=[{"add": {"index": concrete, "alias": alias}}])
    return concrete, before


def finish_load(client, concrete: str, replicas: int, wait_s: int = 120) -> int:
    """Restore refresh and replicas after a load, refresh, and return the doc count."""
    client.indices.put_settings(index=concrete, settings={"index": {"refresh_interval": None, "number_of_replicas": replicas}})
    client.indices.refresh(index=concrete)
    if replicas and replicas < data_nodes(client):
        health = client.options(request_timeout=wait_s + 15).cluster.health(
            index=concrete, wait_for_status="green", timeout=f"{wait_s}s").body
        if health.get("timed_out"):
            log.warning("index %s is %s: its %d replica(s) are not all allocated yet", concrete, health["status"], replicas)
    return int(client.count(index=concrete).body["count"])
