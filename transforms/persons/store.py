"""Persons and the search index: the index a clustering reads must hold the collection's spec.

Names reach the stores through the store contract (`stores.push_persons`, `set_persons`), never by
updating face documents in place (their vector is not in `_source`, so an update would drop it)."""
from __future__ import annotations

from facebeam.transforms import es_index


def check_index(conn, alias: str, spec) -> None:
    es_index.open_alias(conn, alias, spec)[0].close()
