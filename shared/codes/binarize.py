"""Float features -> packed binary codes: the one place that owns bit order, n_bits and the packing."""
from __future__ import annotations

import numpy as np

# Bump when the threshold, the bit order or the packing changes: codes of two versions are not comparable, so a
# new version means a reindex (feature_codes rows are keyed by it).
BINARIZER_VERSION = "sign0-msb-v1"


def n_bytes_for(n_bits: int) -> int:
    """Bytes one packed code of `n_bits` bits occupies: ceil(n_bits / 8)."""
    if isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer)):
        raise TypeError(f"n_bits must be an int, got {type(n_bits).__name__}")
    if n_bits <= 0:
        raise ValueError(f"n_bits must be positive, got {n_bits}")
    return (int(n_bits) + 7) // 8


def binarize(feats: np.ndarray) -> np.ndarray:
    """Threshold features at 0 and pack them, 8 features per byte, most significant bit first.

    feats: float32 (n, d) -> codes: uint8 (n, n_bytes_for(d)), C-contiguous.

    Bit layout (numpy ``packbits`` with ``bitorder="big"``): feature j sets bit ``7 - j % 8`` of byte ``j // 8``,
    i.e. feature 0 is the high bit of byte 0. Bit = 1 iff feature > 0 (so 0.0, -0.0 and NaN give 0). When d is not a
    multiple of 8 the unused low bits of the last byte are 0, so they never add to a Hamming distance. This is also
    the byte string stored in Postgres (BYTEA) and the layout the Hamming kernel reads.
    """
    if not isinstance(feats, np.ndarray):
        raise TypeError(f"feats must be a numpy array, got {type(feats).__name__}")
    if feats.dtype != np.float32:
        raise TypeError(f"feats must be float32, got {feats.dtype}")
    if feats.ndim != 2:
        raise ValueError(f"feats must be 2-D (n, d), got shape {feats.shape}")
    if feats.shape[1] == 0:
        raise ValueError("feats must have at least one column, got d = 0")
    # `feats > 0` is False for NaN, so a NaN feature deterministically gives bit 0.
    return np.ascontiguousarray(np.packbits(feats > 0, axis=1, bitorder="big"))


def unpack(codes: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of the packing: codes: uint8 (n, n_bytes) -> bits: bool (n, n_bits), bit j is feature j > 0."""
    n_bytes = n_bytes_for(n_bits)
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"codes must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    if codes.ndim != 2 or codes.shape[1] != n_bytes:
        raise ValueError(f"codes must have shape (n, {n_bytes}) for n_bits={n_bits}, got {codes.shape}")
    return np.unpackbits(codes, axis=1, count=int(n_bits), bitorder="big").astype(bool, copy=False)
