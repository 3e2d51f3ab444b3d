"""`evaluate retrieval` ranks exactly as the index daemon does: the same score, the same tie-break, on an index with
many ties (few distinct codes and colours), so the figures in the model cards are the served ranking's."""
from __future__ import annotations

import numpy as np
import pytest

from shared.index.snapshot import IndexSnapshot
from training.retrieval import engine

N_BITS, N_BINS = 256, 52


@pytest.mark.parametrize("colour_weight", [0.0, 0.05, 0.5])
def test_evaluation_ranks_every_item_as_the_daemon_does(colour_weight: float) -> None:
    rng = np.random.default_rng(3)
    n = 600
    codes = rng.integers(0, 256, size=(24, N_BITS // 8), dtype=np.uint8)[rng.integers(0, 24, size=n)]
    hists = rng.random((12, N_BINS)).astype(np.float32) ** 4
    hists = (hists / hists.sum(axis=1, keepdims=True))[rng.integers(0, 12, size=n)]
    ids = np.arange(1, n + 1, dtype=np.int64)  # the evaluation's row order is the index's id order
    snap = IndexSnapshot.build(ids, np.ones(n, np.int64), [[] for _ in range(n)], codes, hists, generation=1,
                               n_bits=N_BITS)
    queries = rng.integers(0, n, size=25)
    scores = engine.combined_matrix(engine.hamming_matrix(codes[queries], codes),
                                    engine.colour_matrix(hists[queries], hists),
                                    n_bits=N_BITS, colour_weight=colour_weight)
    ties = 0
    for row, qi in enumerate(queries):
        served = snap.search(code=codes[qi], colour=hists[qi], category_id=1, k=n, colour_weight=colour_weight)
        evaluated = engine._order(scores[row])
        np.testing.assert_array_equal(served.listing_ids, ids[evaluated])
        np.testing.assert_array_equal(served.scores, scores[row][evaluated])
        ties += int((np.diff(scores[row][evaluated]) == 0).sum())
    assert ties > 1000  # the tie-break was exercised
