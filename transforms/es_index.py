"""Index management from the embedding spec: versioned concrete indices behind an alias.

`NAME` is an alias; it points at `NAME-<spec slug>-v<N>`. The spec is kept in the
index's `_meta`, so a job can refuse shards of another spec before writing.

Two jobs may create the alias at the same moment: the index is created together with its
alias (one atomic request); a creator that finds its name taken
(`resource_already_exists_exception`) re-reads the alias and loads into what it points at,
and one whose fresh version ends up beside another behind the alias withdraws it (the lower
version, created first, wins).
"""
import json
import logging
import re
import time

from facebeam.transforms.errors import UserError
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
            # The vector is indexed (and kept in doc values) but not stored again as JSON in _source.
            "_source": {"excludes": ["embedding"]},
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
    return EmbeddingSpec.from_dict(meta["spec"])


def alias_target(client, alias: str):
    """The concrete index an alias points at, or None if the alias does not exist."""
    if not client.indices.exists_alias(name=alias):
        if client.indices.exists(index=alias):
            raise UserError(f"{alias!r} is a concrete index, not a facebeam alias; pick another --index name")
        return None
    targets = sorted(client.indices.get_alias(name=alias).body)
    if len(targets) != 1:
        raise UserError(f"alias {alias!r} points at {len(targets)} indices ({targets}); expected one")
    return targets[0]


def open_alias(conn, alias: str, spec: EmbeddingSpec = None):
    """(client, concrete index, its spec) for an existing alias, checked before any work; the caller
    closes the client. Refuses a missing alias, and a spec other than `spec` when one is given."""
    from facebeam.transforms import es_conn

    client = conn.client()
    try:
        es_conn.check(client, conn)
        concrete = alias_target(client, alias)
        if concrete is None:
            raise UserError(f"no index {alias!r} in Elasticsearch at {conn.url}; run `facebeam index` first")
        found = spec_of(client, concrete)
        if spec is not None:
            spec.require_same(found, what=f"index {concrete!r}")
    except BaseException:
        client.close()
        raise
    return client, concrete, found


def next_version(client, alias: str, spec: EmbeddingSpec) -> int:
    pattern = re.compile(re.escape(concrete_name(alias, spec, 0))[:-1] + r"(\d+)$")
    existing = client.indices.get(index=f"{alias}-*", expand_wildcards="all", ignore_unavailable=True).body
    versions = [int(m.group(1)) for name in existing if (m := pattern.match(name))]
    return max(versions, default=0) + 1


def already_exists(e) -> bool:
    from elasticsearch import ApiError

    return isinstance(e, ApiError) and "resource_already_exists_exception" in str(getattr(e, "body", "") or e)


def create_version(client, alias: str, spec: EmbeddingSpec, index_type="hnsw", m=16, ef_construction=100,
                   with_alias: bool = False) -> str:
    """A new, empty concrete index for `spec`; behind the alias only `with_alias` (in the same request).

    Raises the client's `resource_already_exists_exception` error when a concurrent creator took the name.
    """
    concrete = concrete_name(alias, spec, next_version(client, alias, spec))
    body = index_body(spec, index_type, m, ef_construction)
    if with_alias:
        body["aliases"] = {alias: {}}
    client.indices.create(index=concrete, **body)
    log.info("created index %s (%s, %d-d, %s)", concrete, index_type, spec.dim, spec.es_similarity)
    return concrete


def _version_of(name: str) -> int:
    m = re.search(r"-v(\d+)$", name)
    return int(m.group(1)) if m else 0


def _join_alias(client, alias: str, spec: EmbeddingSpec, index_type, m, ef_construction, wait_s: float = 10.0) -> str:
    """The concrete index behind `alias`, creating it (with the alias) unless a concurrent creator did."""
    try:
        concrete = create_version(client, alias, spec, index_type, m, ef_construction, with_alias=True)
    except Exception as e:
        if not already_exists(e):
            raise
        log.info("index for alias %s is being created by another job; joining it", alias)
        deadline = time.monotonic() + wait_s
        while (current := alias_target(client, alias)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if current is None:
            raise
        return current
    # A creator that read the versions before ours existed may have put its own version beside it.
    targets = sorted(client.indices.get_alias(name=alias).body, key=_version_of)
    if len(targets) > 1 and targets[0] != concrete:
        client.indices.update_aliases(actions=[{"remove": {"index": concrete, "alias": alias}}])
        client.options(ignore_status=404).indices.delete(index=concrete)
        log.info("another job created %s behind %s first; using it", targets[0], alias)
        return targets[0]
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
    fresh = False  # made now, by this job or a concurrent one
    if current is None and create_alias:
        # Index and alias in one request: readers never see a half-made index. A concurrent creator is joined.
        current, fresh = _join_alias(client, alias, spec, index_type, m, ef_construction), True
    if current is not None and create_alias:
        spec.require_same(spec_of(client, current), what=f"index {current!r} behind alias {alias!r}")
        concrete = current
        if fresh:
            before = 1 if data_nodes(client) > 1 else 0
        else:
            settings = client.indices.get_settings(index=concrete).body[concrete]["settings"]["index"]
            before = int(settings["number_of_replicas"])
    else:
        concrete = create_version(client, alias, spec, index_type, m, ef_construction)
        before = 1 if data_nodes(client) > 1 else 0
    client.indices.put_settings(index=concrete,
                                settings={"index": {"refresh_interval": "-1", "number_of_replicas": load_replicas}})
    return concrete, before


def restore_call(concrete: str, replicas: int) -> str:
    """The settings request that ends a load, for a person to run when the job could not."""
    body = json.dumps({"index": {"refresh_interval": None, "number_of_replicas": replicas}})
    return f"PUT /{concrete}/_settings {body}"


class RestoreFailed(UserError):
    """The index settings could not be restored after a load; the message holds the call to run."""


def finish_load(client, concrete: str, replicas: int, wait_s: int = 120, tries: int = 3, pause_s: float = 2.0) -> int:
    """Restore refresh and replicas after a load, refresh, and return the doc count.

    A cluster that refuses (401/403) or stays unreachable raises `RestoreFailed`, whose message
    gives the exact settings call to run once it is back.
    """
    from elasticsearch import ApiError, AuthenticationException, AuthorizationException, TransportError

    for attempt in range(tries):
        try:
            client.indices.put_settings(index=concrete,
                                        settings={"index": {"refresh_interval": None, "number_of_replicas": replicas}})
            client.indices.refresh(index=concrete)
            break
        except (AuthenticationException, AuthorizationException, TransportError, ApiError) as e:
            status = getattr(getattr(e, "meta", None), "status", None)
            final = attempt == tries - 1 or isinstance(e, (AuthenticationException, AuthorizationException)) or (
                isinstance(status, int) and status < 500)
            if final:
                what = f"HTTP {status}" if isinstance(status, int) else type(e).__name__
                raise RestoreFailed(f"could not restore the settings of index {concrete} after the load ({what}); "
                                    f"it still has refresh off: once the cluster accepts you, run "
                                    f"`{restore_call(concrete, replicas)}` then `POST /{concrete}/_refresh` "
                                    "(or run the same load again)") from None
            time.sleep(pause_s)
    if replicas and replicas < data_nodes(client):
        health = client.options(request_timeout=wait_s + 15).cluster.health(
            index=concrete, wait_for_status="green", timeout=f"{wait_s}s").body
        if health.get("timed_out"):
            log.warning("index %s is %s: its %d replica(s) are not all allocated yet", concrete, health["status"], replicas)
    return int(client.count(index=concrete).body["count"])
