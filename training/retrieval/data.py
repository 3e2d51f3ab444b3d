"""Retrieval evaluation data: items with ROI and relevance labels, seeded altered copies, and the pooled-map cache."""
from __future__ import annotations

import hashlib
import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import nn
from tqdm import tqdm

from shared.config import REPO_ROOT
from shared.imaging import open_rgb
from shared.taxonomy import load_source_labels
from shared.taxonomy.labels import load_labeled
from shared.vision import presets
from shared.vision.features import ISOLATE_VERSION, Box, colour_histogram, isolate_item, pooled_maps

logger = logging.getLogger(__name__)

CACHE_DIR = REPO_ROOT / "var" / "retrieval"
ALTER_SEED = 1609  # arXiv 1609.07859
# Colour labels that say nothing about one colour: items carrying them are matched on category only.
_NO_COLOUR = {None, "colour.multi"}


@dataclass(frozen=True)
class RetrievalItem:
    """One indexed image: its ROI (ground truth) and the labels relevance is judged on."""

    id: str
    dataset: str
    path: Path
    split: str
    category_id: int
    colour: str | None  # taxonomy colour attribute key from the Myntra baseColour column; None = no colour label
    roi: Box | None  # Colorful Fashion: the largest box of the image's category; product photos: None (whole image)


def ground_truth_roi(item) -> Box | None:
    """Colorful Fashion: the largest box of the image's category (its label is the class of the largest box);
    product photos (Myntra, clothing dataset): None, the whole image."""
    boxes = [b for b in item.boxes if b.category_id == item.category_id] or list(item.boxes)
    if not boxes:
        return None
    best = max(boxes, key=lambda b: (b.xyxy[2] - b.xyxy[0]) * (b.xyxy[3] - b.xyxy[1]))
    return best.xyxy


def load_items(data_dir: str | Path) -> list[RetrievalItem]:
    """Every labelled image of a data folder, in manifest order."""
    colour_map = load_source_labels()["myntra_small"]["baseColour"]
    out = []
    for it in load_labeled(data_dir):
        colour = colour_map.get(it.base_colour) if it.dataset == "myntra_small" else None
        out.append(RetrievalItem(id=it.id, dataset=it.dataset, path=it.path, split=it.split,
                                 category_id=int(it.category_id), colour=None if colour in _NO_COLOUR else colour,
                                 roi=ground_truth_roi(it)))
    return out


def relevance(queries: Sequence[RetrievalItem], index: Sequence[RetrievalItem]) -> np.ndarray:
    """bool (nq, n): same taxonomy category, and same colour when the query has a colour label.

    A query without a colour label (clothing dataset, Colorful Fashion, Myntra 'Multi'/'NA') is judged on category
    only; a query with one needs an indexed item of the same category carrying the same colour label (an unlabelled
    item does not count, which can only under-state precision).
    """
    cat_i = np.array([it.category_id for it in index])
    col_i = np.array([it.colour or "" for it in index])
    rel = np.zeros((len(queries), len(index)), dtype=bool)
    for r, q in enumerate(queries):
        m = cat_i == q.category_id
        if q.colour is not None:
            m &= col_i == q.colour
        rel[r] = m
    return rel


def open_image(path: Path) -> Image.Image:
    """A dataset image as loaded RGB."""
    return open_rgb(path)


def roi_crop(item: RetrievalItem) -> Image.Image:
    """The item's ROI crop (the whole image for product photos)."""
    return presets.crop(open_image(item.path), item.roi)


def alter(img: Image.Image, rng: random.Random, *, keep: tuple[float, float] = (0.80, 0.95),
          scale: tuple[float, float] = (0.6, 1.4), pad: tuple[float, float] = (0.0, 0.15),
          brightness: tuple[float, float] = (0.8, 1.2), quality: tuple[int, int] = (30, 60)) -> Image.Image:
    """A UKB-style altered copy: random crop keeping 80-95% of each side, rescale x0.6-1.4, padding on a random
    background colour (0-15% per side), brightness x0.8-1.2, JPEG quality 30-60 (the defaults are the evaluation
    protocol; the embedding trainer passes wider ranges of the same kinds)."""
    w, h = img.size
    fw, fh = rng.uniform(*keep), rng.uniform(*keep)
    cw, ch = max(2, round(w * fw)), max(2, round(h * fh))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    s = rng.uniform(*scale)
    out = out.resize((max(8, round(cw * s)), max(8, round(ch * s))), Image.BILINEAR)
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    pads = [round(rng.uniform(*pad) * (out.size[0] if i % 2 == 0 else out.size[1])) for i in range(4)]
    canvas = Image.new("RGB", (out.size[0] + pads[0] + pads[2], out.size[1] + pads[1] + pads[3]), bg)
    canvas.paste(out, (pads[0], pads[1]))
    out = ImageEnhance.Brightness(canvas).enhance(rng.uniform(*brightness))
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=rng.randint(*quality))
    buf.seek(0)
    with Image.open(buf) as back:
        return back.convert("RGB")


def altered_crop(item: RetrievalItem, seed: int = ALTER_SEED) -> Image.Image:
    """The altered copy of the item's ROI crop; seeded by (seed, item id) so every run builds the same copy."""
    digest = hashlib.sha1(f"{seed}:{item.id}".encode()).hexdigest()
    return alter(roi_crop(item), random.Random(int(digest[:16], 16)))


# ----------------------------------------------------------------------------------------------------------------
# cache of what does not change between tuning runs: pooled maps and colour histograms per (encoder, variant)


_UNUSED_HEAD = ("_conv_head.", "_bn1.", "_fc.")


def encoder_tag(encoder: nn.Module) -> str:
    """A short hash of the encoder's class and weights (cache key: a fine-tuned encoder gets its own cache). The head
    conv after stride 32 is left out: the pooled maps never use it, and a features folder does not ship it (it is
    randomly initialised there, which made the key differ between processes)."""
    h = hashlib.sha1(type(encoder).__name__.encode())
    for name, t in encoder.state_dict().items():
        if name.startswith(_UNUSED_HEAD):
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def data_tag(data_dir: str | Path) -> str:
    """A short hash of the data folder's manifest and boxes (a changed folder gets its own cache)."""
    h = hashlib.sha1()
    for name in ("manifest.csv", "boxes.csv"):
        p = Path(data_dir) / name
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def _inputs(item: RetrievalItem, variant: str) -> tuple[Image.Image, Box | None]:
    """(image to encode, roi within it) for a variant: 'crop' (encode the ROI crop), 'altered' (encode the altered
    crop), 'roipool' (encode the whole image, pool the ROI's cells)."""
    if variant == "crop":
        return roi_crop(item), None
    if variant == "altered":
        return altered_crop(item), None
    if variant == "roipool":
        return open_image(item.path), item.roi
    raise ValueError(f"unknown variant {variant!r}")


def cache_folder(encoder: nn.Module, items: Sequence[RetrievalItem], *, variant: str, input_size: int,
                 data_dir: str | Path, layers: Sequence[int] = (16, 32), colour_mask: bool = True,
                 flatten: bool = True) -> Path:
    """Where `cached_pooled` keeps the chunks of one (encoder, data, variant, size, items) combination."""
    flatten = flatten and variant != "roipool"
    key_parts = (encoder_tag(encoder), data_tag(data_dir), variant, input_size, tuple(layers), colour_mask,
                 ALTER_SEED, [it.id for it in items]) + (("flat",) if flatten else ())
    if flatten and ISOLATE_VERSION > 1:
        key_parts += (f"isolate{ISOLATE_VERSION}",)
    key = hashlib.sha1(repr(key_parts).encode()).hexdigest()[:16]
    return CACHE_DIR / f"{variant}-{input_size}-{key}"


def cached_prefix(folder: Path, n_items: int, chunk: int = 512) -> dict[str, np.ndarray]:
    """The leading run of finished chunks of a `cached_pooled` folder (no encoding): the first rows of its items, so
    a consumer can start while another process is still filling the cache."""
    parts = []
    for start in range(0, n_items, chunk):
        path = folder / f"{start:07d}.npz"
        if not path.exists():
            break
        with np.load(path) as z:
            parts.append({k: z[k] for k in z.files})
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def cached_pooled(encoder: nn.Module, items: Sequence[RetrievalItem], *, variant: str, input_size: int,
                  data_dir: str | Path, layers: Sequence[int] = (16, 32), chunk: int = 512, batch_size: int = 8,
                  use_cache: bool = True, colour_mask: bool = True, flatten: bool = True) -> dict[str, np.ndarray]:
    """Pooled maps (see `pooled_maps`) plus "colour" (n, bins) for every item, computed once and cached in chunks
    under var/retrieval/ (an interrupted run resumes at the first missing chunk).

    flatten: encode `isolate_item(crop)` as `extract_features` does (crop variants; ROI pooling encodes the photo).
    """
    flatten = flatten and variant != "roipool"
    folder = cache_folder(encoder, items, variant=variant, input_size=input_size, data_dir=data_dir, layers=layers,
                          colour_mask=colour_mask, flatten=flatten)
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[dict[str, np.ndarray]] = []
    bar = tqdm(total=len(items), desc=f"encode {variant}@{input_size}", unit="img", leave=False)
    for start in range(0, len(items), chunk):
        part_path = folder / f"{start:07d}.npz"
        sub = items[start:start + chunk]
        if use_cache and part_path.exists():
            with np.load(part_path) as z:
                parts.append({k: z[k] for k in z.files})
        else:
            images, rois = zip(*(_inputs(it, variant) for it in sub))
            views = [isolate_item(img) for img in images] if flatten else list(images)
            pooled = pooled_maps(encoder, views, list(rois), input_size=input_size, layers=layers,
                                 batch_size=batch_size)
            pooled["colour"] = np.stack([colour_histogram(img, roi, use_mask=colour_mask)
                                         for img, roi in zip(images, rois)])
            if use_cache:
                tmp = part_path.with_suffix(".tmp.npz")
                np.savez(tmp, **pooled)
                tmp.replace(part_path)
            parts.append(pooled)
        bar.update(len(sub))
    bar.close()
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def set_threads(threads: int) -> None:
    """torch intra-op threads (0 = torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
