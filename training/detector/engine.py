"""Detector loops: aspect-grouped batching, one training epoch, batched inference and Table-3 style AP."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN

from training.detector.data import DetectionSample, to_target

IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def epoch_batches(samples: Sequence[DetectionSample], batch_size: int, *, seed: int, epoch: int,
                  repeat: dict[str, int] | None = None) -> list[list[int]]:
    """Deterministic batches for one epoch: portrait and landscape images are batched apart (less
    padding, as torchvision's GroupedBatchSampler does), shuffled by (seed, epoch) so a resumed run sees
    exactly the batches the interrupted one would have. repeat: dataset -> times each of its images
    occurs per epoch (default 1), to emphasise a source."""
    rng = random.Random(seed * 100_003 + epoch)
    groups: dict[bool, list[int]] = {True: [], False: []}
    for i, s in enumerate(samples):
        groups[s.height >= s.width] += [i] * (repeat or {}).get(s.dataset, 1)
    batches = []
    for idx in groups.values():
        rng.shuffle(idx)
        batches += [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def colour_jitter(img: torch.Tensor, rng: random.Random, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength] on a float
    (3, h, w) image in [0, 1]."""
    if strength <= 0:
        return img
    b, c, s = (1 + rng.uniform(-strength, strength) for _ in range(3))
    img = img * b
    img = (img - img.mean()) * c + img.mean()
    grey = img.mean(0, keepdim=True)
    return ((img - grey) * s + grey).clamp_(0.0, 1.0)


def train_steps(net: FasterRCNN, optimizer: torch.optim.Optimizer, samples: Sequence[DetectionSample], pixels: Sequence[torch.Tensor], batches: Iterable[list[int]],
                *, device: torch.device, rng: random.Random,
                on_step: Callable[[dict[str, float]], bool], sizes: Sequence[int] = (),
                colour: float = 0.0) -> None:
    """Run one optimizer step per batch (horizontal flip with p=0.5; colour jitter of `colour` strength;
    each batch resized so its longer side is a random one of `sizes`, the serving size when empty);
    `on_step` gets the losses and returns False to stop early (time budget spent)."""
    serving = (net.transform.min_size, net.transform.max_size)
    try:
        _train_steps(net, optimizer, samples, pixels, batches, device=device, rng=rng, on_step=on_step,
                     sizes=sizes, colour=colour)
    finally:
        net.transform.min_size, net.transform.max_size = serving


def _train_steps(net, optimizer, samples, pixels, batches, *, device, rng, on_step, sizes, colour) -> None:
    for batch in batches:
        if sizes:
            size = rng.choice(list(sizes))
            net.transform.min_size, net.transform.max_size = (size,), size
        imgs, targets = [], []
        for i in batch:
            img, tgt = to_target(samples[i], pixels[i], flip=rng.random() < 0.5)
            img = colour_jitter(img, rng, colour)
            imgs.append(img.to(device))
            targets.append({k: v.to(device) for k, v in tgt.items()})
        losses = net(imgs, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite detector loss {({k: float(v) for k, v in losses.items()})}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], 10.0)
        optimizer.step()
        if not on_step({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}):
            return


@dataclass
class Detections:
    """Raw detections of one image: boxes float32 (n, 4) xyxy px, labels int64 (n,) taxonomy ids, scores (n,)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


def detect_samples(net: FasterRCNN, samples: Sequence[DetectionSample], pixels: Sequence[torch.Tensor], *,
                   device: torch.device, batch_size: int = 1,
                   progress: Callable[[int], None] | None = None) -> list[Detections]:
    """Every detection (score >= the network's box_score_thresh) for each sample, in sample order."""
    net.eval()
    out: list[Detections] = []
    with torch.inference_mode():
        for k in range(0, len(samples), batch_size):
            imgs = [pixels[i].float().div(255.0).to(device) for i in range(k, min(k + batch_size, len(samples)))]
            for o in net(imgs):
                out.append(Detections(boxes=o["boxes"].float().cpu().numpy(),
                                      labels=o["labels"].cpu().numpy().astype(np.int64) - 1,
                                      scores=o["scores"].float().cpu().numpy()))
            if progress is not None:
                progress(len(imgs))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of float (n, 4) and (m, 4) xyxy boxes -> (n, m)."""
    if a.size == 0 or b.size == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def average_precision(dets: list[tuple[int, float, np.ndarray]], gts: dict[int, np.ndarray], iou: float) -> float:
    """VOC all-points AP of one class: dets = (image index, score, xyxy); gts = image index -> (n, 4).

    Greedy matching by descending score; a ground-truth box matches at most once; unmatched detections
    are false positives. NaN when the class has no ground truth."""
    n_gt = sum(len(g) for g in gts.values())
    if n_gt == 0:
        return float("nan")
    order = sorted(range(len(dets)), key=lambda k: -dets[k][1])
    used = {img: np.zeros(len(g), dtype=bool) for img, g in gts.items()}
    tp = np.zeros(len(order))
    for rank, k in enumerate(order):
        img, _, box = dets[k]
        g = gts.get(img)
        if g is None or len(g) == 0:
            continue
        ious = box_iou(box[None, :], g)[0]
        ious[used[img]] = -1.0
        j = int(np.argmax(ious))
        if ious[j] >= iou:
            used[img][j] = True
            tp[rank] = 1
    if len(order) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(order) + 1)
    # All-points interpolation (VOC 2010+): precision made monotone, integrated over recall steps.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def per_class_ap(samples: Sequence[DetectionSample], dets: Sequence[Detections], *, num_categories: int,
                 iou: float, guided: bool, gt: str) -> dict[int, float]:
    """AP per taxonomy category.

    guided: for image i keep only detections of its guided category (the listing's category);
    otherwise every detection. gt: "listing" = ground truth of image i is its boxes of the guided
    category (the item the listing sells); "all" = every annotated box of every class.
    """
    if gt not in ("listing", "all"):
        raise ValueError(f"gt must be 'listing' or 'all', got {gt!r}")
    out = {}
    for c in range(num_categories):
        gts: dict[int, np.ndarray] = {}
        cls_dets: list[tuple[int, float, np.ndarray]] = []
        for i, (s, d) in enumerate(zip(samples, dets)):
            if gt == "all" or s.guided_category == c:
                gts[i] = s.boxes[s.labels == c]
            if guided and s.guided_category != c:
                continue
            for k in np.flatnonzero(d.labels == c):
                cls_dets.append((i, float(d.scores[k]), d.boxes[k]))
        out[c] = average_precision(cls_dets, gts, iou)
    return out


def mean_ap(aps: dict[int, float]) -> float:
    """Mean over classes that have ground truth (NaN APs skipped)."""
    vals = [v for v in aps.values() if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def table3(samples: Sequence[DetectionSample], dets: Sequence[Detections], *, num_categories: int,
           gt: str = "listing") -> dict[str, dict[str, float]]:
    """{"guided": {"0.5": mAP, ...}, "non_guided": {...}} at IOU_THRESHOLDS."""
    res: dict[str, dict[str, float]] = {"guided": {}, "non_guided": {}}
    for mode, guided in (("guided", True), ("non_guided", False)):
        for t in IOU_THRESHOLDS:
            res[mode][f"{t:.1f}"] = mean_ap(per_class_ap(samples, dets, num_categories=num_categories, iou=t,
                                                         guided=guided, gt=gt))
    return res
