"""`lookalike evaluate retrieval`: label-based mAP / P@k and altered-copy P@1 / R@10 of the shipped features.

Protocol (all items of the data folder are indexed; each query is searched against every item but itself):
- queries: the items of `--split` (default test); ROI = ground truth (Colorful Fashion: the largest box of the
  image's category; product photos: the whole image); the detector's ROIs are not used here;
- relevance: same taxonomy category, and the same colour (Myntra baseColour mapped to the taxonomy colour attribute)
  when the query has a colour label; queries without one (clothing dataset, Colorful Fashion, 'Multi'/'NA') are
  judged on category only;
- altered copies (UKB-style): each query's ROI crop is altered (crop to 80-95% per side, rescale x0.6-1.4, padding
  on a random colour, brightness x0.8-1.2, JPEG 30-60; seeded by item id) and searched against the full index,
  original included: P@1 = the original ranks first, R@10 = it is in the top 10 (ties by row number);
- rows: raw descriptor (float, cosine), projected feature (float, cosine), appearance codes only (Hamming), colour
  only (half L1 of the uint8-stored histograms), combined (the shipped distance, the top-level figures);
- street-to-shop: the split's Colorful Fashion street photos, cropped to the ground-truth box of the photo's
  category, searched against the catalogue items only (Myntra + clothing photos, every split): relevance = same
  category (and colour where both are labelled; street photos carry no colour label, so category): mAP, P@1, P@10.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from shared.codes.binarize import binarize
from shared.config import load_settings
from shared.vision.features import (FeatureExtractor, dequantize_colours, descriptors_from_pooled, extract_features,
                                    quantize_colours)
from shared.vision.rerank import RERANK_DEPTH
from training.retrieval import engine
from training.retrieval.data import load_items, open_image, relevance, set_threads
from training.retrieval.tune import load_cached

logger = logging.getLogger(__name__)

RELEVANCE_RULE = ("same taxonomy category AND same colour (Myntra baseColour -> taxonomy colour attribute) when the "
                  "query has a colour label; category only otherwise (clothing dataset, Colorful Fashion, "
                  "Multi/NA)")
ROI_RULE = "ground truth: Colorful Fashion = largest box of the image's category, product photos = whole image"


def _metrics(dist: np.ndarray, dist_alt: np.ndarray | None, rel: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    out = engine.ranking_metrics(dist, rel, rows)
    if dist_alt is not None:
        out.update(engine.altered_metrics(dist_alt, rows))
    return out


def check_same_path(extractor: FeatureExtractor, items, codes: np.ndarray, colours: np.ndarray, n: int = 4) -> None:
    """Guard: the cached evaluation path gives the codes `extract_features` (ingestion/query) gives."""
    sample = list(range(min(n, len(items))))
    feats = extract_features(extractor, [open_image(items[i].path) for i in sample], [items[i].roi for i in sample])
    if not np.array_equal(feats.codes, codes[sample]):
        flips = int(np.unpackbits(feats.codes ^ codes[sample]).sum())
        # A bit or two may flip where a feature is ~0 and batch composition changes float summation order.
        logger.warning("cached codes differ from extract_features by %d bits over %d items", flips, len(sample))
        if flips > len(sample) * 2:
            raise AssertionError(f"evaluation path disagrees with extract_features ({flips} bits)")
    if not np.allclose(feats.colours, colours[sample], atol=1e-6):
        raise AssertionError("evaluation colour histograms disagree with extract_features")


def measure_latency(extractor: FeatureExtractor, items, n: int) -> dict[str, float]:
    """Per-image extract_features time, batch 1, one torch thread (image decoded beforehand)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imgs = [(open_image(it.path), it.roi) for it in items[:n]]
        extract_features(extractor, [imgs[0][0]], [imgs[0][1]])  # warm-up
        times = []
        for img, roi in imgs:
            t0 = time.perf_counter()
            extract_features(extractor, [img], [roi], batch_size=1)
            times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        torch.set_num_threads(prev)
    return {"n_images": len(times), "median_ms": statistics.median(times) if times else 0.0,
            "mean_ms": statistics.fmean(times) if times else 0.0,
            "p90_ms": float(np.percentile(times, 90)) if times else 0.0, "threads": 1, "batch": 1,
            "input_size": extractor.input_size}


def evaluate(extractor: FeatureExtractor, data_dir: Path, *, split: str, batch_size: int, use_cache: bool,
             latency_images: int, roipool: bool, index_splits: tuple[str, ...] | None = None) -> dict:
    """Every row of the comparison plus the top-level (combined) figures."""
    c = load_cached(extractor.encoder, data_dir, input_size=extractor.input_size, splits=(split,),
                    batch_size=batch_size, use_cache=use_cache, roipool=roipool,
                    flatten=extractor.flatten_background, index_splits=index_splits)
    rows, alt = c.queries[split]
    if len(rows) == 0:
        raise SystemExit(f"no items in split {split!r} of {data_dir}")
    items = c.items
    rel = relevance([items[i] for i in rows], items)
    desc = descriptors_from_pooled(c.pooled, layers=extractor.layers, pooling=extractor.pooling)
    q_desc = descriptors_from_pooled(alt, layers=extractor.layers, pooling=extractor.pooling)
    feats, q_feats = extractor.project(desc), extractor.project(q_desc)
    codes, q_codes = binarize(feats), binarize(q_feats)
    colours = dequantize_colours(quantize_colours(c.pooled["colour"].astype(np.float32)))
    q_colours = dequantize_colours(quantize_colours(alt["colour"].astype(np.float32)))
    check_same_path(extractor, items, codes, c.pooled["colour"].astype(np.float32))

    ham, ham_alt = engine.hamming_matrix(codes[rows], codes), engine.hamming_matrix(q_codes, codes)
    col, col_alt = engine.colour_matrix(colours[rows], colours), engine.colour_matrix(q_colours, colours)
    w, n_bits = extractor.colour_weight, extractor.n_bits
    comb = engine.combined_matrix(ham, col, n_bits=n_bits, colour_weight=w)
    comb_alt = engine.combined_matrix(ham_alt, col_alt, n_bits=n_bits, colour_weight=w)
    table = {
        "float_descriptor_cosine": _metrics(engine.cosine_matrix(desc[rows], desc),
                                            engine.cosine_matrix(q_desc, desc), rel, rows),
        "float_projected_cosine": _metrics(engine.cosine_matrix(feats[rows], feats),
                                           engine.cosine_matrix(q_feats, feats), rel, rows),
        "appearance_codes_hamming": _metrics(ham, ham_alt, rel, rows),
        "colour_only": _metrics(col, col_alt, rel, rows),
        "combined": _metrics(comb, comb_alt, rel, rows),
    }
    served = "combined"
    rr = rerank_vectors(extractor, desc)
    if rr is not None:  # what the API serves: the combined shortlist re-ordered by the re-ranking vector
        stored, project = rr
        comb = engine.reranked_matrix(comb, project(desc[rows]), stored, depth=RERANK_DEPTH, self_idx=rows)
        comb_alt = engine.reranked_matrix(comb_alt, project(q_desc), stored, depth=RERANK_DEPTH)
        served = "combined_reranked"
        table[served] = _metrics(comb, comb_alt, rel, rows)
    by_dataset = {}
    for name in sorted({items[i].dataset for i in rows}):
        sel = np.array([items[i].dataset == name for i in rows])
        by_dataset[name] = _metrics(comb[sel], comb_alt[sel], rel[sel], rows[sel])
    out: dict = {
        "map": table[served]["map"],
        "p_at_1": table[served]["p_at_1"],
        "p_at_5": table[served]["p_at_5"],
        "p_at_10": table[served]["p_at_10"],
        "p_at_1_altered": table[served]["p_at_1_altered"],
        "r_at_10_altered": table[served]["r_at_10_altered"],
        "served_row": served,
        "rows": table,
        "combined_by_query_dataset": by_dataset,
    }
    if roipool and len(c.cfd_rows):
        # Colorful Fashion queries, appearance codes: encode the ROI crop (shipped) vs pool the ROI's cells on the
        # whole image's maps (one encoder pass per photo, however many ROIs).
        sel = np.isin(rows, c.cfd_rows)
        rp_desc = desc.copy()
        rp_desc[c.cfd_rows] = descriptors_from_pooled(c.roipool, layers=extractor.layers, pooling=extractor.pooling)
        rp_codes = binarize(extractor.project(rp_desc))
        rp_ham = engine.hamming_matrix(rp_codes[rows[sel]], rp_codes)
        out["roi_crop_vs_roipool_cfd_queries"] = {
            "crop": _metrics(ham[sel], None, rel[sel], rows[sel]),
            "roipool": _metrics(rp_ham, None, rel[sel], rows[sel]),
        }
    out["street_to_shop"] = street_to_shop(items, rows, desc, feats, codes, colours, colour_weight=w,
                                           n_bits=n_bits, rerank=rr)
    out["config"] = {"version": extractor.version, "n_bits": n_bits, "n_bytes": extractor.n_bytes,
                     "colour_bins": colours.shape[1], "colour_weight": w, "input_size": extractor.input_size,
                     "pooling": extractor.pooling, "layers": list(extractor.layers), "split": split,
                     "n_queries": int(len(rows)), "n_index": len(items),
                     "index": "all splits" if not index_splits else "+".join(index_splits), "relevance": RELEVANCE_RULE,
                     "roi": ROI_RULE}
    if latency_images > 0:
        out["latency_per_image"] = measure_latency(extractor, [items[i] for i in rows], latency_images)
    return out


CATALOGUE = ("myntra_small", "clothing_dataset")
STREET = "colorful_fashion"


def rerank_vectors(extractor: FeatureExtractor, desc: np.ndarray):
    """(stored copies of every item, dequantised float (n, d); query projection function), or None without a
    re-ranker: the index side is quantised exactly as postings.rerank stores it, the query side stays float."""
    rr = extractor.reranker
    if rr is None:
        return None
    return rr.stored_copy(desc), rr.project


def street_to_shop(items, rows: np.ndarray, desc: np.ndarray, feats: np.ndarray, codes: np.ndarray,
                   colours: np.ndarray, *, colour_weight: float, n_bits: int, rerank=None) -> dict:
    """The split's street-photo crops (Colorful Fashion, ground-truth box) against the catalogue items only."""
    q = np.array([i for i in rows if items[i].dataset == STREET], dtype=np.int64)
    idx = np.array([i for i, it in enumerate(items) if it.dataset in CATALOGUE], dtype=np.int64)
    if len(q) == 0 or len(idx) == 0:
        return {}
    rel = relevance([items[i] for i in q], [items[i] for i in idx])
    ham = engine.hamming_matrix(codes[q], codes[idx])
    col = engine.colour_matrix(colours[q], colours[idx])
    table = {
        "float_descriptor_cosine": engine.ranking_metrics(engine.cosine_matrix(desc[q], desc[idx]), rel, None),
        "float_projected_cosine": engine.ranking_metrics(engine.cosine_matrix(feats[q], feats[idx]), rel, None),
        "appearance_codes_hamming": engine.ranking_metrics(ham, rel, None),
        "colour_only": engine.ranking_metrics(col, rel, None),
        "combined": engine.ranking_metrics(engine.combined_matrix(ham, col, n_bits=n_bits,
                                                                  colour_weight=colour_weight), rel, None),
    }
    if rerank is not None:
        stored, project = rerank
        comb = engine.combined_matrix(ham, col, n_bits=n_bits, colour_weight=colour_weight)
        table["combined_reranked"] = engine.ranking_metrics(
            engine.reranked_matrix(comb, project(desc[q]), stored[idx], depth=RERANK_DEPTH), rel, None)
    return {"rows": table, "n_queries": int(len(q)), "n_catalogue": int(len(idx)),
            "relevance": "same taxonomy category (street photos carry no colour label)"}


def format_table(res: dict) -> str:
    """The readable report."""
    cfg = res["config"]
    lines = [f"retrieval, split {cfg['split']}: {cfg['n_queries']} queries against {cfg['n_index']} indexed items "
             f"(the query itself left out)",
             f"features {cfg['version']}: {cfg['n_bits']} bits + {cfg['colour_bins']} colour bins, w = "
             f"{cfg['colour_weight']}",
             f"relevance: {cfg['relevance']}", f"roi: {cfg['roi']}", "",
             f"{'row':28s} {'mAP':>7s} {'P@1':>7s} {'P@5':>7s} {'P@10':>7s} {'P@1alt':>7s} {'R@10alt':>7s}"]

    def fmt(name: str, m: dict) -> str:
        alt1 = f"{m['p_at_1_altered']:7.4f}" if "p_at_1_altered" in m else f"{'-':>7s}"
        alt10 = f"{m['r_at_10_altered']:7.4f}" if "r_at_10_altered" in m else f"{'-':>7s}"
        return (f"{name:28s} {m['map']:7.4f} {m['p_at_1']:7.4f} {m['p_at_5']:7.4f} {m['p_at_10']:7.4f} "
                f"{alt1} {alt10}")

    for name, m in res["rows"].items():
        lines.append(fmt(name, m))
    lines.append("")
    lines.append(f"{res.get('served_row', 'combined')} (served), by query dataset:")
    for name, m in res["combined_by_query_dataset"].items():
        lines.append(fmt(f"  {name} ({m['n_queries']})", m))
    if "roi_crop_vs_roipool_cfd_queries" in res:
        lines.append("")
        lines.append("Colorful Fashion queries, appearance codes: crop-then-encode vs ROI pooling on the whole image:")
        for name, m in res["roi_crop_vs_roipool_cfd_queries"].items():
            lines.append(fmt(f"  {name}", m))
    s2s = res.get("street_to_shop") or {}
    if s2s:
        lines.append("")
        lines.append(f"street-to-shop: {s2s['n_queries']} Colorful Fashion crops against {s2s['n_catalogue']} "
                     f"catalogue items ({s2s['relevance']}):")
        for name, m in s2s["rows"].items():
            lines.append(fmt(f"  {name}", m))
    if "latency_per_image" in res:
        lat = res["latency_per_image"]
        lines.append("")
        lines.append(f"extract_features latency, batch 1, 1 thread, {lat['n_images']} images: median "
                     f"{lat['median_ms']:.1f} ms, mean {lat['mean_ms']:.1f} ms, p90 {lat['p90_ms']:.1f} ms")
    return "\n".join(lines)


def record(extractor: FeatureExtractor, res: dict, argv: list[str]) -> None:
    """Store the figures in the manifest next to the projection they measure."""
    from datetime import datetime, timezone

    from shared.vision.features import default_features_dir

    folder = extractor.path or default_features_dir()
    path = folder / "manifest.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("version") != extractor.version:
        raise SystemExit(f"{path} holds {meta.get('version')}, not the measured {extractor.version}")
    meta[f"{res['config']['split']}_metrics"] = {
        "command": "lookalike evaluate retrieval " + " ".join(argv), "measured_at":
        datetime.now(timezone.utc).isoformat(timespec="seconds"), **{k: v for k, v in res.items() if k != "config"}}
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike evaluate retrieval", description=__doc__.split("\n")[0])
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--features", type=Path, default=None, help="feature configuration folder (default: models/features)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads for encoding (0 = torch default)")
    p.add_argument("--latency-images", type=int, default=50, help="images timed for latency (0 = skip)")
    p.add_argument("--latency-only", action="store_true",
                   help="only time extract_features on the split's first --latency-images items (no scoring)")
    p.add_argument("--no-roipool", action="store_true", help="skip the crop vs ROI-pooling comparison")
    p.add_argument("--no-cache", action="store_true", help="recompute encoder outputs instead of var/retrieval/")
    p.add_argument("--index-splits", default="", metavar="S[,S]",
                   help="index only these splits (e.g. test: a quick comparison on a smaller index; default all)")
    p.add_argument("--record", action="store_true",
                   help="also write the figures into the feature configuration's manifest.json (test_metrics)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if args.record and args.index_splits:
        raise SystemExit("--record stores the protocol's figures: not with --index-splits")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    data_dir = args.data or load_settings().data_dir
    extractor = FeatureExtractor.load(args.features)
    if args.latency_only:
        items = [it for it in load_items(data_dir) if it.split == args.split]
        print(json.dumps({"version": extractor.version, **measure_latency(extractor, items, args.latency_images)}))
        return 0
    res = evaluate(extractor, data_dir, split=args.split, batch_size=args.batch_size, use_cache=not args.no_cache,
                   latency_images=args.latency_images, roipool=not args.no_roipool,
                   index_splits=tuple(s for s in args.index_splits.split(",") if s) or None)
    if args.record:
        record(extractor, res, argv if argv is not None else sys.argv[1:])
    if args.json:
        print(json.dumps(res))
    else:
        print(format_table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
