"""Elasticsearch as a FaceStore: the versioned index behind an alias (es_index), loaded by a Beam step (es_load).

Its metadata lives in the concrete index's `_meta.facebeam` (calibration, beside the spec).
Persons' names live in a side index `<alias>-persons` (one doc per face: _id = face_id, person,
person_id): the faces' documents cannot be updated in place, because their vectors are not in
`_source` and a partial update would re-index them without one. Beside it, `<alias>-person-faces`
holds one doc per person (by name and by person id: `face_ids`, and the person's id and name), so a
`--person` filter is a kNN pre-filter the server resolves itself (a `terms` lookup on face_id, no ids
sent with each query), like `--label`: the top k are all within it, and all that one person's.
"""
from __future__ import annotations

import logging

from facebeam.transforms import es_conn, es_index
from facebeam.transforms.errors import UserError
from facebeam.transforms.stores.base import (
    Capabilities,
    FaceStore,
    Load,
    Reindex,
    Searcher,
    StoreError,
    annotate,
    comparison,
    resolve_person,
    split_filters,
)

log = logging.getLogger(__name__)
PERSONS_MAPPING = {"dynamic": "strict", "properties": {"face_id": {"type": "keyword"}, "person": {"type": "keyword"},
                                                      "person_id": {"type": "keyword"}}}


PERSON_FACES_MAPPING = {"dynamic": "strict", "properties": {"face_ids": {"type": "keyword"},
                                                           "person_id": {"type": "keyword"},
                                                           "person": {"type": "keyword"}}}
TERMS_LIMIT = 65_536  # Elasticsearch's default index.max_terms_count
#: The outputs made from the faces (copies.py): one document, rewritten only if it is unchanged since it was read
#: (if_seq_no), so that jobs recording at once all land. A mapping's `_meta` has no such check; records kept there
#: before are read until the next change moves them here.
COPIES_MAPPING = {"dynamic": False, "properties": {"copies": {"type": "object", "enabled": False}}}
COPIES_DOC = "copies"


def persons_index(alias: str) -> str:
    return f"{alias}-persons"


def person_faces_index(alias: str) -> str:
    return f"{alias}-person-faces"


def copies_index(alias: str) -> str:
    return f"{alias}-copies"


def person_doc_ids(name: str) -> tuple:
    """The two docs of a person in the person-faces index: by name and by person id."""
    return f"name:{name}", f"id:{name}"


def write_person_faces(client, alias: str, persons: dict) -> None:
    """`<alias>-person-faces` rebuilt from {face_id: [person_id, name]}; the faces index allows terms lookups
    as large as its largest person."""
    from elasticsearch import helpers

    groups = {}
    for face, (pid, name) in ((f, (list(v) + [None, None])[:2]) for f, v in persons.items()):
        for doc_id, key in ((f"name:{name}", name), (f"id:{pid}", pid)):
            if key is not None:
                faces, who = groups.setdefault(doc_id, ([], set()))
                faces.append(face)
                who.add((pid, name))
    index = person_faces_index(alias)
    client.options(ignore_status=404).indices.delete(index=index)
    client.indices.create(index=index, mappings=PERSON_FACES_MAPPING,
                          settings={"number_of_shards": 1, "number_of_replicas": 0})
    helpers.bulk(client, ({"_index": index, "_id": d, "face_ids": sorted(f),
                           "person_id": sorted({p for p, _ in who if p is not None}),
                           "person": sorted({n for _, n in who if n is not None})} for d, (f, who) in groups.items()))
    client.indices.refresh(index=index)
    largest = max((len(f) for f, _ in groups.values()), default=0)
    if largest > TERMS_LIMIT:
        client.indices.put_settings(index=es_index.alias_target(client, alias),
                                    settings={"index": {"max_terms_count": largest}})


def person_filter(client, alias: str, name: str) -> tuple:
    """(the kNN pre-filter for a person's faces, (person_id, name) when every face it keeps is that one person's,
    else None). The filter is a terms lookup on the person-faces index (by name, else by person id), or the face
    ids from the persons index where that index is not there yet (named before it existed)."""
    from facebeam.transforms import knn

    index = person_faces_index(alias)
    if not client.indices.exists(index=index):
        return faces_of_person(client, alias, name), None
    docs = [d for d in client.mget(index=index, ids=list(person_doc_ids(name)),
                                   source=["person_id", "person"]).body["docs"] if d.get("found")]
    if not docs:
        return set(), None  # no such person: matches nothing
    who = {(tuple(d["_source"].get("person_id") or ()), tuple(d["_source"].get("person") or ())) for d in docs}
    pids, names = next(iter(who)) if len(who) == 1 else ((), ())  # () too in docs written before names were kept
    one = (pids[0], names[0]) if len(pids) == 1 and len(names) == 1 else None
    return knn.FaceIdsLookup(index, tuple(d["_id"] for d in docs)), one


def read_persons(client, alias: str, face_ids=None) -> dict:
    """{face_id: [person_id, name]} of those faces (all when None) from the side index; {} when there is none."""
    from elasticsearch import helpers

    index = persons_index(alias)
    if face_ids is not None:
        return names_of(client, index, face_ids)
    if not client.indices.exists(index=index):
        return {}
    return {h["_id"]: [h["_source"].get("person_id"), h["_source"].get("person")]
            for h in helpers.scan(client, index=index, query={"query": {"match_all": {}}})}


def names_of(client, index: str, face_ids) -> dict:
    """{face_id: [person_id, name]} of those faces in the persons index `index`, in one request; {} when it is not
    there."""
    ids = sorted(set(face_ids))
    if not ids:
        return {}
    body = client.options(ignore_status=404).mget(index=index, ids=ids, source=["person_id", "person"]).body
    return {d["_id"]: [d["_source"].get("person_id"), d["_source"].get("person")]
            for d in body.get("docs", ()) if d.get("found")}


def faces_of_person(client, alias: str, name: str) -> set:
    from elasticsearch import helpers

    index = persons_index(alias)
    if not client.indices.exists(index=index):
        return set()
    return {h["_id"] for h in helpers.scan(client, index=index, query={"query": person_query(name)}, _source=False)}


def person_query(name: str, any_case: bool = False) -> dict:
    """The faces of a person in the persons index: by name or by person id (`any_case`: whatever its case)."""
    return {"bool": {"should": [{"term": {field: {"value": name, "case_insensitive": any_case}}}
                                for field in ("person", "person_id")]}}


class ElasticsearchStore(FaceStore):
    kind = "es"
    capabilities = Capabilities(search=True, in_pipeline=True, reindex=True)

    def __init__(self, name: str, connect):
        """`connect()` resolves the connection (flags, environment or connection file), once, when first needed."""
        super().__init__(name)
        self._connect = connect
        self._conn = None

    def __getstate__(self):  # workers get the resolved connection (its secret travels as a reference)
        return {**self.__dict__, "_conn": self.conn, "_connect": None, "_verifying": None}

    def close(self) -> None:
        if self.__dict__.get("_verifying") is not None:
            self._verifying[0].close()
            self._verifying = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _url(self) -> str:
        try:
            return self.conn.url
        except UserError:
            return "(no connection)"

    def describe(self) -> str:
        return f"Elasticsearch alias {self.name!r}"

    def location(self) -> str:
        return self._url()

    def identity(self) -> tuple:
        return self.kind, self.name, None  # the cluster today's connection reaches

    def threshold_place(self) -> str:
        return f"index {self.concrete()}"

    def _client(self):
        try:
            client = self.conn.client()
            es_conn.check(client, self.conn)
        except es_conn.EsError as e:
            raise StoreError(f"{self.describe()}: {e}") from None
        return client

    def concrete(self, client=None):
        own = client is None
        client = client or self._client()
        try:
            return es_index.alias_target(client, self.name)
        finally:
            if own:
                client.close()

    def open_alias(self, spec=None):
        """(client, concrete index, its spec); the caller closes the client."""
        return es_index.open_alias(self.conn, self.name, spec)

    def exists(self) -> bool:
        return self.concrete() is not None

    def spec(self):
        client, _, spec = self.open_alias()
        client.close()
        return spec

    def check(self, spec) -> None:
        client = self._client()
        try:
            concrete = es_index.alias_target(client, self.name)
            if concrete is not None:
                spec.require_same(es_index.spec_of(client, concrete), what=f"index {concrete!r}")
        finally:
            client.close()

    def where(self) -> dict:
        client, concrete, _ = self.open_alias()
        client.close()
        return {"backend": "elasticsearch", "searched": f"index {self.name} ({concrete}) at {self.conn.url}",
                "index": self.name, "concrete_index": concrete, "es_url": self.conn.url}

    def begin_load(self, spec, load, output, shard_files=None, run_id=None) -> Load:
        import dataclasses

        return _EsLoad(self, spec, dataclasses.replace(load, alias=self.name), output, shard_files, run_id)

    def count(self) -> int:
        client = self._client()
        try:
            if es_index.alias_target(client, self.name) is None:
                return 0
            client.indices.refresh(index=self.name)
            return int(client.count(index=self.name).body["count"])
        finally:
            client.close()

    def remove(self, shas, dry_run: bool = False, purge: bool = True) -> int:
        from elasticsearch import helpers

        client = self._client()
        try:
            concrete = es_index.alias_target(client, self.name)
            if concrete is None:
                return 0
            # Scan + bulk delete by _id rather than _delete_by_query, which needs the reindex module
            # (absent from some distributions, such as the integ-test-zip that `es up` runs).
            kept = [i for i in (self._mapping(client, concrete).get("_meta") or {}).get("facebeam", {}).get(
                "previous", []) if client.indices.exists(index=i)]  # a reindex's rollback must not bring them back
            searched = ",".join([self.name, *kept])
            client.indices.refresh(index=searched)
            query = {"query": {"terms": {"image_sha256": sorted(shas)}}}
            hits = list(helpers.scan(client, index=searched, query=query, _source=False))
            live = sum(1 for h in hits if h["_index"] == concrete)
            if dry_run or not hits:
                return live
            _, errors = helpers.bulk(client, ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]}
                                              for h in hits), raise_on_error=False)
            if errors:
                raise StoreError(f"{self.describe()}: {len(errors)} face doc(s) could not be deleted: {errors[:3]}")
            if len(hits) > live:
                log.info("%s: %d face doc(s) gone from the index a reindex kept (%s)", self.describe(), len(hits) - live,
                         ", ".join(kept))
            deleted = live
            named, emptied = persons_index(self.name), [self.name, *kept]
            if client.indices.exists(index=named):
                helpers.bulk(client, ({"_op_type": "delete", "_index": named, "_id": h["_id"]} for h in hits),
                             raise_on_error=False)  # a face without a name has no doc there (404)
                emptied.append(named)
                client.indices.refresh(index=named)  # what the rebuild below reads must be without those faces
                if client.indices.exists(index=person_faces_index(self.name)):  # rebuilt without those faces
                    write_person_faces(client, self.name, read_persons(client, self.name))
            if purge:
                self._expunge(client, emptied)
            return deleted
        finally:
            client.close()

    def relocate(self, rows, chunk: int = 1000) -> int:
        """Each face whose path changed is indexed again, whole: its vector is not in `_source`, so an update in
        place would lose it."""
        from elasticsearch import helpers

        rows = list(rows)
        client = self._client()
        try:
            concrete = es_index.alias_target(client, self.name)
            if concrete is None or not rows:
                return 0
            moved = []
            for i in range(0, len(rows), chunk):
                part = rows[i:i + chunk]
                held = {d["_id"]: d["_source"].get("image_path") for d in client.mget(
                    index=concrete, ids=[r["face_id"] for r in part], source_includes=["image_path"]).body["docs"]
                    if d.get("found")}
                moved += [r for r in part if r["face_id"] in held and held[r["face_id"]] != r["image_path"]]
            if moved:
                _, errors = helpers.bulk(client, ({"_op_type": "index", "_index": concrete, "_id": r["face_id"],
                                                   "_source": es_index.document(r)} for r in moved),
                                         raise_on_error=False, refresh="wait_for")
                if errors:
                    raise StoreError(f"{self.describe()}: {len(errors)} moved face(s) could not be indexed again: "
                                     f"{errors[:3]}")
            return len(moved)
        finally:
            client.close()

    @staticmethod
    def _expunge(client, indices: list, wait_s: float = 90.0, pause_s: float = 1.0) -> None:
        """Deleted docs stay in their segments (soft deletes) until a merge may drop them, which a shard's
        retention lease allows once it has moved past the deletes (its background sync, every 30 s, on each
        index's own clock): flush and expunge until none is left, or say what is left to Elasticsearch's own
        merges. The indices wait together, so a forget waits for the later sync, not for the sum."""
        import time

        index = ",".join(indices)

        def deleted():
            stats = client.indices.stats(index=index, metric="docs").body["indices"]
            return sum(v["primaries"]["docs"]["deleted"] for v in stats.values())

        client.indices.put_settings(index=index, settings={"index.merge.policy.expunge_deletes_allowed": 0})
        deadline = time.monotonic() + wait_s
        while True:
            client.indices.refresh(index=index)
            client.indices.flush(index=index)
            client.options(request_timeout=300).indices.forcemerge(index=index, only_expunge_deletes=True)
            client.indices.refresh(index=index)
            left = deleted()
            if not left:
                return
            if time.monotonic() > deadline:
                log.warning("%s: %d deleted doc(s) still in its segments; Elasticsearch drops them at a later merge",
                            index, left)
                return
            time.sleep(pause_s)

    def closest(self, vector, label: str) -> tuple:
        from facebeam.transforms import knn

        if self.__dict__.get("_verifying") is None:  # one client and spec for many verifications
            client, _, spec = self.open_alias()
            self._verifying = (client, spec)
        client, spec = self._verifying
        search = knn.SearchSpec(k=1, num_candidates=100, filters=(("label", label),))
        hits = knn.es_search(client, self.name, [{"embedding": vector, "image_sha256": ""}], search, spec)[0]
        if not hits:
            return None, None, 0
        return hits[0]["face_id"], hits[0]["distance"], None

    def searcher(self) -> Searcher:
        from facebeam.transforms import knn

        client, _, spec = self.open_alias()
        client.close()
        return _EsSearcher(self.conn, self.name, spec, knn.FETCH[0])

    def search_settings(self, search) -> dict:
        from facebeam.transforms import knn

        return knn.es_settings(search, knn.FETCH[0])

    def reindexer(self, new_spec, load) -> Reindex:
        return _EsReindex(self, new_spec, load)

    # --- metadata ---------------------------------------------------------------------------------
    def _mapping(self, client, concrete):
        return client.indices.get_mapping(index=concrete).body[concrete]["mappings"]

    def _own_meta(self, client, concrete) -> dict:
        """facebeam's part of the index's `_meta`."""
        return (self._mapping(client, concrete).get("_meta") or {}).get("facebeam") or {}

    def read_meta(self) -> dict:
        client, concrete, _ = self.open_alias()
        try:
            own = self._own_meta(client, concrete)
            out = {k: v for k, v in own.items() if k == "calibration"}  # persons: their side index
            recorded, _ = self._copies(client, own)
        finally:
            client.close()
        return {**out, "copies": recorded} if recorded else out

    def write_meta(self, **updates) -> None:
        if "copies" in updates:
            value = updates.pop("copies")
            self.update_copies(lambda _: list(value or []))
        if updates:
            self._write_index_meta(updates)

    def _write_index_meta(self, updates: dict) -> None:
        from elasticsearch import ApiError

        client, concrete, _ = self.open_alias()
        try:
            meta = dict(self._mapping(client, concrete).get("_meta") or {})
            own = {**meta.get("facebeam", {}), **updates}
            meta["facebeam"] = {k: v for k, v in own.items() if v is not None}
            client.indices.put_mapping(index=concrete, meta=meta)
        except ApiError as e:  # a key that may read but not write the mapping: named, not a traceback
            raise StoreError(f"{self.describe()}: its metadata cannot be written ({e.meta.status} "
                             f"{getattr(e, 'error', '')})") from None
        finally:
            client.close()

    def _copies(self, client, own_meta: dict) -> tuple:
        """(records, (seq_no, primary_term) of their document, or None while the records are still those an older
        facebeam kept in the index's `_meta`)."""
        doc = client.options(ignore_status=404).get(index=copies_index(self.name), id=COPIES_DOC).body
        if doc.get("found"):
            return list(doc["_source"].get("copies") or []), (doc["_seq_no"], doc["_primary_term"])
        return list(own_meta.get("copies") or []), None

    def update_copies(self, change) -> list:
        import tenacity
        from elasticsearch import ApiError, ConflictError

        client, concrete, _ = self.open_alias()
        try:
            legacy = False
            for attempt in tenacity.Retrying(retry=tenacity.retry_if_exception_type(ConflictError), reraise=True,
                                             stop=tenacity.stop_after_attempt(30), wait=tenacity.wait_random(0.02, 0.3)):
                with attempt:  # another job wrote between our read and our write: read again
                    own = self._own_meta(client, concrete)
                    old, version = self._copies(client, own)
                    new = change(list(old))
                    if new == old:
                        return new
                    legacy = version is None and "copies" in own
                    self._write_copies(client, new, version)
        except ApiError as e:  # a key that may search but not write: named, not a traceback
            raise StoreError(f"{self.describe()}: the record of its copies cannot be written ({e.meta.status} "
                             f"{getattr(e, 'error', '')})") from None
        finally:
            client.close()
        if legacy:  # moved to their document
            self._write_index_meta({"copies": None})
        return new

    def _write_copies(self, client, records: list, version) -> None:
        index = copies_index(self.name)
        if version is not None:
            client.index(index=index, id=COPIES_DOC, document={"copies": records}, if_seq_no=version[0],
                         if_primary_term=version[1])
            return
        try:  # a small record that outlives a node: a replica wherever there is a second node
            client.indices.create(index=index, mappings=COPIES_MAPPING,
                                  settings={"number_of_shards": 1, "auto_expand_replicas": "0-1"})
        except Exception as e:
            if not es_index.already_exists(e):
                raise
        client.create(index=index, id=COPIES_DOC, document={"copies": records})  # 409 if another job made it first

    def persons(self) -> dict:
        client = self._client()
        try:
            return read_persons(client, self.name)
        finally:
            client.close()

    def has_persons(self) -> bool:
        return self._count_persons({"match_all": {}}) > 0

    def person_named(self, name: str):
        if self._count_persons(person_query(name)) > 0:
            return name
        client = self._client()  # the names and ids equal to it but for case: a few buckets, not every face
        try:
            body = client.options(ignore_status=404).search(
                index=persons_index(self.name), size=0, query=person_query(name, any_case=True),
                aggs={field: {"terms": {"field": field, "size": 5}} for field in ("person", "person_id")}).body
        finally:
            client.close()
        known = {b["key"] for agg in (body.get("aggregations") or {}).values() for b in agg["buckets"]}
        return resolve_person({k for k in known if k.casefold() == name.casefold()}, name)

    def _count_persons(self, query: dict) -> int:
        client = self._client()  # a count, not every face's person
        try:
            return client.options(ignore_status=404).count(index=persons_index(self.name), query=query).body.get("count", 0)
        finally:
            client.close()

    def set_persons(self, found: dict, chunk: int = 1000) -> int:
        """The side index replaced by these names, for the faces the index holds; how many faces got one."""
        from elasticsearch import helpers

        client, _, _ = self.open_alias()
        try:
            have = set()
            ids = sorted(found)
            for i in range(0, len(ids), chunk):
                have |= {h["_id"] for h in client.search(index=self.name, query={"ids": {"values": ids[i:i + chunk]}},
                                                         size=chunk, _source=False).body["hits"]["hits"]}
            index = persons_index(self.name)
            client.options(ignore_status=404).indices.delete(index=index)
            client.indices.create(index=index, mappings=PERSONS_MAPPING,
                                  settings={"number_of_shards": 1, "number_of_replicas": 0})
            helpers.bulk(client, ({"_index": index, "_id": f, "face_id": f, "person": found[f][1],
                                   "person_id": found[f][0]} for f in sorted(have)))
            client.indices.refresh(index=index)
            write_person_faces(client, self.name, {f: found[f] for f in have})
            return len(have)
        finally:
            client.close()


class _EsSearcher(Searcher):
    """One keep-alive client per worker (its TLS session reused), orjson when installed, the hits trimmed. Whether
    the collection has persons is read once, when the searcher opens; a person filter is looked up once per
    person, and when it keeps one person's faces only, its hits are named without a second request."""

    def __init__(self, conn, alias, spec, fetch: str):
        from facebeam.transforms import knn

        self._client, self._alias, self._spec = conn.client(**knn.es_client_options()), alias, spec
        self._fetch = fetch
        self._person_filters = {}
        self._named = bool(self._client.indices.exists(index=persons_index(alias)))

    def search(self, probes: list, search) -> list:
        import dataclasses

        from facebeam.transforms import knn

        if search.num_candidates > knn.ES_MAX_CANDIDATES:  # Elasticsearch's own answer is a 400 per request
            raise StoreError(f"Elasticsearch takes at most {knn.ES_MAX_CANDIDATES:,} candidates per kNN search, so k "
                             f"{search.k:,} and --num-candidates {search.num_candidates:,} are too many for it; ask "
                             f"for fewer, or search the embedded index (--store local), which has no such limit")
        rest, person = split_filters(search.filters)
        if person is not None and person not in self._person_filters:
            self._person_filters[person] = person_filter(self._client, self._alias, person)
        faces, who = self._person_filters[person] if person is not None else (None, None)
        found = knn.es_search(self._client, self._alias, probes, dataclasses.replace(search, filters=rest), self._spec,
                              face_ids=faces, fetch=self._fetch)
        if who is not None:
            named = {h["face_id"]: who for hs in found for h in hs}
        elif self._named:
            named = names_of(self._client, persons_index(self._alias), [h["face_id"] for hs in found for h in hs])
        else:
            named = {}
        annotate(found, named)
        return found

    def close(self) -> None:
        self._client.close()


class _EsLoad(Load):
    """The Beam load (es_load.LoadFaces) inside the pipeline; refresh and replicas restored whatever happens."""

    def __init__(self, store: ElasticsearchStore, spec, load, output, shard_files, run_id):
        from facebeam.transforms import es_load

        self.store, self.spec, self.load, self.output, self.run_id = store, spec, load, output, run_id
        self.resend_all = shard_files is not None  # `index`: every shard is re-sent
        self.target = es_load.open_target(store.conn, load, spec)  # fails fast, before any file is made
        self.step = None

    def attach(self, rows) -> None:
        from facebeam.transforms import es_load

        self.step = es_load.LoadFaces(self.target, self.load, self.output, self.spec, self.run_id)
        rows | "Load" >> self.step

    def running(self):
        from facebeam.transforms import es_load

        return es_load.loading(self.target)

    def finish(self, result) -> dict:
        from facebeam.transforms import metrics, shards

        if self.resend_all:
            shards.clear_index_errors(self.output, keep=self.step.errors_dir, runs_too=True)
        elif not self.run_id:  # a plain run re-sent the flat shards: older flat/load= dead letters are stale
            shards.clear_index_errors(self.output, keep=self.step.errors_dir, runs_too=False)
        counts = metrics.index_counts(metrics.read_counters(result))
        return {"backend": "elasticsearch", "index": self.target.alias, "concrete_index": self.target.concrete,
                "vector_type": es_index.vector_type(self.target.client, self.target.concrete),
                "doc_count": self.target.count, "index_errors": self.step.errors_dir, **counts}


def _largest_face(client, index_name: str, sha: str):
    """The image's largest face; its vector from the dense_vector doc values (`_source` leaves it out)."""
    hits = client.search(index=index_name, query={"term": {"image_sha256": sha}}, size=50,
                         _source=["box", "image_sha256", "label"], docvalue_fields=["embedding"]).body["hits"]["hits"]
    if not hits:
        return None
    best = max(hits, key=lambda h: h["_source"]["box"]["w"] * h["_source"]["box"]["h"])
    return {**best["_source"], "embedding": best["fields"]["embedding"][0]}


class _EsReindex(Reindex):
    """A new concrete index for the new spec; the alias swapped in one atomic update once it is complete."""

    def __init__(self, store: ElasticsearchStore, new_spec, load):
        from facebeam.transforms.spec import SpecError

        self.store, self.new_spec, self.load = store, new_spec, load
        self.client = store._client()
        self.old = es_index.alias_target(self.client, store.name)
        if self.old is None:
            raise UserError(f"no alias {store.name!r} to reindex; use `facebeam run` for a first load")
        self.old_spec = es_index.spec_of(self.client, self.old)
        if self.old_spec.spec_id == new_spec.spec_id:
            raise SpecError(f"{self.old} already has this spec ({new_spec.spec_id}); give the new model or settings")
        self.new = self.loading = None

    def images(self) -> dict:
        from elasticsearch import helpers

        out = {}
        for hit in helpers.scan(self.client, index=self.store.name, _source=["image_sha256", "image_path", "label"],
                                size=1000):
            s = hit["_source"]
            prev = out.get(s["image_sha256"], (None, None))
            out[s["image_sha256"]] = (s["image_path"], s.get("label") or prev[1])
        return out

    def begin_load(self, output: str) -> Load:
        from facebeam.transforms import es_load

        load, client, old = self.load, self.client, self.old
        replicas = load.replicas if load.replicas is not None else int(
            client.indices.get_settings(index=old).body[old]["settings"]["index"]["number_of_replicas"])
        # A new version beside the old one, loaded as `facebeam index` loads a new index (load.tuning).
        plan = es_index.plan_load(client, self.store.name, self.new_spec, load.index_type, load.m, load.ef_construction,
                                  load_replicas=load.load_replicas, create_alias=False, tuning=load.tuning,
                                  replicas=replicas)
        self.new = plan.concrete
        target = es_load.LoadTarget(self.store.conn, client, self.store.name, self.new, replicas, plan=plan)
        self.loading = _ReindexLoad(target, load, output, self.new_spec, old)
        return self.loading

    def compare(self, shas, k: int = 10) -> dict:
        from facebeam.transforms import knn

        search = knn.SearchSpec(k=k, num_candidates=max(100, 10 * k), exclude_same_image=True)
        pairs = []
        for sha in shas:
            a, b = _largest_face(self.client, self.old, sha), _largest_face(self.client, self.new, sha)
            if a is None or b is None:
                continue
            found = [knn.es_search(self.client, index, [{"embedding": face["embedding"], "image_sha256": sha}],
                                   search, spec)[0]
                     for index, face, spec in ((self.old, a, self.old_spec), (self.new, b, self.new_spec))]
            pairs.append(tuple([(h["image_sha256"], h["distance"]) for h in hits] for hits in found))
        return comparison(pairs, self.old_spec, self.new_spec, k)

    def comparing(self) -> str:
        return f"old {self.old} ({self.old_spec.spec_id}) vs new {self.new} ({self.new_spec.spec_id})"

    def switch(self) -> str:
        es_index.swap_alias(self.client, self.store.name, self.old, self.new)
        # The old index (and those it kept) stays for a rollback until drop_old: `forget` erases there too.
        earlier = (self.store._mapping(self.client, self.old).get("_meta") or {}).get("facebeam", {}).get("previous", [])
        try:
            self.store.write_meta(previous=[self.old, *earlier])
        except StoreError as e:
            log.warning("%s: a later `forget` will not reach %s until it is dropped (%s)", self.store.describe(),
                        self.old, e)
        return f"alias {self.store.name}: {self.old} -> {self.new} ({self.loading.target.count} docs)"

    def drop_old(self) -> str:
        self.client.indices.delete(index=self.old)
        return f"dropped {self.old}"

    def summary(self) -> dict:
        return {"old_index": self.old, "new_index": self.new, "doc_count": self.loading.target.count}


class _ReindexLoad(Load):
    def __init__(self, target, load, output, spec, old):
        self.target, self.load, self.output, self.spec, self.old = target, load, output, spec, old

    def attach(self, rows) -> None:
        from facebeam.transforms import es_load

        rows | "Load" >> es_load.LoadFaces(self.target, self.load, self.output, self.spec)

    def running(self):
        from facebeam.transforms import es_load

        return es_load.loading(self.target)

    def finish(self, result) -> dict:
        from facebeam.transforms import metrics

        counts = metrics.index_counts(metrics.read_counters(result))
        return {"doc_count": self.target.count, **{f"docs_{k}": v for k, v in counts.items()},
                "incomplete_note": f"the alias still points at {self.old}"}
