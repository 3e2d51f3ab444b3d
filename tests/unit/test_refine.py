"""shared.index.refine against a brute-force reference: exact edits, target colours, facets, score terms."""
from __future__ import annotations

import numpy as np
import pytest

from shared.index.arrays import ItemArrays
from shared.index.colours import quantize_colours
from shared.index.snapshot import IndexSnapshot
from shared.index.refine import Refinement, constraint_rows, refined_search

N_BYTES, N_BINS, N_ATTR = 32, 12, 15


def _catalogue(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10 * n, size=n, replace=False).astype(np.int64) + 1
    cats = rng.integers(0, 4, n).astype(np.int64)
    attrs = [sorted(set(rng.integers(0, N_ATTR, rng.integers(0, 6)).tolist())) for _ in range(n)]
    codes = rng.integers(0, 256, (n, N_BYTES), dtype=np.uint8)
    hist = rng.random((n, N_BINS)).astype(np.float32) ** 3
    hist /= hist.sum(axis=1, keepdims=True)
    return ids, cats, attrs, codes, quantize_colours(hist)


def _reference(items, *, code, qcol, category, require, exclude, w, live=None):
    """(listing ids ranked by (score, id), scores) over every item satisfying the constraint."""
    ids, cats, attrs, codes, colours = items
    ham = np.unpackbits(codes ^ code[None, :], axis=1).sum(axis=1)
    l1 = np.abs(colours.astype(np.int32) - qcol.astype(np.int32)[None, :]).sum(axis=1)
    if w == 0.0:
        score = ham / (8.0 * N_BYTES)
    else:
        score = ((1 - w) / (8.0 * N_BYTES)) * ham + (w / 510.0) * np.minimum(l1, 510)
    ok = np.array([(category is None or c == category) and set(require) <= set(a) and not set(exclude) & set(a)
                   and (live is None or i in live) for i, c, a in zip(ids, cats, attrs)])
    sel = np.flatnonzero(ok)
    order = sel[np.lexsort((ids[sel], score[sel]))]
    return ids[order], score[order]


@pytest.fixture(scope="module")
def items():
    return _catalogue(3000)


@pytest.fixture(scope="module")
def snap(items):
    ids, cats, attrs, codes, colours = items
    return IndexSnapshot.build(ids, cats, attrs, codes, colours, generation=1)


@pytest.mark.parametrize("require,exclude", [((3,), ()), ((3, 7), ()), ((), (2,)), ((), (2, 5, 11)),
                                             ((1,), (4, 9)), ((14, 13, 12), ()), ((99,), ())])
@pytest.mark.parametrize("category", [None, 2])
@pytest.mark.parametrize("w", [0.0, 0.3])
def test_edit_is_exact_within_the_constraint(items, snap, require, exclude, category, w):
    ids, cats, attrs, codes, colours = items
    q = codes[17] ^ np.uint8(3)
    target = np.zeros(N_BINS, np.float32)
    target[4] = 1.0
    ref = Refinement(require=require, exclude=exclude, target_colour=target)
    out = refined_search(snap, code=q, colour=None, category_id=category, k=25, offset=5, colour_weight=w,
                         refinement=ref)
    want_ids, want_scores = _reference(items, code=q, qcol=quantize_colours(target[None])[0], category=category,
                                       require=require, exclude=exclude, w=w)
    assert out.matched == want_ids.shape[0]
    assert out.result.listing_ids.tolist() == want_ids[5:30].tolist()
    np.testing.assert_allclose(out.result.scores, want_scores[5:30], rtol=0, atol=1e-12)
    # Every hit carries each required attribute and none of the excluded ones.
    by_id = dict(zip(ids.tolist(), attrs))
    for lid in out.result.listing_ids.tolist():
        assert set(require) <= set(by_id[lid]) and not set(exclude) & set(by_id[lid])


def test_without_a_refinement_hits_equal_the_plain_search(items, snap):
    ids, cats, attrs, codes, colours = items
    q, col = codes[3], colours[3]
    for w in (0.0, 0.1):
        plain = snap.search(code=q, colour=col, category_id=1, attribute_ids=[2, 3], k=20, offset=10, colour_weight=w)
        out = refined_search(snap, code=q, colour=col, category_id=1, attribute_ids=[2, 3], k=20, offset=10,
                             colour_weight=w)
        assert out.result.listing_ids.tolist() == plain.listing_ids.tolist()
        assert out.result.scores.tolist() == plain.scores.tolist()
        assert (out.result.matched == plain.matched).all()
        assert out.matched == int((cats == 1).sum())


@pytest.mark.parametrize("w", [0.0, 0.1, 0.37, 1.0])
def test_score_terms_sum_exactly_to_the_score(items, snap, w):
    ids, cats, attrs, codes, colours = items
    out = refined_search(snap, code=codes[9], colour=colours[100], category_id=None, k=50, colour_weight=w,
                         refinement=Refinement(require=(2,)))
    assert len(out.result) == 50
    assert ((out.appearance_terms + out.colour_terms) == out.result.scores).all()
    assert out.appearance_weight + out.colour_weight == 1.0
    if w == 0.0:
        assert (out.colour_terms == 0).all()


def test_palette_without_a_photo_ranks_by_colour_alone(items, snap):
    ids, cats, attrs, codes, colours = items
    target = np.zeros(N_BINS, np.float32)
    target[[1, 6]] = [0.7, 0.3]
    out = refined_search(snap, code=None, colour=None, category_id=3, k=30,
                         refinement=Refinement(target_colour=target, appearance=False))
    want_ids, _ = _reference(items, code=np.zeros(N_BYTES, np.uint8), qcol=quantize_colours(target[None])[0],
                             category=3, require=(), exclude=(), w=1.0)
    assert out.result.listing_ids.tolist() == want_ids[:30].tolist()
    assert (out.appearance_terms == 0).all() and out.colour_weight == 1.0


def test_facets_count_the_best_hits(items, snap):
    ids, cats, attrs, codes, colours = items
    out = refined_search(snap, code=codes[0], colour=colours[0], category_id=None, k=10, colour_weight=0.1,
                         refinement=Refinement(exclude=(0,), facets=400))
    want_ids, _ = _reference(items, code=codes[0], qcol=colours[0], category=None, require=(), exclude=(0,), w=0.1)
    top = set(want_ids[:400].tolist())
    assert out.result.listing_ids.tolist() == want_ids[:10].tolist()
    want_cats: dict[int, int] = {}
    want_attrs: dict[int, int] = {}
    for i, c, a in zip(ids.tolist(), cats.tolist(), attrs):
        if i in top:
            want_cats[c] = want_cats.get(c, 0) + 1
            for x in a:
                want_attrs[x] = want_attrs.get(x, 0) + 1
    assert out.facets.n == 400 and out.facets.categories == want_cats and out.facets.attributes == want_attrs
    assert 0 not in out.facets.attributes


def test_edits_see_the_delta_and_skip_tombstones(items):
    ids, cats, attrs, codes, colours = items
    snap = IndexSnapshot.build(ids, cats, attrs, codes, colours, generation=1)
    # Move listing 0 to another category with new attributes, delete listing 1, add a new listing.
    new_id = int(ids.max()) + 1
    up = ItemArrays.create([ids[0], new_id], [2, 2], [[3, 7], [3]], codes[:2].copy(), colours[:2].copy())
    nxt = snap.apply(up, [ids[1]], merge=False)
    attrs2 = {int(i): a for i, a in zip(ids, attrs)}
    cats2 = {int(i): int(c) for i, c in zip(ids, cats)}
    attrs2[int(ids[0])], cats2[int(ids[0])] = [3, 7], 2
    attrs2[new_id], cats2[new_id] = [3], 2
    del attrs2[int(ids[1])], cats2[int(ids[1])]
    all_ids = np.array(sorted(attrs2), dtype=np.int64)
    code_of = {int(i): c for i, c in zip(ids, codes)} | {new_id: codes[1]}
    col_of = {int(i): c for i, c in zip(ids, colours)} | {new_id: colours[1]}
    ref_items = (all_ids, np.array([cats2[i] for i in all_ids.tolist()]), [attrs2[i] for i in all_ids.tolist()],
                 np.stack([code_of[i] for i in all_ids.tolist()]), np.stack([col_of[i] for i in all_ids.tolist()]))
    out = refined_search(nxt, code=codes[0], colour=colours[0], category_id=2, k=40, colour_weight=0.2,
                         refinement=Refinement(require=(3,), facets=60))
    want_ids, _ = _reference(ref_items, code=codes[0], qcol=colours[0], category=2, require=(3,), exclude=(), w=0.2)
    assert out.matched == want_ids.shape[0]
    assert out.result.listing_ids.tolist() == want_ids[:40].tolist()
    assert int(ids[0]) in out.result.listing_ids.tolist()
    assert out.facets.categories == {2: min(60, want_ids.shape[0])}
    assert out.facets.attributes[3] == min(60, want_ids.shape[0])
    # Exclusions scan the range with a skip mask, which must keep skipping the tombstones.
    for ref in (Refinement(exclude=(3,)), Refinement(require=(0,), exclude=(3,)), Refinement(require=(5,))):
        for cat in (2, None):
            out = refined_search(nxt, code=codes[1], colour=colours[1], category_id=cat, k=50, colour_weight=0.2,
                                 refinement=ref)
            want_ids, _ = _reference(ref_items, code=codes[1], qcol=colours[1], category=cat, require=ref.require,
                                     exclude=ref.exclude, w=0.2)
            assert out.matched == want_ids.shape[0]
            assert out.result.listing_ids.tolist() == want_ids[:50].tolist()
            assert int(ids[1]) not in out.result.listing_ids.tolist()


def test_constraint_rows_and_validation(snap):
    seg, _ = snap.segments()[0]
    c, lo, hi = seg.category_range(1)
    assert constraint_rows(seg, c, lo, hi, (), ()) is None
    rows = constraint_rows(seg, c, lo, hi, (3,), (4,))
    assert rows.dtype == np.int32 and ((rows >= lo) & (rows < hi)).all() and (np.diff(rows) > 0).all()
    with pytest.raises(ValueError, match="both required and excluded"):
        Refinement(require=(1,), exclude=(1,))
    with pytest.raises(ValueError, match="facets"):
        Refinement(facets=1001)
    with pytest.raises(ValueError, match="target colour"):
        Refinement(appearance=False)


def test_a_facet_search_reports_the_same_page_as_a_plain_one(items, snap):
    ids, cats, attrs, codes, colours = items
    kw = dict(code=codes[5], colour=colours[5], category_id=None, attribute_ids=[1, 4, 9], k=15, offset=3,
              colour_weight=0.1)
    plain = snap.search(**kw)
    out = refined_search(snap, **kw, refinement=Refinement(facets=300))
    assert out.result.listing_ids.tolist() == plain.listing_ids.tolist()
    assert out.result.query_attribute_ids == (1, 4, 9) and (out.result.matched == plain.matched).all()
    assert [h.matched_attribute_ids for h in out.result.hits] == [h.matched_attribute_ids for h in plain.hits]
