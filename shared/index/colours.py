"""Colour histograms in the index: the quantised RAM form and the colour distance every ranking uses.

A histogram (float32, n_bins, summing to 1) is held as uint8 round(255 * h); the colour distance of two of them is half
their L1 distance, sum|a - b| / 510, clipped to 1 (`colour_distances`; the fused scan computes the same sum in
shared.codes.hamming.top_k_blended with aux_scale = COLOUR_L1_SCALE).
"""
from __future__ import annotations

import numpy as np

__all__ = ["COLOUR_SCALE", "COLOUR_L1_SCALE", "quantize_colours", "colour_distances", "as_quantized_colours",
           "query_colour"]

# Quantised histograms hold round(255 * h): half the L1 distance of two of them is sum|a - b| / 510.
COLOUR_SCALE = 255.0
COLOUR_L1_SCALE = 2.0 * COLOUR_SCALE


def quantize_colours(hists: np.ndarray) -> np.ndarray:
    """RAM form of colour histograms: float32 (n, n_bins) summing to 1 -> uint8 (n, n_bins) = round(255 * h).

    Byte-identical to `shared.vision.features.quantize_colours` (what the pipeline writes to postings.colour); kept
    here too so the daemon does not import torch. Rows need not sum exactly to 255 after rounding.
    """
    if not isinstance(hists, np.ndarray):
        raise TypeError(f"colours must be a numpy array, got {type(hists).__name__}")
    if hists.dtype != np.float32:
        raise TypeError(f"colours must be float32 histograms, got {hists.dtype}")
    if hists.ndim != 2:
        raise ValueError(f"colours must be 2-D (n, n_bins), got shape {hists.shape}")
    if not np.isfinite(hists).all():
        raise ValueError("colours must be finite")
    return np.rint(np.clip(hists, 0.0, 1.0) * COLOUR_SCALE).astype(np.uint8)


def colour_distances(q_colour: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Colour distance in [0, 1]: half the L1 distance of the quantised histograms, sum|q - c| / 510, clipped to 1.

    q_colour: uint8 (n_bins,), colours: uint8 (n, n_bins) -> float64 (n,). It matches half the L1 distance of the
    float histograms up to the rounding to 1/255 per bin.
    """
    diff = np.abs(colours.astype(np.int16) - q_colour.astype(np.int16)[None, :]).sum(axis=1)
    return np.minimum(diff / COLOUR_L1_SCALE, 1.0)


def as_quantized_colours(colours: np.ndarray, n: int, name: str = "colours") -> np.ndarray:
    if not isinstance(colours, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(colours).__name__}")
    if colours.ndim != 2 or colours.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, n_bins), got {colours.shape}")
    if colours.dtype == np.float32:
        return quantize_colours(colours)
    if colours.dtype != np.uint8:
        raise TypeError(f"{name} must be float32 histograms or uint8 quantised histograms, got {colours.dtype}")
    return np.ascontiguousarray(colours)


def query_colour(colour: np.ndarray | None, n_bins: int) -> np.ndarray | None:
    if colour is None:
        return None
    if not isinstance(colour, np.ndarray):
        raise TypeError(f"colour must be a numpy array, got {type(colour).__name__}")
    if colour.shape != (n_bins,):
        raise ValueError(f"colour must have shape ({n_bins},), got {colour.shape}")
    return as_quantized_colours(colour[None, :], 1, "colour")[0]
