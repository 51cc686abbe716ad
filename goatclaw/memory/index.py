"""Every vector of a store in memory, kept fresh from the store, for processes that search often.

A k-NN query through sqlite-vec scans the ``vec0`` table from the file each time (18–28 ms
at 100k × 256). A process that searches again and again (``goatclaw serve``, ``watch``, an
agent recalling past runs on every task) does better holding the vectors as one float32
matrix: a query is then one matrix-vector product and a partial sort (exact, so recall is
1.0), a few milliseconds at 100k and tens at 1M.

At scale the scan is bound by memory bandwidth, not arithmetic (100k × 256 float32 is 100 MB
read per query, ~5 ms on this machine whatever the code), so past :data:`PREFILTER_MIN`
vectors the index also keeps a projection onto the few directions that carry most of the
vectors' energy (a truncated SVD of a sample, kept only when it needs at most half the
dimensions): a query scores that small matrix first and re-ranks the best
:func:`rerank_count` candidates exactly. Real embeddings concentrate their energy (wordllama:
most of it in a few dozen directions), so this keeps recall@10 at 0.99 and more. Vectors
whose energy is spread out (random ones) get no projection. Past :data:`QUANTISE_MIN` what
the prefilter scans is held as codes. A projection is held as int8 codes (each column scaled
to its largest magnitude, a quarter of the bytes), widened to float32 a cache-sized block at
a time. Vectors without one are held as two-bit sign codes (64 bytes a row at 256
dimensions, a sixteenth of float32): centred on a sample's mean and turned onto its principal
axes, each value becomes two signs, its own and that of what is left once the dimension's
mean magnitude is taken off. The query is binarised the same way (:data:`SIGN_PLANES`), and
a row's rough score is a weighted count of the bits they differ in: XOR and
``np.bitwise_count``, nothing widened. On random vectors the estimate has to be good: at 1M
the 10th neighbour's cosine is ~0.27 against a spread of 1/16 (4.3 sd), one sign bit a
dimension correlates ~0.8 with the cosine and must keep 2-3% of the rows for recall 0.99,
two bits keep the top 10 within the best 0.3%. The three heaviest of the five terms score
every row and the rest only the best 2% of those; the best :func:`sign_rerank_count` (0.5% at
1M) are scored exactly. Measured at 1M on one thread: wordllama vectors 60 -> 41 ms (load
~0.5; 96 projected dimensions as int8, recall 1.0); random vectors on benchmarks/memory.py
125 ms with int8 codes (numpy's brute force on one thread 92 ms, load 2.2) -> 32 ms with sign
codes (numpy 109 ms, load 1.2; recall 0.999), and 30 ms with the cache emptied before each
query (41 ms scoring every term on every row).
``benchmarks/memory.py`` measures both.

The matrix is kept fresh by two counters in ``memory_meta`` that every writer bumps in the
same transaction as its change: ``vectors_added`` (new vectors: only the rows past the
highest id held are read) and ``vectors_removed`` (a delete or a re-embedding: read again
whole). Checking them costs one indexed read per query, so a memory another process added
a moment ago is found. Metadata (counts, last seen) is not held: hits are read from the
rows, as for sqlite-vec.

A query runs its products on one BLAS thread (:func:`one_thread`). A k-NN scan is bound by
memory bandwidth, so a second thread cannot make it faster, and on a loaded machine OpenBLAS's
threads wait for a core and spin: on benchmarks/memory.py at 100k wordllama vectors (2 shared
cores, load ~1.5) one thread answers in 1.5 ms where numpy's default threads take 7.9 ms. On a
quiet machine numpy's two threads scan 1M float32 vectors faster (93 ms against 165 ms on one);
the prefilters on one thread beat both. The sign codes' XOR and popcount are numpy ufuncs on one
thread whatever BLAS does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

__all__ = ["ADDED", "ENERGY", "LARGE", "PREFILTER_MIN", "QUANTISE_MIN", "REMOVED", "VectorIndex", "bump", "one_thread",
           "rerank_count", "sign_rerank_count"]

#: ``memory_meta`` keys: how many times vectors were added, and removed or replaced.
ADDED, REMOVED = "vectors_added", "vectors_removed"
#: Fewer vectors than this are scanned exactly (a scan is then cheaper than a projection's bookkeeping).
PREFILTER_MIN = 20_000
#: The share of the vectors' energy (squared singular values) the projection keeps.
ENERGY = 0.99
#: From this many vectors on, what the prefilter scans is held as codes: the projection as int8, vectors without one
#: as sign codes (below, the projection or the exact scan is as fast).
QUANTISE_MIN = 200_000
#: Int8 codes widened to float32 at a time (a block that stays in cache: 4 MiB).
BLOCK = 1 << 20
#: The sample the projection is fitted on.
SAMPLE = 20_000
#: How many query planes are scored against each of the two sign-code planes (the second carries less).
SIGN_PLANES = (3, 2)
#: The largest integer weight of a query plane (the others in proportion, rounded).
SIGN_WEIGHT = 16
#: Rows of sign codes scored at a time (a block and its buffers stay in cache).
SIGN_ROWS = 8192
#: Every this-many-th rough score is counted to place the cut (a histogram of a sample, not a partition).
SIGN_SAMPLE = 8
#: The heaviest terms that score every row; the rest score only the best :data:`SIGN_WIDEN` x the re-ranked
#: count of those (on 1M random vectors the top 10 lie within the best 1.04% of the first three terms' scores).
SIGN_FIRST = 3
SIGN_WIDEN = 4


def sign_rerank_count(want: int, n: int) -> int:
    """How many rows the sign codes hand to the exact scores (their top 10 lie within the best 0.3% at 1M)."""
    return min(n, max(2000, 50 * want, n // 200))


#: From this many vectors on the projection keeps at least 3/8 of the dimensions: the more vectors, the closer
#: the near neighbours of a query crowd, and the finer the structure the prefilter must see to find them (on
#: benchmarks/memory.py's corpus at 1M, 32 dimensions keep recall@10 at 0.65; 96 at 1.0).
LARGE = 250_000


def rerank_count(want: int, n: int) -> int:
    """How many candidates of the projection are scored exactly: generous, since a miss costs recall."""
    return min(n, max(1000, 50 * want, n // 100))


@functools.cache
def _controller() -> ThreadpoolController:
    """The process's BLAS libraries (found once: a few milliseconds; limiting them then costs ~20 µs)."""
    return ThreadpoolController()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run numpy's BLAS on one thread inside the block (the setting is restored after it)."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def bump(db: Any, key: str) -> None:
    """Count one change of the vectors (inside the writer's transaction)."""
    db.execute("INSERT INTO memory_meta (key, value) VALUES (?, '1') "
               "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1", (key,))


class VectorIndex:
    """The ids, unit vectors and kinds of a store's memories, as arrays."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ids = np.zeros(0, dtype=np.int64)
        self.matrix = np.zeros((0, dim), dtype=np.float32)
        self.kinds = np.zeros(0, dtype=np.int16)  # codes: self._codes[kind]
        self._codes: dict[str, int] = {}
        self.basis: np.ndarray | None = None  # dim x d: the projection, when the vectors concentrate
        self.projected = np.zeros((0, 0), dtype=np.float32)
        self.scale: np.ndarray | None = None  # per dimension: 127 / its largest magnitude, when codes are kept
        self.quantised = np.zeros((0, 0), dtype=np.int8)
        self.centre: np.ndarray | None = None  # per dimension: the sample's mean, when sign codes are kept
        self.rotation = np.zeros((0, 0), dtype=np.float32)  # dim x dim: onto the sample's principal axes
        self.spread = np.zeros((0, dim), dtype=np.float32)  # 2 x dim: each code plane's mean magnitude
        self.signs = np.zeros((0, 0, 0), dtype=np.uint64)  # 2 x rows x words: the sign codes' bit planes
        self._fitted = 0  # how many vectors there were when the prefilter was last chosen
        self._seen: tuple[int, int] | None = None  # (added, removed) when last read

    def __len__(self) -> int:
        return len(self.ids)

    def refresh(self, db: Any) -> None:
        """Read what changed since the last refresh: new rows only, or everything after a removal."""
        added, removed = _counters(db)
        if self._seen is not None and self._seen == (added, removed):
            return
        if self._seen is None or removed != self._seen[1]:
            self.ids, self.matrix, self.kinds = self._read(db, "")
            self._fit()
        else:
            last = int(self.ids[-1]) if len(self.ids) else -1
            ids, matrix, kinds = self._read(db, f" WHERE rowid > {last}")
            if len(ids):
                self.ids = np.concatenate([self.ids, ids])
                self.matrix = np.concatenate([self.matrix, matrix])
                self.kinds = np.concatenate([self.kinds, kinds])
                if self.centre is not None:
                    self.signs = np.concatenate([self.signs, self._sign_codes(matrix)], axis=1)
                elif self.scale is not None:  # int8 codes are of the projection (_fit)
                    assert self.basis is not None
                    self.quantised = np.concatenate([self.quantised, self._quantise(matrix @ self.basis)])
                elif self.basis is not None and len(self.ids) < QUANTISE_MIN:
                    self.projected = np.concatenate([self.projected, matrix @ self.basis])
                elif len(self.ids) >= max(PREFILTER_MIN, 2 * self._fitted) or \
                        self._fitted < QUANTISE_MIN <= len(self.ids):
                    self._fit()  # not on every append: an SVD of the sample takes a second or two
        self._seen = (added, removed)

    def _fit(self) -> None:
        """The prefilter: a projection (as int8 codes when large), sign codes (energy spread out), or none (too few)."""
        self.basis, self.projected = None, np.zeros((0, 0), dtype=np.float32)
        self.scale, self.quantised = None, np.zeros((0, 0), dtype=np.int8)
        self.centre, self.signs = None, np.zeros((0, 0, 0), dtype=np.uint64)
        self.rotation = np.zeros((0, 0), dtype=np.float32)
        self._fitted = len(self.ids)
        if len(self.ids) < PREFILTER_MIN:
            return
        step = max(1, len(self.ids) // SAMPLE)
        _, singular, vt = np.linalg.svd(self.matrix[::step][:SAMPLE], full_matrices=False)
        energy = np.cumsum(singular.astype(np.float64) ** 2)
        floor = self.dim * 3 // 8 if len(self.ids) >= LARGE else self.dim // 8
        d = max(int(np.searchsorted(energy, ENERGY * energy[-1]) + 1), floor)
        if d > self.dim // 2:
            if len(self.ids) >= QUANTISE_MIN:
                self._fit_signs(self.matrix[::step][:SAMPLE])
            return
        self.basis = np.ascontiguousarray(vt[:d].T, dtype=np.float32)
        projected = np.ascontiguousarray(self.matrix @ self.basis)
        if len(self.ids) >= QUANTISE_MIN:
            self._code(projected)
        else:
            self.projected = projected

    def _code(self, matrix: np.ndarray) -> None:
        """Keep int8 codes of ``matrix`` (the vectors' projection), each column scaled to its peak."""
        peak = np.abs(matrix).max(axis=0)
        self.scale = (127.0 / np.where(peak > 0, peak, 1.0)).astype(np.float32)
        self.quantised = self._quantise(matrix)

    def _quantise(self, matrix: np.ndarray) -> np.ndarray:
        """Int8 codes of ``matrix`` (a later row past the fitted peak is clipped: only its rough score suffers)."""
        assert self.scale is not None
        out = np.empty(matrix.shape, dtype=np.int8)
        for start in range(0, len(matrix), 65536):
            block = matrix[start:start + 65536] * self.scale
            np.clip(np.rint(block, out=block), -127, 127, out=block)
            out[start:start + 65536] = block
        return out

    def _fit_signs(self, sample: np.ndarray) -> None:
        """Keep two-bit sign codes of every vector, their levels fitted on ``sample`` (energy spread out).

        The codes are taken about the sample's mean, on its principal axes: a direction in which the vectors
        vary little then gets levels as small as its spread, rather than a quantisation error as large as any.
        """
        self.centre = sample.mean(axis=0)
        _, axes = np.linalg.eigh(np.cov(sample, rowvar=False))
        self.rotation = np.ascontiguousarray(axes, dtype=np.float32)
        centred = (sample - self.centre) @ self.rotation
        first = np.abs(centred).mean(axis=0)
        second = np.abs(np.abs(centred) - first).mean(axis=0)  # |the residual| once the first level is taken off
        self.spread = np.stack([first, second]).astype(np.float32)
        self.signs = self._sign_codes(self.matrix)

    def _sign_codes(self, matrix: np.ndarray) -> np.ndarray:
        """The two bit planes of ``matrix``: y ~ spread[0] * s1 + spread[1] * s2, s1 and s2 = +-1 a bit.

        y is a row centred and rotated, (x - centre) @ rotation; s1 is the sign of each of its values, s2 the
        sign of what is left once ``spread[0] * s1`` is taken off (positive when the value's magnitude is past
        the first level, on its side). The words are padded with zero bits.
        """
        assert self.centre is not None
        words = _words(self.dim)
        out = np.zeros((2, len(matrix), words), dtype=np.uint64)
        planes = out.view(np.uint8).reshape(2, len(matrix), words * 8)
        for start in range(0, len(matrix), 65536):
            centred = (matrix[start:start + 65536] - self.centre) @ self.rotation
            positive = centred > 0
            stop = start + len(centred)
            planes[0, start:stop, :(self.dim + 7) // 8] = np.packbits(positive, axis=1)
            planes[1, start:stop, :(self.dim + 7) // 8] = np.packbits(positive == (np.abs(centred) > self.spread[0]),
                                                                      axis=1)
        return out

    def _sign_candidates(self, q: np.ndarray, count: int, code: int | None) -> np.ndarray:
        """About ``count`` rows the sign codes score best for the unit query ``q`` (of kind ``code`` first).

        Two passes: the heaviest :data:`SIGN_FIRST` terms score every row, the best :data:`SIGN_WIDEN` x
        ``count`` of those are scored with the rest too (their codes gathered), and the best ``count`` of
        the sums are kept. Lower is nearer (see :func:`_differ_counts`).
        """
        terms = sorted(_query_planes(q @ self.rotation, self.spread), key=lambda term: -term[1])
        dtype = np.uint16 if _ceiling(self.dim) < 1 << 16 else np.uint32
        rough = _differ_counts(self.signs, terms[:SIGN_FIRST], dtype)
        if code is not None:
            rough[self.kinds != code] = _ceiling(self.dim)  # past every real score
        rows = _lowest(rough, SIGN_WIDEN * count)
        if len(terms) > SIGN_FIRST and len(rows):
            rough = rough[rows] + _differ_counts(self.signs[:, rows], terms[SIGN_FIRST:], dtype)
            rows = rows[_lowest(rough, count)]
        return rows


    def _rough(self, q: np.ndarray) -> np.ndarray:
        """The prefilter's scores of every row for the unit query ``q``."""
        assert self.basis is not None  # the projection, held as it is or as int8 codes
        q = q @ self.basis
        if self.scale is None:
            return self.projected @ q
        qs = q / self.scale  # codes . (q / scale) ~ projection . q
        out = np.empty(len(self.quantised), dtype=np.float32)
        rows = max(1, BLOCK // self.quantised.shape[1])
        buf = np.empty((rows, self.quantised.shape[1]), dtype=np.float32)
        for start in range(0, len(out), rows):
            block = self.quantised[start:start + rows]
            wide = buf[:len(block)]
            np.copyto(wide, block, casting="unsafe")
            np.matmul(wide, qs, out=out[start:start + len(block)])
        return out

    def search(self, vector: np.ndarray, k: int, kind: str | None = None,
               exclude: Iterable[int] = ()) -> list[tuple[int, float]]:
        """The ``k`` nearest ``(id, cosine)`` pairs, best first (of one kind, without ``exclude``)."""
        if not len(self.ids) or k <= 0:
            return []
        q = np.asarray(vector, dtype=np.float32)
        code = self._codes.get(kind) if kind is not None else None
        if kind is not None and code is None:
            return []
        skip = set(exclude)
        with one_thread():
            found = self._search(q, k + len(skip), code)
        return [(i, s) for i, s in found if i not in skip][:k]

    def _search(self, q: np.ndarray, want: int, code: int | None) -> list[tuple[int, float]]:
        """The ``want`` best ``(id, cosine)`` pairs, of kind ``code`` when it is not ``None``."""
        rows: np.ndarray | None = None
        if self.centre is not None:
            rows = self._sign_candidates(q, sign_rerank_count(want, len(self.ids)), code)
            scores = self.matrix[rows] @ q
        elif self.basis is not None:  # a projection (its int8 codes, when large)
            rough = self._rough(q)
            if code is not None:
                rough = np.where(self.kinds == code, rough, -np.inf)
            rows = _best(rough, rerank_count(want, len(rough)))
            scores = self.matrix[rows] @ q
        else:
            scores = self.matrix @ q
        if code is not None:
            scores = np.where(self.kinds[rows] == code if rows is not None else self.kinds == code, scores, -np.inf)
        top = _best(scores, want)
        top = top[np.argsort(-scores[top], kind="stable")]
        picked = rows[top] if rows is not None else top
        return [(int(self.ids[i]), float(s)) for i, s in zip(picked, scores[top], strict=True) if np.isfinite(s)]

    def _read(self, db: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = db.execute(f"SELECT rowid, embedding, kind FROM memory_vectors{where} ORDER BY rowid").fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), self.dim).copy()
        codes = self._codes
        kinds = np.fromiter((codes.setdefault(r[2], len(codes)) for r in rows), dtype=np.int16, count=len(rows))
        return ids, matrix, kinds


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """The positions of the ``count`` highest scores, in no order."""
    if count >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, count - 1)[:count]


def _counters(db: Any) -> tuple[int, int]:
    rows = dict(db.execute("SELECT key, value FROM memory_meta WHERE key IN (?, ?)", (ADDED, REMOVED)).fetchall())
    return int(rows.get(ADDED, 0)), int(rows.get(REMOVED, 0))




def _lowest(rough: np.ndarray, count: int) -> np.ndarray:
    """The positions of about ``count`` of the lowest values, in order of position.

    The cut comes from the histogram of a sample (every :data:`SIGN_SAMPLE`-th value): a partition of every
    row costs more than the rest of the scan. When many rows tie on the cut (duplicates) the best ``count``
    of them are kept.
    """
    if count >= len(rough):
        return np.arange(len(rough))
    sample = rough[::SIGN_SAMPLE] if len(rough) >= SIGN_SAMPLE * 1000 else rough
    share = max(1, count * len(sample) // len(rough))
    cut = int(np.searchsorted(np.cumsum(np.bincount(sample)), share))
    rows = np.flatnonzero(rough <= cut)
    if len(rows) > 2 * count:
        rows = np.sort(rows[np.argpartition(rough[rows], count - 1)[:count]])
    return rows


def _differ_counts(signs: np.ndarray, terms: list[tuple[int, int, np.ndarray]], dtype: type) -> np.ndarray:
    """Per row of ``signs`` (2 x rows x words), the sum of each term's weight x the bits the row differs in.

    With y = (x - centre) @ rotation, q . x = (q @ rotation) . y + q . centre, the last the same for every
    row; (q @ rotation) . y ~ sum over code planes r and query planes p of w_rp (s_p . S_r), and s . S = dim
    - 2 x (the bits s and S differ in), so ranking by the weighted differing bits, lowest first, is ranking
    by the estimate. Each term is an XOR and a popcount, 32 bytes a row at 256 dimensions.
    """
    words = signs.shape[2]
    acc = np.zeros(signs.shape[1], dtype=dtype)
    rows = SIGN_ROWS
    tiled = [(plane, weight, np.tile(bits, rows)) for plane, weight, bits in terms]
    flat = signs.reshape(2, -1)
    xor = np.empty(rows * words, dtype=np.uint64)
    counts = np.empty(rows * words, dtype=np.uint8)
    total = np.empty(rows * words // 4, dtype=np.uint32)
    term = np.empty(rows, dtype=dtype)
    for start in range(0, len(acc), rows):
        m = min(rows, len(acc) - start)
        out, diff, ones, sums = acc[start:start + m], xor[:m * words], counts[:m * words], total[:m * words // 4]
        for plane, weight, bits in tiled:
            np.bitwise_xor(flat[plane, start * words:(start + m) * words], bits[:m * words], out=diff)
            np.bitwise_count(diff, out=ones)
            # four words' counts summed at once: the top byte of (4 bytes) * 0x01010101. A group whose 256
            # bits all differ wraps to 0: only a vector opposite to the query looks near, and is re-ranked out
            np.multiply(ones.view(np.uint32), 0x01010101, out=sums)
            sums >>= 24
            differ = sums if words == 4 else sums.reshape(m, words // 4).sum(axis=1, dtype=np.uint32)
            np.multiply(differ, weight, out=term[:m], casting="unsafe")
            out += term[:m]
    return acc


def _words(dim: int) -> int:
    """64-bit words per sign plane of ``dim`` bits, a multiple of 4 (their counts are summed four at a time)."""
    return -(-dim // 256) * 4


def _ceiling(dim: int) -> int:
    """More than any row's weighted count of differing bits can be (every bit of every term, at the top weight)."""
    return dim * SIGN_WEIGHT * sum(SIGN_PLANES) + 1


def _query_planes(q: np.ndarray, spread: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """``(code plane, integer weight, packed bits)`` of the query's planes against each code plane.

    Against code plane r the query counts as q * spread[r]; that is binarised greedily (``SIGN_PLANES[r]``
    planes, each the sign of the residual, weighted by its mean magnitude) and the weights are rounded to
    integers, the largest :data:`SIGN_WEIGHT`.
    """
    words = _words(len(q))
    planes: list[tuple[int, float, np.ndarray]] = []
    for plane, depth in enumerate(SIGN_PLANES):
        residual = q.astype(np.float64) * spread[plane]
        for _ in range(depth):
            positive = residual > 0
            weight = float(np.abs(residual).mean())
            bits = np.zeros(words * 8, dtype=np.uint8)
            packed = np.packbits(positive)
            bits[:len(packed)] = packed
            planes.append((plane, weight, bits.view(np.uint64)))
            residual -= np.where(positive, weight, -weight)
    top = max(weight for _, weight, _ in planes) or 1.0
    rounded = [(plane, round(weight / top * SIGN_WEIGHT), bits) for plane, weight, bits in planes]
    return [term for term in rounded if term[1] > 0]
