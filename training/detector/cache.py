"""Raw detector outputs per split, computed once and cached under var/ (the ranker is fitted and evaluated on them)."""
from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from shared.config import REPO_ROOT
from shared.taxonomy.labels import LabeledImage
from shared.vision import roi
from training.detector import data as ddata
from training.detector import engine

logger = logging.getLogger(__name__)

CACHE_DIR = REPO_ROOT / "var" / "ranker"
# Product photos are many and alike: a fixed, seeded subset per split is enough to check that they keep working.
MYNTRA_PER_CATEGORY = 6
CLOTHING_PER_SPLIT = 300


def ranker_items(data_dir: str | Path, split: str) -> list[LabeledImage]:
    """Every Colorful Fashion photo of `split`, plus a seeded subset of its product photos."""
    items = ddata.select_items(data_dir, splits=(split,), myntra_per_category=MYNTRA_PER_CATEGORY)
    clothing = sorted((it for it in items if it.dataset == "clothing_dataset"),
                      key=lambda it: hashlib.sha1(f"ranker:{it.id}".encode()).hexdigest())[:CLOTHING_PER_SPLIT]
    keep = {it.id for it in clothing}
    return [it for it in items if it.dataset != "clothing_dataset" or it.id in keep]


def detector_outputs(loaded: roi.LoadedDetector, items: Sequence[LabeledImage], *, checkpoint_version: str,
                     cache_dir: Path = CACHE_DIR) -> tuple[list[ddata.DetectionSample], list[engine.Detections]]:
    """Samples and every raw detection (score >= 0.01, <= 50 per image), cached by data hash and checkpoint."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{ddata.items_hash(items)}:{checkpoint_version}".encode()).hexdigest()[:16]
    path = cache_dir / f"detections_{key}.pt"
    if path.exists():
        blob = torch.load(path, weights_only=False)
        return blob["samples"], blob["detections"]
    samples, pixels = ddata.build_samples(items)
    bar = tqdm(total=len(samples), desc="detect", unit="img", file=sys.stderr, dynamic_ncols=True)
    dets = engine.detect_samples(loaded.net, samples, pixels, device=loaded.device, progress=bar.update)
    bar.close()
    tmp = path.with_suffix(".tmp")
    torch.save({"samples": samples, "detections": dets}, tmp)
    tmp.replace(path)
    return samples, dets
