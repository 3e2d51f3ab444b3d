"""Benchmark: one index in N shards (listing_id % N), searched and merged as the API does, against one snapshot.

Usage:
    .venv/bin/python -m bench.shards                                # 1M items, 2 shards, table
    .venv/bin/python -m bench.shards --items 10000000 --shards 2    # the 10M run (needs ~3 GB RAM)
    .venv/bin/python -m bench.shards --json                         # one JSON object

The synthetic catalogue of bench.postings (19 Zipf-sized categories, 256-bit codes, 52-bin colours). Every query
(fresh items from the same generator) runs a whole-index search (no category) and a search of its own category, with
the colour weight 0.1 (the daemon's legacy default), top 20. For each: the unsharded snapshot's time, each shard's time
(the scatter's critical path is the slowest shard, when shards run on their own cores or machines; the sum is what one
core would spend on all of them), and the exact merge (shared.index.shards.merge_hits); every merged answer is
checked against the unsharded one. Times are in-process IndexSnapshot.search (what a daemon request does after
decoding): no HTTP, no JSON. CPU time of the thread is printed next to wall time (the dev box is shared).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from numba import njit  # noqa: E402

from bench.common import emit  # noqa: E402
from bench.postings import Catalogue  # noqa: E402
from shared.index.arrays import ItemArrays  # noqa: E402
from shared.index.shards import merge_hits  # noqa: E402
from shared.index.snapshot import IndexSnapshot, warm_up  # noqa: E402

K = 20
COLOUR_WEIGHT = 0.1


def _timed(fn):
    w, c = time.perf_counter(), time.thread_time()
    out = fn()
    return out, (time.perf_counter() - w) * 1000, (time.thread_time() - c) * 1000


def _p(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3) if xs else float("nan")


@njit(cache=True, nogil=True)
def _stream(words, lo, hi):
    """Read words[lo:hi] once (eight independent xor chains, which LLVM vectorises): the memory-bandwidth limit of a
    scan of those words."""
    acc = np.zeros(8, dtype=np.uint64)
    i = lo
    while i + 8 <= hi:
        for j in range(8):
            acc[j] ^= words[i + j]
        i += 8
    out = np.uint64(0)
    for j in range(8):
        out ^= acc[j]
    while i < hi:
        out ^= words[i]
        i += 1
    return out


def bandwidth(codes: np.ndarray, threads: int, repeats: int = 7) -> float:
    """GB/s reading the codes once on `threads` threads (best of `repeats`: the machine's limit, not its mood)."""
    from concurrent.futures import ThreadPoolExecutor

    words = codes.view(np.uint64).reshape(-1)
    bounds = np.linspace(0, words.shape[0], threads + 1).astype(np.int64)
    _stream(words, 0, 8)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(lambda i: _stream(words, int(bounds[i]), int(bounds[i + 1])), range(threads)))
            best = min(best, time.perf_counter() - t)
    return codes.nbytes / best / 1e9


_FIELDS = ("ids", "category_ids", "attr_offsets", "attribute_ids", "codes", "colours")


def catalogue(n: int, seed: int, cache: Path | None) -> tuple[ItemArrays, ItemArrays]:
    """(n items, 200 queries) of bench.postings.Catalogue(seed); the items are cached as .npy files in `cache`
    (generating 10M takes minutes), and read from there when it holds >= n; the queries are other draws of the
    same catalogue."""
    if cache is not None and (cache / "ids.npy").exists() and np.load(cache / "ids.npy", mmap_mode="r").shape[0] >= n:
        items = ItemArrays(**{f: np.load(cache / f"{f}.npy") for f in _FIELDS})
        items = items if len(items) == n else items.take(np.arange(n))
    else:
        items = Catalogue(seed).items(n)
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            for f in _FIELDS:
                np.save(cache / f"{f}.npy", getattr(items, f))
    cat = Catalogue(seed)  # the same category and attribute centres, other draws
    cat.rng = np.random.default_rng(seed + 1000)
    return items, cat.items(200)


def run(n: int, n_shards: int, n_queries: int, seed: int, cache: Path | None = None) -> dict[str, Any]:
    warm_up()
    items, queries = catalogue(n, seed, cache)
    t = time.perf_counter()
    whole = IndexSnapshot.from_items(items, generation=1)
    whole_build_s = time.perf_counter() - t
    owner = items.ids % n_shards
    t = time.perf_counter()
    shards = [IndexSnapshot.from_items(items.take(np.flatnonzero(owner == i)), generation=1) for i in range(n_shards)]
    shard_build_s = time.perf_counter() - t
    del items
    n_threads = min(2, os.cpu_count() or 1)
    out: dict[str, Any] = {"items": n, "shards": n_shards, "queries": n_queries, "k": K, "colour_weight": COLOUR_WEIGHT,
                           "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
                           "build_s": {"whole": round(whole_build_s, 2), "all_shards": round(shard_build_s, 2)},
                           "bytes_per_item": {"whole": round(whole.bytes_per_item, 1),
                                              "shards": round(sum(s.nbytes for s in shards) / n, 1)}}
    mismatches = 0
    for scope in ("whole_index", "category"):
        rec: dict[str, list[float]] = {k: [] for k in ("one_wall", "one_cpu", "max_shard_wall", "max_shard_cpu",
                                                       "sum_shards_cpu", "merge_wall")}
        for i in range(n_queries):
            q = dict(code=queries.codes[i], colour=queries.colours[i], attribute_ids=[],
                     category_id=None if scope == "whole_index" else int(queries.category_ids[i]),
                     k=K, offset=0, colour_weight=COLOUR_WEIGHT)
            want, w, c = _timed(lambda: whole.search(**q).hits)
            rec["one_wall"].append(w)
            rec["one_cpu"].append(c)
            parts, walls, cpus = [], [], []
            for s in shards:
                hits, w, c = _timed(lambda s=s: s.search(**q).hits)
                parts.append(hits)
                walls.append(w)
                cpus.append(c)
            rec["max_shard_wall"].append(max(walls))
            rec["max_shard_cpu"].append(max(cpus))
            rec["sum_shards_cpu"].append(sum(cpus))
            got, w, _ = _timed(lambda: merge_hits(parts, 0, K))
            rec["merge_wall"].append(w)
            mismatches += got != want
        out[scope] = {k: {"p50_ms": _p(v, 50), "p95_ms": _p(v, 95)} for k, v in rec.items()}
    # Both cores on one search over the whole index (what one unsharded daemon does, SEARCH_THREADS), against the
    # memory-bandwidth limit measured now: the time to read every code once on the same threads.
    bw = {"1_thread_gb_s": round(bandwidth(whole.parts()[0].codes, 1), 2),
          f"{n_threads}_threads_gb_s": round(bandwidth(whole.parts()[0].codes, n_threads), 2)}
    limit_ms = whole.parts()[0].codes.nbytes / (bw[f"{n_threads}_threads_gb_s"] * 1e9) * 1e3
    both: dict[str, Any] = {"threads": n_threads, "code_bytes": int(whole.parts()[0].codes.nbytes),
                            "bandwidth": bw, "bandwidth_limit_ms": round(limit_ms, 2)}
    for w in (0.0, COLOUR_WEIGHT):
        walls = []
        for i in range(n_queries):
            q = dict(code=queries.codes[i], colour=queries.colours[i], category_id=None, k=K, colour_weight=w)
            got, wall, _ = _timed(lambda: whole.search(threads=n_threads, **q).listing_ids)
            walls.append(wall)
            mismatches += not np.array_equal(got, whole.search(**q).listing_ids)
        both[f"colour_weight_{w}"] = {"p50_ms": _p(walls, 50), "p95_ms": _p(walls, 95),
                                      "p50_over_limit": round(_p(walls, 50) / limit_ms, 2)}
    out["whole_index_both_cores"] = both
    out["mismatches"] = int(mismatches)
    return out


def _print_table(r: dict[str, Any]) -> None:
    print(f"{r['items']:,} items in {r['shards']} shards, {r['queries']} queries, k={r['k']}, colour weight "
          f"{r['colour_weight']}; {r['cpus']} CPUs, load {r['load_avg_1m']} (1 min) when it ended")
    print(f"build: whole {r['build_s']['whole']} s, all shards {r['build_s']['all_shards']} s;  RAM B/item: whole "
          f"{r['bytes_per_item']['whole']}, shards {r['bytes_per_item']['shards']}")
    print(f"{'scope':<12} {'measure':<16} {'p50 ms':>9} {'p95 ms':>9}")
    for scope in ("whole_index", "category"):
        for k, v in r[scope].items():
            print(f"{scope:<12} {k:<16} {v['p50_ms']:>9} {v['p95_ms']:>9}")
    b = r["whole_index_both_cores"]
    print(f"whole index on {b['threads']} threads, one snapshot: bandwidth {b['bandwidth']} -> reading the "
          f"{b['code_bytes'] / 1e6:.0f} MB of codes once takes {b['bandwidth_limit_ms']} ms")
    for k, v in b.items():
        if k.startswith("colour_weight"):
            print(f"  {k:<20} p50 {v['p50_ms']} ms  p95 {v['p95_ms']} ms  p50 / limit {v['p50_over_limit']}")
    print(f"answers different from the unsharded single-thread one: {r['mismatches']} of {4 * r['queries']}")


def _count(text: str) -> int:
    """1000000, 1M, 10M, 300k."""
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=_count, default=1_000_000, help="items in the index (1M, 10M, ...)")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder of the catalogue as .npy files (bench/bulkload.py --cache writes it)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    r = run(args.items, args.shards, args.queries, args.seed, args.cache)
    emit(r, args.json, _print_table)
    return 0 if r["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
