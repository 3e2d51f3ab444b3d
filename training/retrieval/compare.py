"""`python -m training.retrieval.compare A B`: two feature configurations on one small VAL sample, same run.

A cheap side-by-side when encoding the whole folder twice is too slow (the ImageNet encoder at 224 px on a shared
CPU): index = `--n-index` VAL catalogue items (Myntra + clothing photos, seeded sample, through
`extract_features`), altered-copy queries = the protocol's altered copies of the first `--n-queries` of them (P@1,
R@10 among the sample), street-to-shop = every VAL Colorful Fashion crop against the sample (same category: mAP,
P@10). Rows: float feature (cosine), codes (Hamming), combined (the configuration's colour weight). The full
protocol is `lookalike evaluate retrieval`.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from shared.config import load_settings
from shared.vision.features import FeatureExtractor, dequantize_colours, extract_features, quantize_colours
from training.retrieval import engine
from training.retrieval.data import altered_crop, load_items, relevance, roi_crop, set_threads
from training.retrieval.evaluate import CATALOGUE, STREET

SEED = 1609


def score(ex: FeatureExtractor, index_crops, query_crops, street_crops, sample, street) -> dict:
    idx, q, st = (extract_features(ex, c) for c in (index_crops, query_crops, street_crops))
    col = dequantize_colours(quantize_colours(idx.colours))
    target = np.arange(len(query_crops))
    cat = np.array([it.dataset in CATALOGUE for it in sample])
    rel = relevance(street, [it for it, c in zip(sample, cat) if c])
    out = {}
    for name, f in (("float_cosine", lambda a: engine.cosine_matrix(a.feats, idx.feats)),
                    ("codes_hamming", lambda a: engine.hamming_matrix(a.codes, idx.codes)),
                    ("combined", lambda a: engine.combined_matrix(
                        engine.hamming_matrix(a.codes, idx.codes),
                        engine.colour_matrix(dequantize_colours(quantize_colours(a.colours)), col),
                        n_bits=ex.n_bits, colour_weight=ex.colour_weight))):
        alt = engine.altered_metrics(f(q), target)
        s2s = engine.ranking_metrics(f(st)[:, cat], rel, None)
        out[name] = {**alt, "street_map": s2s["map"], "street_p_at_10": s2s["p_at_10"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.retrieval.compare", description=__doc__.split("\n")[0])
    p.add_argument("features", nargs="+", type=Path, help="feature configuration folders")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--n-index", type=int, default=1000)
    p.add_argument("--n-queries", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    set_threads(args.threads)
    items = [it for it in load_items(args.data or load_settings().data_dir) if it.split == "val"]
    sample = random.Random(SEED).sample([it for it in items if it.dataset != STREET],
                                        min(args.n_index, len(items)))
    street = [it for it in items if it.dataset == STREET]
    index_crops = [roi_crop(it) for it in sample]
    query_crops = [altered_crop(it) for it in sample[:args.n_queries]]
    street_crops = [roi_crop(it) for it in street]
    res = {"n_index": len(sample), "n_queries": len(query_crops), "n_street": len(street), "results": {}}
    for folder in args.features:
        ex = FeatureExtractor.load(folder)
        res["results"][ex.version] = score(ex, index_crops, query_crops, street_crops, sample, street)
        print(ex.version, json.dumps(res["results"][ex.version]), file=sys.stderr, flush=True)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
