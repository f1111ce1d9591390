"""The contract every face store passes, written once (as fsspec's tests/abstract): a mixin of test methods.

A store's test class (tests/test_store_conformance.py) subclasses `AbstractStoreTests` and supplies
three class-scoped fixtures:

- `store`: an empty `FaceStore` of a unique name;
- `load`: a callable that loads the collection's shards into it (the way users do);
- `traces`: a callable (store, sha256, face_ids, vectors) -> what of those faces the store's own data
  still holds (keys, files, documents), [] when nothing.

`collection` (the module's fixture) is (shards folder, face rows): a few sample photos, each labeled
with its file name. The tests run in this order on one store; the erasure test comes last.
"""
import os
import shutil

import pytest

from facebeam.transforms import knn
from facebeam.transforms.spec import EmbeddingSpec, SpecError
from facebeam.transforms.stores import StoreError

SPEC = EmbeddingSpec()
OTHER = EmbeddingSpec(detect_max_side=320)


def by_image(rows) -> dict:
    out = {}
    for r in rows:
        out.setdefault(r["image_sha256"], []).append(r)
    return dict(sorted(out.items(), key=lambda kv: kv[1][0]["image_path"]))


class AbstractStoreTests:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def loaded(cls, load):
        load()

    def test_spec_is_refused_on_a_mismatch(self, store, collection):
        with pytest.raises(SpecError, match="embedding spec mismatch"):
            store.check(OTHER)
        store.check(SPEC)  # its own spec passes
        assert store.spec().spec_id == SPEC.spec_id

    def test_load_again_leaves_the_count_unchanged(self, store, load, collection):
        _, rows = collection
        first = store.count()
        assert first == len(rows)
        load()
        assert store.count() == first

    def test_every_face_finds_itself_first(self, store, collection):
        _, rows = collection
        if store.capabilities.search:
            searcher = store.searcher()
            try:
                hits = searcher.search(rows, knn.SearchSpec(k=1, num_candidates=50))
            finally:
                searcher.close()
            assert [h[0]["face_id"] for h in hits] == [r["face_id"] for r in rows]
            assert max(h[0]["distance"] for h in hits) < 1e-3
        else:  # the capability is declared, and the store says so instead of ranking
            with pytest.raises(StoreError, match="does not rank the whole collection"):
                store.searcher()
        for r in rows:  # every store verifies by identity
            face_id, distance, _ = store.closest(r["embedding"], r["label"])
            assert face_id == r["face_id"] and distance < 1e-3

    def test_a_label_filter_returns_only_that_label(self, store, collection):
        _, rows = collection
        images = list(by_image(rows).values())
        label, probe = images[0][0]["label"], images[1][0]
        mine = {r["face_id"] for r in images[0]}
        if store.capabilities.search:
            searcher = store.searcher()
            try:
                hits = searcher.search([probe], knn.SearchSpec(k=5, num_candidates=50, filters=(("label", label),)))[0]
            finally:
                searcher.close()
            assert hits and {h["label"] for h in hits} == {label} and {h["face_id"] for h in hits} <= mine
        face_id, _, _ = store.closest(probe["embedding"], label)
        assert face_id in mine

    @pytest.mark.parametrize("field", [f for f in knn.FILTER_FIELDS if f not in ("label", "person")])
    def test_every_filter_field_keeps_only_its_faces_on_every_store_that_ranks(self, store, collection, field):
        """`--filter FIELD=VALUE` means one thing on every store: its values as strings, from the command line."""
        if not store.capabilities.search:  # declared, and the store says so instead of ranking
            with pytest.raises(StoreError, match="does not rank the whole collection"):
                store.searcher()
            return
        _, rows = collection
        many = max(by_image(rows).values(), key=len)  # a photo with more than one face: face_index 1 exists
        value = str(many[-1][field])
        want = {r["face_id"] for r in rows if str(r[field]) == value}
        searcher = store.searcher()
        try:
            hits = searcher.search([rows[0]], knn.SearchSpec(k=len(rows), num_candidates=len(rows),
                                                             filters=((field, value),)))[0]
        finally:
            searcher.close()
        assert {h["face_id"] for h in hits} == want and len(hits) == len(want), (field, value)

    def test_a_store_loaded_after_calibrate_and_naming_takes_the_collections_metadata(self, store, collection,
                                                                                      tmp_path):
        """After every load (registry.carry_metadata): the calibration and persons' names kept with the shards
        reach a store that has none, so it judges and names as the collection does; a store's own are kept."""
        from facebeam.transforms.stores import registry
        from facebeam.transforms.stores.exact import ShardsStore

        folder, rows = collection
        kept = tmp_path / "shards"
        shutil.copytree(folder, kept)
        ShardsStore(str(kept)).set_calibration({"threshold": 0.5151, "spec_id": SPEC.spec_id, "pairs": 3})
        assert ShardsStore(str(kept)).set_persons({rows[0]["face_id"]: ("p-carried", "Katherine Johnson")}) == 1
        assert store.calibration() is None and not store.has_persons()
        try:
            assert registry.carry_metadata(str(kept), store) == ["calibration", "persons"]
            assert store.threshold(SPEC)[0] == 0.5151
            assert store.has_persons() and store.person_named("Katherine Johnson") == "Katherine Johnson"
            assert store.person_named("p-carried") == "p-carried"
            assert registry.carry_metadata(str(kept), store) == []  # it has its own now: kept
        finally:
            store.write_meta(calibration=None)
            store.set_persons({})
        assert store.calibration() is None and not store.has_persons()

    def test_the_calibrated_threshold_is_used(self, store):
        assert store.threshold(SPEC) == (SPEC.threshold, f"{SPEC.model}/{SPEC.metric} default")
        store.set_calibration({"threshold": 0.4242, "spec_id": SPEC.spec_id, "pairs": 3})
        t, source = store.threshold(SPEC)
        assert t == 0.4242 and source.startswith("calibration in ") and store.threshold_place() in source
        assert store.threshold(SPEC, 0.3) == (0.3, "--threshold")
        assert store.calibration()["threshold"] == 0.4242
        store.set_calibration({"threshold": 0.1, "spec_id": OTHER.spec_id})  # fitted for another spec: ignored
        assert store.threshold(SPEC)[0] == SPEC.threshold

    def test_persons_names_are_visible(self, store, collection):
        _, rows = collection
        faces = list(by_image(rows).values())[1]
        named = {r["face_id"]: ("p-conformance", "Ada Lovelace") for r in faces}
        assert store.set_persons(named) == len(named)
        assert {f: tuple(v) for f, v in store.persons().items()} == named
        if store.capabilities.search:
            searcher = store.searcher()
            try:
                hits = searcher.search(faces, knn.SearchSpec(k=1, num_candidates=50))
                only = searcher.search([rows[0]], knn.SearchSpec(k=5, num_candidates=50,
                                                                 filters=(("person", "Ada Lovelace"),)))[0]
            finally:
                searcher.close()
            assert [(h[0]["person"], h[0]["person_id"]) for h in hits] == [("Ada Lovelace", "p-conformance")] * len(faces)
            assert only and {h["face_id"] for h in only} <= set(named)

    def test_person_and_path_prefix_filters_return_only_matching_faces_and_k_of_them(self, store, collection):
        _, rows = collection
        images = list(by_image(rows).values())
        named = {r["face_id"]: ("p-grace", "Grace Hopper") for faces in images[:3] for r in faces}
        assert len(named) >= 3 and store.set_persons(named) == len(named)
        # what `--person` checks first: a name or id a face carries, whatever the case it is typed in
        assert store.person_named("Grace Hopper") == "Grace Hopper" and store.person_named("p-grace") == "p-grace"
        assert store.person_named("grace HOPPER") == "Grace Hopper" and store.person_named("P-GRACE") == "p-grace"
        assert store.person_named("Grace Hoper") is None and store.person_named("Grace") is None
        probe = images[3][0]
        folder = os.path.dirname(images[0][0]["image_path"])
        prefix = os.path.join(folder, os.path.basename(images[4][0]["image_path"])[:1])
        under = {r["face_id"] for r in rows if r["image_path"].startswith(prefix)}
        assert under and len(under) < len(rows)
        if not store.capabilities.search:
            return
        searcher = store.searcher()
        try:
            def search(k, **kw):
                return searcher.search([probe], knn.SearchSpec(k=k, num_candidates=50, **kw))[0]

            for k in (2, len(named), len(named) + 3):  # k hits while k exist, then every one there is
                by_name = search(k, filters=(("person", "Grace Hopper"),))
                by_id = search(k, filters=(("person", "p-grace"),))
                assert [h["face_id"] for h in by_name] == [h["face_id"] for h in by_id]
                assert len(by_name) == min(k, len(named)) and {h["face_id"] for h in by_name} <= set(named)
                assert {(h["person"], h["person_id"]) for h in by_name + by_id} == {("Grace Hopper", "p-grace")}
                prefixed = search(k, path_prefix=prefix)
                assert len(prefixed) == min(k, len(under)) and {h["face_id"] for h in prefixed} <= under
                assert all(h["image_path"].startswith(prefix) for h in prefixed)
            both = search(len(rows), path_prefix=prefix, filters=(("person", "Grace Hopper"),))
            assert {h["face_id"] for h in both} == under & set(named)
            assert search(3, filters=(("person", "nobody by this name"),)) == []
            assert search(3, path_prefix=os.path.join(folder, "no such photo")) == []
        finally:
            searcher.close()

    def test_a_name_two_persons_share_finds_both_each_hit_with_its_own_id(self, store, collection):
        _, rows = collection
        images = list(by_image(rows).values())
        named = {r["face_id"]: ("p-ada", "Ada") for r in images[0]}
        named.update({r["face_id"]: ("p-ada-2", "Ada") for r in images[1]})
        assert store.set_persons(named) == len(named)
        if not store.capabilities.search:
            return
        searcher = store.searcher()
        try:
            hits = searcher.search([images[2][0]], knn.SearchSpec(k=len(named), num_candidates=50,
                                                                  filters=(("person", "Ada"),)))[0]
            one = searcher.search([images[2][0]], knn.SearchSpec(k=len(named), num_candidates=50,
                                                                filters=(("person", "p-ada-2"),)))[0]
        finally:
            searcher.close()
        assert {h["face_id"]: (h["person_id"], h["person"]) for h in hits} == named
        assert {h["face_id"]: (h["person_id"], h["person"]) for h in one} == {
            f: v for f, v in named.items() if v[0] == "p-ada-2"}

    def test_the_outputs_made_from_it_are_recorded_for_erasure(self, store, collection, tmp_path):
        """`forget` finds a query's results or a cluster folder through the store they copy faces of, and the other
        collections loaded into it (copies.py)."""
        from facebeam.transforms import copies

        before = store.copies()
        loaded_from = [c["output"] for c in before if c["kind"] == copies.COLLECTION]
        # every load records its collection (the shards store is its collection: nothing to record)
        assert loaded_from == ([] if store.kind == "exact" else [os.path.abspath(collection[0])])
        first, second = tmp_path / "q1", tmp_path / "q2"
        first.mkdir(), second.mkdir()
        try:
            assert copies.remember(store, copies.query_copy(str(first), "parquet", None, SPEC, 0.6))
            assert copies.remember(store, copies.query_copy(str(second), "jsonl", str(second / "r.html"), SPEC, 0.5))
            assert copies.remember(store, copies.query_copy(str(first), "jsonl", None, SPEC, 0.6))  # the same folder
            kept = {c["output"]: c for c in store.copies()}
            assert sorted(kept) == sorted([str(first), str(second), *loaded_from])
            assert kept[str(first)]["format"] == "jsonl"
            assert EmbeddingSpec.from_dict(kept[str(second)]["spec"]) == SPEC and kept[str(second)]["threshold"] == 0.5
            second.rmdir()  # an output the user deleted is dropped at the next record
            assert copies.remember(store, copies.query_copy(str(first), "parquet", None, SPEC, 0.6))
            assert sorted(c["output"] for c in store.copies()) == sorted([str(first), *loaded_from])
        finally:
            store.write_meta(copies=before or None)
        assert store.copies() == before

    def test_jobs_recording_outputs_at_once_all_land(self, store, tmp_path):
        """Eight query jobs finish at the same moment, each recording its output: every record lands
        (`FaceStore.update_copies` is one atomic step), so `forget` reaches every output. A `forget` that drops a
        deleted output keeps the records added meanwhile."""
        from concurrent.futures import ThreadPoolExecutor

        from facebeam.transforms import copies

        before = store.copies()
        outputs = [tmp_path / f"q{i}" for i in range(8)]
        for o in outputs:
            o.mkdir()
        try:
            with ThreadPoolExecutor(len(outputs)) as pool:
                done = list(pool.map(lambda o: copies.remember(store, copies.query_copy(str(o), "parquet", None, SPEC,
                                                                                        0.6)), outputs))
            assert done == [True] * len(outputs)
            recorded = [c["output"] for c in store.copies()]
            assert sorted(recorded) == sorted([c["output"] for c in before] + [str(o) for o in outputs])
            gone = {str(outputs[0])}
            store.update_copies(lambda now: [c for c in now if c["output"] not in gone])
            assert sorted(c["output"] for c in store.copies()) == sorted(set(recorded) - gone)
        finally:
            store.write_meta(copies=before or None)
        assert store.copies() == before

    def test_a_photo_that_moved_is_found_at_its_new_path(self, store, collection):
        """`relocate` (moves.py): a moved photo's faces name its new path, in searches and path filters; the vectors and
        the count stay, and a repeat changes nothing."""
        _, rows = collection
        faces = list(by_image(rows).values())[1]
        moved = [{**r, "image_path": f"/moved/away/{os.path.basename(r['image_path'])}"} for r in faces]

        def top(probes, **kw):
            searcher = store.searcher()
            try:
                return searcher.search(probes, knn.SearchSpec(k=len(rows), num_candidates=50, **kw))
            finally:
                searcher.close()

        before = store.count()
        try:
            assert store.relocate(moved) == (len(faces) if store.capabilities.paths else 0)
            assert store.relocate(moved) == 0 and store.count() == before
            if store.capabilities.search:
                assert [hs[0]["image_path"] for hs in top(faces)] == [m["image_path"] for m in moved]
                assert [hs[0]["distance"] < 1e-3 for hs in top(faces)] == [True] * len(faces)
                assert {h["face_id"] for h in top(faces[:1], path_prefix="/moved/away/")[0]} == {
                    r["face_id"] for r in faces}
            for r in faces:
                assert store.closest(r["embedding"], r["label"])[0] == r["face_id"]
        finally:
            store.relocate(faces)  # back where the collection has it
        if store.capabilities.search:
            assert [hs[0]["image_path"] for hs in top(faces)] == [r["image_path"] for r in faces]
            assert top(faces[:1], path_prefix="/moved/away/") == [[]]

    def test_erasure_leaves_no_trace(self, store, collection, traces):
        _, rows = collection
        sha, faces = next(iter(by_image(rows).items()))
        ids = {r["face_id"] for r in faces}
        before = store.count()
        assert store.remove({sha}, dry_run=True) == len(faces) and store.count() == before
        assert store.remove({sha}) == len(faces)
        assert store.count() == before - len(faces)
        if store.capabilities.search:
            searcher = store.searcher()
            try:
                hits = searcher.search(faces, knn.SearchSpec(k=5, num_candidates=50))
            finally:
                searcher.close()
            assert not {h["face_id"] for hs in hits for h in hs} & ids
        assert store.closest(faces[0]["embedding"], faces[0]["label"])[0] is None  # that label had only this photo
        left = traces(store, sha, ids, [r["embedding"] for r in faces])
        assert left == [], left
        assert store.remove({sha}) == 0
