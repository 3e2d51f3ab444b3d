"""Popcount kernel against the naive numpy reference: random codes, edge cases, ties, odd widths, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from shared.codes.hamming import hamming_distances, top_k, top_k_blended, top_k_parallel, top_k_reference

# 64 and 72 bits take the scalar word/byte loops, 128/256/512/1024 the 8-rows-at-a-time vector path, 200 the byte path.
WIDTHS = [64, 72, 128, 200, 256, 512, 1024]


def _codes(rng: np.random.Generator, n: int, n_bits: int) -> np.ndarray:
    codes = rng.integers(0, 256, size=(n, (n_bits + 7) // 8), dtype=np.uint8)
    if n_bits % 8:
        codes[:, -1] &= np.uint8((0xFF << (8 - n_bits % 8)) & 0xFF)  # binarize leaves unused low bits at 0
    return codes


def _few_values(rng: np.random.Generator, n: int, n_bytes: int) -> np.ndarray:
    # Rows drawn from 5 distinct codes: most distances are tied, so the id tie-break decides the order.
    pool = rng.integers(0, 256, size=(5, n_bytes), dtype=np.uint8)
    return np.ascontiguousarray(pool[rng.integers(0, 5, size=n)])


@pytest.mark.parametrize("n_bits", WIDTHS)
def test_distances_match_reference(n_bits: int) -> None:
    rng = np.random.default_rng(n_bits)
    codes = _codes(rng, 1003, n_bits)  # not a multiple of 8 rows: exercises the scalar tail after the vector groups
    q = _codes(rng, 1, n_bits)[0]
    expected = np.unpackbits(codes ^ q, axis=1).sum(axis=1)
    got = hamming_distances(q, codes)
    assert got.dtype == np.int32 and got.shape == (1003,)
    np.testing.assert_array_equal(got, expected)
    assert got.max() <= n_bits


@pytest.mark.parametrize("n_bits", WIDTHS)
@pytest.mark.parametrize("k", [1, 7, 100, 3000])
def test_top_k_matches_reference(n_bits: int, k: int) -> None:
    rng = np.random.default_rng(1000 + n_bits + k)
    codes = _codes(rng, 5000, n_bits)
    q = _codes(rng, 1, n_bits)[0]
    d, idx = top_k(q, codes, k)
    rd, ridx = top_k_reference(q, codes, k)
    assert d.dtype == np.int32 and idx.dtype == np.int64
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(idx, ridx)


def test_top_k_finds_planted_neighbours() -> None:
    rng = np.random.default_rng(7)
    codes = _codes(rng, 20_000, 256)
    q = codes[12_345].copy()
    codes[777] = q
    codes[777, 0] ^= 0b1  # one bit away
    d, idx = top_k(q, codes, 2)
    assert idx.tolist() == [12_345, 777]
    assert d.tolist() == [0, 1]


@pytest.mark.parametrize("n_bits", [72, 256, 512])
def test_ties_broken_by_row_then_by_given_ids(n_bits: int) -> None:
    rng = np.random.default_rng(3)
    n_bytes = (n_bits + 7) // 8
    codes = _few_values(rng, 4000, n_bytes)
    q = codes[0].copy()
    d, idx = top_k(q, codes, 50)
    rd, ridx = top_k_reference(q, codes, 50)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(idx, ridx)
    assert (d == 0).all() and (np.diff(idx) > 0).all()  # all tied at 0: the 50 smallest row numbers win
    ids = rng.permutation(4000).astype(np.int64) * 3 + 11  # unrelated to row order
    d2, idx2 = top_k(q, codes, 2000, ids=ids)
    rd2, ridx2 = top_k_reference(q, codes, 2000, ids=ids)
    np.testing.assert_array_equal(d2, rd2)
    np.testing.assert_array_equal(idx2, ridx2)
    assert not np.array_equal(idx2[:50], idx[:50])  # ids, not rows, decided the order


def test_all_rows_identical_stays_exact() -> None:
    # Every row ties with every other: the candidate buffer must still return exactly the k smallest ids.
    codes = np.zeros((10_000, 32), dtype=np.uint8)
    q = np.zeros(32, dtype=np.uint8)
    ids = np.arange(10_000, dtype=np.int64)[::-1].copy()
    d, idx = top_k(q, codes, 100, ids=ids)
    assert (d == 0).all()
    np.testing.assert_array_equal(idx, np.arange(9_999, 9_899, -1))


@pytest.mark.parametrize("n_bits", [72, 256, 512])
def test_empty_and_small_k(n_bits: int) -> None:
    rng = np.random.default_rng(5)
    codes = _codes(rng, 30, n_bits)
    q = codes[3].copy()
    d, idx = top_k(q, codes[:0], 10)
    assert d.shape == (0,) and idx.shape == (0,) and d.dtype == np.int32 and idx.dtype == np.int64
    assert hamming_distances(q, codes[:0]).shape == (0,)
    d, idx = top_k(q, codes, 0)
    assert d.shape == (0,) and idx.shape == (0,)
    d, idx = top_k(q, codes, 100)  # k > n: everything, sorted
    rd, ridx = top_k_reference(q, codes, 100)
    assert d.shape == (30,)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(d, rd)
    assert idx[0] == 3 and d[0] == 0


@pytest.mark.parametrize("n_bits", [72, 256, 512])
@pytest.mark.parametrize("rows_dtype", [np.int32, np.int64])
def test_rows_subset(n_bits: int, rows_dtype: type) -> None:
    rng = np.random.default_rng(11)
    codes = _codes(rng, 3000, n_bits)
    q = _codes(rng, 1, n_bits)[0]
    rows = rng.choice(3000, size=517, replace=False).astype(rows_dtype)  # unsorted, not a multiple of 8
    d, idx = top_k(q, codes, 40, rows=rows)
    rd, ridx = top_k_reference(q, codes, 40, rows=rows)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(idx, ridx)
    assert set(idx.tolist()) <= set(rows.tolist())
    d, idx = top_k(q, codes, 40, rows=rows[:0])
    assert idx.shape == (0,)
    d, idx = top_k(q, codes, 1000, rows=rows[:5])
    assert sorted(idx.tolist()) == sorted(rows[:5].tolist())


def test_start_stop_and_exclude() -> None:
    rng = np.random.default_rng(12)
    codes = _codes(rng, 4000, 256)
    q = _codes(rng, 1, 256)[0]
    d, idx = top_k(q, codes, 30, start=1000, stop=2500)
    rd, ridx = top_k_reference(q, codes, 30, rows=np.arange(1000, 2500))
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(d, rd)
    exclude = np.zeros(4000, dtype=np.uint8)
    exclude[ridx[:10]] = 1  # tombstone the ten best
    d2, idx2 = top_k(q, codes, 30, start=1000, stop=2500, exclude=exclude)
    np.testing.assert_array_equal(idx2[:20], ridx[10:])
    assert not set(idx2.tolist()) & set(ridx[:10].tolist())
    exclude[:] = 1
    assert top_k(q, codes, 30, exclude=exclude)[1].shape == (0,)  # fewer than k survivors: k' shrinks


@pytest.mark.parametrize("n_bits", [200, 256, 512])
def test_parallel_matches_serial(n_bits: int) -> None:
    rng = np.random.default_rng(13)
    codes = _few_values(rng, 600_000, (n_bits + 7) // 8)  # heavy ties across the thread boundary
    q = codes[10].copy()
    ids = rng.permutation(600_000).astype(np.int64)
    d, idx = top_k(q, codes, 100, ids=ids)
    pd, pidx = top_k_parallel(q, codes, 100, ids=ids, n_threads=2)
    np.testing.assert_array_equal(pidx, idx)
    np.testing.assert_array_equal(pd, d)
    aux = rng.integers(0, 3, size=(600_000, 8), dtype=np.uint8)  # ties in the blended score too
    exclude = (rng.random(600_000) < 0.1).astype(np.uint8)
    kw = dict(aux_q=aux[3], aux=aux, weight=0.4, n_bits=n_bits, aux_scale=16.0, ids=ids, exclude=exclude)
    serial = top_k_blended(q, codes, 100, **kw)
    for got, want in zip(top_k_blended(q, codes, 100, n_threads=2, **kw), serial):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("q", "codes", "error", "message"),
    [
        (np.zeros(32, np.uint8), np.zeros((4, 32), np.float32), TypeError, "codes must be uint8, got float32"),
        (np.zeros(32, np.int64), np.zeros((4, 32), np.uint8), TypeError, "q must be uint8, got int64"),
        (np.zeros(31, np.uint8), np.zeros((4, 32), np.uint8), ValueError, r"q must have shape \(32,\)"),
        (np.zeros(32, np.uint8), np.zeros(32, np.uint8), ValueError, "codes must be 2-D"),
        (np.zeros(32, np.uint8), np.zeros((4, 64), np.uint8)[:, ::2], ValueError, "C-contiguous"),
        (np.zeros(32, np.uint8), [[0] * 32], TypeError, "codes must be a numpy array"),
    ],
)
def test_bad_inputs_raise(q: np.ndarray, codes: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        top_k(q, codes, 5)
    with pytest.raises(error, match=message):
        hamming_distances(q, codes)


def test_bad_rows_ids_k_raise() -> None:
    codes = np.zeros((10, 32), np.uint8)
    q = np.zeros(32, np.uint8)
    with pytest.raises(TypeError, match="rows must be int32 or int64, got float64"):
        top_k(q, codes, 5, rows=np.zeros(3))
    with pytest.raises(IndexError, match="rows must be in"):
        top_k(q, codes, 5, rows=np.array([0, 10], np.int32))
    with pytest.raises(IndexError, match="rows must be in"):
        top_k(q, codes, 5, rows=np.array([-1] * 9, np.int64))
    with pytest.raises(TypeError, match="ids must be int64, got int32"):
        top_k(q, codes, 5, ids=np.zeros(10, np.int32))
    with pytest.raises(ValueError, match=r"ids must have shape \(10,\)"):
        top_k(q, codes, 5, ids=np.zeros(9, np.int64))
    with pytest.raises(ValueError, match="k must be >= 0"):
        top_k(q, codes, -1)
    with pytest.raises(TypeError, match="k must be an int"):
        top_k(q, codes, 2.0)
    with pytest.raises(ValueError, match="start <= stop"):
        top_k(q, codes, 5, start=5, stop=3)


def test_rows_listing_one_row_many_times_stays_bounded() -> None:
    # 5000 copies of the best row (more than the candidate buffer) followed by better-ranked ids: no overflow, and
    # the duplicates are reported as often as they were listed, like the reference does.
    rng = np.random.default_rng(21)
    codes = _codes(rng, 100, 256)
    q = codes[7].copy()
    rows = np.concatenate([np.full(5000, 7), np.arange(100)]).astype(np.int64)
    d, idx = top_k(q, codes, 10, rows=rows)
    rd, ridx = top_k_reference(q, codes, 10, rows=rows)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(d, rd)
    assert (idx == 7).all()

