"""`lookalike evaluate edits`: "this, but <attribute>" and "this, in <colour>" on a split of ../shared/data.

Protocol:
- index: every item of `--split` (default test), codes and colour histograms from the shipped feature extractor
  (shared.vision.features.extract_features on the ground-truth ROI, as ingestion does), attributes = the item's
  label attributes (shared.taxonomy.labels: catalogue columns and title), in an IndexSnapshot searched by
  shared.index.refine.refined_search, the daemon's own code path;
- queries: the split's products with a colour label; each is searched with k = 11 and itself dropped;
- edits, seeded per query: "attribute": require one non-colour attribute that applies to the query's category, is on
  >= 10 other items of that category and not on the query; "colour": a taxonomy colour the query lacks, on >= 10
  items of its category, as the API sends it (require colour.<name>; the colour's swatch histogram replaces the
  photo's in the colour term, at the photo's tuned weight; other weights are compared in extra rows);
- figures: share of the top 10 that satisfy the edit, judged on the labels (the index holds the labels, so this
  checks the exactness of the posting-list constraint); mean appearance distance (hamming / n_bits) of the edited
  top 10 over that of the unedited search restricted to the query's category (also top 10, query dropped); the same
  ratio for the edits that >= 100 listings satisfy; and a bound: the ratio when the constrained listings are ranked
  by appearance alone, which no ranking restricted exactly to the edit can beat (what is left above 1 is the
  catalogue: few listings of that category carry the attribute).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

K = 10
MIN_ITEMS = 10  # an edit must be satisfiable by at least a page of items
SEED = 1609
CACHE_DIR = Path("var") / "edits"


def _features(extractor, items, data_dir: Path, split: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """codes uint8 (n, n_bytes), colours float32 (n, bins) of the items, cached under var/edits/."""
    from shared.vision.features import extract_features
    from training.retrieval.data import data_tag, open_image

    key = hashlib.sha1(f"{data_tag(data_dir)}|{extractor.version}|{split}|{len(items)}".encode()).hexdigest()[:12]
    path = CACHE_DIR / f"{split}-{key}.npz"
    if path.exists():
        z = np.load(path)
        return z["codes"], z["colours"]
    codes, colours = [], []
    t0 = time.perf_counter()
    for s in range(0, len(items), batch):
        part = items[s : s + batch]
        f = extract_features(extractor, [open_image(it.path) for it in part], [it.roi for it in part],
                             batch_size=batch)
        codes.append(f.codes)
        colours.append(f.colours)
        if s // batch % 20 == 0:
            logger.info("features %d/%d (%.0f s)", s + len(part), len(items), time.perf_counter() - t0)
    out = np.concatenate(codes), np.concatenate(colours).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, codes=out[0], colours=out[1])
    return out


def evaluate(data_dir: Path, *, split: str, colour_weights: tuple[float, ...], limit: int | None,
             batch: int) -> dict:
    from api.refine import TARGET_COLOUR_WEIGHT
    from shared.colours import SWATCHES, colour_histogram_of
    from shared.index.snapshot import IndexSnapshot
    from shared.index.refine import Refinement, refined_search
    from shared.taxonomy import load_taxonomy
    from shared.taxonomy.labels import load_labeled
    from shared.index.colours import colour_distances, quantize_colours
    from shared.vision.features import FeatureExtractor
    from training.retrieval.data import ground_truth_roi

    tax = load_taxonomy()
    labeled = [it for it in load_labeled(data_dir, splits=(split,)) if it.category_id is not None]

    class _Item:  # what _features needs: a path and the ground-truth ROI
        def __init__(self, it):
            self.path, self.roi = it.path, ground_truth_roi(it)

    extractor = FeatureExtractor.load()
    codes, colours = _features(extractor, [_Item(it) for it in labeled], data_dir, split, batch)
    ids = np.arange(1, len(labeled) + 1, dtype=np.int64)
    cats = np.array([it.category_id for it in labeled], dtype=np.int64)
    attrs = [sorted(set(it.attribute_ids)) for it in labeled]
    snap = IndexSnapshot.build(ids, cats, attrs, codes, colours, generation=1, n_bits=extractor.n_bits)
    w0 = extractor.colour_weight
    colour_ids = {tax.attribute(f"colour.{c}").id for c in SWATCHES}
    group_of = [a.group for a in tax.attributes]

    # Per category: how many items carry each attribute.
    counts: dict[int, dict[int, int]] = {}
    for c, a_list in zip(cats.tolist(), attrs):
        d = counts.setdefault(c, {})
        for a in a_list:
            d[a] = d.get(a, 0) + 1

    queries = [i for i, it in enumerate(labeled) if it.dataset == "myntra_small" and set(attrs[i]) & colour_ids]
    if limit:
        queries = queries[:limit]
    weights = (None,) + tuple(w for w in dict.fromkeys(colour_weights) if w != w0)  # None: the tuned weight
    rows: dict[str, dict[str, list[float]]] = {}
    per_query = []

    def top(i: int, ref: Refinement, w: float) -> tuple[np.ndarray, np.ndarray, int]:
        out = refined_search(snap, code=codes[i], colour=colours[i], category_id=int(cats[i]),
                             attribute_ids=attrs[i], k=K + 1, colour_weight=w, refinement=ref)
        keep = out.result.listing_ids != ids[i]
        return out.result.listing_ids[keep][:K], out.result.appearance[keep][:K], out.matched

    t0 = time.perf_counter()
    for i in queries:
        rng = random.Random(f"{SEED}:{labeled[i].id}")
        c = int(cats[i])
        own = set(attrs[i])
        base_ids, base_app, _ = top(i, Refinement(), w0)
        if len(base_ids) < K:
            continue
        avail = {a: n - (a in own) for a, n in counts[c].items()}
        attr_choices = sorted(a for a, n in avail.items() if n >= MIN_ITEMS and a not in own
                              and a not in colour_ids and group_of[a] != "colour" and tax.applies(a, c))
        colour_choices = sorted(a for a, n in avail.items() if n >= MIN_ITEMS and a in colour_ids and a not in own)
        edits = []
        if attr_choices:
            edits.append(("attribute", rng.choice(attr_choices), None))
        if colour_choices:
            a = rng.choice(colour_choices)
            edits.append(("colour", a, colour_histogram_of(SWATCHES[tax.attribute(a).key.split(".", 1)[1]])))
        for kind, a, hist in edits:
            for w in (weights if kind == "colour" else (None,)) + ("bound",):
                if w == "bound":  # appearance alone inside the constraint: the best top-10 appearance possible
                    ref = Refinement(require=(a,), colour_weight=0.0)
                else:
                    ref = Refinement(require=(a,), target_colour=hist, colour_weight=w)
                got_ids, got_app, matched = top(i, ref, w0)
                name = kind if w is None else f"{kind}@w={w:g}" if w != "bound" else f"{kind} bound"
                r = rows.setdefault(name, {"satisfied": [], "app": [], "base_app": [], "colour_dist": [],
                                           "big": []})
                r["satisfied"].extend(a in attrs[int(x) - 1] for x in got_ids)
                r["app"].append(float(got_app.mean()))
                r["base_app"].append(float(base_app.mean()))
                r["big"].append(matched >= 100)
                if hist is not None:
                    r["colour_dist"].append(float(colour_distances(quantize_colours(hist[None])[0],
                                                                   quantize_colours(colours[got_ids - 1])).mean()))
                if w is None:
                    per_query.append({"query": labeled[i].id, "edit": kind, "attribute": tax.attribute(a).key,
                                      "n_top": int(len(got_ids))})
    table = {}
    for name, r in rows.items():
        table[name] = {
            "n_queries": len(r["app"]),
            "satisfied_at_10": round(float(np.mean(r["satisfied"])), 4) if r["satisfied"] else None,
            "appearance_top10": round(float(np.mean(r["app"])), 4),
            "appearance_top10_unedited": round(float(np.mean(r["base_app"])), 4),
            "appearance_ratio": round(float(np.mean(r["app"]) / np.mean(r["base_app"])), 4),
            "n_queries_100": int(np.sum(r["big"])),
            "appearance_ratio_100": (round(float(np.mean(np.array(r["app"])[r["big"]])
                                                 / np.mean(np.array(r["base_app"])[r["big"]])), 4)
                                     if any(r["big"]) else None),
            "target_colour_distance_top10": round(float(np.mean(r["colour_dist"])), 4) if r["colour_dist"] else None,
        }
    shipped = ["attribute", "colour"]
    sat = [x for n in shipped for x in rows.get(n, {}).get("satisfied", [])]
    app = [x for n in shipped for x in rows.get(n, {}).get("app", [])]
    base = [x for n in shipped for x in rows.get(n, {}).get("base_app", [])]
    return {
        "split": split, "n_index": len(labeled), "n_queries": len(queries),
        "satisfied_at_10": round(float(np.mean(sat)), 4) if sat else None,
        "appearance_ratio": round(float(np.mean(app) / np.mean(base)), 4) if base else None,
        "appearance_ratio_100": _ratio(rows, shipped, "big"),
        "appearance_ratio_bound": _ratio(rows, ["attribute bound", "colour bound"]),
        "colour_weight": w0, "hex_or_palette_colour_weight": TARGET_COLOUR_WEIGHT,
        "rows": table,
        "config": {"features": extractor.version, "n_bits": extractor.n_bits, "k": K, "min_items": MIN_ITEMS,
                   "seed": SEED, "attributes": "label attributes (shared.taxonomy.labels)",
                   "seconds": round(time.perf_counter() - t0, 1)},
    }


def _ratio(rows: dict, names: list[str], only: str | None = None) -> float | None:
    app, base = [], []
    for n in names:
        r = rows.get(n)
        if r is None:
            continue
        sel = np.array(r[only], bool) if only else np.ones(len(r["app"]), bool)
        app += list(np.array(r["app"])[sel])
        base += list(np.array(r["base_app"])[sel])
    return round(float(np.mean(app) / np.mean(base)), 4) if base else None


def format_table(res: dict) -> str:
    lines = [f"edits, split {res['split']}: {res['n_queries']} queries (products with a colour label) against "
             f"{res['n_index']} items; top {res['config']['k']}, query dropped",
             f"shipped: satisfied@10 {res['satisfied_at_10']}, appearance ratio vs unedited in-category "
             f"{res['appearance_ratio']} (edits with >= 100 listings: {res['appearance_ratio_100']}; appearance-only "
             f"bound {res['appearance_ratio_bound']}); colour weight {res['colour_weight']}", "",
             f"{'edit':18s} {'queries':>7s} {'sat@10':>7s} {'app@10':>7s} {'unedited':>8s} {'ratio':>6s} "
             f"{'q>=100':>6s} {'ratio100':>8s} {'target col':>10s}"]
    for name, r in res["rows"].items():
        tc = "-" if r["target_colour_distance_top10"] is None else f"{r['target_colour_distance_top10']:.4f}"
        r100 = "-" if r["appearance_ratio_100"] is None else f"{r['appearance_ratio_100']:.3f}"
        lines.append(f"{name:18s} {r['n_queries']:7d} {r['satisfied_at_10']:7.4f} {r['appearance_top10']:7.4f} "
                     f"{r['appearance_top10_unedited']:8.4f} {r['appearance_ratio']:6.3f} {r['n_queries_100']:6d} "
                     f"{r100:>8s} {tc:>10s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lookalike evaluate edits", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings.data_dir)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--colour-weights", default="0.1,0.3,0.5", help="target colour weights to compare")
    p.add_argument("--limit", type=int, default=None, help="at most this many queries")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(max(1, args.threads))
    from shared.config import load_settings

    data_dir = args.data or load_settings().data_dir
    res = evaluate(Path(data_dir), split=args.split,
                   colour_weights=tuple(float(x) for x in args.colour_weights.split(",") if x),
                   limit=args.limit, batch=args.batch)
    print(json.dumps(res) if args.json else format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
