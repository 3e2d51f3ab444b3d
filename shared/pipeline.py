"""The one image pipeline, called by ingestion (workers) and by search (API) alike:

category (seller/shopper choice, else the seller's text, else the image) -> ROI (shopper rectangle, else the
detector, guided by the category when known) -> attributes on the ROI (guided generation when the category
is known) -> appearance code and colour histogram of the ROI.

Attributes are read from the ROI crop rather than the whole photo so that a street photo's attributes
describe the item being sold or searched, not the whole outfit.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from shared.config import Settings
from shared.taxonomy import Taxonomy, load_taxonomy
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

    def as_json(self, tax: Taxonomy) -> dict[str, Any]:
        return {
            "category": {"key": self.category_key, "name": tax.category(self.category_id).name,
                         "source": self.category_source, "confidence": round(self.category_confidence, 4)},
            "attributes": [{"key": a.key, "name": tax.attribute(a.attribute_id).name,
                            "probability": round(a.probability, 4)} for a in self.attributes],
            "roi": {"box": [round(v, 1) for v in self.roi], "fallback": self.roi_fallback},
            "detections": [{"box": [round(v, 1) for v in b.xyxy], "score": round(float(b.score), 4),
                            "category": None if b.category_id is None else tax.category(b.category_id).key}
                           for b in self.boxes[:10]],
        }


def _checkpoint_version(folder: Path, meta: dict[str, Any] | None) -> str:
    """A checkpoint's version: its manifest's `version`, else a hash of the manifest."""
    if meta and meta.get("version"):
        return str(meta["version"])
    manifest = folder / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:12] if manifest.exists() else "unknown"


@dataclass
class Models:
    """Every network the pipeline needs, loaded once per process."""

    taxonomy: Taxonomy
    text: Any  # shared.text.categorize.TextCategorizer
    attributes: Any  # shared.vision.registry.LoadedNetwork
    detector: Any  # shared.vision.roi.LoadedDetector
    features: Any  # shared.vision.features.FeatureExtractor
    attribute_version: str
    detector_version: str
    features_version: str

    @property
    def model_version(self) -> str:
        """The index generation key: codes, postings and ROIs all depend on these three."""
        return f"attr={self.attribute_version};det={self.detector_version};feat={self.features_version}"

    @classmethod
    def load(cls, settings: Settings) -> "Models":
        from shared.text.categorize import TextCategorizer
        from shared.vision.features import FeatureExtractor
        from shared.vision.registry import load_attribute_network
        from shared.vision.roi import load_detector

        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        t0 = time.perf_counter()
        root = Path(settings.models_dir)
        text = TextCategorizer.load(root / "text_category")
        attributes = load_attribute_network(root / "attributes")
        detector = load_detector(root / "detector", device="cpu" if not torch.cuda.is_available() else None)
        features = FeatureExtractor.load(root / "features")
        models = cls(taxonomy=load_taxonomy(), text=text, attributes=attributes, detector=detector,
                     features=features,
                     attribute_version=_checkpoint_version(root / "attributes", attributes.meta),
                     detector_version=_checkpoint_version(root / "detector", detector.meta),
                     features_version=str(features.version))
        logger.info("networks loaded in %.1f s (%s)", time.perf_counter() - t0, models.model_version)
        return models


def analyze(models: Models, image: Image.Image, *, title: str = "", description: str = "",
            category_key: str | None = None, rect: tuple[float, float, float, float] | None = None,
            source: str = "seller") -> Analysis:
    """Run the pipeline on one decoded RGB photo. `category_key` is the seller's or shopper's choice
    (`source` says whose); `rect` is a shopper-drawn rectangle in image pixels."""
    from shared.vision.attributes import analyze_images
    from shared.vision.features import extract_features, quantize_colours
    from shared.vision.roi import detect_rois

    tax = models.taxonomy
    timings: dict[str, float] = {}

    t = time.perf_counter()
    category_id: int | None = None
    cat_source, cat_conf = source, 1.0
    if category_key is not None:
        category_id = tax.category(category_key).id
    elif title or description:
        guess = models.text.categorize(title, description)
        if guess.category_id is not None:
            category_id, cat_source, cat_conf = guess.category_id, "text", float(guess.confidence)
    timings["category_text"] = (time.perf_counter() - t) * 1000

    t = time.perf_counter()
    if rect is not None:
        roi, fallback, boxes = tuple(float(v) for v in rect), "shopper_rect", []
    else:
        found = detect_rois(models.detector, image, category_id=category_id)
        roi, fallback, boxes = tuple(found.chosen.xyxy), found.fallback, list(found.boxes)
    timings["detect"] = (time.perf_counter() - t) * 1000

    t = time.perf_counter()
    region = crop(image, roi)
    preds, _ = analyze_images(models.attributes, [region], category_id=category_id, strides=())
    pred = preds[0]
    if category_id is None:
        category_id, cat_source, cat_conf = pred.category_id, "image", float(pred.category_prob)
    attributes = [AttributeOut(a.attribute_id, a.key, float(a.prob)) for a in pred.attributes]
    timings["attributes"] = (time.perf_counter() - t) * 1000

    t = time.perf_counter()
    feats = extract_features(models.features, [image], [roi])
    colour = feats.colours[0].astype(np.float32)
    timings["features"] = (time.perf_counter() - t) * 1000

    return Analysis(category_id=category_id, category_key=tax.category(category_id).key,
                    category_source=cat_source, category_confidence=cat_conf, attributes=attributes,
                    roi=roi, roi_fallback=fallback, boxes=boxes, code=feats.codes[0].tobytes(), colour=colour,
                    colour_quantized=quantize_colours(colour[None, :])[0].tobytes(), timings_ms=timings)


