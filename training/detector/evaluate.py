"""`lookalike evaluate detector`: Table-3 mAP (guided vs non-guided) at IoU 0.5..0.9, AP per class, CPU latency.

Definitions (also in models/detector/MODEL_CARD.md):
- Every image of the split is a listing whose *guided category* is the listing's category: the label for
  product photos (Myntra, clothing dataset), the manifest category (class of the largest box) for Colorful
  Fashion street photos.
- Primary ("listing" ground truth, the paper's use): the ground truth of image i is its boxes of the
  guided category (product photos: the one whole-item foreground box). Non-guided AP uses every
  detection; guided AP keeps for image i only detections of its guided category. AP per class is VOC
  all-points AP with greedy per-class matching at the IoU threshold; mAP = mean over classes with ground truth.
- Secondary ("all boxes" ground truth): same, but the ground truth of a street photo is every annotated box
  of every class, so guided filtering also throws away correct detections of the photo's other items.
- Option 1 (no category, no rectangle), per dataset and overall, with the item ranker (shared.vision.items):
  option1_pick_hit50 = share of photos whose first item has IoU >= 0.5 with a box of the photo's labelled
  category; item_recall50 = share of labelled boxes (every class) matched by some returned item of the same
  category with IoU >= 0.5.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.config import load_settings
from shared.vision import items as vitems
from shared.vision import roi
from training.detector import data as ddata
from training.detector import engine
from training.detector import ranker as dranker

logger = logging.getLogger(__name__)

PAPER_TABLE3 = {"guided": [0.877, 0.872, 0.855, 0.716, 0.225], "non_guided": [0.849, 0.842, 0.818, 0.684, 0.223]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lookalike evaluate detector", description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test", help="train / val / test (default test)")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint dir (default models/detector/)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0 = all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the mAP pass (0 = torch default)")
    p.add_argument("--latency-images", type=int, default=40, help="images timed per thread count (0 = skip)")
    p.add_argument("--record", action="store_true",
                   help="also store the figures under metrics.<split> in the checkpoint's manifest.json (before promotion)")
    p.add_argument("--latency-threads", default="2,1", help="comma-separated thread counts to time")
    p.add_argument("--score-threshold", type=float, default=0.3, help="detect_rois threshold for fallback stats")
    p.add_argument("--device", default="auto", help="auto / cpu / cuda for the mAP pass (latency is always CPU)")
    p.add_argument("--ranker", type=Path, default=None, help="item ranker JSON (default models/ranker/ranker.json)")
    p.add_argument("--size", type=int, default=0,
                   help="serve the checkpoint at this longer side in px instead of its manifest's (0 = manifest)")
    p.add_argument("--datasets", default="", help="comma-separated datasets to keep (default all), e.g. colorful_fashion")
    return p.parse_args(argv)


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
            "mean": round(float(np.mean(ms)), 1)}


def measure_latency(loaded: roi.LoadedDetector, samples: list[ddata.DetectionSample], *, n: int,
                    threads: tuple[int, ...] = (2, 1)) -> dict:
    """CPU ms per image for `detect_rois` (PIL in, RoiResult out; guided), batch 1, p50/p95 per thread count."""
    cpu = roi.LoadedDetector(net=loaded.net.to("cpu"), meta=loaded.meta, taxonomy=loaded.taxonomy,
                             device=torch.device("cpu"))
    images = [(ddata.image_of(s), s.guided_category) for s in samples[:n]]
    before = torch.get_num_threads()
    out: dict = {"size": int(loaded.net.transform.max_size), "n_images": len(images), "batch": 1,
                 "load_average_1min": round(os.getloadavg()[0], 2)}
    try:
        for t in threads:
            torch.set_num_threads(t)
            for im, cat in images[: min(3, len(images))]:  # warm-up: allocator and oneDNN kernels
                roi.detect_rois(cpu, im, category_id=cat)
            ms = []
            for im, cat in images:
                t0 = time.perf_counter()
                roi.detect_rois(cpu, im, category_id=cat)
                ms.append((time.perf_counter() - t0) * 1000)
            out[f"threads_{t}"] = _percentiles(ms)
    finally:
        torch.set_num_threads(before)
    return out


def evaluate(loaded: roi.LoadedDetector, samples: list[ddata.DetectionSample], pixels: list[torch.Tensor], *,
             score_threshold: float = 0.3, progress=None, ranker: vitems.ItemRanker | None = None) -> dict:
    """Table-3 figures, AP per class, guided-fallback statistics and option-1 item figures for decoded samples."""
    tax = loaded.taxonomy
    n_cat = len(tax.categories)
    dets = engine.detect_samples(loaded.net, samples, pixels, device=loaded.device, progress=progress)
    ranked = dranker.rank_all(ranker or vitems.load_ranker(), samples, dets)
    pick, recall = dranker.pick_hit50(samples, ranked), dranker.item_recall50(samples, ranked)
    res: dict = engine.table3(samples, dets, num_categories=n_cat, gt="listing")
    res["all_boxes_gt"] = engine.table3(samples, dets, num_categories=n_cat, gt="all")
    # The test split is mostly small Myntra product photos: report each source on its own too.
    res["by_dataset"] = {}
    for ds in sorted({s.dataset for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.dataset == ds]
        sub_s, sub_d = [samples[i] for i in idx], [dets[i] for i in idx]
        res["by_dataset"][ds] = {"n_images": len(idx), **engine.table3(sub_s, sub_d, num_categories=n_cat, gt="listing"),
                                 "all_boxes_gt": engine.table3(sub_s, sub_d, num_categories=n_cat, gt="all"),
                                 "option1_pick_hit50": pick.get(ds), "item_recall50": recall.get(ds)}
    res["option1_pick_hit50"], res["item_recall50"] = pick["overall"], recall["overall"]
    ap = {(mode, gt): engine.per_class_ap(samples, dets, num_categories=n_cat, iou=0.5, guided=mode == "guided", gt=gt)
          for mode in ("guided", "non_guided") for gt in ("listing", "all")}
    per_class = {}
    for c in tax.categories:
        n_listing = int(sum((s.labels == c.id).sum() for s in samples if s.guided_category == c.id))
        n_all = int(sum((s.labels == c.id).sum() for s in samples))
        if n_all == 0:
            continue
        per_class[c.key] = {"n_gt_listing": n_listing, "n_gt_all": n_all,
                            "guided_ap50": _r(ap[("guided", "listing")][c.id]),
                            "non_guided_ap50": _r(ap[("non_guided", "listing")][c.id]),
                            "guided_ap50_all_gt": _r(ap[("guided", "all")][c.id]),
                            "non_guided_ap50_all_gt": _r(ap[("non_guided", "all")][c.id])}
    res["per_class"] = per_class
    # What serving sees: detect_rois' choice per listing, and whether it hits the listing's item.
    fallback = {f: 0 for f in roi.FALLBACKS}
    hits = {"guided": 0, "non_guided": 0}
    n_with_gt = 0
    for s, d in zip(samples, dets):
        rois = [roi.Roi(xyxy=tuple(map(float, b)), category_id=int(lab), score=float(sc))
                for b, lab, sc in zip(d.boxes, d.labels, d.scores) if sc >= score_threshold]
        gt = s.boxes[s.labels == s.guided_category]
        guided = roi.choose_roi(rois, width=s.width, height=s.height, category_id=s.guided_category, tax=tax)
        plain = roi.choose_roi(rois, width=s.width, height=s.height, category_id=None, tax=tax)
        fallback[guided.fallback] += 1
        if len(gt):
            n_with_gt += 1
            for mode, r in (("guided", guided), ("non_guided", plain)):
                hits[mode] += int(engine.box_iou(np.array([r.chosen.xyxy]), gt).max() >= 0.5)
    res["guided_fallback"] = {k: round(v / max(1, len(samples)), 4) for k, v in fallback.items()}
    res["chosen_roi_hit50"] = {k: round(v / max(1, n_with_gt), 4) for k, v in hits.items()}
    return res


def _r(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)


def _round_table(res: dict) -> None:
    blocks = [res, res["all_boxes_gt"]]
    for sub in res.get("by_dataset", {}).values():
        blocks += [sub, sub["all_boxes_gt"]]
    for block in blocks:
        for mode in ("guided", "non_guided"):
            block[mode] = {k: _r(v) for k, v in block[mode].items()}


def _f(v: float | None) -> str:
    return "    -  " if v is None else f"{v:7.3f}"


def print_table(res: dict, out=sys.stdout) -> None:
    """Readable report."""
    ious = list(res["guided"].keys())
    w = out.write
    w(f"Detector on split {res['split']!r}: {res['n_images']} images {res['datasets']}  checkpoint {res['checkpoint']}\n\n")
    w("mAP (listing ground truth)   " + "  ".join(f"IoU {k}" for k in ious) + "\n")
    for mode in ("guided", "non_guided"):
        w(f"  {mode:<27}" + "  ".join(f"{res[mode][k]:7.3f}" for k in ious) + "\n")
    for mode in ("guided", "non_guided"):
        w(f"  paper {mode:<21}" + "  ".join(f"{v:7.3f}" for v in PAPER_TABLE3[mode]) + "\n")
    w("mAP (all boxes ground truth)\n")
    for mode in ("guided", "non_guided"):
        w(f"  {mode:<27}" + "  ".join(f"{res['all_boxes_gt'][mode][k]:7.3f}" for k in ious) + "\n")
    for ds, sub in res.get("by_dataset", {}).items():
        w(f"{ds} only ({sub['n_images']} images), listing / all-boxes ground truth\n")
        for mode in ("guided", "non_guided"):
            w(f"  {mode:<27}" + "  ".join(f"{_f(sub[mode][k])}" for k in ious) + "   |"
              + "  ".join(f"{_f(sub['all_boxes_gt'][mode][k])}" for k in ious) + "\n")
    w("\nAP@0.5 per class            n_gt  guided  non-guided | all-boxes gt: n_gt guided non-guided\n")
    f = lambda v: "    -  " if v is None else f"{v:7.3f}"
    for key, pc in res["per_class"].items():
        w(f"  {key:<24}{pc['n_gt_listing']:6d} {f(pc['guided_ap50'])} {f(pc['non_guided_ap50'])}    |"
          f" {pc['n_gt_all']:5d} {f(pc['guided_ap50_all_gt'])} {f(pc['non_guided_ap50_all_gt'])}\n")
    w(f"\nguided fallback (score >= {res['score_threshold']}): {res['guided_fallback']}\n")
    w(f"chosen ROI hits the listing's item (IoU >= 0.5): {res['chosen_roi_hit50']}\n")
    w(f"option 1 (item ranker {res.get('ranker', '?')}): option1_pick_hit50 overall {res['option1_pick_hit50']:.4f}, "
      f"item_recall50 overall {res['item_recall50']:.4f}\n")
    for ds, sub in res.get("by_dataset", {}).items():
        w(f"  {ds:<20} option1_pick_hit50 {_f(sub['option1_pick_hit50'])}   item_recall50 {_f(sub['item_recall50'])}\n")
    lat = res.get("latency_ms")
    if lat:
        w(f"\nCPU latency per image, detect_rois at {lat['size']} px, batch 1, {lat['n_images']} images "
          f"(load average {lat['load_average_1min']}):\n")
        for k in ("threads_2", "threads_1"):
            if k in lat:
                w(f"  {k.replace('_', ' '):<10} p50 {lat[k]['p50']:6.1f} ms  p95 {lat[k]['p95']:6.1f} ms\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data_dir = args.data or load_settings().data_dir
    device = None if args.device == "auto" else args.device
    try:
        loaded = roi.load_detector(args.checkpoint, device=device)
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    if args.size:
        roi.set_serving_size(loaded.net, args.size)
    items = ddata.select_items(data_dir, splits=(args.split,))
    if args.datasets:
        keep = {d.strip() for d in args.datasets.split(",") if d.strip()}
        items = [it for it in items if it.dataset in keep]
    if args.limit:
        items = items[: args.limit]
    if not items:
        logger.error("no labelled images in split %r of %s", args.split, data_dir)
        return 2
    samples, pixels = ddata.build_samples(items)
    bar = tqdm(total=len(samples), desc=f"detect {args.split}", unit="img", file=sys.stderr, dynamic_ncols=True)
    res = {"split": args.split, "n_images": len(samples),
           "datasets": {d: sum(s.dataset == d for s in samples) for d in sorted({s.dataset for s in samples})},
           "checkpoint": str(args.checkpoint or roi.DEFAULT_CHECKPOINT_DIR), "data_dir": str(data_dir),
           "score_threshold": args.score_threshold, "size": int(loaded.net.transform.max_size)}
    ranker = vitems.load_ranker(args.ranker)
    res["ranker"] = ranker.version
    res.update(evaluate(loaded, samples, pixels, score_threshold=args.score_threshold, progress=bar.update,
                        ranker=ranker))
    bar.close()
    _round_table(res)
    if args.latency_images > 0:
        threads = tuple(int(t) for t in args.latency_threads.split(",") if t.strip())
        res["latency_ms"] = measure_latency(loaded, samples, n=args.latency_images, threads=threads)
    if args.record:
        path = Path(args.checkpoint or roi.DEFAULT_CHECKPOINT_DIR) / "manifest.json"
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest.setdefault("metrics", {})[args.split] = {
            k: res[k] for k in ("guided", "non_guided", "all_boxes_gt", "by_dataset", "per_class", "guided_fallback",
                                "chosen_roi_hit50", "option1_pick_hit50", "item_recall50", "ranker", "latency_ms",
                                "n_images", "datasets") if k in res}
        manifest["metrics"][args.split]["command"] = "lookalike evaluate detector " + " ".join(
            argv if argv is not None else sys.argv[1:])
        path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
