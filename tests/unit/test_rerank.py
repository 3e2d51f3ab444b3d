"""The shortlist's re-ranking vector: 4-bit packing, its fp16 file, the served ordering and its evaluation twin."""
from __future__ import annotations

import numpy as np
import pytest

from shared.vision.rerank import RERANK_DEPTH, Reranker, cosine_to
from training.retrieval import engine


def _reranker(d_in: int = 24, dims: int = 8, seed: int = 0, bits: int = 4) -> Reranker:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d_in, dims)))
    return Reranker(mean=rng.normal(size=d_in).astype(np.float32), components=q.astype(np.float32),
                    step=np.full(dims, 0.25, np.float32), bits=bits)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_takes_bits_per_dimension_and_unpacks_within_half_a_step(bits):
    rr = _reranker(bits=bits)
    limit = 0.25 * (1 << (bits - 1))  # the quantiser's range: +- 2^(bits-1) steps
    v = np.random.default_rng(1).uniform(-limit, limit - 1e-3, size=(50, rr.dims)).astype(np.float32)
    packed = rr.pack(v)
    assert packed.dtype == np.uint8 and packed.shape == (50, rr.dims * bits // 8) == (50, rr.n_bytes)
    back = rr.unpack(packed)
    assert np.abs(back - v).max() <= 0.125 + 1e-6  # inside the range: half a step at most


def test_two_bits_pack_four_dimensions_per_byte_msb_first():
    rr = _reranker(bits=2)
    v = np.array([[-0.4, -0.1, 0.1, 0.3, 0, 0, 0, 0]], np.float32)  # levels 0, 1, 2, 3 at step 0.25
    assert rr.pack(v)[0, 0] == 0b00_01_10_11
    np.testing.assert_allclose(rr.unpack(rr.pack(v))[0, :4], [-0.375, -0.125, 0.125, 0.375])


def test_values_outside_the_range_clip_to_the_extreme_levels():
    rr = _reranker()
    v = np.zeros((1, rr.dims), np.float32)
    v[0, 0], v[0, 1] = 100.0, -100.0
    back = rr.unpack(rr.pack(v))
    assert back[0, 0] == pytest.approx(7.5 * 0.25) and back[0, 1] == pytest.approx(-7.5 * 0.25)
    assert np.all(np.abs(back[0, 2:]) == pytest.approx(0.125))


def test_bits_must_fill_whole_bytes():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="whole bytes"):
        Reranker(mean=np.zeros(4, np.float32), components=rng.normal(size=(4, 3)).astype(np.float32),
                 step=np.ones(3, np.float32), bits=2)


def test_unpack_refuses_the_wrong_width():
    rr = _reranker()
    with pytest.raises(ValueError, match="re-rank vectors"):
        rr.unpack(np.zeros((2, rr.n_bytes + 1), np.uint8))


def test_file_round_trip_is_fp16_and_absent_file_means_no_reranker(tmp_path):
    rr = _reranker()
    assert Reranker.load(tmp_path) is None
    rr.save(tmp_path)
    back = Reranker.load(tmp_path)
    assert back is not None and back.components.dtype == np.float32 and back.bits == rr.bits
    np.testing.assert_allclose(back.components, rr.components, atol=1e-3)
    desc = np.random.default_rng(2).normal(size=(5, 24)).astype(np.float32)
    np.testing.assert_allclose(back.project(desc), rr.project(desc), atol=1e-2)


def test_cosine_ranks_the_same_vector_first():
    rr = _reranker()
    x = np.random.default_rng(3).normal(size=(20, rr.dims)).astype(np.float32)
    stored = rr.unpack(rr.pack(x))
    for i in (0, 7, 19):
        assert int(np.argmax(cosine_to(x[i], stored))) == i


def test_reranked_matrix_reorders_only_the_shortlist_and_leaves_out_the_query():
    rng = np.random.default_rng(4)
    n, d = 12, 6
    x = rng.normal(size=(n, d))
    dist = np.arange(n, dtype=np.float64)[None, :].repeat(2, axis=0)  # daemon order: row 0, 1, 2, ...
    q = np.stack([x[3], x[1]])  # query 0 looks like row 3 (in the shortlist), query 1 is row 1 itself
    out = engine.reranked_matrix(dist, q, x, depth=4, self_idx=np.array([5, 1]))
    # query 0: shortlist = rows 0-3, row 3 (its twin) now first; rows 4+ keep their distances
    assert int(np.argmin(out[0])) == 3 and np.all(out[0, :4] < 0)
    assert out[0, 5] == np.inf and np.all(out[0, [4, *range(6, n)]] == dist[0, [4, *range(6, n)]])
    # query 1: its own row is left out, so the shortlist is rows 0, 2, 3, 4
    assert out[1, 1] == np.inf and np.all(out[1, [0, 2, 3, 4]] < 0) and np.all(out[1, 5:] >= 0)


def test_the_shortlist_is_deeper_than_a_page():
    assert RERANK_DEPTH >= 50  # a page of 20 re-ordered within the first 100, so pages come from one order
