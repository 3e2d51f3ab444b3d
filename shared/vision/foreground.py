"""The item's pixels in a product photo: a uniform backdrop estimated from the border ring, and what is not it.
Used by the appearance features (isolating the item, the colour histogram) and by the attribute network's colour input."""
from __future__ import annotations

import numpy as np

# Background estimation: a border ring this fraction of the shorter side (at least 1 px) ...
BORDER_FRAC = 0.04
# ... is "uniform" when this share of its pixels lies within BG_TOL (max abs channel difference) of its median.
BORDER_UNIFORM = 0.6
BG_TOL = 24
# If the mask keeps less than this share of the crop (a white shirt filling a white frame), use every pixel.
MIN_FOREGROUND = 0.05


def foreground_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the item, not of a uniform background estimated from the border.

    rgb: uint8 (h, w, 3) -> bool (h, w). When the border ring is mostly one colour (product photos are shot on white,
    or padded), the pixels within a tolerance of that colour that are connected to the border are background. A
    non-uniform border (street photos) gives an all-True mask, as does a mask that would keep almost nothing.
    """
    from scipy import ndimage

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError(f"rgb must be uint8 (h, w, 3), got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    everything = np.ones((h, w), dtype=bool)
    if h < 3 or w < 3:
        return everything
    b = max(1, int(round(BORDER_FRAC * min(h, w))))
    ring = np.zeros((h, w), dtype=bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    border = rgb[ring].astype(np.int16)
    ref = np.median(border, axis=0)
    near = np.abs(rgb.astype(np.int16) - ref[None, None, :]).max(axis=2) <= BG_TOL
    if near[ring].mean() < BORDER_UNIFORM:
        return everything
    # Background = the near-reference regions that touch the border (a white logo inside a shirt stays foreground).
    labels, _ = ndimage.label(near)
    touching = np.unique(labels[ring & near])
    touching = touching[touching != 0]
    fg = ~np.isin(labels, touching)
    if fg.mean() < MIN_FOREGROUND:
        return everything
    return fg
