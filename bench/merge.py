"""Benchmark: freshness while the delta is merged, inline (in the change loop) vs beside it (index_daemon.merging).

Usage:
    .venv/bin/python -m bench.merge                     # 3M items, table
    .venv/bin/python -m bench.merge --items 1M --json   # one JSON object

The synthetic catalogue of bench.postings. The delta is filled to just under the merge threshold, then the change
loop runs as the daemon's does: every 200 ms a batch of 100 changed listings (new ones and updates) is applied and
swapped in. A listing's freshness is the time from its change arriving (uniform within a poll interval) to the
snapshot holding it being served: the wait for the next poll, plus the time the loop spends before that poll (an
inline merge blocks it), plus the apply. Inline: IndexSnapshot.apply merges when the threshold is crossed.
Background: BackgroundMerger builds the merge on a thread and swaps it in with the changes since replayed.
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
from bench.shards import _count  # noqa: E402
from index_daemon.merging import BackgroundMerger  # noqa: E402
from shared.index.snapshot import IndexSnapshot  # noqa: E402

POLL_S = 0.2
BATCH = 100


def _loop(snap: IndexSnapshot, cat: Catalogue, n_batches: int, merger: BackgroundMerger | None) -> dict[str, Any]:
    """Run the change loop; per batch, how long the loop was busy (apply, plus any merge) before its swap."""
    busy, merged_at = [], None
    t_start = time.perf_counter()
    for b in range(n_batches):
        ups = cat.items(BATCH)
        t = time.perf_counter()
        if merger is None:
            before = snap.delta_size
            snap = snap.apply(ups, (), sequence=b + 1)
            if snap.delta_size < before and merged_at is None:
                merged_at = time.perf_counter() - t_start
        else:
            snap = merger.apply(snap, ups, np.empty(0, np.int64), sequence=b + 1)
            if merger.merges and merged_at is None:
                merged_at = time.perf_counter() - t_start
        busy.append(time.perf_counter() - t)
        time.sleep(max(0.0, POLL_S - busy[-1]))  # the poll interval (a slow batch delays the next one)
    # A change arriving during poll interval b (its wait, or a long busy period) is served at the end of interval
    # b+1's apply: sample arrivals uniformly in time over the loop's timeline.
    rng = np.random.default_rng(0)
    fresh = []
    starts = np.cumsum([0.0] + [max(POLL_S, x) for x in busy[:-1]])
    ends = starts + np.maximum(POLL_S, busy)
    for s, e, nb in zip(starts[:-1], ends[:-1], busy[1:]):
        arrivals = rng.uniform(s, e, max(1, round(20 * (e - s) / POLL_S)))  # uniform in time
        fresh += list(e - arrivals + nb)
    return {"p50_s": round(float(np.percentile(fresh, 50)), 3), "p95_s": round(float(np.percentile(fresh, 95)), 3),
            "max_s": round(float(np.max(fresh)), 3), "longest_batch_s": round(float(max(busy)), 3),
            "merged": merged_at is not None}


def run(n: int, n_batches: int, seed: int) -> dict[str, Any]:
    cat = Catalogue(seed)
    base = IndexSnapshot.from_items(cat.items(n), generation=1)
    threshold = max(20_000, int(0.02 * n))
    pre = base.apply(cat.items(threshold - BATCH // 2), (), sequence=0, merge=False)  # just under the threshold
    out: dict[str, Any] = {"items": n, "delta_threshold": threshold, "batch": BATCH, "poll_s": POLL_S,
                           "batches": n_batches, "cpus": os.cpu_count()}
    out["inline"] = _loop(pre, cat, n_batches, None)
    out["background"] = _loop(pre, cat, n_batches, BackgroundMerger())
    out["load_avg_1m"] = round(os.getloadavg()[0], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.merge", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=_count, default=3_000_000)
    parser.add_argument("--batches", type=int, default=40, help="poll intervals to run (the merge starts in the first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = run(args.items, args.batches, args.seed)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['items']:,} items, delta threshold {r['delta_threshold']:,}, {r['batch']} changes every "
          f"{r['poll_s']} s for {r['batches']} polls; {r['cpus']} CPUs, load {r['load_avg_1m']}")
    print(f"{'merge':<11} {'fresh p50 s':>12} {'p95 s':>8} {'max s':>8} {'longest poll s':>15} {'merged':>7}")
    for k in ("inline", "background"):
        v = r[k]
        print(f"{k:<11} {v['p50_s']:>12} {v['p95_s']:>8} {v['max_s']:>8} {v['longest_batch_s']:>15} {v['merged']!s:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
