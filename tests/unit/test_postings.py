"""IndexSnapshot: build, search vs brute force, filters, postings, copy-on-write apply(), paging, rows <-> arrays."""
from __future__ import annotations

import numpy as np
import pytest

from shared.index.arrays import ItemArrays
from shared.index.colours import colour_distances, quantize_colours
from shared.index.load import (
    BULK_LOAD_SQL,
    arrays_from_columns,
    arrays_from_records,
    arrays_from_rows,
    items_from_cursor,
    load_items,
)
from shared.index.snapshot import IndexSnapshot

N_BINS = 52


def _items(rng: np.random.Generator, n: int, *, n_bytes: int = 32, id_base: int = 10**12) -> ItemArrays:
    ids = rng.choice(10**6, size=n, replace=False).astype(np.int64) + id_base
    cats = rng.integers(1, 6, size=n)
    attrs = [sorted(rng.choice(40, size=rng.integers(0, 8), replace=False).tolist()) for _ in range(n)]
    # Few distinct codes: plenty of Hamming ties, so the listing-id tie-break is exercised.
    pool = rng.integers(0, 256, size=(64, n_bytes), dtype=np.uint8)
    codes = np.ascontiguousarray(pool[rng.integers(0, 64, size=n)])
    hists = rng.random((n, N_BINS)).astype(np.float32) ** 4
    hists /= hists.sum(axis=1, keepdims=True)
    return ItemArrays.create(ids, cats, attrs, codes, hists)


def _expected(items: ItemArrays, q: np.ndarray, qc: np.ndarray, *, category_id: int | None, w: float,
              n_bits: int) -> np.ndarray:
    """Listing ids by (score, id): brute force over every item, the score written out from its definition."""
    ham = np.unpackbits(items.codes ^ q, axis=1).sum(axis=1)
    col = colour_distances(qc, items.colours)
    score = (1 - w) / n_bits * ham + w / 510 * np.minimum(np.abs(
        items.colours.astype(int) - qc.astype(int)).sum(axis=1), 510)
    if w == 0:
        score = ham / n_bits
    assert ((col >= 0) & (col <= 1)).all()
    sel = np.ones(len(items), bool) if category_id is None else items.category_ids == category_id
    idx = np.flatnonzero(sel)
    return items.ids[idx[np.lexsort((items.ids[idx], score[idx]))]]


def _attrs_of(items: ItemArrays) -> dict[int, set[int]]:
    o = items.attr_offsets
    return {int(items.ids[i]): set(items.attribute_ids[o[i]:o[i + 1]].tolist()) for i in range(len(items))}


@pytest.fixture(scope="module")
def items() -> ItemArrays:
    return _items(np.random.default_rng(0), 3000)


@pytest.fixture(scope="module")
def snap(items: ItemArrays) -> IndexSnapshot:
    return IndexSnapshot.from_items(items, generation=7)


@pytest.mark.parametrize("w", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("category_id", [None, 2, 5])
def test_search_matches_brute_force(items: ItemArrays, snap: IndexSnapshot, w: float, category_id: int | None) -> None:
    for qi in (0, 17, 2999):
        q, qc = items.codes[qi], items.colours[qi]
        res = snap.search(code=q, colour=qc, category_id=category_id, k=50, colour_weight=w)
        expected = _expected(items, q, qc, category_id=category_id, w=w, n_bits=256)[:50]
        np.testing.assert_array_equal(res.listing_ids, expected)
        assert res.generation == 7 and res.strategy == "category"
        assert (np.diff(res.scores) >= 0).all()
        np.testing.assert_allclose(res.appearance, res.hamming / 256)
        np.testing.assert_allclose(res.scores, (1 - w) * res.appearance + w * res.colour, atol=1e-12)
        if category_id is not None:
            assert res.scanned == int((items.category_ids == category_id).sum())


def test_search_hit_fields_and_matched_attributes(items: ItemArrays, snap: IndexSnapshot) -> None:
    attrs = _attrs_of(items)
    query_attrs = [3, 1, 39, 777]  # 777: in no vocabulary
    res = snap.search(code=items.codes[5], colour=None, category_id=int(items.category_ids[5]),
                      attribute_ids=query_attrs, k=30)
    assert res.matched.shape == (30, 4)
    hits = res.hits
    assert hits[0].score == 0.0 and items.ids[5] in [h.listing_id for h in hits if h.score == 0.0]
    assert np.isnan(hits[0].colour_distance)  # no query colour given
    for h in hits:
        assert set(h.matched_attribute_ids) == set(query_attrs) & attrs[h.listing_id]
        assert h.matched_attribute_ids == tuple(a for a in query_attrs if a in attrs[h.listing_id])
    assert any(h.matched_attribute_ids for h in hits)


@pytest.mark.parametrize("strategy", ["union", "vote", "intersection"])
def test_posting_strategies_select_by_attributes(items: ItemArrays, snap: IndexSnapshot, strategy: str) -> None:
    attrs = _attrs_of(items)
    query_attrs = [0, 1, 2]
    cat = 3
    in_cat = items.ids[items.category_ids == cat]
    need = {"union": 1, "vote": 2, "intersection": 3}[strategy]
    eligible = {i for i in in_cat.tolist() if len(attrs[i] & set(query_attrs)) >= need}
    res = snap.search(code=items.codes[0], category_id=cat, attribute_ids=query_attrs, k=1000, strategy=strategy,
                      min_votes=2, min_candidates=0)
    assert res.strategy == strategy
    assert set(res.listing_ids.tolist()) == eligible
    assert res.scanned == len(eligible) < len(in_cat)
    # The same search restricted by brute force gives the same order.
    full = snap.search(code=items.codes[0], category_id=cat, k=len(in_cat))
    np.testing.assert_array_equal(res.listing_ids, [i for i in full.listing_ids if i in eligible])
    # Too few candidates: falls back to scanning the category.
    fb = snap.search(code=items.codes[0], category_id=cat, attribute_ids=query_attrs, k=10, strategy=strategy,
                     min_candidates=len(in_cat) + 1)
    assert fb.strategy == "category" and fb.scanned == len(in_cat)
    np.testing.assert_array_equal(fb.listing_ids, full.listing_ids[:10])


def test_threads_give_identical_results() -> None:
    rng = np.random.default_rng(8)
    n = 600_000  # large enough for top_k_parallel to split the scan
    pool = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    items = ItemArrays(rng.permutation(n).astype(np.int64) * 3, rng.integers(1, 4, n), np.zeros(n + 1, np.int64),
                       np.empty(0, np.int64), np.ascontiguousarray(pool[rng.integers(0, 50, n)]),
                       np.zeros((n, 4), np.uint8))
    snap = IndexSnapshot.from_items(items, generation=1)
    one = snap.search(code=items.codes[4], k=300)
    two = snap.search(code=items.codes[4], k=300, threads=2)
    np.testing.assert_array_equal(one.listing_ids, two.listing_ids)
    np.testing.assert_array_equal(one.hamming, two.hamming)


def test_offset_pages_tile_the_ranking(items: ItemArrays, snap: IndexSnapshot) -> None:
    full = snap.search(code=items.codes[9], colour=items.colours[9], k=100, colour_weight=0.3)
    pages = [snap.search(code=items.codes[9], colour=items.colours[9], k=30, offset=o, colour_weight=0.3)
             for o in range(0, 100, 30)]
    np.testing.assert_array_equal(np.concatenate([p.listing_ids for p in pages])[:100], full.listing_ids)
    assert len(snap.search(code=items.codes[9], k=10, offset=len(items))) == 0
    assert len(snap.search(code=items.codes[9], k=0)) == 0


def test_apply_upserts_updates_deletes_copy_on_write(items: ItemArrays) -> None:
    rng = np.random.default_rng(1)
    old = IndexSnapshot.from_items(items, generation=3, sequence=10)
    q, qc = items.codes[1], items.colours[1]
    before = old.search(code=q, colour=qc, k=200, colour_weight=0.2)
    old_codes = old._base.codes.copy()

    new_items = _items(rng, 40, id_base=5 * 10**12)  # fresh listings
    moved = items.take(np.arange(100, 130))  # existing listings: new category, new code, new attributes
    moved = ItemArrays(moved.ids, (moved.category_ids % 5) + 1, np.arange(31, dtype=np.int64),
                       np.full(30, 39, np.int64), rng.integers(0, 256, size=(30, 32), dtype=np.uint8),
                       moved.colours)
    deletes = items.ids[200:260].tolist() + [42]  # 42 is not in the index: ignored
    snap = old.apply(ItemArrays.concatenate([new_items, moved]), deletes, sequence=11)

    # The old snapshot is untouched.
    assert old.n_items == len(items) and old.sequence == 10
    np.testing.assert_array_equal(old._base.codes, old_codes)
    np.testing.assert_array_equal(old.search(code=q, colour=qc, k=200, colour_weight=0.2).listing_ids,
                                  before.listing_ids)
    # The new one equals a snapshot built from scratch on the final item set, for every category and weight.
    keep = ~np.isin(items.ids, np.concatenate([moved.ids, items.ids[200:260]]))
    final = ItemArrays.concatenate([items.take(np.flatnonzero(keep)), new_items, moved])
    assert snap.n_items == len(final) and snap.sequence == 11 and snap.delta_size == 70 and snap.n_deleted == 90
    assert not snap.contains(int(items.ids[200])) and snap.contains(int(moved.ids[0])) and old.contains(200_000)\
        is False
    for cat in (None, 1, 4):
        for w in (0.0, 0.5):
            res = snap.search(code=q, colour=qc, category_id=cat, k=150, colour_weight=w)
            np.testing.assert_array_equal(res.listing_ids, _expected(final, q, qc, category_id=cat, w=w,
                                                                     n_bits=256)[:150])
    # A moved listing is found in its new category with its new attributes, and not in its old one.
    m0 = int(moved.ids[0])
    res = snap.search(code=moved.codes[0], category_id=int(moved.category_ids[0]), attribute_ids=[39], k=1)
    assert res.listing_ids[0] == m0 and res.hits[0].matched_attribute_ids == (39,)
    old_cat = int(items.category_ids[100])
    assert m0 not in snap.search(code=moved.codes[0], category_id=old_cat, k=len(items)).listing_ids

    # Merging gives the same answers with no tombstones; a second apply on top of a delta also works.
    merged = snap.apply(merge=True)
    assert merged.delta_size == 0 and merged.n_deleted == 0 and merged.n_items == snap.n_items
    for cat in (None, 2):
        np.testing.assert_array_equal(merged.search(code=q, category_id=cat, k=300).listing_ids,
                                      snap.search(code=q, category_id=cat, k=300).listing_ids)
    again = snap.apply(None, [int(new_items.ids[0]), m0])
    assert again.n_items == snap.n_items - 2 and again.delta_size == 68
    assert not again.contains(m0) and snap.contains(m0)


def test_apply_rejects_conflicting_changes(snap: IndexSnapshot, items: ItemArrays) -> None:
    one = items.take(np.array([0]))
    with pytest.raises(ValueError, match="both upserted and deleted"):
        snap.apply(one, [int(items.ids[0])])
    with pytest.raises(ValueError, match="must not repeat"):
        snap.apply(ItemArrays.concatenate([one, one]))


def test_build_rejects_duplicates_and_bad_inputs(items: ItemArrays) -> None:
    codes = np.zeros((2, 32), np.uint8)
    hists = np.full((2, 4), 0.25, np.float32)
    with pytest.raises(ValueError, match="unique"):
        IndexSnapshot.build([1, 1], [1, 2], [[], []], codes, hists, generation=0)
    with pytest.raises(TypeError, match="codes must be uint8, got float32"):
        IndexSnapshot.build([1, 2], [1, 2], [[], []], codes.astype(np.float32), hists, generation=0)
    with pytest.raises(TypeError, match="colours must be float32 histograms or uint8"):
        IndexSnapshot.build([1, 2], [1, 2], [[], []], codes, hists.astype(np.float64), generation=0)
    with pytest.raises(ValueError, match="n_bits=200 needs 25 bytes"):
        IndexSnapshot.build([1, 2], [1, 2], [[], []], codes, hists, generation=0, n_bits=200)
    snap = IndexSnapshot.build([1, 2], [1, 2], [[], []], codes, hists, generation=0)
    with pytest.raises(TypeError, match="code must be uint8, got int64"):
        snap.search(code=np.zeros(32, np.int64))
    with pytest.raises(ValueError, match=r"code must have shape \(32,\)"):
        snap.search(code=np.zeros(31, np.uint8))
    with pytest.raises(ValueError, match="needs a query colour"):
        snap.search(code=np.zeros(32, np.uint8), colour_weight=0.5)
    with pytest.raises(ValueError, match="strategy must be one of"):
        snap.search(code=np.zeros(32, np.uint8), strategy="magic")


def test_odd_code_width_is_padded_not_miscounted() -> None:
    rng = np.random.default_rng(4)
    items = _items(rng, 500, n_bytes=25)
    items.codes[:, -1] = 0  # 200 bits: no stray bits in the last byte
    snap = IndexSnapshot.from_items(items, generation=1, n_bits=200)
    res = snap.search(code=items.codes[3], k=40)
    np.testing.assert_array_equal(res.listing_ids, _expected(items, items.codes[3], items.colours[3],
                                                             category_id=None, w=0.0, n_bits=200)[:40])
    assert res.appearance[0] == 0.0 and res.hamming.max() <= 200


def test_empty_snapshot() -> None:
    snap = IndexSnapshot.empty(n_bits=256, n_bins=N_BINS, generation=2)
    assert snap.n_items == 0
    res = snap.search(code=np.zeros(32, np.uint8), colour=np.full(N_BINS, 1 / N_BINS, np.float32), k=10,
                      colour_weight=0.5, category_id=3, attribute_ids=[1], strategy="vote")
    assert len(res) == 0 and res.scanned == 0 and res.matched.shape == (0, 1)
    items = _items(np.random.default_rng(5), 10)
    grown = snap.apply(items)
    assert snap.n_items == 0 and grown.n_items == 10
    assert grown.search(code=items.codes[0], k=1).listing_ids[0] in set(
        items.ids[np.all(items.codes == items.codes[0], axis=1)].tolist())


def test_bytes_per_item_at_256_bits() -> None:
    items = _items(np.random.default_rng(6), 20_000)
    snap = IndexSnapshot.from_items(items, generation=1)
    avg_attrs = len(items.attribute_ids) / len(items)
    # ids 8 + code 32 + colour 52 + tombstone 1 + 4 per posting entry, plus small per-category tables.
    assert snap.bytes_per_item == pytest.approx(8 + 32 + N_BINS + 1 + 4 * avg_attrs, abs=1.0)


def _pg_rows(items: ItemArrays, *, float_colours: bool = False) -> list[tuple]:
    o = items.attr_offsets
    rows = []
    for i in range(len(items)):
        colour = items.colours[i].tobytes()
        if float_colours:
            colour = (items.colours[i].astype("<f4") / 255).tobytes()
        rows.append((int(items.ids[i]), int(items.category_ids[i]), items.attribute_ids[o[i]:o[i + 1]].tolist() or None,
                     memoryview(items.codes[i].tobytes()), memoryview(colour)))
    return rows


def _same_items(a: ItemArrays, b: ItemArrays) -> None:
    for f in ("ids", "category_ids", "attr_offsets", "attribute_ids", "codes", "colours"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_arrays_from_rows_round_trip(items: ItemArrays) -> None:
    got = arrays_from_rows(_pg_rows(items), n_bytes=32, n_bins=N_BINS)
    _same_items(got, items)
    assert got.ids.dtype == np.int64 and got.codes.dtype == np.uint8 and got.colours.shape == (len(items), N_BINS)
    # float32 colour bytes are quantised the same way as float32 histograms passed to build().
    as_float = arrays_from_rows(_pg_rows(items, float_colours=True), n_bytes=32, n_bins=N_BINS)
    np.testing.assert_array_equal(as_float.colours, quantize_colours((items.colours / 255).astype(np.float32)))
    empty = arrays_from_rows([], n_bytes=32, n_bins=N_BINS)
    assert len(empty) == 0 and empty.codes.shape == (0, 32)
    bad = _pg_rows(items.take(np.arange(3)))
    bad[1] = bad[1][:3] + (b"\x00" * 31, bad[1][4])
    with pytest.raises(ValueError, match=f"every code must be 32 bytes.*listing {bad[1][0]} has 31"):
        arrays_from_rows(bad, n_bytes=32, n_bins=N_BINS)


def _records(part: ItemArrays) -> tuple[bytes, str | None]:
    """What one chunk of BULK_LOAD_SQL returns for these items: big-endian records + attribute ids as text."""
    rec = np.zeros(len(part), dtype=[("id", ">i8"), ("cat", ">i2"), ("n_attr", ">i2"), ("code", "u1", (32,)),
                                     ("colour", "u1", (N_BINS,))])
    rec["id"], rec["cat"], rec["n_attr"] = part.ids, part.category_ids, np.diff(part.attr_offsets)
    rec["code"], rec["colour"] = part.codes, part.colours
    return rec.tobytes(), (",".join(map(str, part.attribute_ids.tolist())) or None)


def test_arrays_from_columns_and_records(items: ItemArrays) -> None:
    part = items.take(np.arange(500))
    o = part.attr_offsets
    chunk = (
        ",".join(map(str, part.ids.tolist())),
        ",".join(map(str, part.category_ids.tolist())),
        ",".join(str(int(c)) for c in np.diff(o)),
        ",".join(map(str, part.attribute_ids.tolist())),
        part.codes.tobytes(),
        part.colours.tobytes(),
    )
    _same_items(arrays_from_columns(*chunk, n_bytes=32, n_bins=N_BINS), part)
    records, attrs = _records(part)
    _same_items(arrays_from_records(memoryview(records), attrs, n_bytes=32, n_bins=N_BINS), part)
    with pytest.raises(ValueError, match="not a multiple of 96"):
        arrays_from_records(records[:-1], attrs, n_bytes=32, n_bins=N_BINS)
    with pytest.raises(ValueError, match="attribute counts add up to"):
        arrays_from_records(records, attrs + ",5", n_bytes=32, n_bins=N_BINS)


def test_items_from_cursor_and_load_items(items: ItemArrays) -> None:
    class ListCursor:  # the DB-API surface items_from_cursor uses (fetchmany over per-row results)
        def __init__(self, rows: list[tuple]) -> None:
            self.rows = rows

        def fetchmany(self, size: int) -> list[tuple]:
            out, self.rows = self.rows[:size], self.rows[size:]
            return out

    _same_items(items_from_cursor(ListCursor(_pg_rows(items)), n_bytes=32, n_bins=N_BINS, batch_rows=700), items)
    assert len(items_from_cursor(ListCursor([]), n_bytes=32, n_bins=N_BINS)) == 0

    class ChunkCursor:  # answers BULK_LOAD_SQL's keyset pagination the way Postgres does (verified against PG 16)
        def __init__(self, src: ItemArrays) -> None:
            self.src = src.take(np.argsort(src.ids))
            self.calls: list[dict] = []

        def execute(self, sql: str, params: dict) -> None:
            assert sql == BULK_LOAD_SQL
            self.calls.append(params)
            sel = np.flatnonzero(self.src.ids > params["after"])[: params["chunk"]]
            part = self.src.take(sel)
            self.row = (*_records(part), int(part.ids.max()), len(part)) if len(part) else (None, None, None, 0)

        def fetchone(self) -> tuple:
            return self.row

    cur = ChunkCursor(items)
    got = load_items(cur, generation_id=4, n_bytes=32, n_bins=N_BINS, chunk=700)
    _same_items(got, cur.src)
    assert len(cur.calls) == 5 and all(c["generation_id"] == 4 for c in cur.calls)  # 3000 rows: 4 full + 1 short
    assert IndexSnapshot.from_items(got, generation=1).n_items == len(items)
