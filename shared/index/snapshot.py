"""The daemon's RAM index: an immutable IndexSnapshot (a base segment with tombstones plus a small delta segment).

`apply` returns a new snapshot sharing the unchanged arrays; `search` scans the query's category range (or the rows a
strategy or an edit picks) with the kernels of shared.codes.hamming and merges the segments' top-k by (score, id).

Colour is fused into the scan rather than used to re-rank a Hamming shortlist: `top_k_blended` reads a row's colour
only when its Hamming term alone can still beat the running k-th blended score, so it is exact for the blended score
(re-ranking a Hamming shortlist is not; figures in bench/README.md, "Colour: fused scan vs re-ranking").
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from shared.codes.binarize import n_bytes_for
from shared.codes.hamming import top_k, top_k_blended, top_k_parallel, warm_up as _warm_up_kernels
from shared.index.arrays import ItemArrays
from shared.index.colours import COLOUR_L1_SCALE, colour_distances, query_colour
from shared.index.results import SearchResult
from shared.index.segment import Segment, padded_bytes
from shared.index.strategies import DEFAULT_MIN_CANDIDATES, STRATEGIES, Strategy, strategy_rows

logger = logging.getLogger(__name__)

__all__ = ["IndexSnapshot", "warm_up"]

# A delta larger than this (items) or this share of the base is merged into a new base by apply(): the delta is
# rebuilt on every apply (O(delta): ~40 ms at 20k listings), a merge is O(n) (~0.4-1 s at 1M, see apply()).
_MERGE_MIN_ITEMS = 20_000
_MERGE_FRACTION = 0.02
# Tombstones waste scan time and RAM; past this share of the base, merge even if the delta is small.
_MERGE_DEAD_FRACTION = 0.10


class IndexSnapshot:
    """Immutable in-RAM index: a category-sorted base segment with tombstones plus a small delta segment.

    Never mutated after construction: `apply` returns a new snapshot that shares the unchanged arrays (base codes,
    colours, postings) with this one, so a reader holding this snapshot keeps seeing exactly what it saw.
    """

    __slots__ = ("generation", "sequence", "n_bits", "_n_bytes", "_base", "_dead", "_n_dead", "_delta",
                 "_delta_items")

    def __init__(
        self,
        *,
        generation: int,
        sequence: int,
        n_bits: int,
        n_bytes: int,
        base: Segment,
        dead: np.ndarray,
        n_dead: int,
        delta: Segment,
        delta_items: ItemArrays,
    ) -> None:
        self.generation = int(generation)
        self.sequence = int(sequence)
        self.n_bits = int(n_bits)
        self._n_bytes = int(n_bytes)
        self._base = base
        self._dead = dead
        self._n_dead = int(n_dead)
        self._delta = delta
        self._delta_items = delta_items

    # -- construction ------------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        ids: Sequence[int] | np.ndarray,
        category_ids: Sequence[int] | np.ndarray,
        attribute_ids: Sequence[Sequence[int]] | tuple[np.ndarray, np.ndarray],
        codes: np.ndarray,
        colours: np.ndarray,
        *,
        generation: int,
        n_bits: int | None = None,
        sequence: int = 0,
    ) -> IndexSnapshot:
        """A snapshot of these items (see ItemArrays.create for the accepted forms).

        ids: int64 (n,) unique listing ids; category_ids: (n,); attribute_ids: one sequence per item or a CSR pair
        (offsets int64 (n + 1,), values (nnz,)); codes: uint8 (n, n_bytes); colours: float32 (n, n_bins) histograms
        summing to 1, or uint8 (n, n_bins) already quantised; n_bits defaults to 8 * n_bytes.
        """
        items = ItemArrays.create(ids, category_ids, attribute_ids, codes, colours)
        return cls.from_items(items, generation=generation, n_bits=n_bits, sequence=sequence)

    @classmethod
    def from_items(
        cls, items: ItemArrays, *, generation: int, n_bits: int | None = None, sequence: int = 0
    ) -> IndexSnapshot:
        """A snapshot of the items returned by arrays_from_rows / items_from_cursor."""
        n_bytes = items.n_bytes
        if n_bits is None:
            n_bits = 8 * n_bytes
        if n_bytes_for(n_bits) != n_bytes:
            raise ValueError(f"n_bits={n_bits} needs {n_bytes_for(n_bits)} bytes per code, codes have {n_bytes}")
        padded = padded_bytes(n_bytes)
        base = Segment.build(items, padded)
        empty = ItemArrays.empty(n_bytes, items.n_bins)
        return cls(generation=generation, sequence=sequence, n_bits=n_bits, n_bytes=n_bytes, base=base,
                   dead=np.zeros(base.n, dtype=np.uint8), n_dead=0, delta=Segment.build(empty, padded),
                   delta_items=empty)

    @classmethod
    def empty(cls, *, n_bits: int, n_bins: int, generation: int, sequence: int = 0) -> IndexSnapshot:
        """A snapshot with no items (the daemon's state before its first load finishes)."""
        return cls.from_items(ItemArrays.empty(n_bytes_for(n_bits), n_bins), generation=generation, n_bits=n_bits,
                              sequence=sequence)

    def apply(
        self,
        upserts: ItemArrays | None = None,
        deletes: Sequence[int] | np.ndarray = (),
        *,
        sequence: int | None = None,
        merge: bool | None = None,
    ) -> IndexSnapshot:
        """A NEW snapshot with these changes; this one is left untouched.

        upserts: new or changed items (a changed listing may move category, code, colour or attributes; its old row
        is tombstoned). deletes: listing ids to remove (absent ids are ignored, so replays are harmless). A listing
        may not be in both: collapse the change log to each listing's latest state first.
        Cost: ~2 ms for a 100-listing delta at 1-3M items (a copy of the 1-byte-per-row tombstone array plus a
        rebuild of the delta segment, which grows to ~40 ms as the delta nears 20k listings). merge=None merges base
        and delta once `needs_merge` (delta > max(20k, 2% of base) or tombstones > 10%): O(n) scatters, ~0.4-1 s at
        1M and ~1.5-2.7 s at 3M here. To keep the 2 s freshness during a merge, the daemon can pass merge=False on
        its 200 ms loop and build `snapshot.apply(merge=True)` in a background thread, then re-apply the changes
        with a sequence above that snapshot's `sequence` before swapping it in.
        """
        upserts = upserts if upserts is not None else ItemArrays.empty(self._n_bytes, self.n_bins)
        if upserts.n_bytes != self._n_bytes or upserts.n_bins != self.n_bins:
            raise ValueError(f"upserts must have codes of {self._n_bytes} bytes and {self.n_bins} colour bins, got "
                             f"{upserts.n_bytes} and {upserts.n_bins}")
        deletes_a = np.unique(np.asarray(deletes, dtype=np.int64).reshape(-1))
        up_ids = upserts.ids
        if np.unique(up_ids).shape[0] != up_ids.shape[0]:
            raise ValueError("upserts must not repeat a listing id")
        if np.intersect1d(up_ids, deletes_a).shape[0]:
            raise ValueError("a listing id is both upserted and deleted; keep only its latest change")
        gone = np.concatenate([deletes_a, up_ids])
        # Base: tombstone the old rows (copy-on-write: the old snapshot keeps its own array).
        rows = self._base.locate(gone)
        rows = rows[rows >= 0]
        dead = self._dead
        n_dead = self._n_dead
        if rows.shape[0]:
            newly = rows[dead[rows] == 0]
            if newly.shape[0]:
                dead = dead.copy()
                dead[newly] = 1
                n_dead += int(newly.shape[0])
        # Delta: keep what is not replaced or deleted, add the upserts, rebuild (small).
        old = self._delta_items
        kept = old.take(np.flatnonzero(~np.isin(old.ids, gone))) if len(old) else old
        delta_items = ItemArrays.concatenate([kept, upserts]) if len(upserts) else kept
        new_sequence = self.sequence if sequence is None else int(sequence)
        n_base = self._base.n
        if merge is None:
            merge = _needs_merge(len(delta_items), n_dead, n_base)
        padded = padded_bytes(self._n_bytes)
        if merge:
            delta = self._delta if delta_items is old else Segment.build(delta_items, padded)
            base = Segment.merge(self._base, dead, delta)
            empty = ItemArrays.empty(self._n_bytes, self.n_bins)
            logger.info("merged delta into base: generation=%s items=%d", self.generation, base.n)
            return IndexSnapshot(generation=self.generation, sequence=new_sequence, n_bits=self.n_bits,
                                 n_bytes=self._n_bytes, base=base, dead=np.zeros(base.n, dtype=np.uint8), n_dead=0,
                                 delta=Segment.build(empty, padded), delta_items=empty)
        delta = (
            self._delta if delta_items is old else Segment.build(delta_items, padded)
        )
        return IndexSnapshot(generation=self.generation, sequence=new_sequence, n_bits=self.n_bits,
                             n_bytes=self._n_bytes, base=self._base, dead=dead, n_dead=n_dead, delta=delta,
                             delta_items=delta_items)

    # -- parts (shared.index.files) -----------------------------------------------------------------------------------

    def parts(self) -> tuple[Segment, np.ndarray, ItemArrays]:
        """(base segment, tombstones uint8 (n_base,), the delta's items): everything this snapshot is made of."""
        return self._base, self._dead, self._delta_items

    @classmethod
    def from_parts(
        cls, *, generation: int, sequence: int, n_bits: int, base: Segment, dead: np.ndarray, delta_items: ItemArrays
    ) -> IndexSnapshot:
        """The snapshot `parts` describes (the delta segment is rebuilt: it is small)."""
        n_bytes = n_bytes_for(n_bits)
        if dead.shape != (base.n,) or dead.dtype != np.uint8:
            raise ValueError(f"tombstones must be uint8 ({base.n},), got {dead.dtype} {dead.shape}")
        return cls(generation=generation, sequence=sequence, n_bits=n_bits, n_bytes=n_bytes, base=base, dead=dead,
                   n_dead=int(np.count_nonzero(dead)), delta=Segment.build(delta_items, padded_bytes(n_bytes)),
                   delta_items=delta_items)

    # -- size --------------------------------------------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        """Searchable items (base minus tombstones, plus delta)."""
        return self._base.n - self._n_dead + self._delta.n

    def __len__(self) -> int:
        return self.n_items

    @property
    def n_bins(self) -> int:
        return int(self._base.colours.shape[1])

    @property
    def n_bytes(self) -> int:
        return self._n_bytes

    @property
    def needs_merge(self) -> bool:
        """Whether the delta or the tombstones have grown past the merge thresholds."""
        return _needs_merge(self._delta.n, self._n_dead, self._base.n)

    @property
    def delta_size(self) -> int:
        return self._delta.n

    @property
    def n_deleted(self) -> int:
        """Tombstoned base rows (reclaimed at the next merge)."""
        return self._n_dead

    @property
    def nbytes(self) -> int:
        """RAM held by this snapshot's arrays (base, tombstones, delta and the delta's source columns)."""
        d = self._delta_items
        delta_src = sum(a.nbytes for a in (d.ids, d.category_ids, d.attr_offsets, d.attribute_ids, d.codes, d.colours))
        return self._base.nbytes + self._dead.nbytes + self._delta.nbytes + delta_src

    @property
    def bytes_per_item(self) -> float:
        return self.nbytes / max(self.n_items, 1)

    def segments(self) -> tuple[tuple[Segment, np.ndarray | None], ...]:
        """(segment, tombstones uint8 (n,) or None) for the base and the delta: read-only, for shared.index.refine."""
        return ((self._base, self._dead if self._n_dead else None), (self._delta, None))

    def contains(self, listing_id: int) -> bool:
        """Whether the listing is searchable in this snapshot."""
        ids = np.array([listing_id], dtype=np.int64)
        r = int(self._base.locate(ids)[0])
        if r >= 0 and self._dead[r] == 0:
            return True
        return bool(self._delta.locate(ids)[0] >= 0)

    # -- search ------------------------------------------------------------------------------------------------------

    def search(
        self,
        *,
        code: np.ndarray,
        colour: np.ndarray | None = None,
        category_id: int | None = None,
        attribute_ids: Sequence[int] = (),
        k: int = 100,
        offset: int = 0,
        colour_weight: float = 0.0,
        strategy: Strategy = "category",
        min_votes: int = 2,
        min_candidates: int = DEFAULT_MIN_CANDIDATES,
        threads: int = 1,
        rows_filter: Callable[[Segment, int, int, int], np.ndarray | None] | None = None,
    ) -> SearchResult:
        """Ranked listings most similar to a query: hits [offset, offset + k) by (score, listing_id).

        code: uint8 (n_bytes,) the query's packed code; colour: float32 (n_bins,) histogram summing to 1, or uint8
        quantised, or None (then colour_weight must be 0 and colour distances are NaN).
        score = (1 - colour_weight) * hamming / n_bits + colour_weight * colour_distance, lower is better, where
        colour_distance = half the L1 distance of the quantised histograms (`colour_distances`), in [0, 1].
        category_id: restrict to one category (None: every category). strategy picks the rows compared:
        "category" every row of the category (exact, the default); "union" rows having any of attribute_ids;
        "vote" rows having at least min_votes of them; "intersection" rows having all of them. A posting strategy
        with fewer than min_candidates candidates (per segment) falls back to "category".
        threads > 1 splits large range scans (category None, or a category of millions of rows) across that many
        threads (shared.codes.hamming: top_k_parallel, top_k_blended(n_threads=)); results are identical.
        rows_filter(segment, c, lo, hi) -> int32 rows (ascending, within [lo, hi)), or a uint8 (segment.n,) mask of
        rows to skip in [lo, hi) (replacing the tombstones, so it must include them), or None (the whole range): the
        exact candidates of each segment, replacing the strategy (shared.index.refine uses it for edits).
        """
        q = self._query_code(code)
        qc = query_colour(colour, self.n_bins)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        w = float(colour_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"colour_weight must be in [0, 1], got {colour_weight}")
        if w > 0.0 and qc is None:
            raise ValueError("colour_weight > 0 needs a query colour")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        q_attrs = tuple(int(a) for a in attribute_ids)
        depth = int(offset) + int(k)

        parts = []
        scanned = candidates = 0
        used = strategy
        for seg, exclude in ((self._base, self._dead if self._n_dead else None), (self._delta, None)):
            if seg.n == 0 or depth == 0:
                continue
            c, lo, hi = seg.category_range(category_id)
            if hi == lo:
                continue
            rows = None
            if rows_filter is not None:
                rows = rows_filter(seg, c, lo, hi)
                if rows is not None and rows.dtype == np.uint8:  # a skip mask over the segment, tombstones included
                    rows, exclude = None, rows
                elif rows is not None and rows.shape[0] == 0:
                    continue
            elif strategy != "category":
                rows = strategy_rows(seg, c, lo, hi, q_attrs, strategy, min_votes)
                if rows.shape[0] < min_candidates:
                    rows, used = None, "category"
            n_scan = hi - lo if rows is None else int(rows.shape[0])
            scanned += n_scan
            candidates += n_scan
            # Pass the listing ids as the tie-break key: within one category row order is id order already, but a
            # search over every category walks several id ranges.
            span = {"start": lo, "stop": hi} if rows is None else {"rows": rows}
            if w == 0.0:
                if threads > 1 and rows is None:
                    d, r = top_k_parallel(q, seg.codes, depth, ids=seg.ids, exclude=exclude, n_threads=threads,
                                          **span)
                else:
                    d, r = top_k(q, seg.codes, depth, ids=seg.ids, exclude=exclude, **span)
                s, cl1 = d / float(self.n_bits), None
            else:
                s, d, cl1, r = top_k_blended(
                    q, seg.codes, depth, aux_q=qc, aux=seg.colours, weight=w, n_bits=self.n_bits,
                    aux_scale=COLOUR_L1_SCALE, ids=seg.ids, exclude=exclude, n_threads=threads, **span,
                )
            parts.append((seg, s, d, r, cl1))

        return self._merge_parts(parts, qc, w, q_attrs, int(offset), int(k), scanned, candidates, used)

    def _query_code(self, code: np.ndarray) -> np.ndarray:
        if not isinstance(code, np.ndarray):
            raise TypeError(f"code must be a numpy array, got {type(code).__name__}")
        if code.dtype != np.uint8:
            raise TypeError(f"code must be uint8, got {code.dtype}")
        if code.shape != (self._n_bytes,):
            raise ValueError(f"code must have shape ({self._n_bytes},), got {code.shape}")
        padded = padded_bytes(self._n_bytes)
        if padded == self._n_bytes:
            return np.ascontiguousarray(code)
        q = np.zeros(padded, dtype=np.uint8)
        q[: self._n_bytes] = code
        return q

    def _merge_parts(
        self, parts: list[tuple[Segment, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
        qc: np.ndarray | None, w: float, q_attrs: tuple[int, ...], offset: int, k: int, scanned: int,
        candidates: int, used: str,
    ) -> SearchResult:
        if parts:
            # Scores as each kernel computed them, so the merged order agrees with every part's own order.
            scores = np.concatenate([p[1] for p in parts]).astype(np.float64)
            ham = np.concatenate([p[2] for p in parts]).astype(np.int32)
            rows = np.concatenate([p[3] for p in parts])
            seg_of = np.concatenate([np.full(p[2].shape[0], i, dtype=np.int64) for i, p in enumerate(parts)])
            lids = np.concatenate([p[0].ids[p[3]] for p in parts])
            if qc is None:
                col = np.full(ham.shape[0], np.nan)
            elif w > 0.0:
                col = np.minimum(np.concatenate([p[4] for p in parts]) / COLOUR_L1_SCALE, 1.0)
            else:
                col = np.concatenate([colour_distances(qc, p[0].colours[p[3]]) for p in parts])
            appearance = ham / float(self.n_bits)
            order = np.lexsort((lids, scores))[offset : offset + k]
        else:
            ham = np.empty(0, np.int32)
            rows = seg_of = lids = np.empty(0, np.int64)
            col = appearance = scores = np.empty(0, np.float64)
            order = np.empty(0, np.int64)
        matched = np.zeros((order.shape[0], len(q_attrs)), dtype=bool)
        if q_attrs:
            for i, p in enumerate(parts):
                sel = seg_of[order] == i
                if sel.any():
                    matched[sel] = p[0].has_attributes(rows[order][sel], q_attrs)
        return SearchResult(
            listing_ids=lids[order], scores=np.asarray(scores, np.float64)[order], hamming=ham[order],
            appearance=appearance[order], colour=col[order], matched=matched, query_attribute_ids=q_attrs,
            scanned=scanned, candidates=candidates, strategy=used, generation=self.generation,
        )


def _needs_merge(n_delta: int, n_dead: int, n_base: int) -> bool:
    return n_delta > max(_MERGE_MIN_ITEMS, _MERGE_FRACTION * n_base) or n_dead > _MERGE_DEAD_FRACTION * max(n_base, 1)


def warm_up() -> None:
    """Compile or load the kernels the snapshot calls (see shared.codes.hamming.warm_up), then run one tiny search of
    each kind so the first real request pays nothing extra."""
    _warm_up_kernels(blended=True)
    snap = IndexSnapshot.build([1, 2, 3], [1, 1, 2], [[1], [1, 2], []], np.zeros((3, 32), np.uint8),
                               np.full((3, 4), 0.25, np.float32), generation=0)
    for w in (0.0, 0.5):
        snap.search(code=np.zeros(32, np.uint8), colour=np.full(4, 0.25, np.float32), category_id=1, k=2,
                    colour_weight=w)
        snap.search(code=np.zeros(32, np.uint8), colour=np.full(4, 0.25, np.float32), category_id=1, k=2,
                    colour_weight=w, strategy="union", attribute_ids=[1], min_candidates=0)
