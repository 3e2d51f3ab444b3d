"""Benchmark: which rows should a query scan? Posting strategies vs the whole category, colour fused vs re-ranked.

Usage:
    .venv/bin/python -m bench.postings                 # 1M items, table
    .venv/bin/python -m bench.postings --n 3000000     # the 3M run (the paper's index size)
    .venv/bin/python -m bench.postings --json          # one JSON object
    .venv/bin/python -m bench.postings --part edits    # only the refinements (edited search, facets)

Synthetic catalogue shaped like the paper's: 19 categories with Zipf-skewed sizes (largest ~20%); each category has
a vocabulary of 40 of ~90 attributes, and every item draws 8-12 of them Zipf-like (a few attributes are on most items
of a category, most are rare). Codes are correlated with category and attributes: the float feature is a category
centre + 0.35 x the sum of the item's attribute centres + unit noise, binarised at 0 (256 bits). Colours are
52-bin histograms. Queries are fresh items from the same generator (not in the index), in proportion to category size.

For each strategy: recall@100 against the exact Hamming top-100 inside the query's category (ties by listing id),
the share of the category's rows whose codes were compared, and p50/p95 latency of IndexSnapshot.search (everything
a daemon request does after decoding). Then colour: the fused exact blended scan against re-ranking a Hamming
shortlist of R, recall against the exact blended top-100. Then apply() and RAM figures.

Edits (shared.index.refine, what the daemon runs for an edited request): "require" one attribute of the query's
category that the query lacks plus a target colour (colour weight 0.3, the API's), "exclude" one it has, "facets"
an unedited search counting facets over the 1000 best; recall@100 against a brute-force ranking of the listings
that satisfy the edit, and the share of the category satisfying it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.codes.binarize import binarize  # noqa: E402
from shared.codes.hamming import hamming_distances, top_k  # noqa: E402
from shared.index.arrays import ItemArrays  # noqa: E402
from shared.index.colours import colour_distances  # noqa: E402
from shared.index.load import arrays_from_records, arrays_from_rows  # noqa: E402
from shared.index.snapshot import IndexSnapshot, warm_up  # noqa: E402

N_CATEGORIES = 19
N_ATTRIBUTES = 90
VOCAB_PER_CATEGORY = 40
N_BITS = 256
N_BINS = 52
K = 100


class Catalogue:
    """A seeded generator of items (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        share = 1.0 / np.arange(1, N_CATEGORIES + 1) ** 0.9
        self.category_share = share / share.sum()
        self.vocab = np.stack([rng.choice(N_ATTRIBUTES, VOCAB_PER_CATEGORY, replace=False)
                               for _ in range(N_CATEGORIES)])
        zipf = 1.0 / np.arange(1, VOCAB_PER_CATEGORY + 1)
        self.attr_p = zipf / zipf.sum()
        self.cat_centres = rng.standard_normal((N_CATEGORIES, N_BITS)).astype(np.float32)
        self.attr_centres = rng.standard_normal((N_ATTRIBUTES, N_BITS)).astype(np.float32)
        self.next_id = 1

    def items(self, n: int, chunk: int = 100_000) -> ItemArrays:
        parts = [self._chunk(min(chunk, n - s)) for s in range(0, n, chunk)]
        return ItemArrays.concatenate(parts)

    def _chunk(self, n: int) -> ItemArrays:
        rng = self.rng
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64) * 7 + 3  # sparse, like real listing ids
        self.next_id += n
        rng.shuffle(ids)
        cats = rng.choice(N_CATEGORIES, size=n, p=self.category_share)
        counts = rng.integers(8, 13, size=n)
        # Zipf draws without replacement: Gumbel top-k on log-probabilities, vectorised over items.
        g = np.log(self.attr_p)[None, :] - np.log(-np.log(rng.random((n, VOCAB_PER_CATEGORY))))
        ranks = np.argsort(-g, axis=1)
        take = np.arange(VOCAB_PER_CATEGORY)[None, :] < counts[:, None]
        local = ranks[take]  # row-major: each item's draws, in order
        item_of = np.repeat(np.arange(n), counts)
        attrs = self.vocab[cats[item_of], local]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        incidence = np.zeros((n, N_ATTRIBUTES), dtype=np.float32)
        incidence[item_of, attrs] = 1.0
        feats = self.cat_centres[cats] + 0.35 * (incidence @ self.attr_centres)
        feats += rng.standard_normal(feats.shape, dtype=np.float32)
        hists = rng.dirichlet(np.full(N_BINS, 0.2), size=n).astype(np.float32)
        return ItemArrays.create(ids, cats + 1, (offsets, attrs.astype(np.int64)), binarize(feats), hists)


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p)) if xs else float("nan")


def _strategies() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("category", {"strategy": "category"}),
        ("union", {"strategy": "union", "min_candidates": 0}),
        ("vote>=2", {"strategy": "vote", "min_votes": 2, "min_candidates": 0}),
        ("vote>=3", {"strategy": "vote", "min_votes": 3, "min_candidates": 0}),
        ("vote>=4", {"strategy": "vote", "min_votes": 4, "min_candidates": 0}),
        ("vote>=3|fb1000", {"strategy": "vote", "min_votes": 3, "min_candidates": 1000}),
        ("vote>=4|fb1000", {"strategy": "vote", "min_votes": 4, "min_candidates": 1000}),
        ("intersection", {"strategy": "intersection", "min_candidates": 0}),
        ("intersection|fb1000", {"strategy": "intersection", "min_candidates": 1000}),
    ]


def measure_strategies(snap: IndexSnapshot, items: ItemArrays, queries: ItemArrays) -> list[dict[str, Any]]:
    """recall@100 vs exact in-category Hamming top-100, share of category scanned, latency, per strategy."""
    base = snap._base  # the bench looks inside on purpose: category ranges for the ground truth
    truths = []
    for i in range(len(queries)):
        c, lo, hi = base.category_range(int(queries.category_ids[i]))
        _, r = top_k(queries.codes[i], base.codes[:, :32] if base.codes.shape[1] != 32 else base.codes, K,
                     start=lo, stop=hi)
        truths.append((set(base.ids[r].tolist()), hi - lo))
    out = []
    for name, kw in _strategies():
        recalls, shares, lat, fallbacks = [], [], [], 0
        for i in range(len(queries)):
            o = queries.attr_offsets
            q_attrs = queries.attribute_ids[o[i]:o[i + 1]].tolist()
            t = time.perf_counter()
            res = snap.search(code=queries.codes[i], category_id=int(queries.category_ids[i]),
                              attribute_ids=q_attrs, k=K, **kw)
            lat.append((time.perf_counter() - t) * 1e3)
            truth, size = truths[i]
            recalls.append(len(truth & set(res.listing_ids.tolist())) / max(len(truth), 1))
            shares.append(res.scanned / max(size, 1))
            fallbacks += res.strategy != kw["strategy"]
        out.append({
            "strategy": name, "recall_at_100": round(float(np.mean(recalls)), 4),
            "recall_p5": round(_pct(recalls, 5), 4), "scanned_share": round(float(np.mean(shares)), 4),
            "p50_ms": round(_pct(lat, 50), 3), "p95_ms": round(_pct(lat, 95), 3),
            "fallback_share": round(fallbacks / len(queries), 3),
        })
    return out


def measure_colour(snap: IndexSnapshot, queries: ItemArrays, weights: tuple[float, ...]) -> list[dict[str, Any]]:
    """Fused exact blended scan vs Hamming top-R re-ranked by the blended score, per colour weight."""
    base = snap._base
    out = []
    for w in weights:
        rows: dict[str, dict[str, list[float]]] = {}
        for i in range(len(queries)):
            q, qc = queries.codes[i], queries.colours[i]
            cat = int(queries.category_ids[i])
            c, lo, hi = base.category_range(cat)
            # Exact blended top-100 by brute force over the category (independent of the kernels' pruning).
            ham = hamming_distances(q, base.codes[lo:hi])
            l1 = np.minimum(np.abs(base.colours[lo:hi].astype(np.int16) - qc.astype(np.int16)).sum(axis=1), 510)
            score = (1 - w) / N_BITS * ham + w / 510 * l1
            truth = set(base.ids[lo:hi][np.lexsort((base.ids[lo:hi], score))[:K]].tolist())
            t = time.perf_counter()
            res = snap.search(code=q, colour=qc, category_id=cat, k=K, colour_weight=w)
            fused_ms = (time.perf_counter() - t) * 1e3
            rows.setdefault("fused", {"recall": [], "ms": []})
            rows["fused"]["recall"].append(len(truth & set(res.listing_ids.tolist())) / K)
            rows["fused"]["ms"].append(fused_ms)
            for depth in (200, 500, 2000):
                t = time.perf_counter()
                _, r = top_k(q, base.codes, depth, start=lo, stop=hi)
                s = (1 - w) / N_BITS * (np.unpackbits(base.codes[r] ^ q, axis=1).sum(axis=1)) + w * np.minimum(
                    colour_distances(qc, base.colours[r]), 1.0)
                top = base.ids[r][np.lexsort((base.ids[r], s))[:K]]
                ms = (time.perf_counter() - t) * 1e3
                key = f"rerank{depth}"
                rows.setdefault(key, {"recall": [], "ms": []})
                rows[key]["recall"].append(len(truth & set(top.tolist())) / K)
                rows[key]["ms"].append(ms)
        for method, v in rows.items():
            out.append({"colour_weight": w, "method": method, "recall_at_100": round(float(np.mean(v["recall"])), 4),
                        "p50_ms": round(_pct(v["ms"], 50), 3), "p95_ms": round(_pct(v["ms"], 95), 3)})
    return out


def measure_edits(snap: IndexSnapshot, queries: ItemArrays, *, n_check: int = 30) -> list[dict[str, Any]]:
    """p50/p95 of refined_search for require + target colour, exclude, and facets over 1000; recall vs brute force."""
    from shared.index.refine import Refinement, _facets, refined_search

    base = snap._base
    rng = np.random.default_rng(5)
    target = np.zeros(N_BINS, np.float32)
    target[7] = 1.0
    kinds: dict[str, dict[str, list[float]]] = {}
    for i in range(len(queries)):
        q, qc, cat = queries.codes[i], queries.colours[i], int(queries.category_ids[i])
        c, lo, hi = base.category_range(cat)
        own = set(queries.attribute_ids[queries.attr_offsets[i]:queries.attr_offsets[i + 1]].tolist())
        present = [int(a) for a in base.attr_keys if base.posting(int(a), c).shape[0] and int(a) not in own]
        edits = {
            "require+colour": Refinement(require=(int(rng.choice(present)),), target_colour=target,
                                         colour_weight=0.3),
            "exclude": Refinement(exclude=(int(rng.choice(sorted(own))),)),
            "facets1000": Refinement(facets=1000),
            "plain k=1000": Refinement(),
        }
        for name, ref in edits.items():
            kk = 1000 if name == "plain k=1000" else K
            t, tc = time.perf_counter(), time.thread_time()
            out = refined_search(snap, code=q, colour=qc, category_id=cat, k=kk, colour_weight=0.1, refinement=ref)
            ms, cpu_ms = (time.perf_counter() - t) * 1e3, (time.thread_time() - tc) * 1e3
            row = kinds.setdefault(name, {"ms": [], "cpu": [], "recall": [], "matched": []})
            row["ms"].append(ms)
            row["cpu"].append(cpu_ms)
            if ref.facets:  # the counting alone, on the 1000 hits the facet search ranked
                best = refined_search(snap, code=q, colour=qc, category_id=cat, k=1000, colour_weight=0.1)
                t, tc = time.perf_counter(), time.thread_time()
                _facets(snap, best.result.listing_ids, cat)
                only = kinds.setdefault("facet counting only", {"ms": [], "cpu": [], "recall": [], "matched": []})
                only["ms"].append((time.perf_counter() - t) * 1e3)
                only["cpu"].append((time.thread_time() - tc) * 1e3)
            row["matched"].append(out.matched / (hi - lo))
            if i < n_check and kk == K:  # exact check: brute force over the rows satisfying the edit
                rows = np.arange(lo, hi)
                has = base.has_attributes(rows, list(ref.require + ref.exclude))
                ok = has[:, : len(ref.require)].all(axis=1) & ~has[:, len(ref.require):].any(axis=1)
                rows = rows[ok]
                w = 0.1 if ref.colour_weight is None else ref.colour_weight
                qcol = qc if ref.target_colour is None else np.rint(ref.target_colour * 255).astype(np.uint8)
                ham = hamming_distances(q, base.codes[rows][:, :32])
                l1 = np.minimum(np.abs(base.colours[rows].astype(np.int16) - qcol.astype(np.int16)).sum(axis=1), 510)
                score = (1 - w) / N_BITS * ham + w / 510 * l1
                truth = set(base.ids[rows][np.lexsort((base.ids[rows], score))[:K]].tolist())
                row["recall"].append(len(truth & set(out.result.listing_ids.tolist())) / max(min(K, len(truth)), 1))
    # cpu_p50_ms: the thread's CPU time (the kernels run in the calling thread), which the other jobs sharing the
    # dev box inflate far less than wall time.
    return [{"edit": name, "p50_ms": round(_pct(v["ms"], 50), 3), "p95_ms": round(_pct(v["ms"], 95), 3),
             "cpu_p50_ms": round(_pct(v["cpu"], 50), 3),
             "recall_at_100": round(float(np.mean(v["recall"])), 4) if v["recall"] else None,
             "matched_share": round(float(np.mean(v["matched"])), 3) if v["matched"] else None}
            for name, v in kinds.items()]


def measure_apply(snap: IndexSnapshot, cat: Catalogue) -> dict[str, Any]:
    """Cost of a typical 200 ms delta (100 upserts of which 50 updates, 20 deletes), of a large delta, of a merge."""
    rng = np.random.default_rng(9)
    base_ids = snap._base.ids
    out: dict[str, Any] = {}
    times = []
    s = snap
    for _ in range(20):
        new = cat.items(50)
        upd = cat.items(50)
        upd = ItemArrays(rng.choice(base_ids, 50, replace=False), upd.category_ids, upd.attr_offsets,
                         upd.attribute_ids, upd.codes, upd.colours)
        upd_ids = set(upd.ids.tolist())
        dels = [int(x) for x in rng.choice(base_ids, 40, replace=False) if int(x) not in upd_ids][:20]
        t = time.perf_counter()
        s = s.apply(ItemArrays.concatenate([new, upd]), dels, merge=False)
        times.append((time.perf_counter() - t) * 1e3)
    out["apply_small_p50_ms"] = round(_pct(times, 50), 2)
    out["apply_small_max_ms"] = round(max(times), 2)
    big = cat.items(19_000)
    t = time.perf_counter()
    s2 = s.apply(big, merge=False)
    out["apply_with_20k_delta_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    t = time.perf_counter()
    s2.apply(cat.items(100), merge=False)
    out["apply_small_on_20k_delta_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    t = time.perf_counter()
    merged = s2.apply(merge=True)
    out["merge_ms"] = round((time.perf_counter() - t) * 1e3, 1)
    out["items_after"] = merged.n_items
    return out


def measure_load(items: ItemArrays, n_rows: int) -> dict[str, Any]:
    """Client-side rows -> arrays throughput on psycopg2-shaped objects (per-row tuples, and BULK_LOAD_SQL chunks),
    then the snapshot build. Postgres is not in these figures (real Postgres 16 on this box: ~180-205k/s with
    load_items, ~45-63k/s per row)."""
    sub = items.take(np.arange(min(n_rows, len(items))))
    o = sub.attr_offsets
    attr_lists = [sub.attribute_ids[o[i]:o[i + 1]].tolist() for i in range(len(sub))]
    rows = list(zip(sub.ids.tolist(), sub.category_ids.tolist(), attr_lists,
                    [memoryview(b) for b in (c.tobytes() for c in sub.codes)],
                    [memoryview(b) for b in (c.tobytes() for c in sub.colours)]))
    t = time.perf_counter()
    arrays_from_rows(rows, n_bytes=32, n_bins=N_BINS)
    per_row_s = time.perf_counter() - t
    chunk = 100_000
    rec = np.dtype([("id", ">i8"), ("cat", ">i2"), ("n_attr", ">i2"), ("code", "u1", (32,)),
                    ("colour", "u1", (N_BINS,))])
    chunks = []
    for s in range(0, len(sub), chunk):  # what BULK_LOAD_SQL returns per chunk
        p = sub.take(np.arange(s, min(s + chunk, len(sub))))
        r = np.zeros(len(p), dtype=rec)
        r["id"], r["cat"], r["n_attr"], r["code"], r["colour"] = (p.ids, p.category_ids, np.diff(p.attr_offsets),
                                                                  p.codes, p.colours)
        chunks.append((r.tobytes(), ",".join(map(str, p.attribute_ids.tolist()))))
    t = time.perf_counter()
    parts = [arrays_from_records(*x, n_bytes=32, n_bins=N_BINS) for x in chunks]
    got = ItemArrays.concatenate(parts)
    cols_s = time.perf_counter() - t
    t = time.perf_counter()
    IndexSnapshot.from_items(got, generation=1)
    build_s = time.perf_counter() - t
    n = len(sub)
    return {"rows": n, "per_row_items_per_s": round(n / per_row_s), "records_items_per_s": round(n / cols_s),
            "build_s": round(build_s, 2), "per_row_plus_build_items_per_s": round(n / (per_row_s + build_s))}


def run(n: int, n_queries: int, seed: int, part: str = "all") -> dict[str, Any]:
    cat = Catalogue(seed)
    t = time.perf_counter()
    items = cat.items(n)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    snap = IndexSnapshot.from_items(items, generation=1)
    build_s = time.perf_counter() - t
    queries = cat.items(n_queries)
    sizes = np.diff(snap._base.cat_offsets)
    result: dict[str, Any] = {
        "n": n, "queries": n_queries, "generate_s": round(gen_s, 1), "build_s": round(build_s, 2),
        "bytes_per_item": round(snap.bytes_per_item, 1),
        "attributes_per_item": round(len(items.attribute_ids) / n, 2),
        "largest_category_share": round(float(sizes.max() / n), 3),
        "smallest_category_share": round(float(sizes.min() / n), 4),
    }
    result["edits"] = measure_edits(snap, queries)
    if part == "edits":
        return result
    result["strategies"] = measure_strategies(snap, items, queries)
    result["colour"] = measure_colour(snap, queries.take(np.arange(min(n_queries, 100))), (0.1, 0.3, 0.5))
    result["apply"] = measure_apply(snap, cat)
    result["load"] = measure_load(items, min(n, 1_000_000))
    return result


def _print_table(r: dict[str, Any]) -> None:
    print(f"N={r['n']:,}  queries={r['queries']}  build {r['build_s']} s  RAM {r['bytes_per_item']} B/item  "
          f"attrs/item {r['attributes_per_item']}  categories {r['smallest_category_share']:.2%}.."
          f"{r['largest_category_share']:.1%} of items")
    print(f"{'edit':<22} {'recall@100':>10} {'matched':>8} {'p50 ms':>7} {'p95 ms':>7} {'cpu p50':>7}")
    for e in r["edits"]:
        rec = "-" if e["recall_at_100"] is None else f"{e['recall_at_100']:.4f}"
        share = "-" if e["matched_share"] is None else f"{e['matched_share']:.3f}"
        print(f"{e['edit']:<22} {rec:>10} {share:>8} {e['p50_ms']:>7.3f} {e['p95_ms']:>7.3f} {e['cpu_p50_ms']:>7.3f}")
    if "strategies" not in r:
        return
    print(f"{'strategy':<22} {'recall@100':>10} {'p5 recall':>9} {'scanned':>8} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'fallback':>8}")
    for s in r["strategies"]:
        print(f"{s['strategy']:<22} {s['recall_at_100']:>10.4f} {s['recall_p5']:>9.3f} {s['scanned_share']:>8.3f} "
              f"{s['p50_ms']:>7.3f} {s['p95_ms']:>7.3f} {s['fallback_share']:>8.2f}")
    print(f"\n{'colour w':>8} {'method':<12} {'recall@100':>10} {'p50 ms':>7} {'p95 ms':>7}")
    for c in r["colour"]:
        print(f"{c['colour_weight']:>8} {c['method']:<12} {c['recall_at_100']:>10.4f} {c['p50_ms']:>7.3f} "
              f"{c['p95_ms']:>7.3f}")
    print("\napply:", json.dumps(r["apply"]))
    print("load: ", json.dumps(r["load"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items in the index (3000000 for the 3M run)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--part", choices=("all", "edits"), default="all",
                        help="edits: only the refinement timings (edited search, facets)")
    args = parser.parse_args(argv)
    warm_up()
    r = run(args.n, args.queries, args.seed, args.part)
    if args.json:
        print(json.dumps(r))
    else:
        _print_table(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
