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
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.postings import Catalogue  # noqa: E402
from shared.index.snapshot import IndexSnapshot, warm_up  # noqa: E402
from shared.index.shards import merge_hits  # noqa: E402

K = 20
COLOUR_WEIGHT = 0.1


def _timed(fn):
    w, c = time.perf_counter(), time.thread_time()
    out = fn()
    return out, (time.perf_counter() - w) * 1000, (time.thread_time() - c) * 1000


def _p(xs: list[float], q: float) -> float:
    return round(float(np.percentile(xs, q)), 3) if xs else float("nan")


def run(n: int, n_shards: int, n_queries: int, seed: int) -> dict[str, Any]:
    warm_up()
    cat = Catalogue(seed)
    items = cat.items(n)
    queries = cat.items(n_queries)
    t = time.perf_counter()
    whole = IndexSnapshot.from_items(items, generation=1)
    whole_build_s = time.perf_counter() - t
    owner = items.ids % n_shards
    t = time.perf_counter()
    shards = [IndexSnapshot.from_items(items.take(np.flatnonzero(owner == i)), generation=1) for i in range(n_shards)]
    shard_build_s = time.perf_counter() - t
    del items
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
    print(f"merged answers different from the unsharded one: {r['mismatches']} of {2 * r['queries']}")


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
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    r = run(args.items, args.shards, args.queries, args.seed)
    if args.json:
        print(json.dumps(r))
    else:
        _print_table(r)
    return 0 if r["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
