"""Persons and the search index: where a clustering reads its graph, and that index must hold the collection's spec.

Names reach the stores through the store contract (`stores.push_persons`, `set_persons`), never by
updating face documents in place (their vector is not in `_source`, so an update would drop it)."""
from __future__ import annotations

from facebeam.transforms import es_index
from facebeam.transforms.errors import UserError


def graph_source(store, spec) -> tuple:
    """Where the workers find the neighbours of each face in the store `cluster --index` names: (an Elasticsearch
    connection for their msearch, None) or (None, the embedded index's folder, which each memory-maps). The store
    must hold the shards' spec."""
    if store.kind == "es":
        es_index.open_alias(store.conn, store.name, spec)[0].close()
        return store.conn, None
    if not store.exists():
        raise UserError(f"no {store.describe()}: `facebeam index --shards DIR --store local` builds it")
    store.check(spec)
    return None, store.location()
