"""Attribute training data: labelled images -> (crop, token sequence), plus caches of what does not change
between epochs (a frozen encoder prefix's maps, or letterboxed pixels), with a horizontally flipped copy."""
from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from tqdm import tqdm

from shared.imaging import open_rgb
from shared.taxonomy import EOS, N_SPECIAL, PAD, load_taxonomy
from shared.taxonomy.labels import LabeledImage, load_labeled
from shared.vision import presets
from shared.vision.attributes import COLOUR_BINS, colour_features

logger = logging.getLogger(__name__)


UNLABELLED_RULE = ("an image whose label names no attribute (Colorful Fashion street crops carry only a category) "
                   "is not taught to stop after its category: its end token is not scored")


@dataclass(frozen=True)
class Sample:
    """One training/evaluation example: which pixels to look at and the true sequence."""

    id: str
    dataset: str
    split: str
    path: Path
    box: tuple[float, float, float, float] | None  # Colorful Fashion: the sold item's box; else the whole image
    category_id: int
    attribute_ids: tuple[int, ...]
    tokens: tuple[int, ...]
    disputed_groups: tuple[str, ...] = ()  # groups whose sources disagree (shared.taxonomy.labels.LABEL_NOISE_RULE)

    def targets(self, tax) -> tuple[int, ...]:
        """`tokens` with what the label cannot vouch for replaced by PAD: what training scores (PAD is ignored).

        Disputed groups' tokens are not scored (shared.taxonomy.labels.LABEL_NOISE_RULE), nor is the end token of an
        image whose label carries no attribute at all (UNLABELLED_RULE). Inputs stay the full sequence (teacher
        forcing); only the loss skips those targets."""
        skip = set(self.disputed_groups)
        a0 = N_SPECIAL + len(tax.categories)
        out = [PAD if t >= a0 and tax.attributes[t - a0].group in skip else t for t in self.tokens]
        if not self.attribute_ids and out[-1] == EOS:
            out[-1] = PAD
        return tuple(out)


def item_box(item: LabeledImage) -> tuple[float, float, float, float] | None:
    """Largest box of the image's own category (Colorful Fashion street photos); None = whole image (product photos)."""
    boxes = [b for b in item.boxes if b.category_id == item.category_id]
    if not boxes:
        return None
    best = max(boxes, key=lambda b: (b.xyxy[2] - b.xyxy[0]) * (b.xyxy[3] - b.xyxy[1]))
    return best.xyxy


def load_samples(data_dir: str | Path, splits: Sequence[str]) -> list[Sample]:
    """Labelled images of `splits` in manifest order, with their crop box and token sequence."""
    tax = load_taxonomy()
    out = []
    for item in load_labeled(data_dir, splits=tuple(splits)):
        assert item.category_id is not None
        out.append(Sample(item.id, item.dataset, item.split, item.path, item_box(item), item.category_id,
                          tuple(item.attribute_ids), tuple(tax.sequence(item.category_id, item.attribute_ids)),
                          item.disputed_groups))
    return out


def load_image(sample: Sample) -> Image.Image:
    """The sample's pixels: RGB, cropped to its box when it has one."""
    return presets.crop(open_rgb(sample.path), sample.box)


def data_hash(data_dir: str | Path) -> str:
    """sha1 of manifest.csv + boxes.csv: names the data a checkpoint was trained on."""
    h = hashlib.sha1()
    for name in ("manifest.csv", "boxes.csv"):
        p = Path(data_dir) / name
        if p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _key(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def cached_pixels(samples: Sequence[Sample], size: int, cache_dir: Path) -> torch.Tensor:
    """uint8 (n, 3, size, size) letterboxed crops, cached on disk (flips are done on the fly)."""
    path = cache_dir / f"pixels_{size}_{_key(size, *(s.id for s in samples), *(s.box for s in samples))}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    out = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    for i, s in enumerate(tqdm(samples, desc=f"pixels {size}px", leave=False)):
        out[i] = presets.to_uint8_tensor(presets.letterbox(load_image(s), size))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def subset(samples: Sequence[Sample], n_myntra: int, seed: int) -> list[int]:
    """Indices (in order) of every non-Myntra sample and a seeded random `n_myntra` of the Myntra ones: a smaller
    set that keeps every street crop and clothing photo, for when the CPU budget cannot encode the whole split."""
    myntra = [i for i, s in enumerate(samples) if s.dataset == "myntra_small"]
    keep = set(random.Random(seed).sample(myntra, min(n_myntra, len(myntra))))
    return [i for i, s in enumerate(samples) if s.dataset != "myntra_small" or i in keep]


def cached_colour(samples: Sequence[Sample], size: int, cache_dir: Path, *, pixels: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 colour inputs of the letterboxed crops (shared.vision.attributes.colour_features), cached on disk:
    foreground histograms (n, B) and per-cell histograms (n, B, g, g); the mirror view flips the cells.
    `pixels`: the samples' cached_pixels when the caller already holds them."""
    pixels = cached_pixels(samples, size, cache_dir) if pixels is None else pixels
    path = cache_dir / f"colour_{COLOUR_BINS}_{size}_{_key(size, *(s.id for s in samples), *(s.box for s in samples))}.pt"
    if path.exists():
        glob, cells = torch.load(path, weights_only=True)
        return glob, cells
    globs, cells = [], []
    for lo in tqdm(range(0, len(samples), 256), desc="colour histograms", leave=False):
        g, c = colour_features(pixels[lo: lo + 256])
        globs.append(torch.from_numpy(g).half())
        cells.append(torch.from_numpy(c).half())
    out = (torch.cat(globs), torch.cat(cells))
    torch.save(out, path)
    return out


@torch.inference_mode()
def cached_prefix_maps(encoder: torch.nn.Module, encoder_name: str, samples: Sequence[Sample], size: int,
                       stride: int, cache_dir: Path, *, flip: bool = True, batch_size: int = 64,
                       device: torch.device | str = "cpu", pixels: torch.Tensor | None = None) -> torch.Tensor:
    """fp16 (n, 1 + flip, c, h, w): the frozen encoder prefix's map at `stride` for each crop (and its mirror).
    `pixels`: the samples' cached_pixels when the caller already holds them."""
    pixels = cached_pixels(samples, size, cache_dir) if pixels is None else pixels
    path = cache_dir / f"maps_{encoder_name}_{size}_s{stride}_f{int(flip)}_{_key(*(s.id for s in samples), *(s.box for s in samples))}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode(False):  # parameters converted here must stay normal tensors (they may train later)
        encoder.to(memory_format=torch.channels_last)  # about 20 % faster on one CPU thread
    chunks = []
    for lo in tqdm(range(0, len(samples), batch_size), desc=f"prefix maps s{stride}", leave=False):
        x = presets.normalize(pixels[lo: lo + batch_size]).to(device).contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(3)] if flip else [x]
        maps = [encoder.forward_maps(v, upto=stride)[stride].half().contiguous().cpu() for v in views]
        chunks.append(torch.stack(maps, 1))
    with torch.inference_mode(False):
        encoder.to(memory_format=torch.contiguous_format)
    encoder.train(was_training)
    out = torch.cat(chunks)
    torch.save(out, path)
    return out


@torch.inference_mode()
def cached_later_maps(encoder: torch.nn.Module, store: torch.Tensor, from_stride: int, to_stride: int,
                      cache_dir: Path, key: str, *, batch_size: int = 64) -> torch.Tensor:
    """fp16 (n, views, c, h, w): continue cached `from_stride` maps through (frozen) encoder blocks to `to_stride`.

    `key` names the encoder weights (e.g. the checkpoint they came from) and the source cache."""
    path = cache_dir / f"maps_s{from_stride}to{to_stride}_{_key(key, tuple(store.shape))}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    was_training = encoder.training
    encoder.eval()
    n, views = store.shape[:2]
    chunks = []
    for lo in tqdm(range(0, n, batch_size), desc=f"maps s{from_stride}->s{to_stride}", leave=False):
        x = store[lo: lo + batch_size].flatten(0, 1).float()
        y = encoder.forward_from(x, from_stride, upto=to_stride)[to_stride].half()
        chunks.append(y.view(-1, views, *y.shape[1:]))
    encoder.train(was_training)
    out = torch.cat(chunks)
    torch.save(out, path)
    return out
