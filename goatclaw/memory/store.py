"""The vector store: memories in the store file, their vectors in a sqlite-vec ``vec0`` table.

Rows live in ``memories`` (created by the store's ``005_memory`` migration); vectors in
``memory_vectors`` (a ``vec0`` virtual table keyed by the memory's id), created the first
time something is embedded, with the dimension of the embedder in use. ``memory_meta``
records that embedder's name and dimension: a store embedded by one model refuses
another (``reembed`` converts it) so that vectors of two models are never compared.

Vectors are unit length, so sqlite-vec's L2 distance ranks exactly like cosine; the
score reported is the cosine similarity ``1 - d²/2``. This is the only module that
imports ``sqlite_vec``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import sqlite_vec

from goatclaw.errors import GoatclawError, StoreError
from goatclaw.memory.embedders import Embedder, embedder_for
from goatclaw.memory.index import ADDED, REMOVED, VectorIndex, bump
from goatclaw.store import Store

__all__ = ["KINDS", "MERGE_THRESHOLD", "Hit", "Memory", "MemoryStore", "Pattern", "open_memory"]

KINDS = ("run", "output", "failure", "fix", "note", "trajectory")
#: Similarity at or above which a new memory counts as a repeat of an old one.
MERGE_THRESHOLD = 0.95
#: What a memory is worth when ``max_memories`` forces some out (times its count).
_VALUE = {"fix": 4, "failure": 3, "note": 3, "run": 1, "output": 1}
_VEC_K_MAX = 4096  # sqlite-vec's largest k
#: Searches of one store in one process after which its vectors are held in memory (:mod:`.index`): a
#: one-off command answers from sqlite-vec without reading every vector; a long-lived process stops scanning.
#: Reading 100k vectors costs about as much as 60 sqlite-vec searches (benchmarks/memory.py), so the switch
#: pays for itself once that many were made.
INDEX_AFTER = 64
_INDEXES: dict[str, VectorIndex] = {}
_SEARCHES: dict[str, int] = {}
#: Metadata keys that must agree for two memories to be merged into one.
_SAME = ("pipeline", "task")


@dataclass(frozen=True)
class Memory:
    """One remembered thing: ``kind`` (run, output, failure, fix, note), text and metadata.

    ``count`` is how many times it was seen (near-duplicates merge into one memory);
    ``created_at`` and ``last_seen`` are Unix times. ``origins`` are the untrusted tasks
    (``llm``, ``http``, …) whose data the stored text came from: a search that finds it is
    untrusted output (docs/security.md).
    """

    id: int
    kind: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    created_at: float = 0.0
    last_seen: float = 0.0
    origins: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Hit(Memory):
    """A memory found by a search, with its cosine similarity ``score`` (1 is identical)."""

    score: float = 0.0


@dataclass(frozen=True)
class Pattern:
    """Memories that say the same thing in other words: a recurring failure, fix or note."""

    example: str
    count: int
    memories: int
    first_seen: float
    last_seen: float
    tasks: list[str]
    error_classes: list[str]
    fixed: int
    ids: list[int]

    @classmethod
    def of(cls, members: Sequence[Memory]) -> Pattern:
        """The pattern of a group (its first member is the example)."""
        meta = [m.metadata for m in members]
        return cls(
            example=members[0].text,
            count=sum(m.count for m in members),
            memories=len(members),
            first_seen=min(m.created_at for m in members),
            last_seen=max(m.last_seen for m in members),
            tasks=sorted({f"{d.get('pipeline')}.{d.get('task')}" for d in meta if d.get("task")}),
            error_classes=sorted({str(d["error_class"]) for d in meta if d.get("error_class")}),
            fixed=sum(1 for d in meta if d.get("fixed")),
            ids=[m.id for m in members],
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class MemoryStore:
    """Semantic memory on an open :class:`~goatclaw.store.Store`.

    The embedder is only loaded when something must be embedded (``add``, ``search``);
    listing, forgetting and stats never load it.
    """

    def __init__(self, store: Store, embedder: Embedder | str | None = None, *, index: bool | None = None) -> None:
        self.store = store
        self.db = store.db
        #: ``True``: search the in-memory index at once; ``False``: always sqlite-vec; ``None``: the index after
        #: :data:`INDEX_AFTER` searches of this store in this process.
        self.index = index
        self._embedder_ref = embedder
        self._embedder: Embedder | None = embedder if not isinstance(embedder, str | None) else None
        self._checked = False
        _load_vec(self.db)

    # -- the embedder and its guard ----------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        """The embedder in use (loaded on first use)."""
        if self._embedder is None:
            ref = self._embedder_ref if isinstance(self._embedder_ref, str) else None
            self._embedder = embedder_for(ref or self.recorded()[0])
        return self._embedder

    def recorded(self) -> tuple[str | None, int | None]:
        """The embedder name and dimension the stored vectors were made with (None before any)."""
        meta = dict(self.db.execute("SELECT key, value FROM memory_meta").fetchall())
        return meta.get("embedder"), int(meta["dim"]) if "dim" in meta else None

    def _vectors_ready(self) -> Embedder:
        """The embedder, after checking it matches the stored vectors (creating the table at first use)."""
        emb = self.embedder
        if self._checked:
            return emb
        name, dim = self.recorded()
        if name is None:
            with self.store.transaction() as db:
                _record(db, emb)
        elif name != emb.name or dim != emb.dim:
            raise StoreError(f"the memory in {self.store.path} was embedded with '{name}' ({dim} dims), not "
                             f"'{emb.name}' ({emb.dim} dims); vectors of two models cannot be compared: run "
                             f"'goatclaw memory reembed' to convert {self.count()} memories, or switch back")
        self._checked = True
        return emb

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` from the checked embedder."""
        return self._vectors_ready().embed(texts)

    # -- writing -----------------------------------------------------------------------

    def add(self, text: str, kind: str = "note", metadata: Mapping[str, Any] | None = None, *,
            merge_threshold: float | None = MERGE_THRESHOLD, at: float | None = None,
            origins: Iterable[str] = ()) -> Memory:
        """Remember ``text``; a near-duplicate of the same kind (and pipeline/task) is counted instead.

        ``origins``: the untrusted tasks the text came from (a merge keeps both memories' origins).
        Returns the memory written or the one it merged into.
        """
        return self.add_many([(text, kind, metadata or {})], merge_threshold=merge_threshold, at=at,
                             origins=origins)[0]

    def add_many(self, items: Sequence[tuple[str, str, Mapping[str, Any]]], *,
                 merge_threshold: float | None = MERGE_THRESHOLD, at: float | None = None,
                 origins: Iterable[str] = (), each: Sequence[Iterable[str]] | None = None) -> list[Memory]:
        """Remember several ``(text, kind, metadata)`` at once (one embedding batch, one transaction).

        ``origins`` apply to every item; ``each`` gives every item its own as well.
        """
        for _, kind, _ in items:
            _check_kind(kind)
        return self.add_embedded(items, self.embed([text for text, _, _ in items]), merge_threshold=merge_threshold,
                                 at=at, origins=origins, each=each)

    def add_embedded(self, items: Sequence[tuple[str, str, Mapping[str, Any]]], vectors: np.ndarray, *,
                     merge_threshold: float | None = MERGE_THRESHOLD, at: float | None = None,
                     origins: Iterable[str] = (), each: Sequence[Iterable[str]] | None = None) -> list[Memory]:
        """Like :meth:`add_many` with the vectors already made by this store's embedder (imports, benchmarks)."""
        emb = self._vectors_ready()
        if len(vectors) != len(items) or (len(vectors) and np.shape(vectors)[1] != emb.dim):
            raise GoatclawError(f"add_embedded: expected {len(items)} vectors of {emb.dim} dims, "
                                f"got shape {np.shape(vectors)}")
        for _, kind, _ in items:
            _check_kind(kind)
        now = time.time() if at is None else at
        common = set(origins)
        mine = [sorted(common | set(o)) for o in each] if each is not None else [sorted(common)] * len(items)
        out: list[Memory] = []
        with self.store.transaction() as db:
            for (text, kind, meta), vec, came in zip(items, vectors, mine, strict=True):
                same = self._duplicate(vec, kind, meta, merge_threshold) if merge_threshold is not None else None
                out.append(self._merge_into(db, same, meta, now, origins=came) if same
                           else self._insert(db, text, kind, meta, vec, now, came))
        return out

    def _duplicate(self, vec: np.ndarray, kind: str, meta: Mapping[str, Any], threshold: float) -> Hit | None:
        for hit in self.search_vector(vec, k=5, kind=kind, min_score=threshold):
            if all(hit.metadata.get(key) == meta.get(key) for key in _SAME):
                return hit
        return None

    def _insert(self, db: Any, text: str, kind: str, meta: Mapping[str, Any], vec: np.ndarray,
                now: float, origins: list[str]) -> Memory:
        cur = db.execute("INSERT INTO memories (kind, text, metadata, count, created_at, last_seen, origins) "
                         "VALUES (?,?,?,1,?,?,?)", (kind, text, json.dumps(meta, default=str), now, now,
                                                    json.dumps(origins)))
        mid = int(cur.lastrowid)
        db.execute("INSERT INTO memory_vectors (rowid, embedding, kind) VALUES (?,?,?)", (mid, vec.tobytes(), kind))
        bump(db, ADDED)
        return Memory(mid, kind, text, dict(meta), 1, now, now, list(origins))

    def _merge_into(self, db: Any, old: Memory, meta: Mapping[str, Any], now: float, count: int = 1,
                    origins: Iterable[str] = ()) -> Memory:
        merged = _merged_meta(old.metadata, meta)
        came = sorted({*old.origins, *origins})  # once untrusted, a memory stays so
        db.execute("UPDATE memories SET count = count + ?, last_seen = MAX(last_seen, ?), metadata = ?, origins = ? "
                   "WHERE id = ?", (count, now, json.dumps(merged, default=str), json.dumps(came), old.id))
        return Memory(old.id, old.kind, old.text, merged, old.count + count, old.created_at, max(old.last_seen, now),
                      came)

    def forget(self, memory_id: int | None = None, *, kind: str | None = None,
               filters: Mapping[str, Any] | None = None) -> int:
        """Delete one memory by id, or every memory of ``kind`` / matching ``filters``; how many."""
        if memory_id is None and kind is None and not filters:
            raise GoatclawError("forget needs a memory id, a kind or filters (refusing to forget everything)")
        where, args = _where(memory_id, kind, filters)
        with self.store.transaction() as db:
            ids = [r[0] for r in db.execute(f"SELECT id FROM memories{where}", args)]
            self._delete(db, ids)
        return len(ids)

    def _delete(self, db: Any, ids: Sequence[int]) -> None:
        has_vectors = self.recorded()[0] is not None
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            db.execute(f"DELETE FROM memories WHERE id IN ({marks})", chunk)
            if has_vectors:
                db.execute(f"DELETE FROM memory_vectors WHERE rowid IN ({marks})", chunk)
                bump(db, REMOVED)

    # -- reading -----------------------------------------------------------------------

    def search(self, query: str, *, k: int = 10, kind: str | None = None, filters: Mapping[str, Any] | None = None,
               min_score: float | None = None) -> list[Hit]:
        """The ``k`` memories most similar to ``query``, best first (optionally of one kind, matching filters)."""
        return self.search_vector(self.embed([query])[0], k=k, kind=kind, filters=filters, min_score=min_score)

    def search_vector(self, vector: np.ndarray, *, k: int = 10, kind: str | None = None,
                      filters: Mapping[str, Any] | None = None, min_score: float | None = None,
                      exclude: Sequence[int] = ()) -> list[Hit]:
        """Like :meth:`search` for a vector already embedded (unit length, the store's dimension)."""
        if kind is not None:
            _check_kind(kind)
        if self.recorded()[0] is None or k <= 0:
            return []
        # Metadata filters apply after the nearest-neighbour step, so ask for more neighbours.
        fetch = k + len(exclude) if not filters else max(k * 20, 200)
        held = self._held()
        if held is not None:
            return self._hits(held.search(vector, fetch, kind), k, filters, min_score, set(exclude))
        sql = "SELECT rowid, distance FROM memory_vectors WHERE embedding MATCH ? AND k = ?"
        args: list[Any] = [np.asarray(vector, dtype=np.float32).tobytes(), min(fetch, _VEC_K_MAX)]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        found = [(int(r), 1.0 - float(d) ** 2 / 2.0) for r, d in self.db.execute(sql, args)]
        return self._hits(found, k, filters, min_score, set(exclude))

    def _held(self) -> VectorIndex | None:
        """The store's vectors in memory, refreshed, when this search should use them (see ``index``)."""
        key = str(self.store.path)
        if self.index is False or (self.index is None and _SEARCHES.get(key, 0) < INDEX_AFTER):
            _SEARCHES[key] = _SEARCHES.get(key, 0) + 1
            return None
        dim = self.recorded()[1] or 0
        held = _INDEXES.get(key)
        if held is None or held.dim != dim:
            held = _INDEXES[key] = VectorIndex(dim)
        held.refresh(self.db)
        return held

    def _hits(self, found: list[tuple[int, float]], k: int, filters: Mapping[str, Any] | None,
              min_score: float | None, exclude: set[int]) -> list[Hit]:
        found = [(i, s) for i, s in found if i not in exclude and (min_score is None or s >= min_score)]
        rows = self.get_many([i for i, _ in found])
        hits = []
        for mid, score in found:
            mem = rows.get(mid)
            if mem is None or not _matches(mem.metadata, filters):
                continue
            hits.append(Hit(**{**asdict(mem), "score": round(score, 6)}))
            if len(hits) == k:
                break
        return hits

    def get(self, memory_id: int) -> Memory | None:
        """One memory by id."""
        return self.get_many([memory_id]).get(memory_id)

    def get_many(self, ids: Sequence[int]) -> dict[int, Memory]:
        """Memories by id (missing ids are left out)."""
        out: dict[int, Memory] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            rows = self.db.execute(f"SELECT {_COLS} FROM memories WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            out.update((r[0], _memory(r)) for r in rows)
        return out

    def list(self, *, kind: str | None = None, filters: Mapping[str, Any] | None = None,
             limit: int | None = 50) -> list[Memory]:
        """Memories, most recently seen first."""
        where, args = _where(None, kind, filters)
        sql = f"SELECT {_COLS} FROM memories{where} ORDER BY last_seen DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_memory(r) for r in self.db.execute(sql, args)]

    def count(self, kind: str | None = None) -> int:
        """How many memories (of one kind)."""
        where, args = _where(None, kind, None)
        return int(self.db.execute(f"SELECT COUNT(*) FROM memories{where}", args).fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """Counts by kind, times seen, the embedder and its dimension, first and last memory."""
        name, dim = self.recorded()
        kinds = {k: (n, seen) for k, n, seen in
                 self.db.execute("SELECT kind, COUNT(*), SUM(count) FROM memories GROUP BY kind ORDER BY kind")}
        first, last = self.db.execute("SELECT MIN(created_at), MAX(last_seen) FROM memories").fetchone()
        return {"store": str(self.store.path), "embedder": name, "dim": dim,
                "memories": sum(n for n, _ in kinds.values()), "seen": sum(s for _, s in kinds.values()),
                "kinds": {k: {"memories": n, "seen": s} for k, (n, s) in kinds.items()},
                "first": first, "last": last}

    def vectors(self, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector (of one kind): ``(ids, matrix)``; for consolidation and brute-force checks."""
        if self.recorded()[0] is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        sql = "SELECT rowid, embedding FROM memory_vectors" + (" WHERE kind = ?" if kind else "")
        rows = self.db.execute(sql, (kind,) if kind else ()).fetchall()
        dim = self.recorded()[1] or 0
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, mat

    def patterns(self, *, kind: str = "failure", threshold: float = 0.75, limit: int | None = 20) -> list[Pattern]:
        """Recurring memories of one kind grouped by meaning, the most seen first.

        Greedy clustering: memories are taken most seen first, each joins the first group
        whose first member it resembles at ``threshold`` or more, or starts a group. A
        group's ``count`` adds up how often its members were seen.
        """
        _check_kind(kind)
        ids, mat = self.vectors(kind)
        if not len(ids):
            return []
        mems = self.get_many([int(i) for i in ids])
        row_of = {int(i): n for n, i in enumerate(ids)}
        order = sorted(mems.values(), key=lambda m: (-m.count, -m.last_seen, m.id))
        heads: list[int] = []  # row of each group's first member
        groups: list[list[Memory]] = []
        for mem in order:
            vec = mat[row_of[mem.id]]
            if heads:
                sims = mat[heads] @ vec
                best = int(np.argmax(sims))
                if sims[best] >= threshold:
                    groups[best].append(mem)
                    continue
            heads.append(row_of[mem.id])
            groups.append([mem])
        found = [Pattern.of(members) for members in groups]
        found.sort(key=lambda p: (-p.count, -p.last_seen))
        return found if limit is None else found[:limit]

    # -- upkeep ------------------------------------------------------------------------

    def consolidate(self, *, threshold: float = MERGE_THRESHOLD, max_memories: int | None = None) -> dict[str, int]:
        """Merge near-duplicates, then drop the least valuable memories over ``max_memories``.

        Near-duplicates (similarity >= ``threshold``, same kind, pipeline and task) merge
        into the oldest of them with the counts added; over ``max_memories``, the least
        valuable (kind weight × count) go first, oldest first. Returns ``{merged, dropped, kept}``.
        """
        merged = 0
        for kind in KINDS:
            merged += self._merge_kind(kind, threshold)
        dropped = self._drop_excess(max_memories) if max_memories is not None else 0
        return {"merged": merged, "dropped": dropped, "kept": self.count()}

    def _merge_kind(self, kind: str, threshold: float) -> int:
        ids, mat = self.vectors(kind)
        if len(ids) < 2:
            return 0
        order = np.argsort(ids)  # the oldest survives
        ids, mat = ids[order], mat[order]
        mems = self.get_many([int(i) for i in ids])
        gone: set[int] = set()
        with self.store.transaction() as db:
            for start in range(0, len(ids), 1024):
                sims = mat[start:start + 1024] @ mat.T
                for row, i in enumerate(range(start, min(start + 1024, len(ids)))):
                    if int(ids[i]) in gone:
                        continue
                    keep = mems[int(ids[i])]
                    for j in np.nonzero(sims[row, i + 1:] >= threshold)[0] + i + 1:
                        other = mems[int(ids[j])]
                        if other.id in gone or any(keep.metadata.get(x) != other.metadata.get(x) for x in _SAME):
                            continue
                        keep = self._merge_into(db, keep, other.metadata, other.last_seen, other.count,
                                                other.origins)
                        gone.add(other.id)
            self._delete(db, sorted(gone))
        return len(gone)

    def _drop_excess(self, max_memories: int) -> int:
        excess = self.count() - max_memories
        if excess <= 0:
            return 0
        weight = " ".join(f"WHEN '{k}' THEN {v}" for k, v in _VALUE.items())
        sql = f"SELECT id FROM memories ORDER BY (CASE kind {weight} ELSE 1 END) * count, last_seen, id LIMIT ?"
        ids = [r[0] for r in self.db.execute(sql, (excess,))]
        with self.store.transaction() as db:
            self._delete(db, ids)
        return len(ids)

    def reembed(self, embedder: Embedder | str | None = None, *, batch: int = 512) -> int:
        """Re-embed every memory with ``embedder`` (default: the configured one); how many.

        The old vectors are replaced in one transaction; the store then records the new model.
        """
        emb = embedder_for(embedder) if isinstance(embedder, str | None) else embedder
        rows = self.db.execute("SELECT id, kind, text FROM memories ORDER BY id").fetchall()
        vectors = [emb.embed([r[2] for r in rows[s:s + batch]]) for s in range(0, len(rows), batch)]
        with self.store.transaction() as db:
            db.execute("DROP TABLE IF EXISTS memory_vectors")
            db.execute("DELETE FROM memory_meta WHERE key IN ('embedder', 'dim')")
            _record(db, emb)
            bump(db, REMOVED)  # every vector replaced: an index in memory reads them again
            flat = (v for block in vectors for v in block)
            db.executemany("INSERT INTO memory_vectors (rowid, embedding, kind) VALUES (?,?,?)",
                           ((r[0], v.tobytes(), r[1]) for r, v in zip(rows, flat, strict=True)))
        self._embedder, self._checked = emb, True
        return len(rows)


@contextmanager
def open_memory(path: str | os.PathLike[str], embedder: Embedder | str | None = None) -> Iterator[MemoryStore]:
    """Open the store at ``path`` and yield its :class:`MemoryStore`; closed afterwards."""
    with Store.open(path) as store:
        yield MemoryStore(store, embedder)


# -- helpers ---------------------------------------------------------------------------

_COLS = "id, kind, text, metadata, count, created_at, last_seen, origins"


def _load_vec(db: Any) -> None:
    """Load sqlite-vec into the connection (once) and map the file for fast scans."""
    try:
        db.execute("SELECT vec_version()")
        return
    except Exception:  # not loaded yet: SQLite says "no such function"
        pass
    db.enable_load_extension(True)
    try:
        sqlite_vec.load(db)
    finally:
        db.enable_load_extension(False)
    # A k-NN query scans every vector; reading them through mmap instead of the page
    # cache makes a 100k x 256 query ~3x faster.
    db.execute("PRAGMA mmap_size = 1073741824")


def _record(db: Any, emb: Embedder) -> None:
    db.execute("INSERT OR REPLACE INTO memory_meta (key, value) VALUES ('embedder', ?), ('dim', ?)",
               (emb.name, str(emb.dim)))
    db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS memory_vectors USING vec0(embedding float[{int(emb.dim)}], "
               "kind text)")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise GoatclawError(f"unknown memory kind '{kind}' (kinds: {', '.join(KINDS)})")


def _where(memory_id: int | None, kind: str | None, filters: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    clauses, args = [], []
    if memory_id is not None:
        clauses.append("id = ?")
        args.append(int(memory_id))
    if kind is not None:
        _check_kind(kind)
        clauses.append("kind = ?")
        args.append(kind)
    for key, value in (filters or {}).items():
        clauses.append("json_extract(metadata, ?) = ?")
        args += [f"$.{key}", value]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _matches(meta: Mapping[str, Any], filters: Mapping[str, Any] | None) -> bool:
    return all(meta.get(k) == v for k, v in (filters or {}).items())


def _merged_meta(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The surviving memory's metadata: its own, the latest run's, and the runs it was seen in (last 20)."""
    runs = [*old.get("runs", [old["run"]] if "run" in old else []), *new.get("runs", [new["run"]] if "run" in new
                                                                               else [])]
    merged = {**old, **{k: v for k, v in new.items() if k not in ("runs",)}}
    if "fixed" not in new:
        merged.pop("fixed", None)  # it happened again: the last fix (``fixed_by``) stays as a hint
    if runs:
        merged["runs"] = list(dict.fromkeys(runs))[-20:]
    return merged


def _memory(r: Sequence[Any]) -> Memory:
    return Memory(int(r[0]), r[1], r[2], json.loads(r[3] or "{}"), int(r[4]), float(r[5]), float(r[6]),
                  json.loads(r[7] or "[]"))
