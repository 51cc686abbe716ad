"""Semantic memory: insert 100k memories, query k=10 with sqlite-vec next to brute-force numpy.

Run: ``python benchmarks/memory.py [--n 100000] [--queries 100] [--random] [--smoke]``

Texts are synthetic failure messages (error phrases × services × tasks × numbers, all
distinct); they are embedded with wordllama (the embed throughput is timed) or, with
``--random``, replaced by random unit vectors. The vectors go into a real store file
through :class:`goatclaw.memory.store.MemoryStore` (``vec0`` table), then ``--queries``
other texts are searched for (k=10): through sqlite-vec, unfiltered and filtered by
kind, and by brute force in numpy over the same vectors read back from the store, in the
same run. Medians and p95 are printed, with how often both agree on the top 10.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from goatclaw.memory.embedders import WordLlamaEmbedder, normalise
from goatclaw.memory.store import KINDS, open_memory

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
        rows.append((f"sqlite-vec k=10 over {args.n:,} (median / p95)", _med_p95(vec_ms)))
        rows.append(("sqlite-vec k=10, kind=failure filter (median / p95)", _med_p95(vec_kind_ms)))
        rows.append(("numpy brute force k=10, same vectors (median / p95)", _med_p95(np_ms)))
        rows.append(("read all vectors into numpy (once)", f"{load_ms:,.0f} ms"))
        rows.append(("same top-10 set, sqlite-vec vs numpy", f"{agree}/{len(qvecs)}"))
        size = (Path(tmp) / "bench.db").stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("bench.db-*"))
        rows.append(("store file size", f"{size / 2**20:,.0f} MiB"))

    vectors_kind = "random unit vectors" if args.random else "wordllama embeddings"
    print(f"\nsemantic memory, {args.n:,} memories x {emb.dim} dims ({vectors_kind}), {args.queries} queries, "
          f"Python {sys.version.split()[0]}\n")
    print("| measure | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\ntarget: a query under 50 ms at 100k memories -> {'met' if statistics.median(vec_ms) < 50 else 'MISSED'}")


def _med_p95(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{statistics.median(ordered):.1f} ms / {ordered[int(len(ordered) * 0.95) - 1]:.1f} ms"


if __name__ == "__main__":
    main()
