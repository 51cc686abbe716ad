"""The in-memory vector index (issue #24.6): the same answers as sqlite-vec, kept fresh from the store.

Real store files and real sqlite-vec; the vectors are random unit vectors of the store's
dimension (wordllama's 256), added through :meth:`MemoryStore.add_embedded`, so both paths
search exactly the same data. Another connection writing (a second process's view of the
file) must be seen by the next search.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from goatclaw.memory import index as index_module
from goatclaw.memory import store as memory_store
from goatclaw.memory.embedders import WordLlamaEmbedder, normalise
from goatclaw.memory.index import PREFILTER_MIN
from goatclaw.memory.store import KINDS, MemoryStore, open_memory
from goatclaw.store import Store

DIM = WordLlamaEmbedder.dim


def _vectors(n: int, seed: int) -> np.ndarray:
    return normalise(np.random.default_rng(seed).standard_normal((n, DIM))).astype(np.float32)


def _items(n: int, start: int = 0) -> list[tuple[str, str, dict[str, str]]]:
    return [(f"memory {start + i}", KINDS[(start + i) % len(KINDS)], {"task": f"t{(start + i) % 7}"})
            for i in range(n)]


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "store.db"
    with open_memory(path, WordLlamaEmbedder()) as mem:
        mem.add_embedded(_items(3000), _vectors(3000, 1), merge_threshold=None)
    yield path
    memory_store._INDEXES.pop(str(path), None)
    memory_store._SEARCHES.pop(str(path), None)


def _both(path: Path) -> tuple[Store, MemoryStore, Store, MemoryStore]:
    a, b = Store.open(path), Store.open(path)
    return a, MemoryStore(a, WordLlamaEmbedder(), index=False), b, MemoryStore(b, WordLlamaEmbedder(), index=True)


@pytest.mark.parametrize("how", [{}, {"kind": "failure"}, {"filters": {"task": "t3"}}, {"min_score": 0.1},
                                 {"exclude": "first"}])
def test_the_index_answers_what_sqlite_vec_answers(db_path: Path, how: dict) -> None:
    a, vec, b, held = _both(db_path)
    try:
        for q in _vectors(20, 2):
            args = dict(how)
            if args.get("exclude") == "first":
                args["exclude"] = [vec.search_vector(q, k=1)[0].id]
            want = vec.search_vector(q, k=10, **args)
            got = held.search_vector(q, k=10, **args)
            assert [h.id for h in got] == [h.id for h in want]
            assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-5)
            assert all(not how.get("kind") or h.kind == how["kind"] for h in got)
    finally:
        a.close()
        b.close()


def test_what_another_connection_adds_removes_or_reembeds_is_seen_by_the_next_search(db_path: Path) -> None:
    a, writer, b, held = _both(db_path)
    try:
        probe = _vectors(1, 9)[0]
        before = held.search_vector(probe, k=1)[0]
        assert before.score < 0.5
        [added] = writer.add_embedded([("the probe", "note", {})], probe[None, :], merge_threshold=None)
        first = held.search_vector(probe, k=1)[0]
        assert first.id == added.id and first.score == pytest.approx(1.0, abs=1e-5)
        assert writer.forget(added.id) == 1
        assert held.search_vector(probe, k=1)[0].id == before.id
        original = _vectors(3000, 1)
        fifth = held.search_vector(-original[5], k=1)[0]
        assert fifth.text != "memory 5"  # -v5 is as far from memory 5 as a vector can be
        writer.reembed(Flipped(original))  # every vector replaced by its opposite: the held matrix is read again
        assert held.search_vector(-original[5], k=1)[0].text == "memory 5"
    finally:
        a.close()
        b.close()


class Flipped:
    """Another model as far as the store knows: each memory's vector turned to its opposite."""

    name = "flipped"
    dim = DIM

    def __init__(self, original: np.ndarray) -> None:
        self.original = original

    def embed(self, texts: list[str]) -> np.ndarray:
        return -self.original[[int(t.split()[-1]) for t in texts]]


def test_a_store_searched_often_moves_to_the_index_by_itself(db_path: Path) -> None:
    with Store.open(db_path) as s:
        mem = MemoryStore(s, WordLlamaEmbedder())
        q = _vectors(1, 3)[0]
        for _ in range(memory_store.INDEX_AFTER):
            mem.search_vector(q, k=3)
        assert str(db_path) not in memory_store._INDEXES  # a one-off command never reads every vector
        mem.search_vector(q, k=3)
        held = memory_store._INDEXES[str(db_path)]
        assert len(held) == 3000


def _clustered(n: int, seed: int) -> np.ndarray:
    """Vectors whose energy lies in a few directions, as real embeddings' does (random ones spread it out)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((DIM, 24)))[0].T  # 24 orthonormal directions
    return normalise(rng.standard_normal((n, 24)) @ basis + 0.01 * rng.standard_normal((n, DIM))).astype(np.float32)


@pytest.mark.parametrize(("make", "prefiltered"), [(_clustered, True), (_vectors, False)])
def test_past_the_prefilter_size_the_index_keeps_recall_and_random_vectors_are_scanned_exactly(
        tmp_path: Path, make, prefiltered: bool) -> None:
    n = PREFILTER_MIN + 5000
    vectors = make(n, 4)
    path = tmp_path / "big.db"
    with open_memory(path, WordLlamaEmbedder()) as mem:
        mem.add_embedded(_items(n), vectors, merge_threshold=None)
        held = MemoryStore(mem.store, WordLlamaEmbedder(), index=True)
        queries = make(50, 5)
        found = 0
        for q in queries:
            tenth = float(np.partition(vectors @ q, -10)[-10])
            hits = held.search_vector(q, k=10)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            found += sum(h.score >= tenth - 1e-5 for h in hits)
        index = memory_store._INDEXES.pop(str(path))
        memory_store._SEARCHES.pop(str(path), None)
    assert (index.basis is not None) is prefiltered
    assert found / (10 * len(queries)) >= 0.99



@pytest.mark.parametrize(("make", "projected"), [(_clustered, True), (_vectors, False)])
def test_past_the_quantise_size_the_prefilter_scans_int8_or_sign_codes_and_keeps_recall(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, projected: bool) -> None:
    monkeypatch.setattr(index_module, "QUANTISE_MIN", PREFILTER_MIN)  # 200k real vectors would make a slow test
    n = PREFILTER_MIN + 5000
    drawn = make(n + 45, 6)  # one draw: rows added later and queries come from the same distribution
    vectors, extra, queries = drawn[:n], drawn[n:n + 5], drawn[n + 5:]
    kinds = np.array([KINDS[i % len(KINDS)] for i in range(n)])
    path = tmp_path / "big.db"
    with open_memory(path, WordLlamaEmbedder()) as mem:
        mem.add_embedded(_items(n), vectors, merge_threshold=None)
        held = MemoryStore(mem.store, WordLlamaEmbedder(), index=True)
        exact = MemoryStore(mem.store, WordLlamaEmbedder(), index=False)
        try:
            found = found_kind = 0
            for q in queries:
                scores = vectors @ q
                tenth = float(np.partition(scores, -10)[-10])
                found += sum(h.score >= tenth - 1e-5 for h in held.search_vector(q, k=10))
                tenth = float(np.partition(scores[kinds == "failure"], -10)[-10])
                hits = held.search_vector(q, k=10, kind="failure")
                assert len(hits) == 10 and {h.kind for h in hits} == {"failure"}
                found_kind += sum(h.score >= tenth - 1e-5 for h in hits)
            index = memory_store._INDEXES[str(path)]
            assert (index.basis is not None) is projected
            if projected:  # the projection held as int8 codes, in place of its float32 copy
                assert index.scale is not None and index.centre is None and not index.projected.size
                assert index.quantised.shape == (n, index.basis.shape[1])
            else:  # energy spread out: two bit planes of signs, 32 bytes each a row at 256 dimensions
                assert index.scale is None and index.centre is not None and not index.quantised.size
                assert index.signs.shape == (2, n, DIM // 64) and index.signs.dtype == np.uint64
            assert found / (10 * len(queries)) >= 0.99 and found_kind / (10 * len(queries)) >= 0.99
            # rows added later are coded with the fitted scale and found at once
            mem.add_embedded(_items(5, start=n), extra, merge_threshold=None)
            for v in extra:
                top = held.search_vector(v, k=1)
                assert top and top[0].text == exact.search_vector(v, k=1)[0].text and top[0].score > 0.999
            assert (len(index.quantised) if projected else index.signs.shape[1]) == len(index.ids) == n + 5
        finally:
            memory_store._INDEXES.pop(str(path), None)
            memory_store._SEARCHES.pop(str(path), None)


class Sized:
    """An embedder of another dimension as far as the store knows (only pre-computed vectors are added)."""

    name = "sized"

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def embed(self, texts: list[str]) -> np.ndarray:
        raise AssertionError("the test adds vectors already embedded")


@pytest.mark.parametrize(("dim", "offset"), [(100, 2.0), (384, 0.0)])
def test_sign_codes_keep_recall_at_other_dimensions_and_off_centre(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dim: int, offset: float) -> None:
    # 100 bits pad the words with zeros, 384 need two groups of four words; vectors sharing a common component
    # (offset) would all carry the same signs were the codes not taken about the sample's mean
    monkeypatch.setattr(index_module, "QUANTISE_MIN", PREFILTER_MIN)
    n = PREFILTER_MIN + 5000
    rng = np.random.default_rng(7)
    common = normalise(rng.standard_normal((1, dim)))[0]
    drawn = normalise(rng.standard_normal((n + 30, dim)) / np.sqrt(dim) + offset * common).astype(np.float32)
    vectors, queries = drawn[:n], drawn[n:]
    path = tmp_path / "sized.db"
    with open_memory(path, Sized(dim)) as mem:
        mem.add_embedded(_items(n), vectors, merge_threshold=None)
        held = MemoryStore(mem.store, Sized(dim), index=True)
        try:
            found = 0
            for q in queries:
                tenth = float(np.partition(vectors @ q, -10)[-10])
                hits = held.search_vector(q, k=10)
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
                found += sum(h.score >= tenth - 1e-5 for h in hits)
            index = memory_store._INDEXES[str(path)]
            assert index.basis is None and index.centre is not None
            assert index.signs.shape == (2, n, -(-dim // 256) * 4)
            assert found / (10 * len(queries)) >= 0.99
        finally:
            memory_store._INDEXES.pop(str(path), None)
            memory_store._SEARCHES.pop(str(path), None)
