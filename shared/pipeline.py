"""The one image pipeline, called by ingestion (workers) and by search (API) alike:

category (seller/shopper choice, else the seller's text, else the image) -> ROI (shopper rectangle, else the
detector, guided by the category when known, else the item the photo is most likely about) -> attributes on the
ROI (guided generation when the category is known) -> appearance code and colour histogram of the ROI.

Every photo's detections are also merged into `items` (one per distinct item, ranked by `shared.vision.items`), so
a search can list them and search any of them. Category rule when nobody chose one (`item_category`): the region's
category must agree with the region: the attribute network's reading of the crop is kept when it is one of the
item's detector classes or a category of the same top / bottom group as the item's class (the detector cannot tell a
t-shirt from a shirt in a street photo; the attribute network can); otherwise the detector's class wins and the
attributes are generated guided by it.

Attributes are read from the ROI crop rather than the whole photo so that a street photo's attributes
describe the item being sold or searched, not the whole outfit.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from shared.config import Settings
from shared.taxonomy import Taxonomy, load_taxonomy
from shared.vision.items import Item, box_iou
from shared.vision.presets import crop

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributeOut:
    attribute_id: int
    key: str
    probability: float


@dataclass
class Analysis:
    """What the pipeline derives from one photo."""

    category_id: int
    category_key: str
    category_source: str  # seller | shopper | text | image
    category_confidence: float
    attributes: list[AttributeOut]
    roi: tuple[float, float, float, float]
    roi_fallback: str  # none | compatible_category | whole_image | shopper_rect
    boxes: list[Any]  # shared.vision.roi.Roi, score-descending
    code: bytes  # packed bits, shared.codes bit order
    colour: np.ndarray  # float32 (n_bins,), sums to 1
    colour_quantized: bytes
    timings_ms: dict[str, float] = field(default_factory=dict)
    items: list[Item] = field(default_factory=list)  # every distinct item, most likely first
    item_index: int | None = None  # the item whose box is the ROI (None: a shopper rectangle or guided box off-item)
    searched: list[tuple[int, float]] = field(default_factory=list)  # (category id, weight): categories to search
    detections: list[Any] = field(default_factory=list)  # every raw detection (Roi), to re-analyse another item
    # (code, colour) of the other boxes ingestion could have indexed this photo under (one per category's guided
    # choice): probes for the listing whose own photo this is, whatever category its seller filed it under.
    duplicate_probes: list[tuple[bytes, np.ndarray]] = field(default_factory=list)
    conflict: dict[str, Any] | None = None  # shared.conflicts: the seller's category vs the photo's main item
    rerank: np.ndarray | None = None  # float32 (d,) re-ranking projection (shared.vision.rerank), when shipped
    duplicate_probe_rerank: list[np.ndarray] = field(default_factory=list)  # the probes' projections, same order

    def roi_rows(self) -> list[dict[str, Any]]:
        """Rows for the rois table: the chosen ROI first, then the other detections."""
        x0, y0, x1, y1 = self.roi
        rows = [{"box_index": 0, "category_id": self.category_id, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                 "score": float(self.boxes[0].score) if self.boxes and self.roi_fallback != "whole_image" else 0.0,
                 "chosen": True, "fallback": self.roi_fallback}]
        for i, b in enumerate(self.boxes[:9], start=1):
            rows.append({"box_index": i, "category_id": b.category_id, "x0": b.xyxy[0], "y0": b.xyxy[1],
                         "x1": b.xyxy[2], "y1": b.xyxy[3], "score": float(b.score), "chosen": False,
                         "fallback": "none"})
        return rows

    def colour_bytes(self) -> bytes:
        return self.colour_quantized

    def rerank_bytes(self, models: "Models") -> bytes | None:
        """The stored 4-bit copy of the re-ranking projection (postings.rerank), None without a re-ranker."""
        reranker = models.features.reranker
        if self.rerank is None or reranker is None:
            return None
        return reranker.pack(self.rerank[None, :])[0].tobytes()

    def as_json(self, tax: Taxonomy) -> dict[str, Any]:
        return {
            "category": {"key": self.category_key, "name": tax.category(self.category_id).name,
                         "source": self.category_source, "confidence": round(self.category_confidence, 4),
                         "searched": [tax.category(c).key for c, _ in self.searched] or [self.category_key]},
            "item": self.item_index,
            "attributes": [{"key": a.key, "name": tax.attribute(a.attribute_id).name,
                            "probability": round(a.probability, 4)} for a in self.attributes],
            "roi": {"box": [round(v, 1) for v in self.roi], "fallback": self.roi_fallback},
            "detections": [{"box": [round(v, 1) for v in b.xyxy], "score": round(float(b.score), 4),
                            "category": None if b.category_id is None else tax.category(b.category_id).key}
                           for b in self.boxes[:10]],
        }


@dataclass
class Models:
    """Every network the pipeline needs, loaded once per process."""

    taxonomy: Taxonomy
    text: Any  # shared.text.categorize.TextCategorizer
    attributes: Any  # shared.vision.attributes.LoadedNetwork
    detector: Any  # shared.vision.roi.LoadedDetector
    features: Any  # shared.vision.features.FeatureExtractor
    attribute_version: str
    detector_version: str
    features_version: str
    ranker: Any = None  # shared.vision.items.ItemRanker (query-time choice only: not part of model_version)
    text_version: str = ""

    @property
    def versions(self) -> dict[str, str]:
        """{role: checkpoint version} of every network whose output reaches the postings."""
        return {"attributes": self.attribute_version, "detector": self.detector_version,
                "features": self.features_version, "text": self.text_version}

    @property
    def model_version(self) -> str:
        """The index generation key (shared.checkpoints.model_version_key): a query encoded by these networks
        may only be compared with postings of the generation of the same key."""
        from shared.checkpoints import model_version_key

        return model_version_key(self.versions)

    @property
    def ranking_params(self) -> dict[str, Any]:
        """The ranking parameters a generation is built and served with (the daemon reads them from the
        generation row, never from files on disk)."""
        return {"colour_weight": float(self.features.colour_weight),
                "n_bits": int(self.features.n_bits),
                "colour_bins": int((self.features.meta or {}).get("colour_bins", 0))}

    @classmethod
    def load(cls, settings: Settings, *, fold: bool = True) -> "Models":
        """Every network, for inference; `fold` folds BatchNorm into the convs (`fold_batchnorm`: same outputs up
        to float rounding, ~10 % less CPU; tests compare against fold=False)."""
        from shared.text.categorize import TextCategorizer
        from shared.vision.features import FeatureExtractor
        from shared.vision.items import load_ranker
        from shared.vision.attributes import load_attribute_network
        from shared.vision.efficientnet_lite import fold_batchnorm
        from shared.vision.roi import load_detector

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        t0 = time.perf_counter()
        root = Path(settings.models_dir)
        text = TextCategorizer.load(root / "text_category")
        device = "cuda" if torch.cuda.is_available() else "cpu"  # every network on the one device
        attributes = load_attribute_network(root / "attributes", device=device)
        detector = load_detector(root / "detector", device=device)
        features = FeatureExtractor.load(root / "features", device=device)
        ranker = load_ranker(root / "ranker" / "ranker.json")
        for net in (attributes.net, detector.net, features.encoder) if fold else ():
            fold_batchnorm(net)  # inference only: BatchNorm folded into the convs (same outputs up to rounding)
        models = cls(taxonomy=load_taxonomy(), text=text, attributes=attributes, detector=detector,
                     features=features, ranker=ranker,
                     attribute_version=str(attributes.meta["version"]),
                     detector_version=str(detector.meta["version"]),
                     features_version=str(features.version), text_version=str(text.meta["version"]))
        logger.info("networks loaded in %.1f s (%s)", time.perf_counter() - t0, models.model_version)
        return models


# A category the attribute network reads on an item's crop is accepted when it is one of these groups as the item's
# detector class (garment subtypes); for "others" (shoes, bags, dresses, ...) only the detector's own classes count.
GROUP_MATES = ("top", "bottom")
# Several categories are searched when the chosen one is not this sure; at most this many, each with at least
# this much evidence (detector score of a merged class, or the attribute network's probability).
CONFIDENT = 0.9
MAX_SEARCHED = 3
MIN_SEARCH_EVIDENCE = 0.2
# A shopper rectangle or a guided box is "that item" when it overlaps the item's box this much.
SAME_ITEM_IOU = 0.5
# Listing-style boxes overlapping the searched box (or each other) more than this give the same code: no probe.
DUPLICATE_PROBE_IOU = 0.95
MAX_PROBES = 3


def item_category(tax: Taxonomy, item: Item | None, image_category: int, image_prob: float
                  ) -> tuple[int, str, float, list[tuple[int, float]]]:
    """The category of a region (see the module docstring): (category id, source, confidence, categories to search
    as (id, evidence), the chosen one first). item None = no detection covers the region: the image decides."""
    if item is None:
        return image_category, "image", image_prob, [(image_category, image_prob)]
    own = tax.category(item.category_id).group
    allowed = set(item.class_scores) | ({c.id for c in tax.categories if c.group == own} if own in GROUP_MATES else set())
    if image_category in allowed:
        det = item.class_scores.get(image_category, item.score)
        # Both agree on the exact class: either may be right; otherwise the detector vouches only for the group.
        conf = 1 - (1 - det) * (1 - image_prob) if image_category in item.class_scores else image_prob
        chosen, source = image_category, "detector+image"
    else:
        chosen, source, conf = item.category_id, "detector", item.score
    searched = [(chosen, conf)]
    if conf < CONFIDENT:
        extra = dict(item.class_scores)
        if image_category in allowed:
            extra[image_category] = max(extra.get(image_category, 0.0), image_prob)
        for c, e in sorted(extra.items(), key=lambda kv: (-kv[1], kv[0])):
            if c != chosen and e >= MIN_SEARCH_EVIDENCE and len(searched) < MAX_SEARCHED:
                searched.append((c, e))
    return chosen, source, conf, searched


def _matching_item(items: list[Item], box: tuple[float, float, float, float]) -> int | None:
    if not items:
        return None
    iou = box_iou(np.array([box]), np.array([it.xyxy for it in items]))[0]
    j = int(iou.argmax())
    return j if iou[j] >= SAME_ITEM_IOU else None


@dataclass
class Request:
    """One photo to analyse and what is known about it (see `analyze`)."""

    image: Image.Image
    title: str = ""
    description: str = ""
    category_key: str | None = None
    rect: tuple[float, float, float, float] | None = None
    source: str = "seller"
    item: int | None = None
    detections: list[Any] | None = None


@dataclass
class _Plan:
    """A request after the per-photo steps (category, detections, region), waiting for the batched networks."""

    req: Request
    category_id: int | None
    cat_source: str
    cat_conf: float
    rois: list[Any]
    items: list[Item]
    strong: list[Any]
    conflict: dict[str, Any] | None
    roi: tuple[float, float, float, float]
    fallback: str
    boxes: list[Any]
    item_index: int | None
    timings: dict[str, float]


def analyze(models: Models, image: Image.Image, *, title: str = "", description: str = "",
            category_key: str | None = None, rect: tuple[float, float, float, float] | None = None,
            source: str = "seller", item: int | None = None, detections: list[Any] | None = None) -> Analysis:
    """Run the pipeline on one decoded RGB photo. `category_key` is the seller's or shopper's choice
    (`source` says whose); `rect` is a shopper-drawn rectangle in image pixels; `item` picks one of the photo's
    items (default the most likely) when neither is given; `detections` reuses an earlier detector pass.
    A batch of one of `analyze_batch` (the same code for search and ingestion, one photo or many)."""
    return analyze_batch(models, [Request(image, title=title, description=description, category_key=category_key,
                                          rect=rect, source=source, item=item, detections=detections)])[0]


def analyze_batch(models: Models, requests: Sequence[Request], *, batch_size: int | None = None) -> list[Analysis]:
    """`analyze` for many photos: the per-photo steps (text category, detector, region choice) one photo at a time,
    the attribute and appearance networks once per batch (their CPU time per crop falls ~2x from batch 1 to 8).
    Raises on the first bad request: callers that need one bad photo to fail alone retry one by one."""
    from shared.vision.attributes import analyze_images
    from shared.vision.features import extract_features, quantize_colours
    from shared.vision.roi import choose_roi, detect_all_batch

    if not requests:
        return []
    if batch_size is None:  # per network pass; on CPU 8 costs less per crop than 32 (measured: ~20 % less)
        batch_size = 8 if models.detector.device.type == "cpu" else 64
    tax = models.taxonomy
    t = time.perf_counter()
    todo = [i for i, r in enumerate(requests) if r.detections is None]
    detected = dict(zip(todo, detect_all_batch(models.detector, [requests[i].image for i in todo])))
    detect_ms = (time.perf_counter() - t) * 1000 / len(requests)
    plans = [_plan(models, r, detected.get(i), detect_ms) for i, r in enumerate(requests)]

    t = time.perf_counter()
    regions = [crop(p.req.image, p.roi) for p in plans]
    preds, _ = analyze_images(models.attributes, regions, category_id=[p.category_id for p in plans], strides=(),
                              batch_size=batch_size)
    searched: list[list[tuple[int, float]]] = []
    overruled = []
    for k, (p, pred) in enumerate(zip(plans, preds)):
        searched.append([(p.category_id, p.cat_conf)] if p.category_id is not None else [])
        if p.category_id is not None:
            continue
        evidence = p.items[p.item_index] if p.item_index is not None else None
        p.category_id, p.cat_source, p.cat_conf, searched[k] = item_category(tax, evidence, pred.category_id,
                                                                             float(pred.category_prob))
        if p.category_id != pred.category_id:  # the detector overruled the crop's reading: attributes of its class
            overruled.append(k)
        if p.item_index is not None and p.req.rect is None:
            # Box the item the way ingestion boxes a listing of that category (guided choice on the same
            # detections), so a listing's own photo gets the very code it was indexed with; only when that box
            # is still this item (a guided box elsewhere in the photo would contradict the chosen region).
            im = p.req.image
            guided = choose_roi(p.strong, width=im.width, height=im.height, category_id=p.category_id, tax=tax)
            if box_iou(np.array([guided.chosen.xyxy]), np.array([p.roi]))[0, 0] >= SAME_ITEM_IOU:
                p.roi, p.fallback = tuple(guided.chosen.xyxy), guided.fallback
    if overruled:
        again, _ = analyze_images(models.attributes, [regions[k] for k in overruled],
                                  category_id=[plans[k].category_id for k in overruled], strides=(),
                                  batch_size=batch_size)
        for k, pred in zip(overruled, again):
            preds[k] = pred
    attributes_ms = (time.perf_counter() - t) * 1000 / len(plans)

    t = time.perf_counter()
    images, rois, first = [], [], []
    for p in plans:
        probe_rois = _probe_rois(tax, p)
        first.append(len(rois))
        images += [p.req.image] * (1 + len(probe_rois))
        rois += [p.roi] + probe_rois
    feats = extract_features(models.features, images, rois, batch_size=batch_size)
    features_ms = (time.perf_counter() - t) * 1000 / len(plans)

    out = []
    for k, p in enumerate(plans):
        lo, hi = first[k], (first[k + 1] if k + 1 < len(plans) else len(rois))
        colour = feats.colours[lo].astype(np.float32)
        probes = [(feats.codes[i].tobytes(), feats.colours[i].astype(np.float32)) for i in range(lo + 1, hi)]
        timings = {**p.timings, "attributes": attributes_ms, "features": features_ms}
        attributes = [AttributeOut(a.attribute_id, a.key, float(a.prob)) for a in preds[k].attributes]
        out.append(Analysis(category_id=p.category_id, category_key=tax.category(p.category_id).key,
                            category_source=p.cat_source, category_confidence=p.cat_conf, attributes=attributes,
                            roi=p.roi, roi_fallback=p.fallback, boxes=p.boxes, code=feats.codes[lo].tobytes(),
                            colour=colour, colour_quantized=quantize_colours(colour[None, :])[0].tobytes(),
                            timings_ms=timings, items=p.items, item_index=p.item_index, searched=searched[k],
                            detections=p.rois, conflict=p.conflict, duplicate_probes=probes,
                            rerank=None if feats.rerank is None else feats.rerank[lo],
                            duplicate_probe_rerank=[] if feats.rerank is None else list(feats.rerank[lo + 1:hi])))
    return out


def _plan(models: Models, req: Request, detected: list[Any] | None, detect_ms: float) -> _Plan:
    """The per-photo steps before the networks that run batched: category, items, region."""
    from shared.vision.items import area_score_ranker
    from shared.vision.roi import choose_roi

    tax, image = models.taxonomy, req.image
    timings: dict[str, float] = {}
    t = time.perf_counter()
    category_id: int | None = None
    cat_source, cat_conf = req.source, 1.0
    if req.category_key is not None:
        category_id = tax.category(req.category_key).id
    elif req.title or req.description:
        guess = models.text.categorize(req.title, req.description)
        if guess.category_id is not None:
            category_id, cat_source, cat_conf = guess.category_id, "text", float(guess.confidence)
    timings["category_text"] = (time.perf_counter() - t) * 1000

    t = time.perf_counter()
    rois = list(req.detections) if req.detections is not None else list(detected or [])
    ranker = models.ranker or area_score_ranker()
    items = ranker.rank(rois, image.width, image.height)
    strong = [r for r in rois if r.score >= 0.3]  # detect_rois' threshold for the guided choice and stored boxes
    conflict = None
    if req.source == "seller" and category_id is not None:  # ingest: does the photo show what the seller names?
        from shared.conflicts import category_conflict

        conflict = category_conflict(tax, category_id=category_id, source=cat_source, confidence=cat_conf,
                                     items=items)
    item_index: int | None = None
    if req.rect is not None:
        roi, fallback, boxes = tuple(float(v) for v in req.rect), "shopper_rect", []
        item_index = _matching_item(items, roi)
    elif category_id is not None:
        found = choose_roi(strong, width=image.width, height=image.height, category_id=category_id, tax=tax)
        roi, fallback, boxes = tuple(found.chosen.xyxy), found.fallback, list(found.boxes)
        item_index = _matching_item(items, roi) if fallback != "whole_image" else None
    elif items:
        if req.item is not None and not 0 <= req.item < len(items):
            raise IndexError(f"item {req.item} does not exist: the photo has {len(items)} items")
        item_index = 0 if req.item is None else req.item
        roi, fallback, boxes = items[item_index].xyxy, "none", sorted(strong, key=lambda r: -r.score)
    else:
        roi, fallback, boxes = (0.0, 0.0, float(image.width), float(image.height)), "whole_image", []
    timings["detect"] = (time.perf_counter() - t) * 1000 + (detect_ms if req.detections is None else 0.0)
    return _Plan(req=req, category_id=category_id, cat_source=cat_source, cat_conf=cat_conf, rois=rois, items=items,
                 strong=strong, conflict=conflict, roi=roi, fallback=fallback, boxes=boxes, item_index=item_index,
                 timings=timings)


def _probe_rois(tax: Taxonomy, p: _Plan) -> list[tuple[float, float, float, float]]:
    """The distinct boxes a listing of any category would have been indexed under, strongest first (the whole
    photo last); a few probes, since each costs one more crop through the feature network."""
    from shared.vision.roi import choose_roi

    probe_rois: list[tuple[float, float, float, float]] = []
    if p.cat_source not in ("detector", "detector+image", "image") or p.req.rect is not None:
        return probe_rois
    im = p.req.image
    chosen = {tuple(choose_roi(p.strong, width=im.width, height=im.height, category_id=c.id,
                               tax=tax).chosen.xyxy): 0.0 for c in tax.categories}
    for r in p.strong:
        if r.xyxy in chosen:
            chosen[r.xyxy] = max(chosen[r.xyxy], r.score)
    for box in sorted(chosen, key=lambda b: -chosen[b]):
        if len(probe_rois) < MAX_PROBES and box_iou(np.array([box]), np.array([p.roi] + probe_rois)).max() < DUPLICATE_PROBE_IOU:
            probe_rois.append(box)
    return probe_rois
