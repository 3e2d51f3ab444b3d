"""A segment: category-sorted arrays for a set of items with their attribute postings; immutable once built.

Layout:

    ids          int64 (n,)                 listing ids, sorted by (category_id, listing_id)
    codes        uint8 (n, n_bytes_padded)  packed codes (shared.codes), zero-padded to a multiple of 8 bytes so the
                                            kernel always reads whole uint64 words (zero bytes add 0 to a distance)
    colours      uint8 (n, n_bins)          colour histograms quantised as round(255 * h) (shared.index.colours)
    cat_keys     int64 (n_cat,)             category ids present, ascending
    cat_offsets  int64 (n_cat + 1,)         rows of category cat_keys[c] are cat_offsets[c] : cat_offsets[c + 1]
    attr_keys    int64 (n_attr,)            attribute ids present, ascending
    post_starts  int64 (n_attr, n_cat + 1)  postings of (cat_keys[c], attr_keys[a]) are
                                            post_rows[post_starts[a, c] : post_starts[a, c + 1]]
    post_rows    int32 (nnz,)               row numbers, grouped by attribute, ascending within an attribute

Because rows are category-sorted, a category is one contiguous range (no id list to intersect with), the posting
list of an attribute is sorted by row across all categories, and within a category row order is listing-id order.
A snapshot (shared.index.snapshot) is a large base segment with tombstones plus a small delta segment.
RAM at 256-bit codes, 52 colour bins and 10 attributes per item: 8 + 32 + 52 + 4 * 10 = 132 bytes per item (plus
1 byte of tombstone in the snapshot).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numba import njit

from shared.index.arrays import ItemArrays

__all__ = ["Segment", "padded_bytes"]


def padded_bytes(n_bytes: int) -> int:
    return -(-n_bytes // 8) * 8


def _small_int(n_values: int) -> type:
    # Keys below 2**15 sort with numpy's O(n) radix sort (kind="stable" on 16-bit ints).
    return np.int16 if n_values < 2**15 else np.int64


def _dense_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value in them), O(n + range) by counting: category and attribute ids
    are smallint, and numpy 2's hash-based np.unique is ~10x slower than this on 10M entries."""
    if values.shape[0] == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo > 1 << 24:  # not smallint-like: fall back to sorting
        keys, index = np.unique(values, return_inverse=True)
        return keys.astype(np.int64), index.reshape(-1).astype(np.int64)
    shifted = values - lo
    present = np.bincount(shifted, minlength=hi - lo + 1) > 0
    keys = np.flatnonzero(present).astype(np.int64) + lo
    lookup = (np.cumsum(present) - 1).astype(np.int64)
    return keys, lookup[shifted]


@njit(cache=True, nogil=True)
def _postings_by_attribute(order, attr_offsets, values, lookup, shift, n_attr):
    """(entries per attribute int64 (n_attr,), rows int32 (nnz,) grouped by attribute, ascending within one): the
    attribute entries of items order[0], order[1], ... (new rows 0, 1, ...), counting-sorted by attribute index
    lookup[value - shift] (shift -1: lookup is already per entry)."""
    counts = np.zeros(n_attr, dtype=np.int64)
    for e in range(values.shape[0]):
        counts[lookup[e] if shift == -1 else lookup[values[e] - shift]] += 1
    pos = np.zeros(n_attr, dtype=np.int64)
    for a in range(1, n_attr):
        pos[a] = pos[a - 1] + counts[a - 1]
    rows = np.empty(values.shape[0], dtype=np.int32)
    for new_row in range(order.shape[0]):
        i = order[new_row]
        for e in range(attr_offsets[i], attr_offsets[i + 1]):
            a = lookup[e] if shift == -1 else lookup[values[e] - shift]
            rows[pos[a]] = new_row
            pos[a] += 1
    return counts, rows


@dataclass(frozen=True, eq=False)
class Segment:
    """Category-sorted arrays for a set of items; immutable once built (see the module docstring for the layout)."""

    ids: np.ndarray
    codes: np.ndarray
    colours: np.ndarray
    cat_keys: np.ndarray
    cat_offsets: np.ndarray
    attr_keys: np.ndarray
    post_starts: np.ndarray
    post_rows: np.ndarray

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in dataclasses.fields(self))

    @classmethod
    def build(cls, items: ItemArrays, padded_bytes: int) -> Segment:
        """Sort items by (category, listing id) and index their attributes.

        One O(n log n) sort of the ids; everything else is counting sorts and gathers, O(n + nnz), dominated by
        memory traffic (bench/bulkload.py prints the time at 10M).
        """
        n = len(items)
        by_id = np.argsort(items.ids)
        sorted_ids = items.ids[by_id]
        if n > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
            raise ValueError("listing ids must be unique in a snapshot")
        cat_keys, cat_index = _dense_codes(items.category_ids)
        # Stable counting sort by category on id-sorted rows = sort by (category, id); int16 keys take numpy's radix
        # sort, which is several times faster than lexsort at 1M.
        order = by_id[np.argsort(cat_index[by_id].astype(_small_int(cat_keys.shape[0])), kind="stable")]
        ids = items.ids[order]
        # take(axis=0) rather than codes[order]: ~6x faster for row gathers on numpy 2.
        if padded_bytes == items.n_bytes:
            codes = items.codes.take(order, axis=0)
        else:
            codes = np.zeros((n, padded_bytes), dtype=np.uint8)
            codes[:, : items.n_bytes] = items.codes.take(order, axis=0)
        colours = items.colours.take(order, axis=0)
        cat_offsets = np.zeros(cat_keys.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(cat_index, minlength=cat_keys.shape[0]), out=cat_offsets[1:])
        # Postings: one counting sort by attribute over the entries in new row order (compiled: one pass to count,
        # one to place), so every attribute's rows come out ascending.
        values = items.attribute_ids
        lo = int(values.min()) if values.shape[0] else 0
        hi = int(values.max()) if values.shape[0] else 0
        if hi - lo > 1 << 24:  # not smallint-like: a lookup table would be too large
            attr_keys, attr_index = _dense_codes(values)
            lookup, shift = attr_index, -1
        else:
            present = np.bincount(values - lo, minlength=hi - lo + 1) > 0
            attr_keys = np.flatnonzero(present).astype(np.int64) + lo
            lookup, shift = (np.cumsum(present) - 1).astype(np.int64), lo
        attr_counts, entry_rows = _postings_by_attribute(order, items.attr_offsets, values, lookup, shift,
                                                         attr_keys.shape[0])
        sorted_attr = np.repeat(np.arange(attr_keys.shape[0], dtype=_small_int(attr_keys.shape[0])), attr_counts)
        return cls._from_sorted(ids, codes, colours, cat_keys, cat_offsets, attr_keys, sorted_attr, entry_rows)

    @classmethod
    def _from_sorted(
        cls, ids: np.ndarray, codes: np.ndarray, colours: np.ndarray, cat_keys: np.ndarray, cat_offsets: np.ndarray,
        attr_keys: np.ndarray, entry_attr: np.ndarray, entry_rows: np.ndarray, *, dedupe: bool = True,
    ) -> Segment:
        """Finish a segment from category-sorted columns and postings entries sorted by (attribute index, row)."""
        if dedupe and entry_rows.shape[0] > 1:  # an attribute listed twice on one item appears once
            dup = (entry_rows[1:] == entry_rows[:-1]) & (entry_attr[1:] == entry_attr[:-1])
            if dup.any():
                keep = np.concatenate([[True], ~dup])
                entry_attr, entry_rows = entry_attr[keep], entry_rows[keep]
        n_attr = attr_keys.shape[0]
        attr_starts = np.zeros(n_attr + 1, dtype=np.int64)
        np.cumsum(np.bincount(entry_attr, minlength=n_attr), out=attr_starts[1:])
        post_starts = np.empty((n_attr, cat_offsets.shape[0]), dtype=np.int64)
        bounds = cat_offsets.astype(entry_rows.dtype)  # same dtype: searchsorted would otherwise copy the list
        for a in range(n_attr):
            lo, hi = attr_starts[a], attr_starts[a + 1]
            post_starts[a] = lo + np.searchsorted(entry_rows[lo:hi], bounds)
        return cls(ids, codes, colours, cat_keys.astype(np.int64), cat_offsets, attr_keys.astype(np.int64),
                   post_starts, np.ascontiguousarray(entry_rows, dtype=np.int32))

    @classmethod
    def merge(cls, base: Segment, dead: np.ndarray, delta: Segment) -> Segment:
        """One segment holding base's live rows and delta's rows: O(n) scatters, no re-sort (both are sorted)."""
        alive = np.flatnonzero(dead == 0)
        base_cats = np.repeat(base.cat_keys, np.diff(base.cat_offsets)).take(alive)
        delta_cats = np.repeat(delta.cat_keys, np.diff(delta.cat_offsets))
        base_ids = base.ids.take(alive)
        # Where each delta row goes among the live base rows, by (category, id), one category at a time.
        pos = np.empty(delta.n, dtype=np.int64)
        for c, key in enumerate(delta.cat_keys):
            d_lo, d_hi = delta.cat_offsets[c], delta.cat_offsets[c + 1]
            b_lo, b_hi = np.searchsorted(base_cats, key, "left"), np.searchsorted(base_cats, key, "right")
            pos[d_lo:d_hi] = b_lo + np.searchsorted(base_ids[b_lo:b_hi], delta.ids[d_lo:d_hi])
        new_delta = pos + np.arange(delta.n)
        new_base = np.arange(alive.shape[0]) + np.searchsorted(pos, np.arange(alive.shape[0]), "right")
        n = alive.shape[0] + delta.n
        # Gather every output row from base (delta positions take a dummy row), then overwrite the few delta rows:
        # take(axis=0) is ~10x faster than a fancy-index scatter of 1M rows.
        src = np.zeros(n, dtype=np.int64)
        src[new_base] = alive
        ids, codes, colours = (a.take(src, axis=0) for a in (base.ids, base.codes, base.colours))
        cats = np.repeat(base.cat_keys, np.diff(base.cat_offsets)).take(src)
        for out, d in ((ids, delta.ids), (cats, delta_cats), (codes, delta.codes), (colours, delta.colours)):
            out[new_delta] = d
        cat_keys, cat_index = _dense_codes(cats)
        cat_offsets = np.zeros(cat_keys.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(cat_index, minlength=cat_keys.shape[0]), out=cat_offsets[1:])
        # Postings, one attribute at a time: map both lists to the new rows (a monotone map, so each stays sorted),
        # drop tombstoned rows, and insert the short delta list into the long base list. All int32, O(nnz).
        attr_keys = np.union1d(base.attr_keys, delta.attr_keys)
        row_map = np.full(base.n, -1, dtype=np.int32)
        row_map[alive] = new_base
        base_rows = row_map[base.post_rows]
        delta_rows = new_delta.astype(np.int32)[delta.post_rows]
        lists = []
        for key in attr_keys:
            b = base_rows[0:0]
            ab = int(np.searchsorted(base.attr_keys, key))
            if ab < base.attr_keys.shape[0] and base.attr_keys[ab] == key:
                b = base_rows[base.post_starts[ab, 0] : base.post_starts[ab, -1]]
                b = b[b >= 0]
            ad = int(np.searchsorted(delta.attr_keys, key))
            if ad < delta.attr_keys.shape[0] and delta.attr_keys[ad] == key:
                d = delta_rows[delta.post_starts[ad, 0] : delta.post_starts[ad, -1]]
                b = np.insert(b, np.searchsorted(b, d), d)
            lists.append(b)
        entry_rows = np.concatenate(lists) if lists else np.empty(0, np.int32)
        entry_attr = np.repeat(np.arange(attr_keys.shape[0], dtype=_small_int(attr_keys.shape[0])),
                               [x.shape[0] for x in lists])
        return cls._from_sorted(ids, codes, colours, cat_keys, cat_offsets, attr_keys, entry_attr, entry_rows,
                                dedupe=False)

    def category_range(self, category_id: int | None) -> tuple[int, int, int]:
        """(category index or -1, first row, end row) of a category; (-1, 0, 0) when absent; whole segment for None."""
        if category_id is None:
            return -1, 0, self.n
        c = int(np.searchsorted(self.cat_keys, category_id))
        if c == self.cat_keys.shape[0] or self.cat_keys[c] != category_id:
            return -1, 0, 0
        return c, int(self.cat_offsets[c]), int(self.cat_offsets[c + 1])

    def posting(self, attribute_id: int, c: int) -> np.ndarray:
        """Rows (int32, ascending) with the attribute, in category index c (or in every category for c = -1)."""
        a = int(np.searchsorted(self.attr_keys, attribute_id))
        if a == self.attr_keys.shape[0] or self.attr_keys[a] != attribute_id:
            return self.post_rows[:0]
        if c < 0:
            return self.post_rows[self.post_starts[a, 0] : self.post_starts[a, -1]]
        return self.post_rows[self.post_starts[a, c] : self.post_starts[a, c + 1]]

    def locate(self, listing_ids: np.ndarray) -> np.ndarray:
        """Row of each listing id (int64 (m,), -1 where absent): one binary search per category, no extra index."""
        out = np.full(listing_ids.shape[0], -1, dtype=np.int64)
        if listing_ids.shape[0] == 0:
            return out
        for c in range(self.cat_keys.shape[0]):
            lo, hi = int(self.cat_offsets[c]), int(self.cat_offsets[c + 1])
            pos = np.searchsorted(self.ids[lo:hi], listing_ids)
            hit = pos < hi - lo
            hit[hit] = self.ids[lo:hi][pos[hit]] == listing_ids[hit]
            out[hit] = lo + pos[hit]
        return out

    def has_attributes(self, rows: np.ndarray, attribute_ids: Sequence[int]) -> np.ndarray:
        """bool (len(rows), len(attribute_ids)): whether each row has each attribute (binary search per attribute)."""
        out = np.zeros((rows.shape[0], len(attribute_ids)), dtype=bool)
        rows = rows.astype(self.post_rows.dtype)  # same dtype, or searchsorted copies the whole posting list
        for j, a in enumerate(attribute_ids):
            lst = self.posting(a, -1)
            if lst.shape[0]:
                pos = np.searchsorted(lst, rows)
                ok = pos < lst.shape[0]
                ok[ok] = lst[pos[ok]] == rows[ok]
                out[:, j] = ok
        return out
