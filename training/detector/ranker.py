"""`lookalike train ranker`: fit the item ranker (which detected item a photo is about) on cached detector outputs.

Label: in Colorful Fashion the photo's category is its main item (class of its largest box), so an item is
"the one" when its box has IoU >= 0.5 with a labelled box of that category; for a product photo, with its one
whole-item box. Model: conditional logit (softmax over a photo's items, `shared.vision.items.ItemRanker`), fitted by
L-BFGS with an L2 penalty on Colorful Fashion train photos plus a seeded subset of train product photos. The merge
IoU, the item score threshold and the penalty are chosen on val (Colorful Fashion option1_pick_hit50, product photos
as the tie-break); test is reported once.
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
from typing import Sequence

import numpy as np
import torch

from shared.config import REPO_ROOT, load_settings
from shared.vision import items as vitems
from shared.vision import roi
from training.detector import cache
from training.detector import data as ddata
from training.detector import engine

logger = logging.getLogger(__name__)

MERGE_IOUS = (0.5, 0.6, 0.7, 0.8)
MIN_SCORES = (0.05, 0.1, 0.2, 0.3)
L2S = (1e-3, 1e-2, 1e-1)


def rois_of(d: engine.Detections) -> list[roi.Roi]:
    return [roi.Roi(xyxy=tuple(map(float, b)), category_id=int(c), score=float(s))
            for b, c, s in zip(d.boxes, d.labels, d.scores)]


def listing_gt(s: ddata.DetectionSample) -> np.ndarray:
    """Boxes of the photo's labelled category (the item the photo is about)."""
    return s.boxes[s.labels == s.guided_category]


# ----------------------------------------------------------------------------------------------------- metrics


def pick_hit50(samples: Sequence[ddata.DetectionSample], ranked: Sequence[Sequence[vitems.Item]]) -> dict[str, float]:
    """option1_pick_hit50 per dataset and overall: share of photos whose first item has IoU >= 0.5 with a box of
    the photo's labelled category (photos without items count as misses)."""
    hits: dict[str, list[int]] = {}
    for s, its in zip(samples, ranked):
        gt = listing_gt(s)
        if not len(gt):
            continue
        ok = bool(its) and vitems.box_iou(np.array([its[0].xyxy]), gt).max() >= 0.5
        hits.setdefault(s.dataset, []).append(int(ok))
    out = {ds: round(float(np.mean(v)), 4) for ds, v in sorted(hits.items())}
    out["overall"] = round(float(np.mean([x for v in hits.values() for x in v])), 4) if hits else 0.0
    return out


def item_recall50(samples: Sequence[ddata.DetectionSample], ranked: Sequence[Sequence[vitems.Item]]) -> dict[str, float]:
    """item_recall50 per dataset and overall: share of labelled boxes (every box of every class) matched by some
    item of the same category with IoU >= 0.5."""
    hit: dict[str, list[int]] = {}
    for s, its in zip(samples, ranked):
        for box, lab in zip(s.boxes, s.labels):
            same = [it.xyxy for it in its if it.category_id == int(lab)]
            ok = bool(same) and vitems.box_iou(np.array([box]), np.array(same)).max() >= 0.5
            hit.setdefault(s.dataset, []).append(int(ok))
    out = {ds: round(float(np.mean(v)), 4) for ds, v in sorted(hit.items())}
    out["overall"] = round(float(np.mean([x for v in hit.values() for x in v])), 4) if hit else 0.0
    return out


def top_score_pick(d: engine.Detections, threshold: float = 0.3) -> list[vitems.Item]:
    """Today's option 1: the single highest-scoring box of any class."""
    keep = [r for r in rois_of(d) if r.score >= threshold]
    return [vitems.Item(xyxy=r.xyxy, category_id=r.category_id, score=r.score) for r in keep]


# ----------------------------------------------------------------------------------------------------- fitting


@dataclass
class Photos:
    """One split's photos as merged items: features per photo and which items are positives."""

    feats: list[np.ndarray]
    pos: list[np.ndarray]  # bool (n_items,)


def build_photos(samples, dets, *, merge_iou: float, min_score: float) -> Photos:
    feats, pos = [], []
    for s, d in zip(samples, dets):
        its = vitems.merge_items(rois_of(d), merge_iou=merge_iou, min_score=min_score)
        gt = listing_gt(s)
        if not its or not len(gt):
            continue
        b = np.array([it.xyxy for it in its])
        feats.append(vitems.item_features(its, s.width, s.height))
        pos.append(vitems.box_iou(b, gt).max(1) >= 0.5)
    return Photos(feats, pos)


def fit(photos: Photos, *, l2: float, weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conditional logit: maximise sum over photos of log(sum of softmax over positive items) - l2 * |w|^2.
    Photos without a positive item carry no signal and are skipped. Returns (weights, mean, std)."""
    keep = [i for i, p in enumerate(photos.pos) if p.any()]
    allf = np.concatenate([photos.feats[i] for i in keep])
    mean, std = allf.mean(0), allf.std(0)
    std[std < 1e-6] = 1.0
    x = torch.tensor((allf - mean) / std, dtype=torch.float64)
    pos = torch.tensor(np.concatenate([photos.pos[i] for i in keep]))
    seg = torch.tensor(np.concatenate([np.full(len(photos.pos[i]), k) for k, i in enumerate(keep)]))
    pw = torch.tensor([1.0 if weights is None else weights[i] for i in keep], dtype=torch.float64)
    n = len(keep)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        z = x @ w
        m = torch.zeros(n, dtype=torch.float64).scatter_reduce(0, seg, z, reduce="amax", include_self=False)
        e = torch.exp(z - m[seg])
        den = torch.zeros(n, dtype=torch.float64).index_add(0, seg, e)
        num = torch.zeros(n, dtype=torch.float64).index_add(0, seg, e * pos)
        loss = -(pw * torch.log(num / den)).sum() / pw.sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), mean, std


def rank_all(ranker: vitems.ItemRanker, samples, dets) -> list[list[vitems.Item]]:
    return [ranker.rank(rois_of(d), s.width, s.height) for s, d in zip(samples, dets)]


def _sample_weights(samples_fit, photos_samples) -> list[float]:
    return [1.0 for _ in photos_samples]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lookalike train ranker", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--checkpoint", type=Path, default=None, help="detector checkpoint (default models/detector/)")
    p.add_argument("--out", type=Path, default=vitems.DEFAULT_RANKER, help="where to write ranker.json")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    t_start = time.time()
    data_dir = args.data or load_settings().data_dir
    ckpt = args.checkpoint or roi.DEFAULT_CHECKPOINT_DIR
    loaded = roi.load_detector(ckpt, device="cpu")
    from shared.pipeline import _checkpoint_version

    det_version = _checkpoint_version(Path(ckpt), loaded.meta)
    split_data = {}
    for split in ("train", "val", "test"):
        items = cache.ranker_items(data_dir, split)
        split_data[split] = (*cache.detector_outputs(loaded, items, checkpoint_version=det_version),
                             ddata.items_hash(items))
    tr_s, tr_d, tr_hash = split_data["train"]
    va_s, va_d, _ = split_data["val"]

    def val_key(ranker: vitems.ItemRanker) -> tuple[float, float]:
        h = pick_hit50(va_s, rank_all(ranker, va_s, va_d))
        prod = np.mean([v for k, v in h.items() if k not in ("overall", "colorful_fashion")])
        return h.get("colorful_fashion", 0.0), float(prod)

    grid = []
    best = None
    for merge_iou in MERGE_IOUS:
        for min_score in MIN_SCORES:
            photos = build_photos(tr_s, tr_d, merge_iou=merge_iou, min_score=min_score)
            for l2 in L2S:
                w, mean, std = fit(photos, l2=l2)
                r = vitems.ItemRanker(weights=w, mean=mean, std=std, merge_iou=merge_iou, min_score=min_score)
                key = val_key(r)
                grid.append({"merge_iou": merge_iou, "min_score": min_score, "l2": l2, "val_cf": key[0],
                             "val_products": round(key[1], 4)})
                logger.info("merge_iou %.2f min_score %.2f l2 %g: val CF %.4f products %.4f", merge_iou, min_score,
                            l2, *key)
                if best is None or key > best[0]:
                    best = (key, r, l2)
    assert best is not None
    _, ranker, l2 = best
    report = {}
    for split in ("val", "test"):
        s, d, _ = split_data[split]
        baseline = vitems.area_score_ranker(merge_iou=ranker.merge_iou, min_score=ranker.min_score)
        report[split] = {
            "n_images": {ds: sum(x.dataset == ds for x in s) for ds in sorted({x.dataset for x in s})},
            "option1_pick_hit50": {"ranker": pick_hit50(s, rank_all(ranker, s, d)),
                                   "area_x_score": pick_hit50(s, rank_all(baseline, s, d)),
                                   "highest_score": pick_hit50(s, [top_score_pick(x) for x in d])},
            "item_recall50": item_recall50(s, rank_all(ranker, s, d)),
        }
    version = datetime.now(timezone.utc).strftime("ranker-%Y%m%d-%H%M")
    meta = {"detector_version": det_version, "data_hash_train": tr_hash,
            "n_train_images": {ds: sum(x.dataset == ds for x in tr_s) for ds in sorted({x.dataset for x in tr_s})},
            "l2": l2, "chosen_on": "val: Colorful Fashion option1_pick_hit50, then product photos",
            "command": "lookalike train ranker " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seconds": round(time.time() - t_start, 1), "metrics": report}
    final = vitems.ItemRanker(weights=ranker.weights, mean=ranker.mean, std=ranker.std, merge_iou=ranker.merge_iou,
                              min_score=ranker.min_score, version=version, meta=meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(final.to_json(), indent=1) + "\n", encoding="utf-8")
    res = {"out": str(args.out.relative_to(REPO_ROOT)) if args.out.is_relative_to(REPO_ROOT) else str(args.out),
           "merge_iou": final.merge_iou, "min_score": final.min_score, "l2": l2, "grid": grid, **report}
    if args.json:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        print_report(res)
    return 0


def print_report(res: dict, out=sys.stdout) -> None:
    w = out.write
    w(f"item ranker -> {res['out']}  (merge IoU {res['merge_iou']}, item score >= {res['min_score']}, "
      f"L2 {res['l2']}; chosen on val)\n")
    for split in ("val", "test"):
        r = res[split]
        w(f"\n{split}: {r['n_images']}\n  option1_pick_hit50      " + "  ".join(
            f"{k:>18}" for k in r["option1_pick_hit50"]["ranker"]) + "\n")
        for rule, v in r["option1_pick_hit50"].items():
            w(f"    {rule:<21}" + "  ".join(f"{x:18.4f}" for x in v.values()) + "\n")
        w("  item_recall50          " + "  ".join(f"{k}={v:.4f}" for k, v in r["item_recall50"].items()) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
