"""Exact refinements of an index search: required / excluded attributes, a target colour, facets, score terms.

An edit restricts the exact scan to the rows of the query's category that carry every required attribute and none of
the excluded ones (posting-list intersection and difference, no approximate pre-filter), so recall stays exact and
the ranking inside the constraint is the plain search's. A target colour (a taxonomy colour or a palette, made into a
histogram by the API) replaces the photo's histogram in the colour term. Facets count categories and attributes over
the N best hits of the same search. Every hit's score splits exactly into an appearance term and a colour term:

    score = appearance_term + colour_term
    appearance_term = ((1 - w) / n_bits) * hamming,  colour_term = (w / 510) * min(L1(quantised histograms), 510)

which is the expression shared.codes.hamming.top_k_blended ranks by (w = 0: score = hamming / n_bits).
"""
from __future__ import annotations

import dataclasses
import threading
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from numba import njit

from shared.index.colours import COLOUR_L1_SCALE as _L1_SCALE
from shared.index.results import SearchResult
from shared.index.snapshot import IndexSnapshot

__all__ = ["Refinement", "Facets", "RefinedResult", "MAX_FACET_DEPTH", "constraint_rows", "refined_search",
           "prepare", "warm_up"]

MAX_FACET_DEPTH = 1000


@dataclass(frozen=True)
class Refinement:
    """What a shopper changed. require / exclude: attribute ids; target_colour: float32 (n_bins,) histogram summing
    to 1 (or uint8 quantised) that replaces the photo's colour; colour_weight: None keeps the daemon's weight;
    appearance=False ranks by colour alone (a palette query without a photo); facets: count over the N best (0: no)."""

    require: tuple[int, ...] = ()
    exclude: tuple[int, ...] = ()
    target_colour: np.ndarray | None = None
    colour_weight: float | None = None
    appearance: bool = True
    facets: int = 0

    def __post_init__(self) -> None:
        both = set(self.require) & set(self.exclude)
        if both:
            raise ValueError(f"attributes both required and excluded: {sorted(both)}")
        if not 0 <= int(self.facets) <= MAX_FACET_DEPTH:
            raise ValueError(f"facets must be 0..{MAX_FACET_DEPTH}, got {self.facets}")
        if not self.appearance and self.target_colour is None:
            raise ValueError("a search without appearance needs a target colour")
        if self.colour_weight is not None and not 0.0 <= float(self.colour_weight) <= 1.0:
            raise ValueError(f"colour_weight must be in [0, 1], got {self.colour_weight}")

    @property
    def filters(self) -> bool:
        return bool(self.require or self.exclude)


@dataclass(frozen=True)
class Facets:
    """Counts over the n best hits: category id -> count, attribute id -> count (zero counts left out)."""

    n: int
    categories: dict[int, int]
    attributes: dict[int, int]


@dataclass(frozen=True)
class RefinedResult:
    """A search result plus the edit's bookkeeping.

    matched: live listings in the search's scope (category, or all) that satisfy require / exclude;
    appearance_weight + colour_weight = 1; appearance_terms, colour_terms: float64 (m,), summing to result.scores.
    """

    result: SearchResult
    matched: int
    appearance_weight: float
    colour_weight: float
    appearance_terms: np.ndarray
    colour_terms: np.ndarray
    facets: Facets | None = field(default=None)


def _member(sorted_list: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """bool (len(rows),): whether each row is in the ascending int32 list (one binary search per row)."""
    if sorted_list.shape[0] == 0:
        return np.zeros(rows.shape[0], dtype=bool)
    pos = np.searchsorted(sorted_list, rows)
    pos[pos == sorted_list.shape[0]] = 0
    return sorted_list[pos] == rows


def constraint_rows(seg, c: int, lo: int, hi: int, require: Sequence[int], exclude: Sequence[int]) -> np.ndarray | None:
    """Rows (int32, ascending, within [lo, hi)) of a segment's category range with every required attribute and
    none of the excluded ones; None when there is no constraint (the whole range)."""
    if not require and not exclude:
        return None
    if require:
        lists = sorted((seg.posting(a, c) for a in dict.fromkeys(require)), key=len)
        rows = lists[0]
        if c < 0:  # category None: the full lists span every category, which is the whole segment here
            rows = rows[(rows >= lo) & (rows < hi)]
        for other in lists[1:]:
            if rows.shape[0] == 0:
                break
            rows = rows[_member(other, rows)]
        for a in dict.fromkeys(exclude):
            if rows.shape[0] == 0:
                break
            rows = rows[~_member(seg.posting(a, c), rows)]
        return np.ascontiguousarray(rows, dtype=np.int32)
    # Exclusions only: a mask over the range is O(range + postings), cheaper than differences of long lists.
    keep = np.ones(hi - lo, dtype=bool)
    for a in dict.fromkeys(exclude):
        lst = seg.posting(a, c)
        if c < 0:
            lst = lst[(lst >= lo) & (lst < hi)]
        keep[lst - lo] = False
    return (np.flatnonzero(keep) + lo).astype(np.int32)


# A constraint keeping more than this share of the range is scanned as the range with a skip mask: the kernel checks
# the mask only for rows that would enter the top k, while a row list costs a gather per row.
_DENSE_SHARE = 0.5


def _plan(seg, c: int, lo: int, hi: int, dead: np.ndarray | None, ref: Refinement) -> np.ndarray:
    """A segment's candidates for an edit: int32 rows, or a uint8 (seg.n,) mask of rows to skip in [lo, hi)."""
    if ref.require:
        rows = constraint_rows(seg, c, lo, hi, ref.require, ref.exclude)
        if rows.shape[0] <= _DENSE_SHARE * (hi - lo):
            return rows
    mask = np.empty(seg.n, dtype=np.uint8)  # only [lo, hi) is read
    if ref.require:
        mask[lo:hi] = 1
        mask[rows] = 0
    else:  # exclusions only: no row list at all
        mask[lo:hi] = 0
        for a in dict.fromkeys(ref.exclude):
            lst = seg.posting(a, c)
            if c < 0:
                lst = lst[(lst >= lo) & (lst < hi)]
            mask[lst] = 1
    if dead is not None:
        mask[lo:hi] |= dead[lo:hi]
    return mask


def _live(rows: np.ndarray | None, lo: int, hi: int, dead: np.ndarray | None) -> int:
    if rows is None:
        return (hi - lo) - (int(np.count_nonzero(dead[lo:hi])) if dead is not None else 0)
    return int(rows.shape[0]) - (int(np.count_nonzero(dead[rows])) if dead is not None else 0)


def refined_search(
    snap: IndexSnapshot,
    *,
    code: np.ndarray | None,
    colour: np.ndarray | None,
    category_id: int | None,
    attribute_ids: Sequence[int] = (),
    k: int = 20,
    offset: int = 0,
    colour_weight: float = 0.0,
    refinement: Refinement = Refinement(),
    threads: int = 1,
) -> RefinedResult:
    """snap.search restricted and re-weighted by `refinement`; without one it returns exactly snap.search's hits.
    threads: as in IndexSnapshot.search (large range scans split across threads, identical results).

    code: uint8 (n_bytes,) or None when refinement.appearance is False; colour: the photo's histogram (float32
    (n_bins,)) or None. Hits [offset, offset + k) by (score, listing id) within the constraint.
    """
    ref = refinement
    w = float(colour_weight if ref.colour_weight is None else ref.colour_weight)
    q_colour = ref.target_colour if ref.target_colour is not None else colour
    if not ref.appearance:
        w = 1.0  # colour alone; the code is a placeholder the kernel multiplies by 0
        code = np.zeros(snap.n_bytes, dtype=np.uint8)
    if code is None:
        raise ValueError("code is required unless the search ranks by colour alone")
    matched = 0
    plans: dict[int, np.ndarray | None] = {}  # id(segment) -> its candidates (rows, or a skip mask)
    for seg, dead in snap.segments():
        if seg.n == 0:
            continue
        c, lo, hi = seg.category_range(category_id)
        if hi > lo:
            plan = _plan(seg, c, lo, hi, dead, ref) if ref.filters else None
            plans[id(seg)] = plan
            if plan is not None and plan.dtype == np.uint8:
                matched += (hi - lo) - int(np.count_nonzero(plan[lo:hi]))
            else:
                matched += _live(plan, lo, hi, dead)
    rows_filter = (lambda seg, c, lo, hi: plans.get(id(seg))) if ref.filters else None
    page_end = int(offset) + int(k)
    deep = int(ref.facets) > page_end
    # One scan serves the page and the facets. Which query attributes each hit has is looked up for the page only:
    # for 1000 hits it costs more than the scan (a binary search per hit in every query attribute's full list).
    full = snap.search(code=code, colour=q_colour, category_id=category_id,
                       attribute_ids=() if deep else attribute_ids, k=max(page_end, int(ref.facets)), offset=0,
                       colour_weight=w, rows_filter=rows_filter, threads=threads)
    facets = _facets(snap, full.listing_ids[: ref.facets], category_id) if ref.facets else None
    page = _slice(full, int(offset), page_end)
    if deep and len(attribute_ids):
        q_attrs = tuple(int(a) for a in attribute_ids)
        page = dataclasses.replace(page, query_attribute_ids=q_attrs,
                                   matched=_has_attributes(snap, page.listing_ids, category_id, q_attrs))
    a_terms, c_terms = _terms(page, w, snap.n_bits)
    return RefinedResult(result=page, matched=matched, appearance_weight=1.0 - w, colour_weight=w,
                         appearance_terms=a_terms, colour_terms=c_terms, facets=facets)


def _slice(r: SearchResult, start: int, stop: int) -> SearchResult:
    s = slice(start, stop)
    return SearchResult(listing_ids=r.listing_ids[s], scores=r.scores[s], hamming=r.hamming[s],
                        appearance=r.appearance[s], colour=r.colour[s], matched=r.matched[s],
                        query_attribute_ids=r.query_attribute_ids, scanned=r.scanned, candidates=r.candidates,
                        strategy=r.strategy, generation=r.generation)


def _terms(r: SearchResult, w: float, n_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The two addends of every score, computed with the kernel's own expression (so they sum to it exactly)."""
    if w == 0.0:
        return r.hamming / float(n_bits), np.zeros(len(r), dtype=np.float64)
    # colour = min(l1 / 510, 1) came from an integer l1: recover it exactly.
    l1 = np.minimum(np.rint(r.colour * _L1_SCALE), _L1_SCALE)
    return ((1.0 - w) / float(n_bits)) * r.hamming.astype(np.float64), (w / _L1_SCALE) * l1


def _facets(snap: IndexSnapshot, listing_ids: np.ndarray, category_id: int | None) -> Facets:
    """Category and attribute counts over these listings (the best hits), from the postings."""
    cats: dict[int, int] = {}
    attrs: dict[int, int] = {}
    for seg, dead in snap.segments():
        if seg.n == 0 or listing_ids.shape[0] == 0:
            continue
        rows = seg.locate(listing_ids) if category_id is None else _locate_in(seg, category_id, listing_ids)
        rows = rows[rows >= 0]
        if dead is not None:  # an updated listing's old base row is tombstoned; its live row is in the delta
            rows = rows[dead[rows] == 0]
        rows = np.sort(rows).astype(np.int32)
        if rows.shape[0] == 0:
            continue
        per_cat = np.bincount(np.searchsorted(seg.cat_offsets, rows, side="right") - 1,
                              minlength=seg.cat_keys.shape[0])
        for ci in np.flatnonzero(per_cat):
            key = int(seg.cat_keys[ci])
            cats[key] = cats.get(key, 0) + int(per_cat[ci])
        offsets, row_attrs = _row_attributes(seg)
        counts = _count_row_attributes(offsets, row_attrs, rows, seg.attr_keys.shape[0])
        for a in np.flatnonzero(counts):
            key = int(seg.attr_keys[a])
            attrs[key] = attrs.get(key, 0) + int(counts[a])
    return Facets(n=int(listing_ids.shape[0]), categories=cats, attributes=attrs)


def _has_attributes(snap: IndexSnapshot, listing_ids: np.ndarray, category_id: int | None,
                    attribute_ids: tuple[int, ...]) -> np.ndarray:
    """bool (len(listing_ids), len(attribute_ids)): which of the attributes each (live) listing has."""
    out = np.zeros((listing_ids.shape[0], len(attribute_ids)), dtype=bool)
    for seg, dead in snap.segments():
        if seg.n == 0 or listing_ids.shape[0] == 0:
            continue
        rows = seg.locate(listing_ids) if category_id is None else _locate_in(seg, category_id, listing_ids)
        ok = rows >= 0
        if dead is not None:
            ok[ok] = dead[rows[ok]] == 0
        if ok.any():
            out[ok] = seg.has_attributes(rows[ok], attribute_ids)
    return out


def _locate_in(seg, category_id: int, listing_ids: np.ndarray) -> np.ndarray:
    """Rows of listing ids within one category's range (-1 where absent): one binary search."""
    c, lo, hi = seg.category_range(category_id)
    out = np.full(listing_ids.shape[0], -1, dtype=np.int64)
    if hi == lo:
        return out
    ids = seg.ids[lo:hi]
    pos = np.searchsorted(ids, listing_ids)
    ok = pos < hi - lo
    ok[ok] = ids[pos[ok]] == listing_ids[ok]
    out[ok] = lo + pos[ok]
    return out


# Facets need each hit's attributes, but a segment stores attribute -> rows. The transpose (row -> attribute indexes,
# CSR: int64 offsets (n + 1,), int16 values (nnz,), ~10 + 2 * attributes bytes per item, ~22 % on top of the
# snapshot's 133) is built once per segment (0.33 s at 1M items on the loaded 2-core dev box; the daemon builds it
# before a swap, see `prepare`) and lives as long as the segment: the base until the next merge, the small delta
# until the next apply. Counting 1000 hits then touches
# ~10 entries each instead of galloping through every attribute's posting list (~4-8 ms at 1M, memory bound).
_ROW_ATTRIBUTES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ROW_ATTRIBUTES_LOCK = threading.Lock()


def _row_attributes(seg) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 (n + 1,), attribute indexes int16 (nnz,)) of a segment, built on first use and cached."""
    got = _ROW_ATTRIBUTES.get(seg)
    if got is None:
        assert seg.attr_keys.shape[0] < 2**15, "attribute indexes must fit int16"
        with _ROW_ATTRIBUTES_LOCK:  # one build per segment, however many requests arrive at once
            got = _ROW_ATTRIBUTES.get(seg)
            if got is None:
                got = _transpose_postings(seg.post_rows, np.ascontiguousarray(seg.post_starts[:, 0]),
                                          np.ascontiguousarray(seg.post_starts[:, -1]), seg.n)
                _ROW_ATTRIBUTES[seg] = got
    return got


@njit(cache=True, nogil=True)
def _transpose_postings(post_rows, starts, stops, n):  # pragma: no cover - compiled
    """Postings (attribute -> ascending rows) to row -> attribute indexes: a counting sort, O(n + nnz)."""
    offsets = np.zeros(n + 1, dtype=np.int64)
    for a in range(starts.shape[0]):
        for e in range(starts[a], stops[a]):
            offsets[post_rows[e] + 1] += 1
    for i in range(n):
        offsets[i + 1] += offsets[i]
    fill = offsets[:-1].copy()
    values = np.empty(offsets[n], dtype=np.int16)
    for a in range(starts.shape[0]):
        for e in range(starts[a], stops[a]):
            r = post_rows[e]
            values[fill[r]] = a
            fill[r] += 1
    return offsets, values


@njit(cache=True, nogil=True)
def _count_row_attributes(offsets, values, rows, n_attr):  # pragma: no cover - compiled
    """counts int64 (n_attr,): how many of `rows` carry each attribute index."""
    out = np.zeros(n_attr, dtype=np.int64)
    for r in rows:
        for e in range(offsets[r], offsets[r + 1]):
            out[values[e]] += 1
    return out


def prepare(snap: IndexSnapshot) -> None:
    """Build what facets need for every segment of a snapshot before it serves (the daemon calls this before a
    swap, so no request pays for it; segments shared with the previous snapshot are already built)."""
    for seg, _dead in snap.segments():
        _row_attributes(seg)


def warm_up() -> None:
    """Compile (or load from numba's cache) the facet kernels before serving."""
    offsets, values = _transpose_postings(np.arange(4, dtype=np.int32), np.zeros(2, np.int64), np.full(2, 4, np.int64),
                                          4)
    _count_row_attributes(offsets, values, np.arange(2, dtype=np.int32), 2)
