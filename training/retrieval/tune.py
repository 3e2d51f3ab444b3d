"""Fit the appearance projection on the TRAIN split, tune the colour weight on VAL, and write models/features/.

`lookalike train features [--sweep] [--pooling avg] [--projection itq] [--n-bits 256] [--data DIR]`:

- descriptors (pooled stride-16 + stride-32 maps, see shared.vision.features) of every item are computed once and
  cached under var/retrieval/ (an interrupted run resumes from the cache);
- `--sweep` scores every pooling x projection x code length on the VAL split (queries = val items, index = every
  item of the folder but the query) and prints the table; it is how the shipped defaults were chosen;
- the chosen projection is fitted on TRAIN descriptors (seeded), stored in fp16, and the colour weight w of
  (1 - w) * hamming / n_bits + w * colour is picked on VAL by mAP over a grid, using the fp16 matrices as shipped.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from shared.codes.binarize import binarize
from shared.config import load_settings
from shared.taxonomy import load_taxonomy
from shared.vision.features import (ISOLATE_VERSION, N_COLOUR_BINS, dequantize_colours, descriptors_from_pooled,
                                    quantize_colours)
from training.retrieval import engine
from training.retrieval.data import RetrievalItem, cached_pooled, data_tag, load_items, relevance, set_threads

logger = logging.getLogger(__name__)

SEED = 1609
PROJECTIONS = ("sign", "centre", "pca", "pcarot", "itq", "rand")
W_GRID = tuple(round(x, 2) for x in np.arange(0.0, 1.0001, 0.05))


def fit_projection(train: np.ndarray, kind: str, n_bits: int, *, seed: int = SEED, itq_iters: int = 50
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Fit (mean float32 (D,), projection float32 (D, n_bits)) on train descriptors float32 (n, D).

    sign: no centring, identity (n_bits = D); centre: train mean, identity; pca: top principal axes;
    pcarot: PCA then a seeded random rotation (spreads variance evenly over bits); itq: PCA then the iterative
    quantisation rotation (Gong & Lazebnik 2011); rand: seeded Gaussian projection of the centred descriptors.
    """
    d = train.shape[1]
    rng = np.random.default_rng(seed)
    if kind in ("sign", "centre"):
        mean = np.zeros(d, np.float32) if kind == "sign" else train.mean(axis=0).astype(np.float32)
        return mean, np.eye(d, dtype=np.float32)
    mean = train.mean(axis=0).astype(np.float32)
    x = (train - mean).astype(np.float64)
    if kind == "rand":
        return mean, rng.standard_normal((d, n_bits)).astype(np.float32)
    if n_bits > d:
        raise ValueError(f"{kind} projection cannot give {n_bits} bits from {d}-d descriptors")
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    w = vt[:n_bits].T  # (D, n_bits)
    if kind == "pca":
        return mean, w.astype(np.float32)
    r, _ = np.linalg.qr(rng.standard_normal((n_bits, n_bits)))
    if kind == "itq":
        v = x @ w
        for _ in range(itq_iters):
            b = np.where(v @ r > 0, 1.0, -1.0)
            u, _, wt = np.linalg.svd(v.T @ b)
            r = u @ wt
    elif kind != "pcarot":
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
    return mean, (w @ r).astype(np.float32)


def fp16_round(a: np.ndarray) -> np.ndarray:
    """What a float32 array becomes after the fp16 round trip of the shipped file."""
    return a.astype(np.float16).astype(np.float32)


@dataclass
class Cached:
    """Everything the tuning/evaluation needs from the encoder, for one encoder and input size."""

    items: list[RetrievalItem]
    pooled: dict[str, np.ndarray]  # 'crop' variant of every item
    roipool: dict[str, np.ndarray]  # Colorful Fashion items encoded whole, ROI cells pooled
    cfd_rows: np.ndarray  # rows of those items in `items`
    queries: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]  # split -> (rows, 'altered' pooled of those rows)


def load_cached(encoder, data_dir: Path, *, input_size: int, splits: tuple[str, ...], batch_size: int,
                use_cache: bool = True, roipool: bool = True, flatten: bool = True,
                index_splits: tuple[str, ...] | None = None) -> Cached:
    """Encode (or read from var/retrieval/) every item (of `index_splits` only, when given: a smaller index for
    quick comparisons), the altered copies of the query splits and the ROI-pooled Colorful Fashion images."""
    items = load_items(data_dir)
    if index_splits:
        items = [it for it in items if it.split in index_splits]
    kw = dict(input_size=input_size, data_dir=data_dir, batch_size=batch_size, use_cache=use_cache, flatten=flatten)
    queries = {}
    for split in splits:
        rows = np.array([i for i, it in enumerate(items) if it.split == split], dtype=np.int64)
        queries[split] = (rows, cached_pooled(encoder, [items[i] for i in rows], variant="altered", **kw))
    pooled = cached_pooled(encoder, items, variant="crop", **kw)
    cfd_rows = np.array([i for i, it in enumerate(items) if it.roi is not None], dtype=np.int64)
    rp = (cached_pooled(encoder, [items[i] for i in cfd_rows], variant="roipool", **kw)
          if roipool and len(cfd_rows) else {})
    return Cached(items=items, pooled=pooled, roipool=rp, cfd_rows=cfd_rows, queries=queries)


def score_config(c: Cached, split: str, *, pooling: str, mean: np.ndarray, proj: np.ndarray,
                 colour_weight: float | None = None, roipool: bool = False, rel: np.ndarray | None = None,
                 rows_filter: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Val/test scores of one configuration: codes (Hamming), and with colour_weight also colour and combined."""
    rows, alt = c.queries[split]
    if rows_filter is not None:
        keep = np.isin(rows, rows_filter)
        rows, alt = rows[keep], {k: v[keep] for k, v in alt.items()}
    desc = descriptors_from_pooled(c.pooled, pooling=pooling)
    colours = c.pooled["colour"].astype(np.float32)
    if roipool:
        desc[c.cfd_rows] = descriptors_from_pooled(c.roipool, pooling=pooling)
    feats = (desc - mean) @ proj
    codes = binarize(np.ascontiguousarray(feats, dtype=np.float32))
    q_feats = (descriptors_from_pooled(alt, pooling=pooling) - mean) @ proj
    q_codes = binarize(np.ascontiguousarray(q_feats, dtype=np.float32))
    if rel is None:
        rel = relevance([c.items[i] for i in rows], c.items)
    n_bits = proj.shape[1]
    ham = engine.hamming_matrix(codes[rows], codes)
    ham_alt = engine.hamming_matrix(q_codes, codes)
    out = {"codes": {**engine.ranking_metrics(ham, rel, rows), **engine.altered_metrics(ham_alt, rows)}}
    if colour_weight is not None:
        # The RAM form of the histograms (uint8), as the index holds them.
        cq = dequantize_colours(quantize_colours(colours))
        cq_alt = dequantize_colours(quantize_colours(alt["colour"].astype(np.float32)))
        col = engine.colour_matrix(cq[rows], cq)
        col_alt = engine.colour_matrix(cq_alt, cq)
        comb = engine.combined_matrix(ham, col, n_bits=n_bits, colour_weight=colour_weight)
        comb_alt = engine.combined_matrix(ham_alt, col_alt, n_bits=n_bits, colour_weight=colour_weight)
        out["colour"] = {**engine.ranking_metrics(col, rel, rows), **engine.altered_metrics(col_alt, rows)}
        out["combined"] = {**engine.ranking_metrics(comb, rel, rows), **engine.altered_metrics(comb_alt, rows)}
    return out


def tune_colour_weight(c: Cached, split: str, *, pooling: str, mean: np.ndarray, proj: np.ndarray,
                       roipool: bool = False, objective: str = "map+p1alt", grid: tuple[float, ...] | None = None
                       ) -> tuple[float, list[dict[str, float]]]:
    """The w of `grid` (None: W_GRID) with the best objective on `split` (ties: the smaller w); returns (w, per-w
    scores).

    objective "map": label-based mAP only; "map+p1alt": mAP + altered-copy P@1, so that finding the same product
    counts as much as finding similar ones (mAP alone buys +0.005 mAP for -0.08 P@1 on our val split).
    """
    rows, alt = c.queries[split]
    rel = relevance([c.items[i] for i in rows], c.items)
    desc = descriptors_from_pooled(c.pooled, pooling=pooling)
    if roipool:
        desc[c.cfd_rows] = descriptors_from_pooled(c.roipool, pooling=pooling)
    codes = binarize(np.ascontiguousarray((desc - mean) @ proj, dtype=np.float32))
    q_codes = binarize(np.ascontiguousarray((descriptors_from_pooled(alt, pooling=pooling) - mean) @ proj,
                                            dtype=np.float32))
    cq = dequantize_colours(quantize_colours(c.pooled["colour"].astype(np.float32)))
    cq_alt = dequantize_colours(quantize_colours(alt["colour"].astype(np.float32)))
    ham = engine.hamming_matrix(codes[rows], codes)
    ham_alt = engine.hamming_matrix(q_codes, codes)
    col = engine.colour_matrix(cq[rows], cq)
    col_alt = engine.colour_matrix(cq_alt, cq)
    table = []
    for w in grid or W_GRID:
        comb = engine.combined_matrix(ham, col, n_bits=proj.shape[1], colour_weight=w)
        comb_alt = engine.combined_matrix(ham_alt, col_alt, n_bits=proj.shape[1], colour_weight=w)
        table.append({"w": w, **engine.ranking_metrics(comb, rel, rows), **engine.altered_metrics(comb_alt, rows)})
        logger.info("w=%.2f map=%.4f p1_alt=%.4f", w, table[-1]["map"], table[-1]["p_at_1_altered"])
    def score(r: dict[str, float]) -> float:
        return r["map"] + (r["p_at_1_altered"] if objective == "map+p1alt" else 0.0)

    best = max(table, key=lambda r: (round(score(r), 6), -r["w"]))
    return float(best["w"]), table


def sweep(c: Cached, split: str, *, n_bits_list: tuple[int, ...]) -> list[dict]:
    """Score pooling x projection x n_bits on `split` (codes only)."""
    train_rows = np.array([i for i, it in enumerate(c.items) if it.split == "train"], dtype=np.int64)
    rows, _ = c.queries[split]
    rel = relevance([c.items[i] for i in rows], c.items)
    out = []
    for pooling in ("avg", "avgmax"):
        desc = descriptors_from_pooled(c.pooled, pooling=pooling)
        d = desc.shape[1]
        configs = [("sign", d), ("centre", d)] + [(k, n) for n in n_bits_list for k in ("pca", "pcarot", "itq", "rand")]
        for kind, n_bits in configs:
            if kind in ("pca", "pcarot", "itq") and n_bits > d:
                continue
            mean, proj = fit_projection(desc[train_rows], kind, n_bits)
            t0 = time.perf_counter()
            s = score_config(c, split, pooling=pooling, mean=mean, proj=proj, rel=rel)["codes"]
            row = {"pooling": pooling, "projection": kind, "n_bits": int(proj.shape[1]), **s}
            out.append(row)
            print(f"{pooling:7s} {kind:7s} {row['n_bits']:5d}  map {s['map']:.4f}  p@1 {s['p_at_1']:.4f}  "
                  f"p@10 {s['p_at_10']:.4f}  p@1alt {s['p_at_1_altered']:.4f}  r@10alt {s['r_at_10_altered']:.4f}"
                  f"  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        # Float references: the raw descriptor under cosine.
        q = desc[rows]
        s = engine.ranking_metrics(engine.cosine_matrix(q, desc), rel, rows)
        out.append({"pooling": pooling, "projection": "float-cosine", "n_bits": 0, **s})
        print(f"{pooling:7s} float-cosine  map {s['map']:.4f}  p@1 {s['p_at_1']:.4f}", file=sys.stderr, flush=True)
    return out


def write_features_dir(out_dir: Path, *, mean: np.ndarray, proj: np.ndarray, meta: dict) -> None:
    """projection.safetensors (fp16 mean and projection) + manifest.json."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"mean": mean.astype(np.float16), "projection": np.ascontiguousarray(proj.astype(np.float16))},
              str(out_dir / "projection.safetensors"), metadata={"version": meta["version"]})
    (out_dir / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out_dir / "projection.safetensors").chmod(0o644)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike train features", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: models/features)")
    p.add_argument("--encoder", default="imagenet", choices=("imagenet", "attributes"),
                   help="imagenet: EfficientNet-Lite0 ImageNet weights; attributes: the fine-tuned encoder of "
                        "models/attributes/")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--pooling", default="avgmax", choices=("avg", "avgmax"))
    p.add_argument("--projection", default="itq", choices=PROJECTIONS)
    p.add_argument("--n-bits", type=int, default=256)
    p.add_argument("--roipool", action="store_true", help="pool ROIs on the whole image's maps instead of "
                   "encoding the crop (scored on VAL only; the shipped path encodes crops)")
    p.add_argument("--no-flatten", action="store_true", help="encode crops as they are (no backdrop flattening)")
    p.add_argument("--sweep", action="store_true", help="score every pooling x projection x n_bits on VAL, then stop")
    p.add_argument("--w-objective", default="map+p1alt", choices=("map", "map+p1alt"),
                   help="what the colour weight maximises on VAL")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--resume", action="store_true", help="accepted for symmetry: the encoder cache always resumes")
    return p


def encoder_spec(name: str) -> dict:
    """The manifest's encoder entry for --encoder."""
    if name == "imagenet":
        return {"source": "registry", "name": "efficientnet_lite0", "pretrained": True}
    from shared.vision.attributes import default_attribute_dir

    meta = json.loads((default_attribute_dir() / "manifest.json").read_text(encoding="utf-8"))
    return {"source": "attributes", "version": meta.get("version")}


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from shared.vision.features import build_feature_encoder

    set_threads(args.threads)
    np.random.seed(SEED)
    settings = load_settings()
    data_dir = args.data or settings.data_dir
    out_dir = args.out or settings.models_dir / "features"
    t_start = time.time()
    spec = encoder_spec(args.encoder)
    encoder = build_feature_encoder(spec)
    c = load_cached(encoder, data_dir, input_size=args.input_size, splits=("val",), batch_size=args.batch_size,
                    use_cache=not args.no_cache, roipool=args.roipool or args.sweep, flatten=not args.no_flatten)
    logger.info("descriptors ready after %.1f s", time.time() - t_start)
    if args.sweep:
        rows = sweep(c, "val", n_bits_list=(256, 512, 1024))
        path = Path("var/retrieval") / (f"sweep-{args.encoder}-{args.input_size}"
                                        f"{'-noflat' if args.no_flatten else ''}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        print(json.dumps(rows))
        return 0
    train_rows = np.array([i for i, it in enumerate(c.items) if it.split == "train"], dtype=np.int64)
    desc = descriptors_from_pooled(c.pooled, pooling=args.pooling)
    mean, proj = fit_projection(desc[train_rows], args.projection, args.n_bits)
    mean, proj = fp16_round(mean), fp16_round(proj)  # score exactly what ships
    w, table = tune_colour_weight(c, "val", pooling=args.pooling, mean=mean, proj=proj, roipool=args.roipool,
                                  objective=args.w_objective)
    val = score_config(c, "val", pooling=args.pooling, mean=mean, proj=proj, colour_weight=w, roipool=args.roipool)
    version = (f"{'effl0-imnet' if args.encoder == 'imagenet' else 'effl0-attr'}.in{args.input_size}"
               f".s16s32-{args.pooling}.{args.projection}{proj.shape[1]}"
               f"{'' if args.no_flatten else f'.flat{ISOLATE_VERSION}'}"
               f".hsv{N_COLOUR_BINS}-v1")
    meta = {
        "version": version,
        "file": "projection.safetensors",
        "encoder": spec,
        "input_size": args.input_size,
        "layers": [16, 32],
        "pooling": args.pooling,
        "projection": args.projection,
        "n_bits": int(proj.shape[1]),
        "binarizer": "shared.codes.binarize (bit = feature > 0, packbits big-endian: feature 0 = MSB of byte 0)",
        "colour_bins": N_COLOUR_BINS,
        "colour_mask": True,
        "flatten_background": not args.no_flatten,
        "isolate_version": ISOLATE_VERSION,
        "colour_weight": w,
        "colour_weight_objective": args.w_objective,
        "distance": "(1 - w) * hamming / n_bits + w * 0.5 * L1(colour histograms)",
        "preprocessing": {"roi": "crop, isolate_item (plain backdrop painted white, tightened) unless --no-flatten, "
                                 "letterbox on white", "normalize": "(x - 127) / 128",
                          "pooled": ("masked average" if args.pooling == "avg" else "masked average and max")
                          + " over the crop's cells of the stride-16 and stride-32 maps, each part L2-normalised, "
                            "concatenated"},
        "taxonomy_version": load_taxonomy().version,
        "data_hash": data_tag(data_dir),
        "seed": SEED,
        "command": "lookalike train features " + " ".join(argv if argv is not None else sys.argv[1:]),
        "val_metrics": val,
        "colour_weight_grid": table,
        "time_s": round(time.time() - t_start, 1),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_features_dir(out_dir, mean=mean, proj=proj, meta=meta)
    print(json.dumps({"out": str(out_dir), "version": version, "colour_weight": w, "val": val}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
