"""Named colours and palettes as colour histograms (the HSV binning of shared.vision.features.colour_histogram).

A shopper's target colour is a taxonomy colour (`navy`, `colour.navy`) or `#rrggbb`; a palette is one to three of
them with weights. Each becomes the histogram a garment of that colour would have: a solid swatch at three shades
(fabric has folds and shadows: 85 %, 100 % and 115 % brightness, weighted 1:2:1), binned by the very function the
pipeline uses for listings, so its distance to a listing's histogram is the same colour distance search ranks by.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

from shared.taxonomy import Taxonomy

__all__ = ["SWATCHES", "NamedColour", "parse_colour", "colour_histogram_of", "palette_histogram"]

COLOUR_GROUP = "colour"
# Representative sRGB of each taxonomy colour (attribute key colour.<name>); `multi` has no single swatch.
SWATCHES: dict[str, str] = {
    "black": "#151515", "white": "#f4f4f2", "off_white": "#ece6d6", "grey": "#8a8a8a", "blue": "#2f6fd0",
    "navy": "#1f2a52", "red": "#c8102e", "maroon": "#6b1e2c", "pink": "#f09cbc", "purple": "#6a3d9a",
    "green": "#2e8b57", "olive": "#6f7b36", "yellow": "#f2d024", "orange": "#f28c28", "brown": "#7b4b2a",
    "beige": "#d9c4a0", "gold": "#c9a227", "silver": "#bfc1c2",
}
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
_SHADES = ((0.85, 1.0), (1.0, 2.0), (1.15, 1.0))


@dataclass(frozen=True)
class NamedColour:
    """A parsed colour: hex "#rrggbb"; attribute_id: the taxonomy colour attribute (None for a free #rrggbb)."""

    hex: str
    attribute_id: int | None
    key: str | None  # "colour.navy" or None

    @property
    def label(self) -> str:
        return self.key or self.hex


def parse_colour(token: str, tax: Taxonomy) -> NamedColour:
    """'navy', 'colour.navy' or '#1f2a52' -> NamedColour; ValueError names the token and what is accepted."""
    t = token.strip()
    if _HEX.match(t):
        return NamedColour(hex=t.lower(), attribute_id=None, key=None)
    key = t if t.startswith(COLOUR_GROUP + ".") else f"{COLOUR_GROUP}.{t}"
    name = key.split(".", 1)[1]
    try:
        attr = tax.attribute(key)
    except KeyError:
        attr = None
    if attr is None or name not in SWATCHES:
        known = ", ".join(sorted(SWATCHES))
        raise ValueError(f"unknown colour {token!r}: use #rrggbb or a taxonomy colour ({known})")
    return NamedColour(hex=SWATCHES[name], attribute_id=attr.id, key=attr.key)


@lru_cache(maxsize=256)
def colour_histogram_of(hex_colour: str) -> np.ndarray:
    """float32 (N_COLOUR_BINS,) summing to 1: the histogram of a solid swatch of this colour at three shades."""
    from shared.vision.features import N_COLOUR_BINS, colour_histogram  # torch: only where a histogram is made

    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.float64)
    out = np.zeros(N_COLOUR_BINS, dtype=np.float64)
    for scale, weight in _SHADES:
        shade = np.clip(np.rint(rgb * scale), 0, 255).astype(np.uint8)
        img = Image.fromarray(np.broadcast_to(shade, (8, 8, 3)).copy(), "RGB")
        out += weight * colour_histogram(img, use_mask=False)
    out /= out.sum()
    out.setflags(write=False)  # cached: shared between callers
    return out.astype(np.float32)


def palette_histogram(colours: Sequence[str], weights: Sequence[float]) -> np.ndarray:
    """Weighted mix of colour histograms: colours as "#rrggbb", weights > 0 (normalised here) -> float32 (n_bins,)."""
    if not 1 <= len(colours) == len(weights):
        raise ValueError("a palette needs one weight per colour and at least one colour")
    w = np.asarray(weights, dtype=np.float64)
    if not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("palette weights must be positive numbers")
    hist = sum(wi * colour_histogram_of(c).astype(np.float64) for c, wi in zip(colours, w / w.sum()))
    return (hist / hist.sum()).astype(np.float32)
