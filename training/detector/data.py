"""Detector training/evaluation samples: Colorful Fashion boxes plus one whole-item box per product photo.

Street photos (Colorful Fashion) keep every annotated box (classes mapped to taxonomy categories by
`shared.taxonomy.labels`). Single-item product photos (Myntra, clothing dataset) get ONE box around the
non-background pixels (`product_box`), labelled with the image's category, so categories that never occur
in street photos (jewellery, watches, innerwear, ...) are learned too.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from shared.imaging import open_rgb
from shared.taxonomy.labels import LabeledImage, load_labeled
from shared.vision.presets import to_uint8_tensor

STREET_DATASETS = ("colorful_fashion",)
PRODUCT_DATASETS = ("myntra_small", "clothing_dataset")
# A pixel is foreground when some channel differs from the border colour by more than this (0..255);
# JPEG noise on white/grey studio backgrounds stays well under it.
FG_THRESHOLD = 28
# Foreground covering less than this fraction of the image is noise -> whole image.
MIN_FG_FRACTION = 0.02


@dataclass(frozen=True)
class DetectionSample:
    """One image with its boxes. boxes: float32 (n, 4) xyxy pixels; labels: int64 (n,) taxonomy
    category ids (NOT shifted for the background class); guided_category: the listing's category."""

    id: str
    dataset: str
    path: Path
    split: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    guided_category: int
    box_source: str  # "annotated" | "foreground" | "whole_image"


def product_box(rgb: np.ndarray) -> tuple[tuple[float, float, float, float], str]:
    """Whole-item box of a single-item product photo: uint8 (h, w, 3) -> ((x0, y0, x1, y1), source).

    Background colour = per-channel median of the 2-px border; foreground = pixels differing from it by
    more than FG_THRESHOLD; opening removes JPEG speckle, closing fills the garment; components smaller
    than 10% of the largest are dropped (creases, shadows). Falls back to the whole image (source
    "whole_image") when the foreground is tiny or the border is not a uniform background.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError(f"rgb must be uint8 (h, w, 3), got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    whole = ((0.0, 0.0, float(w), float(h)), "whole_image")
    if h < 8 or w < 8:
        return whole
    img = rgb.astype(np.int16)
    border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                             img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    # A textured border (a floor, a bed) has no single background colour: the box would be noise.
    if np.mean(np.abs(border - bg).max(axis=1) > FG_THRESHOLD) > 0.5:
        return whole
    mask = np.abs(img - bg).max(axis=2) > FG_THRESHOLD
    k = 1 if max(h, w) <= 100 else 2  # Myntra photos are 60x80: a 3x3 opening is already strong
    mask = ndimage.binary_opening(mask, iterations=k)
    mask = ndimage.binary_closing(mask, iterations=2 * k)
    lab, n = ndimage.label(mask)
    if n == 0:
        return whole
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    keep = np.isin(lab, 1 + np.flatnonzero(sizes >= 0.1 * sizes.max()))
    if keep.sum() < MIN_FG_FRACTION * h * w:
        return whole
    ys, xs = np.nonzero(keep)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), "foreground"


def _sample_from(item: LabeledImage, rgb: np.ndarray | None) -> DetectionSample:
    if item.dataset in STREET_DATASETS:
        boxes = np.array([b.xyxy for b in item.boxes], dtype=np.float32).reshape(-1, 4)
        labels = np.array([b.category_id for b in item.boxes], dtype=np.int64)
        source = "annotated"
    else:
        assert rgb is not None
        xyxy, source = product_box(rgb)
        boxes = np.array([xyxy], dtype=np.float32)
        labels = np.array([item.category_id], dtype=np.int64)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, item.width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, item.height)
    ok = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    return DetectionSample(id=item.id, dataset=item.dataset, path=item.path, split=item.split,
                           width=item.width, height=item.height, boxes=boxes[ok], labels=labels[ok],
                           guided_category=int(item.category_id), box_source=source)


def select_items(data_dir: str | Path, *, splits: Sequence[str], myntra_per_category: int | None = None,
                 seed: int = 0) -> list[LabeledImage]:
    """Labelled images of `splits` usable for detection; Myntra subsampled to at most
    `myntra_per_category` per taxonomy category (None = all), deterministically by seed."""
    items = [it for it in load_labeled(data_dir, splits=tuple(splits))
             if it.category_id is not None and (it.dataset not in STREET_DATASETS or it.boxes)]
    if myntra_per_category is None:
        return items
    by_cat: dict[int, list[LabeledImage]] = defaultdict(list)
    for it in items:
        if it.dataset == "myntra_small":
            by_cat[int(it.category_id)].append(it)
    rng = random.Random(seed)
    keep: set[str] = set()
    for cat in sorted(by_cat):
        group = sorted(by_cat[cat], key=lambda it: it.id)
        rng.shuffle(group)
        keep.update(it.id for it in group[:myntra_per_category])
    return [it for it in items if it.dataset != "myntra_small" or it.id in keep]


def load_rgb(path: Path) -> np.ndarray:
    """uint8 (h, w, 3) RGB pixels of an image file."""
    return np.array(open_rgb(path), dtype=np.uint8)


def build_samples(items: Sequence[LabeledImage]) -> tuple[list[DetectionSample], list[torch.Tensor]]:
    """Samples plus their decoded pixels, uint8 (3, h, w) each (kept in RAM: ~0.3 GB for every image)."""
    samples, pixels = [], []
    for it in items:
        rgb = load_rgb(it.path)
        samples.append(_sample_from(it, rgb))
        pixels.append(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous())
    return samples, pixels


def items_hash(items: Sequence[LabeledImage]) -> str:
    """sha1 over ids, splits, categories and box coordinates: names the exact training data."""
    h = hashlib.sha1()
    for it in items:
        h.update(json.dumps([it.id, it.split, it.category_id, [(b.category_id, b.xyxy) for b in it.boxes]]).encode())
    return h.hexdigest()


def load_cached_samples(items: Sequence[LabeledImage], cache_dir: Path) -> tuple[list[DetectionSample], list[torch.Tensor]]:
    """`build_samples`, cached in cache_dir (keyed by `items_hash`) so restarts skip decoding."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"samples_{items_hash(items)[:16]}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=False)
        return blob["samples"], blob["pixels"]
    samples, pixels = build_samples(items)
    tmp = path.with_suffix(".tmp")
    torch.save({"samples": samples, "pixels": pixels}, tmp)
    tmp.replace(path)
    return samples, pixels


def to_target(sample: DetectionSample, pixels: torch.Tensor, *, flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """float (3, h, w) in [0, 1] and a torchvision target (labels shifted by 1: 0 is background)."""
    img = pixels.float().div_(255.0)
    boxes = torch.from_numpy(sample.boxes.copy())
    if flip:
        img = img.flip(-1)
        w = float(sample.width)
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return img, {"boxes": boxes, "labels": torch.from_numpy(sample.labels + 1)}


def image_of(sample: DetectionSample) -> Image.Image:
    """The sample's image as PIL RGB."""
    return open_rgb(sample.path)


def pixels_of(image: Image.Image) -> torch.Tensor:
    """PIL -> uint8 (3, h, w)."""
    return to_uint8_tensor(image)
