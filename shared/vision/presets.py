"""Image -> tensor transforms: the only place pixels are resized or normalised.

Every network in Lookalike takes RGB normalised as (x - 127) / 128 (EfficientNet-Lite0's preprocessing,
kept for the ResCeption encoder too so encoders are interchangeable).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = 127.0
SCALE = 128.0


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 (3, h, w)."""
    arr = np.array(img.convert("RGB"), dtype=np.uint8, copy=True)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, h, w) -> float32 (x - 127) / 128."""
    return (x_uint8.float() - MEAN) / SCALE


def crop(img: Image.Image, box: tuple[float, float, float, float] | None) -> Image.Image:
    """Crop to an (x0, y0, x1, y1) pixel box clipped to the image; None or a degenerate box keeps the whole image."""
    if box is None:
        return img
    w, h = img.size
    x0, y0, x1, y1 = (max(0, min(w, int(round(box[0])))), max(0, min(h, int(round(box[1])))),
                      max(0, min(w, int(round(box[2])))), max(0, min(h, int(round(box[3])))))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return img
    return img.crop((x0, y0, x1, y1))


def letterbox(img: Image.Image, size: int, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Resize keeping aspect so the longer side is `size`, pad to a square on a white background
    (product photos are shot on white, so white padding looks like more background)."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = img.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    return canvas


def encoder_input(img: Image.Image, size: int) -> torch.Tensor:
    """A crop ready for an encoder: letterboxed to size x size, normalised, float32 (3, size, size)."""
    return normalize(to_uint8_tensor(letterbox(img, size)))


def colour_thumbnail(img: Image.Image, side: int) -> Image.Image:
    """Shrink (never enlarge) so the longer side is at most `side`, area-averaging (BOX), for colour histograms."""
    w, h = img.size
    scale = side / max(w, h)
    if scale >= 1.0:
        return img
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)


def flatten_background(img: Image.Image, foreground: np.ndarray, *, box_mask: np.ndarray | None = None,
                       margin: float = 0.04, fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Paint the background white and crop to the item's bounding box (plus `margin` of its size per side).

    foreground: bool (h', w') mask at any resolution (scaled to the image with nearest neighbour); box_mask: the
    mask whose bounding box is kept (default: foreground). Puts a product shot on any plain backdrop, padded or
    loosely cropped, into one canonical framing before encoding.
    """
    if foreground.dtype != bool or foreground.ndim != 2:
        raise TypeError(f"foreground must be a 2-D bool mask, got {foreground.dtype} {foreground.shape}")
    if foreground.all() or not foreground.any():
        return img
    w, h = img.size
    mask = Image.fromarray(foreground.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    out = Image.new("RGB", (w, h), fill)
    out.paste(img.convert("RGB"), (0, 0), mask)
    if box_mask is not None and box_mask.any():
        mask = Image.fromarray(box_mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    m = np.asarray(mask) > 0
    ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
    mx, my = round(margin * (x1 - x0)), round(margin * (y1 - y0))
    return out.crop((max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)))
