"""Benchmark: our xor + popcount + top-k kernel against faiss IndexBinaryFlat, exhaustive and filtered to a category.

Usage:
    .venv/bin/python -m bench.hamming                      # N = 1e5, 1e6, 1e7 x 256/512 bits, table
    .venv/bin/python -m bench.hamming --json               # the same, one JSON object {"runs": [...]}
    .venv/bin/python -m bench.hamming --n 1000000 --bits 256 --json   # one configuration, one JSON object

Single query, k = 100, one thread for both (faiss.omp_set_num_threads(1)); ours and faiss alternate query by query on
the same data so that load from other processes hits both alike, and the median over queries is reported. The
filtered search is restricted to one "category": a contiguous 13% of the rows, which is what a category-sorted
snapshot scans (`top_k(start=, stop=)`), against faiss with an ID selector (the faster of IDSelectorRange and
IDSelectorBitmap). At 1e7 our two-thread path (`top_k_parallel`) is timed too, with faiss at two threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.codes.hamming import top_k, top_k_parallel, warm_up  # noqa: E402

K = 100
CATEGORY_SHARE = 0.13


def _random_codes(rng: np.random.Generator, n: int, n_bits: int) -> np.ndarray:
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(n, n_bits // 64), dtype=np.uint64, endpoint=True)
    return words.view(np.uint8)


def _median_ms(times: list[float]) -> float:
    return float(np.median(times) * 1e3)


def _interleaved(fns: dict[str, Callable[[np.ndarray], Any]], queries: np.ndarray) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for q in queries:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - t)
    return {name: _median_ms(ts) for name, ts in times.items()}


def run_one(n: int, n_bits: int, *, n_queries: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Time one (n, n_bits) configuration; returns the figures as a dict (see the module docstring)."""
    import faiss

    rng = np.random.default_rng(seed)
    codes = _random_codes(rng, n, n_bits)
    ids = np.arange(n, dtype=np.int64)
    n_queries = n_queries or (15 if n >= 5_000_000 else 41)
    queries = _random_codes(rng, n_queries, n_bits)
    lo = int(n * 0.4)
    hi = lo + int(n * CATEGORY_SHARE)

    index = faiss.IndexBinaryFlat(n_bits)
    index.add(codes)
    faiss.omp_set_num_threads(1)
    sel_range = faiss.IDSelectorRange(lo, hi)
    mask = np.zeros(n, dtype=bool)
    mask[lo:hi] = True
    bitmap = np.packbits(mask, bitorder="little")  # faiss's IDSelectorBitmap reads bit i as (b[i >> 3] >> (i & 7)) & 1
    sel_bitmap = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
    params_range = faiss.SearchParameters(sel=sel_range)
    params_bitmap = faiss.SearchParameters(sel=sel_bitmap)

    # Same answers first (distances; ids agree up to the order of ties, which faiss does not define).
    for q in queries[:3]:
        d, _ = top_k(q, codes, K)
        fd, _ = index.search(q[None, :], K)
        assert np.array_equal(d, fd[0]), "exhaustive distances differ from faiss"
        d, r = top_k(q, codes, K, start=lo, stop=hi)
        fd, fi = index.search(q[None, :], K, params=params_range)
        assert np.array_equal(d, fd[0]) and ((fi[0] >= lo) & (fi[0] < hi)).all(), "filtered results differ"

    exhaustive = _interleaved(
        {"ours": lambda q: top_k(q, codes, K), "faiss": lambda q: index.search(q[None, :], K)}, queries
    )
    filtered = _interleaved(
        {
            "ours": lambda q: top_k(q, codes, K, start=lo, stop=hi),
            "faiss_range": lambda q: index.search(q[None, :], K, params=params_range),
            "faiss_bitmap": lambda q: index.search(q[None, :], K, params=params_bitmap),
        },
        queries,
    )
    faiss_filtered = min(filtered["faiss_range"], filtered["faiss_bitmap"])
    out: dict[str, Any] = {
        "n": n,
        "bits": n_bits,
        "k": K,
        "queries": int(n_queries),
        "threads": 1,
        "ours_ms": round(exhaustive["ours"], 4),
        "faiss_ms": round(exhaustive["faiss"], 4),
        "ratio_vs_faiss": round(exhaustive["ours"] / exhaustive["faiss"], 3),
        "filtered_share": CATEGORY_SHARE,
        "filtered_ours_ms": round(filtered["ours"], 4),
        "filtered_faiss_range_ms": round(filtered["faiss_range"], 4),
        "filtered_faiss_bitmap_ms": round(filtered["faiss_bitmap"], 4),
        "filtered_ratio_vs_faiss": round(filtered["ours"] / faiss_filtered, 3),
        # What the scan reads per item: the code plus the int64 listing id used for the tie-break. The full
        # snapshot (colour, postings, tombstone) is measured by bench/postings.py.
        "bytes_per_item": n_bits // 8 + 8,
        "faiss_bytes_per_item": round(faiss.downcast_IndexBinary(index).xb.size() / n, 2),
    }
    if n >= 5_000_000:
        faiss.omp_set_num_threads(2)
        two = _interleaved(
            {
                "ours": lambda q: top_k_parallel(q, codes, K, n_threads=2),
                "faiss": lambda q: index.search(q[None, :], K),
            },
            queries,
        )
        faiss.omp_set_num_threads(1)
        out.update({
            "ours_2threads_ms": round(two["ours"], 4),
            "faiss_2threads_ms": round(two["faiss"], 4),
            "ratio_vs_faiss_2threads": round(two["ours"] / two["faiss"], 3),
        })
    del index
    return out


def _table(runs: list[dict[str, Any]]) -> str:
    head = (f"{'N':>10} {'bits':>4} | {'ours ms':>8} {'faiss ms':>8} {'ratio':>6} | {'filt ours':>9} "
            f"{'faiss rng':>9} {'faiss bmp':>9} {'ratio':>6} | {'2thr ours':>9} {'2thr faiss':>10} | {'B/item':>6}")
    lines = [head, "-" * len(head)]
    for r in runs:
        two_o = f"{r['ours_2threads_ms']:9.3f}" if "ours_2threads_ms" in r else f"{'-':>9}"
        two_f = f"{r['faiss_2threads_ms']:10.3f}" if "faiss_2threads_ms" in r else f"{'-':>10}"
        lines.append(
            f"{r['n']:>10,} {r['bits']:>4} | {r['ours_ms']:8.3f} {r['faiss_ms']:8.3f} {r['ratio_vs_faiss']:6.2f} | "
            f"{r['filtered_ours_ms']:9.3f} {r['filtered_faiss_range_ms']:9.3f} {r['filtered_faiss_bitmap_ms']:9.3f} "
            f"{r['filtered_ratio_vs_faiss']:6.2f} | {two_o} {two_f} | {r['bytes_per_item']:6d}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="number of codes (one configuration)")
    parser.add_argument("--bits", type=int, help="code length in bits, a multiple of 64 (one configuration)")
    parser.add_argument("--queries", type=int, default=None, help="queries per configuration")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if (args.n is None) != (args.bits is None):
        parser.error("--n and --bits go together")
    if args.bits is not None and args.bits % 64:
        parser.error("--bits must be a multiple of 64 (faiss IndexBinaryFlat takes whole bytes; we test odd widths "
                     "in tests/unit/test_hamming.py)")
    t = time.perf_counter()
    warm_up()
    warm_s = time.perf_counter() - t
    sizes = (100_000, 1_000_000, 10_000_000)
    configs = [(args.n, args.bits)] if args.n else [(n, b) for n in sizes for b in (256, 512)]
    runs = [run_one(n, b, n_queries=args.queries) for n, b in configs]
    meta = {"cpu_count": os.cpu_count(), "warm_up_s": round(warm_s, 3)}
    if args.json:
        print(json.dumps({**runs[0], **meta} if args.n else {"runs": runs, **meta}))
    else:
        print(_table(runs))
        print(f"(k={K}, median over queries, kernel warm-up {warm_s:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
