"""Index management from the embedding spec: versioned concrete indices behind an alias.

`NAME` is an alias; it points at `NAME-<spec slug>-v<N>`. The spec is kept in the
index's `_meta`, so a job can refuse shards of another spec before writing.

Two jobs may create the alias at the same moment: the index is created together with its
alias (one atomic request); a creator that finds its name taken
(`resource_already_exists_exception`) re-reads the alias and loads into what it points at,
and one whose fresh version ends up beside another behind the alias withdraws it (the lower
version, created first, wins).
"""
import dataclasses
import json
import logging
import re
import time
import warnings

from facebeam.transforms import es_conn, progress
from facebeam.transforms.errors import UserError
from facebeam.transforms.spec import EmbeddingSpec, SpecError

log = logging.getLogger(__name__)
# int4_* and bbq_* (1-bit, dims >= 64) quantize harder; ES 8.19 keeps the float vectors for rescoring.
INDEX_TYPES = ("hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw", "flat", "int8_flat", "int4_flat", "bbq_flat")
#: What a new index gets (issue 24, `facebeam bench index/query` at 1M): the graph walked on int8 copies and
#: its best candidates re-ranked on the float vectors (RESCORE_OVERSAMPLE x k of them), so hits and distances
#: are the float ones. Beside hnsw in the same runs it loaded faster and answered the same recall sooner.
DEFAULT_INDEX_TYPE = "int8_hnsw"
#: Set in a quantized field's mapping (Elasticsearch 8.18+), so every kNN search re-ranks without asking.
RESCORE_OVERSAMPLE = 3.0


#: The first Elasticsearch whose mapping takes `rescore_vector` (a quantized graph re-ranked on the floats).
RESCORE_SINCE = (8, 18)


def quantized(index_type: str) -> bool:
    return index_type.split("_", 1)[0] in ("int8", "int4", "bbq")


def server_version(client) -> tuple:
    """(major, minor) of the cluster's oldest Elasticsearch node (a mixed cluster during an upgrade parses
    mappings the old way)."""
    nodes = client.nodes.info(filter_path="nodes.*.version").body.get("nodes", {})
    return min(tuple(int(x) for x in re.findall(r"\d+", n["version"])[:2]) for n in nodes.values())


def type_for_server(index_type: str, version: tuple) -> str:
    """The type a new index gets on that server: a quantized type only where its hits can be re-ranked on the float
    vectors (RESCORE_SINCE); before that, the float type it quantizes (`int8_hnsw` -> `hnsw`), so distances stay
    the float vectors' own (thresholds and calibration are fitted on them)."""
    return index_type.split("_", 1)[1] if quantized(index_type) and tuple(version) < RESCORE_SINCE else index_type


def concrete_name(alias: str, spec: EmbeddingSpec, version: int) -> str:
    return f"{alias}-{spec.slug}-v{version}"


def index_body(spec: EmbeddingSpec, index_type=DEFAULT_INDEX_TYPE, m=16, ef_construction=100, shards=1,
               final_type: str | None = None) -> dict:
    """A new index's settings and mappings; `final_type` is the type a two-phase load switches it to at its end
    (kept in `_meta`, so a later load finishes a load that died before that)."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {INDEX_TYPES}")
    if index_type.startswith("bbq") and spec.dim < 64:
        raise SpecError(f"{index_type} needs at least 64 dimensions; {spec.model} has {spec.dim}")
    vector = {"type": "dense_vector", "dims": spec.dim, "index": True, "similarity": spec.es_similarity,
              "index_options": vector_options(index_type, m, ef_construction)}
    keyword = {"type": "keyword"}
    return {
        "settings": {"number_of_shards": shards, "number_of_replicas": 0, "refresh_interval": "-1"},
        "mappings": {
            "dynamic": "strict",
            # The vector is indexed (and kept in doc values) but not stored again as JSON in _source.
            "_source": {"excludes": ["embedding"]},
            "_meta": {"facebeam": {"spec": spec.identity(), "spec_id": spec.spec_id, "dim": spec.dim,
                                   "index_type": final_type or index_type}},
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


def create_version(client, alias: str, spec: EmbeddingSpec, index_type=DEFAULT_INDEX_TYPE, m=16, ef_construction=100,
                   with_alias: bool = False, shards: int = 1, final_type: str | None = None) -> str:
    """A new, empty concrete index for `spec`; behind the alias only `with_alias` (in the same request).

    Raises the client's `resource_already_exists_exception` error when a concurrent creator took the name.
    """
    concrete = concrete_name(alias, spec, next_version(client, alias, spec))
    body = index_body(spec, index_type, m, ef_construction, shards, final_type)
    if with_alias:
        body["aliases"] = {alias: {}}
    client.indices.create(index=concrete, **body)
    log.info("created index %s (%s, %d-d, %s)", concrete, index_type, spec.dim, spec.es_similarity)
    return concrete


def _version_of(name: str) -> int:
    m = re.search(r"-v(\d+)$", name)
    return int(m.group(1)) if m else 0


def _join_alias(client, alias: str, spec: EmbeddingSpec, index_type, m, ef_construction, wait_s: float = 10.0,
                shards: int = 1, final_type: str | None = None) -> tuple:
    """(the concrete index behind `alias`, made here): created (with the alias) unless a concurrent creator did."""
    try:
        concrete = create_version(client, alias, spec, index_type, m, ef_construction, with_alias=True, shards=shards,
                                  final_type=final_type)
    except Exception as e:
        if not already_exists(e):
            raise
        log.info("index for alias %s is being created by another job; joining it", alias)
        deadline = time.monotonic() + wait_s
        while (current := alias_target(client, alias)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if current is None:
            raise
        return current, False
    # A creator that read the versions before ours existed may have put its own version beside it.
    targets = sorted(client.indices.get_alias(name=alias).body, key=_version_of)
    if len(targets) > 1 and targets[0] != concrete:
        client.indices.update_aliases(actions=[{"remove": {"index": concrete, "alias": alias}}])
        client.options(ignore_status=404).indices.delete(index=concrete)
        log.info("another job created %s behind %s first; using it", targets[0], alias)
        return targets[0], False
    return concrete, True


def swap_alias(client, alias: str, old: str, new: str) -> None:
    """One atomic alias update: readers see the old index or the new one, never neither."""
    client.indices.update_aliases(actions=[{"remove": {"index": old, "alias": alias}},
                                           {"add": {"index": new, "alias": alias}}])


def data_nodes(client) -> int:
    return int(client.cluster.health().body["number_of_data_nodes"])


@dataclasses.dataclass(frozen=True)
class LoadTuning:
    """How a bulk load runs (`DEFAULT_TUNING` is the measured best; these defaults are the plain load).

    During the load refresh is off and replicas are at the load's count; with these, also:
    translog_async: no fsync per bulk request (index.translog.durability: async). Off by default: a node
      killed mid-load loses its last acknowledged docs (106 of 20,000 in test_faults' restart test), which
      nothing re-sends; a lever for loads that are re-run from scratch anyway.
    merge_threads: index.merge.scheduler.max_thread_count during the load (None: Elasticsearch's).
    two_phase: a new index is loaded with the flat type of its HNSW type (no graph per segment), and
      switched to the HNSW type at the end, where the merge builds one graph (needs force_merge).
    force_merge: a new index is merged to `merge_segments` segments (per shard) at the end, so a query
      searches that many graphs.
    shards: primary shards of a new index.
    """

    translog_async: bool = False
    merge_threads: int | None = None
    two_phase: bool = False
    force_merge: bool = False
    merge_segments: int = 1
    shards: int = 1

    def __post_init__(self):
        if self.merge_threads is not None and self.merge_threads < 1:
            raise UserError("merge threads must be at least 1")
        if self.merge_segments < 1:
            raise UserError("merge segments must be at least 1")
        if self.shards < 1:
            raise UserError("primary shards must be at least 1")


# What `facebeam index` does to a new index, by `facebeam bench index` (2026-12-05, 1M vectors, 2 cores): flat
# during the bulk, then two shards' graphs built by one merge each, side by side (the local node's force-merge
# pool holds a thread per core). It answers at recall@10 0.96 after 397 s; the graph built in the bulk never
# reached 0.95 unmerged, and one shard's merge ran on one core (1,244 s with it).
DEFAULT_TUNING = LoadTuning(two_phase=True, force_merge=True, shards=2)


@dataclasses.dataclass(frozen=True)
class LoadPlan:
    """What a load does at its end: restore the settings, and for a new index the switch and the merge."""

    concrete: str
    replicas: int  # after the load
    index_options: dict | None = None  # two-phase: the vector's index_options to switch to at the end
    merge: bool = False  # force merge at the end
    segments: int = 1  # ... to this many segments


def load_type(index_type: str) -> str:
    """The flat type a two-phase load writes for `index_type` (hnsw -> flat, int8_hnsw -> int8_flat, ...)."""
    return index_type.replace("hnsw", "flat")


def vector_options(index_type: str, m: int, ef_construction: int) -> dict:
    options = {"type": index_type}
    if "hnsw" in index_type:
        options.update(m=m, ef_construction=ef_construction)
    if quantized(index_type):
        options["rescore_vector"] = {"oversample": RESCORE_OVERSAMPLE}
    return options


def load_settings(tuning: LoadTuning, load_replicas: int = 0) -> dict:
    """The index settings during a bulk load."""
    index = {"refresh_interval": "-1", "number_of_replicas": load_replicas}
    if tuning.translog_async:
        index["translog"] = {"durability": "async"}
    if tuning.merge_threads:
        index["merge"] = {"scheduler": {"max_thread_count": tuning.merge_threads}}
    return {"index": index}


def restored_settings(replicas: int, merge_threads: bool = True) -> dict:
    """The settings a load puts back: Elasticsearch's defaults, and the replicas the index had
    (the merge threads stay as they are without `merge_threads`, for the final merge)."""
    index = {"refresh_interval": None, "number_of_replicas": replicas, "translog": {"durability": None}}
    if merge_threads:
        index["merge"] = {"scheduler": {"max_thread_count": None}}
    return {"index": index}


def plan_load(client, alias: str, spec: EmbeddingSpec, index_type=DEFAULT_INDEX_TYPE, m=16, ef_construction=100,
              load_replicas=0, create_alias=True, tuning: LoadTuning | None = None,
              replicas: int | None = None) -> LoadPlan:
    """Find or create the concrete index for `spec` behind `alias`; set it up for a bulk load (`tuning`).

    With create_alias=False a new version is always made and the alias is left alone (reindex).
    `replicas` (after the load) defaults to what the index had. Raises SpecError on a spec mismatch,
    before anything is written. Only an index made by this load is loaded two-phase and merged.
    """
    tuning = tuning or LoadTuning()
    current = alias_target(client, alias)
    if quantized(index_type) and (version := server_version(client)) < RESCORE_SINCE:
        say = log.warning if not create_alias or current is None else log.info  # warned where a new index is made
        say("Elasticsearch %s cannot re-rank a quantized graph on the float vectors (%s+): a new index is %s, "
            "not %s", ".".join(map(str, version)), ".".join(map(str, RESCORE_SINCE)),
            type_for_server(index_type, version), index_type)
        index_type = type_for_server(index_type, version)
    write_type = load_type(index_type) if tuning.two_phase else index_type
    fresh = False  # made now, by this job or a concurrent one
    made_here = False
    if current is None and create_alias:
        # Index and alias in one request: readers never see a half-made index. A concurrent creator is joined.
        current, made_here = _join_alias(client, alias, spec, write_type, m, ef_construction, shards=tuning.shards,
                                         final_type=index_type)
        fresh = True
    if current is not None and create_alias:
        spec.require_same(spec_of(client, current), what=f"index {current!r} behind alias {alias!r}")
        concrete = current
        if fresh:
            before = 1 if data_nodes(client) > 1 else 0
        else:
            settings = client.indices.get_settings(index=concrete).body[concrete]["settings"]["index"]
            before = int(settings["number_of_replicas"])
    else:
        concrete = create_version(client, alias, spec, write_type, m, ef_construction, shards=tuning.shards,
                                  final_type=index_type)
        before, made_here = (1 if data_nodes(client) > 1 else 0), True
    client.indices.put_settings(index=concrete, settings=load_settings(tuning, load_replicas))
    # A two-phase load that died before its end left the index flat: this load finishes it, into the type that
    # load meant (whatever --index-type this one has: an existing index keeps its type).
    final = index_type if made_here else intended_type(client, concrete)
    unfinished = not made_here and final != load_type(final) and vector_type(client, concrete) == load_type(final)
    if unfinished:
        log.info("index %s is still %s from a load that did not finish; this load builds its graph (%s) at the end",
                 concrete, load_type(final), final)
    finishes = (made_here and write_type != index_type) or unfinished
    switch = vector_options(final, m, ef_construction) if finishes else None
    return LoadPlan(concrete, before if replicas is None else replicas, switch,
                    (made_here or unfinished) and tuning.force_merge, tuning.merge_segments)


def prepare_load(client, alias: str, spec: EmbeddingSpec, index_type=DEFAULT_INDEX_TYPE, m=16, ef_construction=100,
                 load_replicas=0, create_alias=True) -> tuple:
    """(concrete index, replicas it had before) of `plan_load` with the default tuning: refresh off and
    replicas at `load_replicas`, one type throughout, no merge."""
    plan = plan_load(client, alias, spec, index_type, m, ef_construction, load_replicas, create_alias)
    return plan.concrete, plan.replicas


def restore_call(concrete: str, replicas: int) -> str:
    """The settings request that ends a load, for a person to run when the job could not."""
    return f"PUT /{concrete}/_settings {json.dumps(restored_settings(replicas))}"


class RestoreFailed(UserError):
    """The index settings could not be restored after a load; the message holds the call to run."""


def vector_field(client, concrete: str) -> dict:
    """The vector field's mapping as the index holds it now."""
    return client.indices.get_mapping(index=concrete).body[concrete]["mappings"]["properties"]["embedding"]


def intended_type(client, concrete: str) -> str:
    """The type the index was made to have: its `_meta`, or for an index made before that was kept, the graph
    type of its flat type (a flat index then was one a two-phase load had not finished)."""
    mapping = client.indices.get_mapping(index=concrete).body[concrete]["mappings"]
    meta = (mapping.get("_meta") or {}).get("facebeam") or {}
    now = (mapping["properties"]["embedding"].get("index_options") or {}).get("type", "hnsw")
    return meta.get("index_type") or now.replace("flat", "hnsw")


def vector_type(client, concrete: str) -> str:
    """The vector field's index type now (hnsw, flat, int8_hnsw, ...)."""
    return vector_field(client, concrete).get("index_options", {}).get("type", "hnsw")


def switch_vector(client, concrete: str, index_options: dict) -> None:
    """The vector field's index_options changed in place (flat -> hnsw; Elasticsearch 8.15+ allows it):
    segments written from now on, and merged ones, get the new type."""
    field = vector_field(client, concrete)
    client.indices.put_mapping(index=concrete, properties={"embedding": {**field, "index_options": index_options}})


def segments_per_shard(client, concrete: str) -> dict:
    """{primary shard number: its segment count}."""
    shards = client.indices.stats(index=concrete, metric="segments", level="shards").body["indices"][concrete]["shards"]
    return {n: c["segments"]["count"] for n, copies in shards.items() for c in copies if c["routing"]["primary"]}


def lone_segments(client, concrete: str) -> list:
    """The primary shards that hold a single segment."""
    return [n for n, count in segments_per_shard(client, concrete).items() if count == 1]


def second_segments(client, concrete: str, tries: int = 64) -> None:
    """A force merge leaves a shard's lone segment as it is, flat after a two-phase load: the delete of an id
    no face has writes a tombstone into a new segment, so the merge rewrites the flat one with its graph."""
    for i in range(tries):
        if not lone_segments(client, concrete):
            return
        client.options(ignore_status=404).delete(index=concrete, id=f"facebeam-two-phase-{i}")
        client.indices.refresh(index=concrete)
    log.warning("index %s: shards %s still hold one segment; their vectors stay flat (exact) until a merge",
                concrete, lone_segments(client, concrete))


def wait_task(client, task_id: str, poll: float = 2.0) -> dict:
    """Poll a background task (a force merge can outlast any HTTP timeout) until it completes; the polls
    start at 50 ms, so a small load's merge costs no two-second wait. (Waiting server-side with
    `wait_for_completion` ends in a 500 `timeout_exception`, which the client logs as a failed node.)"""
    from elasticsearch.exceptions import GeneralAvailabilityWarning

    pause = 0.05
    while True:
        with warnings.catch_warnings():  # the tasks API is "technical preview"; the load's log says nothing of it
            warnings.simplefilter("ignore", GeneralAvailabilityWarning)
            t = client.tasks.get(task_id=task_id).body
        if t.get("completed"):
            if t.get("error"):
                raise RuntimeError(f"task {task_id} failed: {t['error']}")
            return t
        time.sleep(pause)
        pause = min(poll, pause * 2)


def force_merge(client, concrete: str, segments: int = 1) -> None:
    """Force merge to `segments` segments, waited for as a task; in a two-phase load this builds the graph."""
    task = client.indices.forcemerge(index=concrete, max_num_segments=segments, wait_for_completion=False).body["task"]
    with progress.waiting(f"merge: {concrete} into {segments} segment(s) per shard"):  # minutes at 1M, no count
        wait_task(client, task)
    client.indices.refresh(index=concrete)


def finish_load(client, concrete: str, replicas: int, wait_s: int = 120, tries: int = 3, pause_s: float = 2.0,
                index_options: dict | None = None, merge: bool = False, segments: int = 1) -> int:
    """Restore the settings after a load (`restored_settings`), refresh, and return the doc count.

    A two-phase load first switches the vector to `index_options`; with `merge` the index is then
    merged to `segments` segments (which builds the graphs of a two-phase load), with the load's
    merge threads, restored after. A cluster that refuses
    (401/403) or stays unreachable raises `RestoreFailed`, whose message gives the exact calls to
    run once it is back.
    """
    from elasticsearch import ApiError, AuthenticationException, AuthorizationException, TransportError

    for attempt in range(tries):
        try:
            if index_options:
                switch_vector(client, concrete, index_options)
            client.indices.put_settings(index=concrete, settings=restored_settings(replicas, merge_threads=not merge))
            client.indices.refresh(index=concrete)
            break
        except (AuthenticationException, AuthorizationException, TransportError, ApiError) as e:
            status = getattr(getattr(e, "meta", None), "status", None)
            final = attempt == tries - 1 or isinstance(e, (AuthenticationException, AuthorizationException)) or (
                isinstance(status, int) and status < 500)
            if final:
                calls = f"`{restore_call(concrete, replicas)}` and `POST /{concrete}/_refresh`"
                if index_options:
                    calls = (f"`PUT /{concrete}/_mapping` with embedding.index_options {json.dumps(index_options)}, "
                             f"{calls}, then `POST /{concrete}/_forcemerge?max_num_segments=1`")
                what = f"HTTP {status}" if isinstance(status, int) else type(e).__name__
                if es_conn.block_of(e):  # a block, not the credentials: say which and how to lift it
                    what, lift = es_conn.block_of(e)
                    raise RestoreFailed(f"could not restore the settings of index {concrete} after the load: {what} "
                                        f"is set; lift it ({lift.format(index=concrete)}), then run {calls} "
                                        "(or run the same load again)") from None
                raise RestoreFailed(f"could not restore the settings of index {concrete} after the load ({what}); "
                                    f"it still has refresh off: once the cluster accepts you, run {calls} "
                                    "(or run the same load again)") from None
            time.sleep(pause_s)
    if merge:
        try:
            if index_options:
                second_segments(client, concrete)
            force_merge(client, concrete, segments)
        finally:
            client.indices.put_settings(index=concrete, settings={"index.merge.scheduler.max_thread_count": None})
    if replicas and replicas < data_nodes(client):
        health = client.options(request_timeout=wait_s + 15).cluster.health(
            index=concrete, wait_for_status="green", timeout=f"{wait_s}s").body
        if health.get("timed_out"):
            log.warning("index %s is %s: its %d replica(s) are not all allocated yet", concrete, health["status"], replicas)
    return int(client.count(index=concrete).body["count"])


def finish_plan(client, plan: LoadPlan, completed: bool = True) -> int:
    """`finish_load` of a plan; a load that did not complete is switched but not merged."""
    return finish_load(client, plan.concrete, plan.replicas, index_options=plan.index_options,
                       merge=plan.merge and completed, segments=plan.segments)
