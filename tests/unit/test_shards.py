"""shared.index.shards: the ownership rule, the shard's bulk-load query, and the exact merge of shard results (hits
with ties, facets) against one snapshot holding every listing."""
from __future__ import annotations

import numpy as np
import pytest

from shared.index.load import BULK_LOAD_SQL
from shared.index.snapshot import IndexSnapshot
from shared.index.refine import Refinement, refined_search
from shared.index.shards import Shard, merge_facets, merge_hits

N = 3


def _snapshots(n: int = 900, seed: int = 0) -> tuple[IndexSnapshot, list[IndexSnapshot]]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(100_000, size=n, replace=False) + 1
    cats = rng.integers(1, 5, size=n)
    attrs = [sorted(set(rng.integers(1, 12, size=rng.integers(0, 4)).tolist())) for _ in range(n)]
    codes = rng.integers(0, 256, size=(n, 2), dtype=np.uint8)  # 16 bits: many equal distances
    colours = rng.integers(0, 64, size=(n, 8), dtype=np.uint8)

    def build(mask: np.ndarray) -> IndexSnapshot:
        idx = np.flatnonzero(mask)
        return IndexSnapshot.build(ids[idx].tolist(), cats[idx].tolist(), [attrs[i] for i in idx], codes[idx],
                                   colours[idx], generation=1)

    return build(np.ones(n, bool)), [build(ids % N == i) for i in range(N)]


def _facets_json(f) -> dict:
    return {"n": f.n, "categories": [[c, v] for c, v in sorted(f.categories.items())],
            "attributes": [[a, v] for a, v in sorted(f.attributes.items())]}


def test_shard_rule_and_bulk_query():
    s = Shard.parse("1/3")
    assert (s.index, s.count, str(s)) == (1, 3, "1/3")
    assert s.owned([1, 2, 3, 4, 7, 9]) == [1, 4, 7] and s.owns(10) and not s.owns(9)
    sql = s.bulk_sql(BULK_LOAD_SQL)
    assert "mod(listing_id, 3) = 1" in sql and sql.count("mod(") == 1
    with pytest.raises(ValueError):
        s.bulk_sql("SELECT 1")


@pytest.mark.parametrize("category", [None, 2])
@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_merged_shards_rank_exactly_like_one_snapshot(category, weight):
    full, parts = _snapshots()
    rng = np.random.default_rng(1)
    ties = 0
    for _ in range(20):
        code = rng.integers(0, 256, size=2, dtype=np.uint8)
        colour = rng.dirichlet(np.ones(8)).astype(np.float32)
        k, offset = int(rng.integers(1, 40)), int(rng.integers(0, 60))
        q = dict(code=code, colour=colour, category_id=category, attribute_ids=[1, 2], colour_weight=weight)
        want = full.search(**q, k=k, offset=offset).hits
        got = merge_hits([p.search(**q, k=offset + k, offset=0).hits for p in parts], offset, k)
        assert got == want
        ties += len(want) - len({h.score for h in want})
    assert ties > 0  # the tie rule (listing id) decided some places


def test_merged_facets_count_exactly_the_global_best():
    full, parts = _snapshots(seed=2)
    rng = np.random.default_rng(3)
    for _ in range(10):
        code = rng.integers(0, 256, size=2, dtype=np.uint8)
        colour = rng.dirichlet(np.ones(8)).astype(np.float32)
        n_facets = int(rng.integers(1, 300))
        q = dict(code=code, colour=colour, category_id=None, attribute_ids=[], k=1, offset=0, colour_weight=0.2)
        want = refined_search(full, **q, refinement=Refinement(facets=n_facets)).facets
        # What ShardedIndexClient does: merge the hits, then each shard counts its share of the global best.
        tops = [p.search(**{**q, "k": n_facets}).hits for p in parts]
        best = merge_hits(tops, 0, n_facets)
        n_of = [sum(1 for h in best if h.listing_id % N == i) for i in range(N)]
        counted = [_facets_json(refined_search(p, **q, refinement=Refinement(facets=n)).facets)
                   for p, n in zip(parts, n_of) if n]
        assert merge_facets(counted) == _facets_json(want)
