"""Semantic memory: insert 100k memories, query k=10 with sqlite-vec next to brute-force numpy.

Run: ``python benchmarks/memory.py [--n 100000] [--queries 100] [--random] [--smoke]``
(issue 24's table: ``--n 10000``, ``--n 100000`` and ``--n 1000000 --random``)

Texts are synthetic failure messages (error phrases × services × tasks × numbers, all
distinct); they are embedded with wordllama (the embed throughput is timed) or, with
``--random``, replaced by random unit vectors. The vectors go into a real store file
through :class:`goatclaw.memory.store.MemoryStore` (``vec0`` table), then ``--queries``
other texts are searched for (k=10): through sqlite-vec, unfiltered and filtered by
kind, through the store's in-memory index (what a long-lived process such as ``serve``
searches after a few queries; goatclaw/memory/index.py), and by brute force in numpy over
the same vectors read back from the store, in the same run. Medians and p95 are printed,
with how often sqlite-vec agrees with numpy on the top 10 and the index's recall@10.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from goatclaw.memory import store as memory_store
from goatclaw.memory.embedders import WordLlamaEmbedder, normalise
from goatclaw.memory.index import one_thread, rerank_count, sign_rerank_count
from goatclaw.memory.store import KINDS, MemoryStore, open_memory

ERRORS = ["connection refused by", "HTTP 503 from", "HTTP 429 rate limited by", "timed out waiting for",
          "TLS handshake failed with", "invalid JSON in the answer from", "DNS lookup failed for",
          "HTTP 401 unauthorized from", "disk full writing the cache of", "schema validation failed on output of",
          "context length exceeded calling", "permission denied reading the config of"]
SERVICES = ["api.example.com", "search.internal", "billing-service", "the llm gateway", "s3://reports-bucket",
            "postgres primary", "the vector index", "github.com", "the mail relay", "redis-cache"]
TASKS = ["fetch", "summarise", "crawl", "report", "translate", "classify", "index", "notify", "score", "upload"]


def texts(n: int, seed: int) -> list[str]:
    """``n`` distinct failure messages."""
    rng = random.Random(seed)
    combos = list(itertools.product(ERRORS, SERVICES, TASKS))
    out = []
    for i in range(n):
        err, svc, task = combos[i % len(combos)]
        out.append(f"task {task} failed: {err} {svc} after {rng.randint(1, 9)} attempts (request {i})")
    return out


def timed_ms(fn: object, *args: object, **kw: object) -> tuple[float, object]:
    t = time.perf_counter()
    value = fn(*args, **kw)  # type: ignore[operator]
    return (time.perf_counter() - t) * 1000, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--random", action="store_true", help="random unit vectors instead of wordllama")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.queries = 2_000, 10

    emb = WordLlamaEmbedder()
    corpus = texts(args.n, seed=1)
    queries = [f"{q.split(' (request')[0]} again" for q in texts(args.queries, seed=2)]
    rows: list[tuple[str, str]] = []
    if args.random:
        rng = np.random.default_rng(0)
        vectors = normalise(rng.standard_normal((args.n, emb.dim)))
        qvecs = normalise(rng.standard_normal((args.queries, emb.dim)))
    else:
        load_ms, _ = timed_ms(emb.embed, ["warm up: load the model"])
        embed_ms, vectors = timed_ms(emb.embed, corpus)
        qvecs = emb.embed(queries)
        rows.append(("wordllama load (once per process)", f"{load_ms:,.0f} ms"))
        rows.append((f"embed {args.n:,} texts", f"{embed_ms / 1000:,.2f} s = {args.n / embed_ms * 1000:,.0f} texts/s"))
        single = [timed_ms(emb.embed, [q])[0] for q in queries]
        rows.append(("embed one query (median)", f"{statistics.median(single):.2f} ms"))

    with tempfile.TemporaryDirectory() as tmp, open_memory(Path(tmp) / "bench.db", emb) as mem:
        mem.index = False  # sqlite-vec on every query here (the store would move to its index after a few)
        items = [(t, KINDS[i % len(KINDS)], {"task": t.split()[1]}) for i, t in enumerate(corpus)]
        t = time.perf_counter()
        for start in range(0, args.n, 10_000):
            mem.add_embedded(items[start:start + 10_000], vectors[start:start + 10_000], merge_threshold=None)
        insert_s = time.perf_counter() - t
        rows.append((f"insert {args.n:,} memories (batches of 10k)", f"{insert_s:,.2f} s = {args.n / insert_s:,.0f}/s"))

        # Each kind of query in its own loop: numpy's BLAS threads keep spinning for a while
        # after a product, which would steal the second core from an interleaved SQLite query.
        vec_ms, vec_kind_ms, np_ms, found = [], [], [], []
        for q in qvecs:
            ms, hits = timed_ms(mem.search_vector, q, k=10)
            vec_ms.append(ms)
            found.append({h.id for h in hits})  # type: ignore[union-attr]
        vec_kind_ms = [timed_ms(mem.search_vector, q, k=10, kind="failure")[0] for q in qvecs]
        load_ms, (ids, matrix) = timed_ms(mem.vectors)
        agree = 0
        for q, vec_ids in zip(qvecs, found, strict=True):
            ms, top = timed_ms(lambda q=q: ids[np.argpartition(-(matrix @ q), 10)[:10]])
            np_ms.append(ms)
            agree += vec_ids == {int(i) for i in top}  # type: ignore[union-attr]
        with one_thread():  # what the index runs on: a baseline on the same footing
            np1_ms = [timed_ms(lambda q=q: ids[np.argpartition(-(matrix @ q), 10)[:10]])[0] for q in qvecs]
            # ties (near-identical texts have the same vector) make "the" exact top 10 ambiguous: a hit counts
            # when it scores at least the exact 10th best score. Found before the index's loop: a product there
            # would leave OpenBLAS's threads spinning on the second core while the index is timed
            tenths = [float(np.partition(matrix @ q, -10)[-10]) for q in qvecs]
        held = MemoryStore(mem.store, emb, index=True)
        first_ms, _ = timed_ms(held.search_vector, qvecs[0], k=10)  # reads every vector into memory once
        idx_ms, idx_kind_ms, recall = [], [], 0
        for q, tenth in zip(qvecs, tenths, strict=True):
            ms, hits = timed_ms(held.search_vector, q, k=10)
            idx_ms.append(ms)
            recall += sum(h.score >= tenth - 1e-5 for h in hits)  # type: ignore[union-attr]
        idx_kind_ms = [timed_ms(held.search_vector, q, k=10, kind="failure")[0] for q in qvecs]
        rows.append((f"sqlite-vec k=10 over {args.n:,} (median / p95)", _med_p95(vec_ms)))
        rows.append(("sqlite-vec k=10, kind=failure filter (median / p95)", _med_p95(vec_kind_ms)))
        rows.append(("numpy brute force k=10, same vectors (median / p95)", _med_p95(np_ms)))
        rows.append(("numpy brute force k=10, one BLAS thread (median / p95)", _med_p95(np1_ms)))
        rows.append(("read all vectors into numpy (once)", f"{load_ms:,.0f} ms"))
        rows.append(("in-memory index k=10, the store's search (median / p95)", _med_p95(idx_ms)))
        rows.append(("in-memory index k=10, kind=failure filter (median / p95)", _med_p95(idx_kind_ms)))
        rows.append(("in-memory index vs numpy: ratio of medians",
                     f"{statistics.median(idx_ms) / statistics.median(np_ms):.2f}x"))
        rows.append(("in-memory index vs numpy on one BLAS thread: ratio of medians",
                     f"{statistics.median(idx_ms) / statistics.median(np1_ms):.2f}x"))
        rows.append(("in-memory index vs sqlite-vec: ratio of medians",
                     f"{statistics.median(idx_ms) / statistics.median(vec_ms):.2f}x"))
        rows.append(("in-memory index recall@10 against exact numpy", f"{recall / (10 * len(qvecs)):.3f}"))
        rows.append(("in-memory index: first search (reads every vector)", f"{first_ms:,.0f} ms"))
        index = memory_store._INDEXES[str(mem.store.path)]
        best = f"best {rerank_count(10, args.n):,} re-ranked"
        rows.append(("in-memory index prefilter",
                     f"{index.basis.shape[1]} of {emb.dim} dimensions (SVD), {best}" if index.basis is not None else
                     f"two-bit sign codes of all {emb.dim} dimensions ({index.signs.shape[2] * 16} B a row), best "
                     f"{sign_rerank_count(10, args.n):,} re-ranked"
                     if index.centre is not None else
                     "none: exact scan"))
        rows.append(("same top-10 set, sqlite-vec vs numpy", f"{agree}/{len(qvecs)}"))
        size = (Path(tmp) / "bench.db").stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("bench.db-*"))
        rows.append(("store file size", f"{size / 2**20:,.0f} MiB"))

    load = os.getloadavg()
    rows.append(("machine load (1 / 5 / 15 min, after the run)", f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"))
    vectors_kind = "random unit vectors" if args.random else "wordllama embeddings"
    print(f"\nsemantic memory, {args.n:,} memories x {emb.dim} dims ({vectors_kind}), {args.queries} queries, "
          f"Python {sys.version.split()[0]}\n")
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    target = 5.0 if args.n <= 100_000 else 50.0
    held_ms = statistics.median(idx_ms)
    print(f"\ntarget (issue 24): the store's search with its in-memory index <= {target:.0f} ms at {args.n:,} "
          f"memories, recall@10 >= 0.99 -> {held_ms:.1f} ms, {recall / (10 * len(qvecs)):.3f}: "
          f"{'met' if held_ms <= target and recall >= 0.99 * 10 * len(qvecs) else 'MISSED'}")


def _med_p95(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.1f} ms / {ordered[int(len(ordered) * 0.95) - 1]:.1f} ms"


if __name__ == "__main__":
    main()
