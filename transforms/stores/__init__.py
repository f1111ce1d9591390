"""Where faces are stored: one contract (`FaceStore`, stores/base.py), one module per store.

    elasticsearch.py  ElasticsearchStore   the versioned index behind an alias   --store es
    embedded.py       EmbeddedStore        the embedded HNSW index (ann.py)        --store local[:DIR]
    redis.py          RedisStore           labeled faces by identity (Redis)       --store redis
    exact.py          ShardsStore          the shards, scanned exactly             --exact --shards DIR

Commands choose a store once, here (`for_loading`, `for_search`, `for_verify`, `from_record`),
and call the interface; what a store cannot do it declares in `capabilities`. Without --store a
job uses Elasticsearch when a cluster is configured (flags, environment or the connection file)
and the embedded index otherwise, and says so. The embedded index of NAME lives in
`<FACEBEAM_HOME>/ann/NAME` unless `local:DIR` names the folder. A collection (shards folder)
records every store it was loaded into (stores/registry.py), so erasure reaches them all.
"""
from __future__ import annotations

import dataclasses
import logging

from facebeam.transforms.errors import UserError
from facebeam.transforms.home import elsewhere_hint, facebeam_home
from facebeam.transforms.stores.base import Capabilities, FaceStore, Load, Searcher, StoreError, split_filters

__all__ = ["KINDS", "Capabilities", "FaceStore", "Load", "Searcher", "StoreChoice", "StoreError", "ann_folder",
           "es_configured", "for_loading", "push_persons_to", "for_search", "for_verify", "from_record", "recorded_stores",
           "open_search", "push_persons"]
log = logging.getLogger(__name__)
KINDS = ("es", "local", "redis")


@dataclasses.dataclass(frozen=True)
class StoreChoice:
    """What the user asked for: kind None = automatic (Elasticsearch when configured, else local)."""

    kind: str | None = None
    folder: str | None = None  # local:DIR
    redis_url: str | None = None
    redis_conn: str | None = None

    @classmethod
    def parse(cls, text: str | None, redis_url=None, redis_conn=None, allowed=KINDS) -> StoreChoice:
        if text in (None, "", "auto"):
            return cls(None, None, redis_url, redis_conn)
        kind, _, folder = text.partition(":")
        if kind not in allowed or (folder and kind != "local"):
            raise UserError(f"--store must be one of {', '.join(k + ('[:DIR]' if k == 'local' else '') for k in allowed)}"
                            f", got {text!r}")
        return cls(kind, folder or None, redis_url, redis_conn)

    def redis(self):
        from facebeam.transforms.redis_store import RedisConn

        return RedisConn.resolve(self.redis_url, self.redis_conn)

    def given(self) -> bool:
        return self.kind is not None


def ann_folder(name: str) -> str:
    return str(facebeam_home() / "ann" / name)


def es_configured(connect) -> bool:
    """Is a cluster configured? `connect()` resolves the connection: EsNotConfigured when none is named; a
    cluster that is named but wrong (a missing --es-conn file or CA) raises, and never falls back."""
    from facebeam.transforms.es_conn import EsNotConfigured

    try:
        connect()
    except EsNotConfigured:
        return False
    return True


# The one place a --store word becomes a store (as fsspec's registry maps a protocol to its class).
def _es(choice, connect, name):
    from facebeam.transforms.stores.elasticsearch import ElasticsearchStore

    return ElasticsearchStore(name, connect)


def _local(choice, connect, name):
    from facebeam.transforms.stores.embedded import EmbeddedStore

    return EmbeddedStore(name, choice.folder or ann_folder(name))


def _redis(choice, connect, name):
    from facebeam.transforms.stores.redis import RedisStore

    return RedisStore(name, choice.redis())


MAKERS = {"es": _es, "local": _local, "redis": _redis}


def make(choice: StoreChoice, connect, name: str) -> FaceStore:
    return MAKERS[choice.kind](choice, connect, name)


def shards_store(folder: str) -> FaceStore:
    from facebeam.transforms.stores.exact import ShardsStore

    return ShardsStore(folder)


def for_loading(choice: StoreChoice, connect, name: str, auto: str = "local") -> FaceStore:
    """The store a load (run, index, reindex) uses; automatic: Elasticsearch when configured, else `auto` (logged)."""
    if not choice.given():
        kind = "es" if es_configured(connect) else auto
        choice = dataclasses.replace(choice, kind=kind)
        if kind != "es":
            store = make(choice, connect, name)
            log.info("no Elasticsearch configured: using the %s", store.describe())
            return store
    return make(choice, connect, name)


def for_verify(choice: StoreChoice, connect, name: str) -> FaceStore:
    """Verification: --store, else Elasticsearch when a cluster is configured, else Redis when one is, else the
    embedded index when one is built (the zero-server default of `run`)."""
    from facebeam.transforms.redis_store import RedisNotConfigured

    if choice.given():
        return make(choice, connect, name)
    if es_configured(connect):
        store = make(dataclasses.replace(choice, kind="es"), connect, name)
    else:
        try:
            store = make(dataclasses.replace(choice, kind="redis"), connect, name)
        except RedisNotConfigured as e:
            store = make(dataclasses.replace(choice, kind="local"), connect, name)
            if not store.exists():
                raise RedisNotConfigured(f"{e}; and the {store.describe()} is not built (`facebeam run --store local` "
                                         f"builds it){elsewhere_hint(store.folder)}") from None
    log.info("verifying on %s (no --store given)", store.describe())
    return store


def for_search(choice: StoreChoice | None, connect, name: str, shards: str = None, exact: bool = False) -> FaceStore:
    """The store `query`/`search` rank: --exact: the shards; --store S: that one; else Elasticsearch when
    configured, else the embedded index when one is built, else the shards (each logged)."""
    choice = choice or StoreChoice()
    if exact:
        if not shards:
            raise UserError("--exact needs --shards DIR")
        return shards_store(shards)
    if choice.given():
        store = make(choice, connect, name)
        if not store.capabilities.search:
            raise UserError(f"{store.describe()} {store.capabilities.lacks('search')}: use `facebeam verify`")
        return store
    if es_configured(connect):
        return make(dataclasses.replace(choice, kind="es"), connect, name)
    local = make(dataclasses.replace(choice, kind="local"), connect, name)
    if local.exists():
        log.info("no Elasticsearch configured: searching the %s (backend local)", local.describe())
        return local
    if shards:
        log.info("no Elasticsearch configured: searching the shards exactly")
        return shards_store(shards)
    from facebeam.transforms.es_conn import EsNotConfigured

    try:
        connect()  # raises the EsConfigError that says how to configure a cluster
    except EsNotConfigured as e:
        raise EsNotConfigured(f"nothing to search: the {local.describe()} is not built (`facebeam run` or `facebeam "
                              f"index` builds it), and {e}{elsewhere_hint(local.folder)}") from None
    raise UserError("no store to search")  # not reached: connect() raised


def _redis_at(rec, connect):
    from facebeam.transforms.redis_store import RedisConn
    from facebeam.transforms.stores.redis import RedisStore

    host, _, port = rec["location"].removeprefix("redis://").rpartition(":")
    return RedisStore(rec["name"], RedisConn(host=host, port=int(port), conn_file=rec.get("conn_file")))


# Reopening a record: Elasticsearch through today's connection (flags, environment or connection file), the
# embedded index at its folder, Redis at its recorded URL with its connection file (the secret stays there).
REOPEN = {"es": lambda rec, connect: _es(StoreChoice("es"), connect, rec["name"]),
          "local": lambda rec, connect: _local(StoreChoice("local", rec["location"]), connect, rec["name"]),
          "redis": _redis_at}


def from_record(rec: dict, connect) -> FaceStore:
    """A store the collection recorded (stores/registry.py), reopened."""
    if rec.get("kind") not in REOPEN:
        raise UserError(f"the collection lists a store of unknown kind {rec.get('kind')!r}")
    return REOPEN[rec["kind"]](rec, connect)


def recorded_stores(folder: str, connect, named: FaceStore | None = None) -> list:
    """Every store the collection recorded, plus `named` (the one --store/--index names), once each; then the shards
    (what `forget` erases, `calibrate` calibrates and `persons` names)."""
    from facebeam.transforms.stores import registry

    out, seen = [], set()
    for store in ([named] if named is not None else []) + [from_record(r, connect) for r in registry.recorded(folder)]:
        k = store.identity()
        if k not in seen:
            seen.add(k)
            out.append(store)
    out.append(shards_store(folder))
    return out


@dataclasses.dataclass
class SearchTarget:
    """A store opened for `query`/`search`, chosen once in the launcher (workers call `store.searcher()`).

    `where` describes it for summaries and logs; `threshold` is the same-person distance every verdict
    uses (--threshold, else the store's calibration, else the model's) and `threshold_from` says which.
    """

    store: FaceStore
    spec: object
    where: dict
    threshold: float
    threshold_from: str
    filters: tuple = ()  # as the store spells them: `--person angelina` is the store's `Angelina`

    @property
    def mode(self) -> str:
        return self.store.kind


def open_search(choice, connect, name: str, shards: str = None, exact: bool = False, spec_given=(),
                threshold=None, filters=()) -> SearchTarget:
    """The store to rank (for_search), its spec (which `spec_given` (field, value) pairs must match) and threshold.
    A `--person` among `filters` must name a person the store holds (a typo would only give empty results); its
    case need not match (`SearchTarget.filters` spell it as the store does)."""
    store = for_search(choice, connect, name, shards, exact)
    _, person = split_filters(filters)
    if person is not None:
        stored = store.person_named(person)
        if stored is None:
            raise UserError(f"--person {person!r}: no face in the {store.describe()} carries that name or person id "
                            "(`facebeam persons --clusters DIR list` shows the persons; `persons ... name ID NAME "
                            "--index INDEX` names them in a store)")
        filters = tuple((f, stored if f == "person" else v) for f, v in filters)
    spec = store.spec()
    if spec_given:
        dataclasses.replace(spec, **dict(spec_given)).require_same(spec, what=store.describe())
    t, source = store.threshold(spec, threshold)
    return SearchTarget(store, spec, store.where(), t, source, tuple(filters))


def push_persons_to(store: FaceStore, found: dict) -> int:
    """{face_id: (person_id, name)} onto one store (then closed); how many of its faces carry a person."""
    try:
        return store.set_persons(found)
    finally:
        store.close()


def push_persons(folder: str, connect, found: dict) -> list:
    """{face_id: (person_id, name)} (persons.lookup) onto every store the collection recorded and its shards;
    one line per store (a store that cannot be reached is said, and keeps what it had)."""
    lines = []
    for store in recorded_stores(folder, connect):
        try:
            lines.append(f"{store.describe()}: {store.set_persons(found)} face(s) carry a person")
        except UserError as e:
            lines.append(f"{store.describe()}: NOT updated ({e})")
        finally:
            store.close()
    return lines
