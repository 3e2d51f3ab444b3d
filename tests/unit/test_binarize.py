"""binarize: the threshold, the documented bit order, odd widths, unpack round trip and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from shared.codes.binarize import BINARIZER_VERSION, binarize, n_bytes_for, unpack
from shared.codes.hamming import hamming_distances


@pytest.mark.parametrize("j", [0, 1, 7, 8, 9, 63, 64, 199, 255])
def test_feature_j_sets_bit_7_minus_j_mod_8_of_byte_j_div_8(j: int) -> None:
    feats = np.full((1, 256), -1.0, dtype=np.float32)
    feats[0, j] = 0.5
    codes = binarize(feats)
    expected = np.zeros(32, dtype=np.uint8)
    expected[j // 8] = 1 << (7 - j % 8)
    np.testing.assert_array_equal(codes[0], expected)


def test_threshold_is_strictly_positive() -> None:
    feats = np.array([[1e-30, 0.0, -0.0, np.nan, -1e-30, np.inf, -np.inf, 3.0]], dtype=np.float32)
    assert binarize(feats)[0, 0] == 0b1000_0101


@pytest.mark.parametrize(("d", "n_bytes"), [(1, 1), (8, 1), (9, 2), (72, 9), (200, 25), (256, 32), (512, 64)])
def test_shapes_and_unused_bits_are_zero(d: int, n_bytes: int) -> None:
    assert n_bytes_for(d) == n_bytes
    feats = np.ones((3, d), dtype=np.float32)  # every used bit set
    codes = binarize(feats)
    assert codes.dtype == np.uint8 and codes.shape == (3, n_bytes) and codes.flags.c_contiguous
    assert int(np.unpackbits(codes, axis=1).sum()) == 3 * d  # padding bits stay 0
    if d % 8:
        assert codes[0, -1] == (0xFF << (8 - d % 8)) & 0xFF


@pytest.mark.parametrize("d", [72, 200, 256])
def test_unpack_round_trip_and_hamming_counts_sign_flips(d: int) -> None:
    rng = np.random.default_rng(d)
    feats = rng.standard_normal((50, d)).astype(np.float32)
    codes = binarize(feats)
    bits = unpack(codes, d)
    assert bits.shape == (50, d) and bits.dtype == bool
    np.testing.assert_array_equal(bits, feats > 0)
    flips = ((feats > 0) != (feats[0] > 0)).sum(axis=1)
    np.testing.assert_array_equal(hamming_distances(codes[0], codes), flips)


def test_empty_batch() -> None:
    assert binarize(np.zeros((0, 256), dtype=np.float32)).shape == (0, 32)


@pytest.mark.parametrize(
    ("feats", "error", "message"),
    [
        (np.zeros((2, 8), dtype=np.float64), TypeError, "feats must be float32, got float64"),
        (np.zeros(8, dtype=np.float32), ValueError, "feats must be 2-D"),
        (np.zeros((2, 0), dtype=np.float32), ValueError, "d = 0"),
        ([[1.0]], TypeError, "feats must be a numpy array"),
    ],
)
def test_bad_inputs_raise(feats: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        binarize(feats)


def test_n_bytes_for_and_unpack_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="n_bits must be positive"):
        n_bytes_for(0)
    with pytest.raises(TypeError, match="n_bits must be an int"):
        n_bytes_for(8.0)
    with pytest.raises(ValueError, match=r"shape \(n, 25\)"):
        unpack(np.zeros((2, 32), np.uint8), 200)
    with pytest.raises(TypeError, match="codes must be uint8, got int16"):
        unpack(np.zeros((2, 32), np.int16), 256)
    assert isinstance(BINARIZER_VERSION, str) and BINARIZER_VERSION
