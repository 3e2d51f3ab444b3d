"""Fit the re-ranking vector (`shared.vision.rerank`) of a features configuration (issue 12).

    lookalike train rerank --threads 1 --json      # = python -m training.retrieval.rerank

Reads the descriptors `lookalike evaluate retrieval` caches (var/retrieval/; computed on first use), fits a whitened
PCA on the TRAIN split's descriptors only, and chooses the shape (dimensions x bits, 64 bytes each by default) and
the quantiser's step (in standard deviations, the same for every whitened dimension) on VAL, by the objective the
colour weight uses (label mAP + altered-copy P@1 of the served ranking). The chosen re-ranker
is written beside the configuration (rerank.safetensors, fp16) and recorded in its manifest, with a new version
(the stored vectors change, so a reindex builds a new generation). TEST is for `lookalike evaluate retrieval`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import load_settings
from shared.vision.features import (FeatureExtractor, dequantize_colours, descriptors_from_pooled,
                                    quantize_colours)
from shared.vision.rerank import RERANK_DEPTH, RERANK_FILE, Reranker
from shared.codes.binarize import binarize
from training.retrieval import engine
from training.retrieval.data import relevance, set_threads
from training.retrieval.tune import load_cached

logger = logging.getLogger(__name__)

# dims x bits @ step (standard deviations; a 1-bit code is the sign, its step does not matter): 64 bytes each
GRID = ("512x1@1", "256x2@0.8", "256x2@1.0", "128x4@0.45")
VERSION_TAG = "rr{dims}x{bits}"


def fit_whitened_pca(desc: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), components (D, dims)) of the rows of desc: the top `dims` principal directions, each divided by
    its standard deviation, so every projected dimension has unit variance on these rows."""
    mean = desc.mean(axis=0)
    centred = (desc - mean).astype(np.float64)
    evals, evecs = np.linalg.eigh(centred.T @ centred / max(len(desc) - 1, 1))
    order = np.argsort(evals)[::-1][:dims]
    sd = np.sqrt(np.maximum(evals[order], 1e-12))
    return mean.astype(np.float32), (evecs[:, order] / sd[None, :]).astype(np.float32)


def as_shipped(rr: Reranker) -> Reranker:
    """The re-ranker after its fp16 round trip: what serving loads, so VAL scores what ships."""
    with tempfile.TemporaryDirectory() as tmp:
        rr.save(tmp)
        return Reranker.load(tmp)


@dataclass(frozen=True)
class ValBase:
    """What every candidate is scored against on VAL, computed once: the served combined distances (label queries
    and altered copies), the descriptors the re-ranker projects and the label relevance."""

    rows: np.ndarray
    desc: np.ndarray
    q_desc: np.ndarray
    comb: np.ndarray
    comb_alt: np.ndarray
    rel: np.ndarray


def val_base(extractor: FeatureExtractor, c) -> ValBase:
    rows, alt = c.queries["val"]
    desc = descriptors_from_pooled(c.pooled, layers=extractor.layers, pooling=extractor.pooling)
    q_desc = descriptors_from_pooled(alt, layers=extractor.layers, pooling=extractor.pooling)
    codes, q_codes = binarize(extractor.project(desc)), binarize(extractor.project(q_desc))
    colours = dequantize_colours(quantize_colours(c.pooled["colour"].astype(np.float32)))
    q_colours = dequantize_colours(quantize_colours(alt["colour"].astype(np.float32)))
    w, n_bits = extractor.colour_weight, extractor.n_bits
    comb = engine.combined_matrix(engine.hamming_matrix(codes[rows], codes),
                                  engine.colour_matrix(colours[rows], colours), n_bits=n_bits, colour_weight=w)
    comb_alt = engine.combined_matrix(engine.hamming_matrix(q_codes, codes),
                                      engine.colour_matrix(q_colours, colours), n_bits=n_bits, colour_weight=w)
    return ValBase(rows=rows, desc=desc, q_desc=q_desc, comb=comb, comb_alt=comb_alt,
                   rel=relevance([c.items[i] for i in rows], c.items))


def val_scores(base: ValBase, rr: Reranker | None) -> dict[str, float]:
    """Label mAP, P@10 and altered P@1 / R@10 on VAL of the served ranking (combined, then re-ranked with rr)."""
    comb, comb_alt = base.comb, base.comb_alt
    if rr is not None:
        stored = rr.stored_copy(base.desc)
        comb = engine.reranked_matrix(comb, rr.project(base.desc[base.rows]), stored, depth=RERANK_DEPTH,
                                      self_idx=base.rows)
        comb_alt = engine.reranked_matrix(comb_alt, rr.project(base.q_desc), stored, depth=RERANK_DEPTH)
    m = engine.ranking_metrics(comb, base.rel, base.rows)
    a = engine.altered_metrics(comb_alt, base.rows)
    return {"map": round(m["map"], 4), "p_at_10": round(m["p_at_10"], 4),
            "p_at_1_altered": round(a["p_at_1_altered"], 4), "r_at_10_altered": round(a["r_at_10_altered"], 4)}


def parse_shape(text: str) -> tuple[int, int, float]:
    """'256x2@0.8' -> (256, 2, 0.8)."""
    try:
        shape, step = text.split("@")
        dims, bits = shape.split("x")
        return int(dims), int(bits), float(step)
    except ValueError:
        raise SystemExit(f"--grid entries look like 256x2@0.8 (dims x bits @ step), got {text!r}") from None


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike train rerank", description=__doc__.split("\n")[0])
    p.add_argument("--features", type=Path, default=None, help="features folder (default: models/features)")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--grid", default=",".join(GRID),
                   help="candidate shapes DIMSxBITS@STEP (dims x bits / 8 bytes per listing; step in standard "
                        "deviations of the whitened dimensions), chosen on VAL")
    p.add_argument("--dry-run", action="store_true", help="score on VAL, write nothing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    t0 = time.time()
    data_dir = args.data or load_settings().data_dir
    extractor = FeatureExtractor.load(args.features)
    folder = extractor.path
    c = load_cached(extractor.encoder, data_dir, input_size=extractor.input_size, splits=("val",), batch_size=64,
                    roipool=False, flatten=extractor.flatten_background)
    base = val_base(extractor, c)
    train = np.array([i for i, it in enumerate(c.items) if it.split == "train"], dtype=np.int64)
    grid = [parse_shape(v) for v in args.grid.split(",") if v]
    mean, comps = fit_whitened_pca(base.desc[train], max(d for d, _, _ in grid))
    scores = {"none": val_scores(base, None)}
    best, best_obj = None, -1.0
    for dims, bits, step in grid:
        rr = as_shipped(Reranker(mean=mean, components=np.ascontiguousarray(comps[:, :dims]),
                                 step=np.full(dims, step, np.float32), bits=bits))
        name = f"{dims}x{bits}@{step:g}"
        scores[name] = s = val_scores(base, rr)
        logger.info("%s: %s", name, s)
        if s["map"] + s["p_at_1_altered"] > best_obj:
            best, best_obj = ((dims, bits, step), rr), s["map"] + s["p_at_1_altered"]
    (dims, bits, step), rr = best
    res = {"features": extractor.version, "dims": dims, "bits": bits, "n_bytes": rr.n_bytes, "depth": RERANK_DEPTH,
           "n_train": int(len(train)), "step_sd": step, "val": scores, "seconds": round(time.time() - t0, 1)}
    if not args.dry_run:
        rr.save(folder)
        meta_path = folder / "manifest.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        base = meta["version"].split(".rr")[0]
        meta["version"] = f"{base}.{VERSION_TAG.format(dims=dims, bits=bits)}"
        meta["rerank"] = {"file": RERANK_FILE, "dims": dims, "bits": bits, "n_bytes": rr.n_bytes,
                          "depth": RERANK_DEPTH, "fit": "whitened PCA of the TRAIN split's pooled descriptors",
                          "data_dir": "../shared/data", "n_train": int(len(train)), "step_sd": step,
                          "val_objective": "map + p_at_1_altered (served ranking)", "val": scores,
                          "command": "lookalike train rerank --threads 1"}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        res["version"] = meta["version"]
    if args.json:
        print(json.dumps(res))
    else:
        print(f"re-ranker for {res['features']}: whitened PCA on {res['n_train']} TRAIN descriptors, depth "
              f"{RERANK_DEPTH}")
        print(f"{'VAL, served ranking':28s} {'mAP':>7s} {'P@10':>7s} {'P@1alt':>7s} {'R@10alt':>7s}")
        for name, s in scores.items():
            label = "codes + colour only" if name == "none" else f"re-ranked, {name} sd"
            print(f"{label:28s} {s['map']:7.4f} {s['p_at_10']:7.4f} {s['p_at_1_altered']:7.4f} "
                  f"{s['r_at_10_altered']:7.4f}")
        print(f"chosen: {dims} dims x {bits} bits @ {step:g} sd = {rr.n_bytes} B/item"
              + ("" if args.dry_run else f"; written to {RERANK_FILE}, version {res['version']}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
