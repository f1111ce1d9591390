"""The store contract (tests/store_conformance.py) on every store, on real servers: Elasticsearch, the embedded
index, Redis, and the shards scanned exactly."""
import glob
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facebeam.pipelines import index
from facebeam.transforms import redis_store, stores
from facebeam.transforms.stores.elasticsearch import ElasticsearchStore, person_faces_index, persons_index
from facebeam.transforms.stores.embedded import EmbeddedStore
from facebeam.transforms.stores.exact import ShardsStore
from facebeam.transforms.stores.redis import RedisStore
from tests.es_fixtures import SESSION_HOME
from tests.helpers import drop_versions, job
from tests.store_conformance import AbstractStoreTests
from tests.test_verify import label_by_file

CONN = str(SESSION_HOME / "connection.json")
PHOTOS = 8


@pytest.fixture(scope="module")
def collection(sample_run, tmp_path_factory):
    """The faces of the first photos of the sample, each labeled with its photo's file name."""
    work = tmp_path_factory.mktemp("conformance")
    label_by_file(sample_run[0], str(work / "all"))
    keep = sorted({os.path.basename(r["image_path"]) for r in pq.read_table(str(work / "all" / "embeddings"))
                   .to_pylist()})[:PHOTOS]
    out = work / "shards"
    (out / "embeddings").mkdir(parents=True)
    rows = []
    for path in sorted(glob.glob(str(work / "all" / "embeddings" / "*.parquet"))):
        t = pq.read_table(path)
        mask = [os.path.basename(p) in keep for p in t.column("image_path").to_pylist()]
        t = t.filter(mask)
        if t.num_rows:
            pq.write_table(t, str(out / "embeddings" / os.path.basename(path)))
            rows += t.to_pylist()
    return str(out), rows


def vector_bytes(vectors) -> list:
    return [np.asarray(v, dtype="<f4").tobytes() for v in vectors]


def in_files(folder: str, needles) -> list:
    found = []
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            data = Path(path).read_bytes()
            found += [f"{os.path.relpath(path, folder)} holds {n[:16]!r}" for n in needles if n in data]
    return found


class TestEmbeddedStore(AbstractStoreTests):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, tmp_path_factory):
        return EmbeddedStore("faces", str(tmp_path_factory.mktemp("conformance-ann") / "faces"))

    @pytest.fixture(scope="class")
    @classmethod
    def load(cls, store, collection):
        return lambda: job(index, ["--shards", collection[0], "--store", f"local:{store.folder}"])

    @pytest.fixture(scope="class")
    @classmethod
    def traces(cls):
        def find(store, sha, face_ids, vectors):
            # The faiss file keeps vectors as float32; the metadata parquet is compressed, so read it as rows too.
            found = in_files(store.folder, [sha.encode(), *(f.encode() for f in face_ids), *vector_bytes(vectors)])
            for path in glob.glob(os.path.join(store.folder, "*.parquet")):
                for r in pq.read_table(path).to_pylist():
                    if r["image_sha256"] == sha or r["face_id"] in face_ids:
                        found.append(f"{os.path.basename(path)} row {r}")
            return found
        return find


class TestRedisStore(AbstractStoreTests):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, redis_home):
        home, _ = redis_home
        s = RedisStore(f"conformance-{uuid.uuid4().hex[:8]}", redis_store.RedisConn.resolve(
            conn_file=str(home / "connection.json")))
        yield s
        for key in s.client().scan_iter(redis_store.prefix(s.name) + "*"):
            s.client().delete(key)
        s.close()

    @pytest.fixture(scope="class")
    @classmethod
    def load(cls, store, collection, redis_home):
        home, _ = redis_home
        return lambda: job(index, ["--shards", collection[0], "--store", "redis", "--index", store.name,
                                   "--redis-conn", str(home / "connection.json")])

    @pytest.fixture(scope="class")
    @classmethod
    def traces(cls):
        def find(store, sha, face_ids, vectors):
            client, found = store.client(), []
            needles = [sha.encode(), *(f.encode() for f in face_ids), *vector_bytes(vectors)]
            for key in client.scan_iter(redis_store.prefix(store.name) + "*"):
                kind = client.type(key)
                values = ([key] + (list(client.hgetall(key).items()) if kind == b"hash" else
                                   list(client.smembers(key)) if kind == b"set" else [client.get(key) or b""]))
                blob = b"\0".join(b"\0".join(v) if isinstance(v, tuple) else v for v in values)
                found += [f"{key!r} holds {n[:16]!r}" for n in needles if n in blob]
            return found
        return find


class TestElasticsearchStore(AbstractStoreTests):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, es_conn, es_client):
        alias = f"conformance-{uuid.uuid4().hex[:8]}"
        yield ElasticsearchStore(alias, lambda: es_conn)
        drop_versions(es_client, alias)

    @pytest.fixture(scope="class")
    @classmethod
    def load(cls, store, collection):
        return lambda: job(index, ["--shards", collection[0], "--index", store.name, "--es-conn", CONN])

    @pytest.fixture(scope="class")
    @classmethod
    def traces(cls, es_client):
        def find(store, sha, face_ids, vectors):
            found = [h["_id"] for h in es_client.search(index=store.name, size=50, query={"bool": {"should": [
                {"term": {"image_sha256": sha}}, {"ids": {"values": sorted(face_ids)}}]}}).body["hits"]["hits"]]
            for side in (persons_index(store.name), person_faces_index(store.name)):  # the persons' side indices
                if es_client.indices.exists(index=side):
                    es_client.indices.refresh(index=side)
                    found += [f"{side} holds {h['_id']}" for h in es_client.search(index=side, size=50, query={
                        "bool": {"should": [{"ids": {"values": sorted(face_ids)}},
                                            {"terms": {"face_ids": sorted(face_ids)}}]}}).body["hits"]["hits"]]
            concrete = store.concrete()
            docs = es_client.indices.stats(index=concrete, metric="docs").body["indices"][concrete]["primaries"]["docs"]
            if docs["deleted"]:  # deleted docs stay in segment files until expunged
                found.append(f"{docs['deleted']} deleted doc(s) still in the segments of {concrete}")
            return found
        return find


class TestShardsStore(AbstractStoreTests):
    @pytest.fixture(scope="class")
    @classmethod
    def store(cls, tmp_path_factory):
        return ShardsStore(str(tmp_path_factory.mktemp("conformance-exact") / "shards"))

    @pytest.fixture(scope="class")
    @classmethod
    def load(cls, store, collection):
        def copy():  # the shards are this store: loading is what embed and run write; a replay writes the same files
            shutil.copytree(collection[0], store.folder, dirs_exist_ok=True)
        return copy

    @pytest.fixture(scope="class")
    @classmethod
    def traces(cls):
        def find(store, sha, face_ids, vectors):
            found = []
            for path in glob.glob(os.path.join(store.folder, "**", "*.parquet"), recursive=True):
                for r in pq.read_table(path).to_pylist():
                    if r.get("image_sha256") == sha or r.get("face_id") in face_ids:
                        found.append(f"{path} row {r.get('face_id')}")
            persons = os.path.join(store.folder, "persons.json")
            if os.path.exists(persons):
                found += [f"persons.json names {f}" for f in json.loads(Path(persons).read_text()) if f in face_ids]
            return found
        return find


def test_every_store_is_tested():
    """A new store module passes the suite or it is not a store: each maker has its class here."""
    tested = {TestEmbeddedStore: "local", TestRedisStore: "redis", TestElasticsearchStore: "es"}
    assert set(tested.values()) == set(stores.MAKERS) and TestShardsStore
