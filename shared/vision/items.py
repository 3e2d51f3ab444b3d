"""Items of a photo: detector boxes merged across classes into one entry per distinct item, ranked by how likely the
photo is about each (a small conditional-logit ranker fitted on Colorful Fashion, `training/detector/ranker.py`).

Why: the detector proposes the same garment under several classes (a shirt box and a jacket box over one top) and
the single highest-scoring box is often a small, crisp item (a shoe, sunglasses) rather than what the photo shows.
The ranker scores every item from its class, size, position, detector score and overlaps; a softmax over the
photo's items gives the probability that the shopper means each one.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shared.config import REPO_ROOT
from shared.vision.roi import Roi

DEFAULT_RANKER = REPO_ROOT / "models" / "ranker" / "ranker.json"
N_CATEGORIES = 19


@dataclass(frozen=True)
class Item:
    """One distinct item: its best box, that box's class and score, the best score of every class whose box was
    merged into it (cross-class duplicates), and the ranker's probability that the photo is about it."""

    xyxy: tuple[float, float, float, float]
    category_id: int
    score: float
    class_scores: dict[int, float] = field(default_factory=dict)
    probability: float = 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (n, 4) and b (m, 4), xyxy -> (n, m)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def merge_items(rois: Sequence[Roi], *, merge_iou: float, min_score: float) -> list[Item]:
    """Greedy, score-descending: a box overlapping an existing item by IoU >= merge_iou (any class) adds its class
    evidence to that item; otherwise, if its score is >= min_score, it starts a new item. Boxes below min_score
    never make an item of their own, but still count as class evidence for the item they overlap."""
    items: list[Item] = []
    boxes: list[tuple[float, float, float, float]] = []
    for r in sorted(rois, key=lambda r: -r.score):
        if r.category_id is None:
            continue
        if boxes:
            iou = box_iou(np.array([r.xyxy]), np.array(boxes))[0]
            j = int(iou.argmax())
            if iou[j] >= merge_iou:
                cs = items[j].class_scores
                cs[r.category_id] = max(cs.get(r.category_id, 0.0), r.score)
                continue
        if r.score >= min_score:
            items.append(Item(xyxy=r.xyxy, category_id=r.category_id, score=r.score,
                              class_scores={r.category_id: r.score}))
            boxes.append(r.xyxy)
    return items


FEATURES_NUMERIC = ("log_area", "score", "log_score", "logit_score", "centre_dx", "centre_y", "log_area_vs_max", "score_rank",
                    "area_rank", "max_iou_other", "covered_by_other", "covers_other", "n_classes", "log_n_items",
                    "aspect")


def item_features(items: Sequence[Item], width: int, height: int) -> np.ndarray:
    """float64 (n_items, 15 + 19): numeric features (FEATURES_NUMERIC), then the class one-hot."""
    n = len(items)
    out = np.zeros((n, len(FEATURES_NUMERIC) + N_CATEGORIES))
    if n == 0:
        return out
    b = np.array([it.xyxy for it in items], np.float64)
    w = np.clip(b[:, 2] - b[:, 0], 1e-3, None)
    h = np.clip(b[:, 3] - b[:, 1], 1e-3, None)
    area = w * h / max(1.0, float(width * height))
    score = np.clip(np.array([it.score for it in items]), 1e-4, 1 - 1e-4)
    iou = box_iou(b, b)
    np.fill_diagonal(iou, 0.0)
    lt = np.maximum(b[:, None, :2], b[None, :, :2])
    rb = np.minimum(b[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    np.fill_diagonal(inter, 0.0)
    own = (w * h)[:, None]
    other = (w * h)[None, :]
    out[:, 0] = np.log(area)
    out[:, 1] = score
    out[:, 2] = np.log(score)
    out[:, 3] = np.log(score / (1 - score))
    out[:, 4] = np.abs((b[:, 0] + b[:, 2]) / 2 / max(1, width) - 0.5)
    out[:, 5] = (b[:, 1] + b[:, 3]) / 2 / max(1, height)
    out[:, 6] = np.log(area / area.max())
    out[:, 7] = np.argsort(np.argsort(-score)) / max(1, n - 1)
    out[:, 8] = np.argsort(np.argsort(-area)) / max(1, n - 1)
    out[:, 9] = iou.max(1) if n > 1 else 0.0
    out[:, 10] = (inter / own).max(1) if n > 1 else 0.0  # share of this box inside another item
    out[:, 11] = (inter / other).max(1) if n > 1 else 0.0  # share of another item inside this box
    out[:, 12] = [len(it.class_scores) for it in items]
    out[:, 13] = math.log(n)
    out[:, 14] = np.log(h / w)
    out[np.arange(n), len(FEATURES_NUMERIC) + np.array([it.category_id for it in items])] = 1.0
    return out


@dataclass(frozen=True)
class ItemRanker:
    """Linear scores on standardised features; softmax over a photo's items. merge_iou / min_score: merge_items'.
    show_score: items after the first are listed only when their detector score reaches it (the weak ones still
    take part in the softmax and the choice, but a shopper gains nothing from a 3 % 'bag' outline)."""

    weights: np.ndarray  # (n_features,)
    mean: np.ndarray
    std: np.ndarray
    merge_iou: float = 0.6
    min_score: float = 0.3
    max_items: int = 8
    show_score: float = 0.3
    version: str = "area-score"
    meta: dict[str, Any] = field(default_factory=dict)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        return ((feats - self.mean) / self.std) @ self.weights

    def rank(self, rois: Sequence[Roi], width: int, height: int) -> list[Item]:
        """Merged items, most likely first, each with its probability (they sum to 1 over the listed items)."""
        items = merge_items(rois, merge_iou=self.merge_iou, min_score=self.min_score)
        if not items:
            return []
        z = self.logits(item_features(items, width, height))
        p = np.exp(z - z.max())
        p /= p.sum()
        order = [i for k, i in enumerate(np.argsort(-p, kind="stable"))
                 if k == 0 or items[i].score >= self.show_score][: self.max_items]
        shown = float(p[order].sum())  # renormalised over the listed items: the shopper chooses among those
        return [Item(xyxy=items[i].xyxy, category_id=items[i].category_id, score=items[i].score,
                     class_scores=dict(items[i].class_scores), probability=float(p[i]) / shown) for i in order]

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "features": list(FEATURES_NUMERIC) + [f"class_{c}" for c in range(N_CATEGORIES)],
                "weights": [round(float(x), 6) for x in self.weights], "mean": [round(float(x), 6) for x in self.mean],
                "std": [round(float(x), 6) for x in self.std], "merge_iou": self.merge_iou,
                "min_score": self.min_score, "max_items": self.max_items, "show_score": self.show_score,
                "meta": self.meta}

    @classmethod
    def from_json(cls, blob: dict[str, Any]) -> "ItemRanker":
        n = len(FEATURES_NUMERIC) + N_CATEGORIES
        w, m, s = (np.asarray(blob[k], np.float64) for k in ("weights", "mean", "std"))
        if not (w.shape == m.shape == s.shape == (n,)):
            raise ValueError(f"ranker has {w.shape[0]} weights, this code computes {n} features")
        return cls(weights=w, mean=m, std=s, merge_iou=float(blob["merge_iou"]), min_score=float(blob["min_score"]),
                   max_items=int(blob.get("max_items", 8)), show_score=float(blob.get("show_score", 0.3)),
                   version=str(blob.get("version", "unknown")),
                   meta=dict(blob.get("meta", {})))


def area_score_ranker(*, merge_iou: float = 0.6, min_score: float = 0.3) -> ItemRanker:
    """The baseline rule as a ranker: logit = log(area) + log(score), i.e. largest area x score first."""
    n = len(FEATURES_NUMERIC) + N_CATEGORIES
    w = np.zeros(n)
    w[FEATURES_NUMERIC.index("log_area")] = 1.0
    w[FEATURES_NUMERIC.index("log_score")] = 1.0
    return ItemRanker(weights=w, mean=np.zeros(n), std=np.ones(n), merge_iou=merge_iou, min_score=min_score)


def load_ranker(path: str | Path | None = None) -> ItemRanker:
    """The shipped ranker (models/ranker/ranker.json); the area x score rule when none is shipped."""
    path = Path(path) if path is not None else DEFAULT_RANKER
    if not path.exists():
        return area_score_ranker()
    return ItemRanker.from_json(json.loads(path.read_text(encoding="utf-8")))
