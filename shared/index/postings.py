"""The daemon's RAM layout: an immutable, category-sorted IndexSnapshot with attribute postings, and rows <-> arrays.

Layout (one `_Segment`; a snapshot is a large base segment with tombstones plus a small delta segment):

    ids          int64 (n,)                 listing ids, sorted by (category_id, listing_id)
    codes        uint8 (n, n_bytes_padded)  packed codes (shared.codes), zero-padded to a multiple of 8 bytes so the
                                            kernel always reads whole uint64 words (zero bytes add 0 to a distance)
    colours      uint8 (n, n_bins)          colour histograms quantised as round(255 * h) (`quantize_colours`)
    cat_keys     int64 (n_cat,)             category ids present, ascending
    cat_offsets  int64 (n_cat + 1,)         rows of category cat_keys[c] are cat_offsets[c] : cat_offsets[c + 1]
    attr_keys    int64 (n_attr,)            attribute ids present, ascending
    post_starts  int64 (n_attr, n_cat + 1)  postings of (cat_keys[c], attr_keys[a]) are
                                            post_rows[post_starts[a, c] : post_starts[a, c + 1]]
    post_rows    int32 (nnz,)               row numbers, grouped by attribute, ascending within an attribute

Because rows are category-sorted, a category is one contiguous range (no id list to intersect with), the posting
list of an attribute is sorted by row across all categories, and within a category row order is listing-id order.

Plus, per snapshot, a tombstone array dead: uint8 (n_base,) (copied on write by apply) and the delta's own columns.
RAM at 256-bit codes, 52 colour bins and 10 attributes per item: 8 + 32 + 52 + 1 + 4 * 10 = 133 bytes per item.

Search strategy, measured by bench/postings.py (synthetic catalogue: 19 categories of 1.8%..25% of the items, 8-12
Zipf-drawn attributes per item out of ~90, codes correlated with category and attributes; 300 queries, k = 100):

    strategy                 1M: recall@100  rows compared  p50 ms      3M: recall@100  p50 ms
    category (default)            1.000          100%        0.63            1.000        1.01
    union of attributes           1.000         99.9%        3.0             1.000        7.3
    >= 2 / 3 / 4 attributes  1.000/0.998/0.980  99/91/71%    2.0-2.3    1.000/0.999/0.985  6.9-7.4
    intersection                  0.003           0.0%        0.9             0.005        5.3
    (2-core dev box shared with other jobs, load ~5; p95 is dominated by that load: ~5-6 ms for every strategy)

Scanning the query's whole category range is exact and the fastest: the scan reads 32 contiguous bytes per item at
memory speed, while any posting strategy first builds its candidate set (a bincount over the query's posting
lists, ~10 entries per item) and then gathers rows, which costs more than it saves; popular attributes are on most
items of a category, so unions and low vote thresholds prune almost nothing, and the intersection prunes everything.
The posting strategies stay available (with a fall back to the category scan below min_candidates) for callers
that want attribute-filtered results; the postings also answer which query attributes each hit has.

Colour is fused into the scan rather than used to re-rank a Hamming shortlist: `top_k_blended` reads a row's colour
only when its Hamming term alone can still beat the running k-th blended score, so it is exact for the blended
score. Measured at 1M: re-ranking the Hamming top 2000 reaches recall 0.997 / 0.46 / 0.16 at colour weights
0.1 / 0.3 / 0.5 (top 200: 0.79 / 0.14 / 0.03), while the fused scan is exact at 1.25 ms p50 (Hamming alone 0.63).
At 3M it is ~5.5 ms p50: with synthetic colours independent of the code the bound prunes little and the scan reads
32 + 52 bytes per row at memory speed; real colours correlate with appearance, which prunes more.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import numpy as np

from shared.codes.binarize import n_bytes_for
from shared.codes.hamming import top_k, top_k_blended, top_k_parallel, warm_up as _warm_up_kernels

logger = logging.getLogger(__name__)

__all__ = [
    "ItemArrays",
    "IndexSnapshot",
    "SearchResult",
    "Hit",
    "Strategy",
    "arrays_from_rows",
    "arrays_from_columns",
    "arrays_from_records",
    "items_from_cursor",
    "load_items",
    "quantize_colours",
    "colour_distances",
    "BULK_LOAD_SQL",
    "warm_up",
]

Strategy = Literal["category", "union", "vote", "intersection"]
_STRATEGIES = ("category", "union", "vote", "intersection")

# Quantised histograms hold round(255 * h): half the L1 distance of two of them is sum|a - b| / 510.
_COLOUR_SCALE = 255.0
_COLOUR_L1_SCALE = 2.0 * _COLOUR_SCALE
# A delta larger than this (items) or this share of the base is merged into a new base by apply(): the delta is
# rebuilt on every apply (O(delta): ~40 ms at 20k listings), a merge is O(n) (~0.4-1 s at 1M, see apply()).
_MERGE_MIN_ITEMS = 20_000
_MERGE_FRACTION = 0.02
# Tombstones waste scan time and RAM; past this share of the base, merge even if the delta is small.
_MERGE_DEAD_FRACTION = 0.10
# Posting strategies fall back to the category scan when their candidate set is smaller than this: a tiny candidate
# set means the attributes were too specific to fill a page of good results.
_DEFAULT_MIN_CANDIDATES = 1_000


# ---------------------------------------------------------------------------------------------------------------------
# Colour histograms.


def quantize_colours(hists: np.ndarray) -> np.ndarray:
    """RAM form of colour histograms: float32 (n, n_bins) summing to 1 -> uint8 (n, n_bins) = round(255 * h).

    Byte-identical to `shared.vision.features.quantize_colours` (what the pipeline writes to postings.colour); kept
    here too so the daemon does not import torch. Rows need not sum exactly to 255 after rounding.
    """
    if not isinstance(hists, np.ndarray):
        raise TypeError(f"colours must be a numpy array, got {type(hists).__name__}")
    if hists.dtype != np.float32:
        raise TypeError(f"colours must be float32 histograms, got {hists.dtype}")
    if hists.ndim != 2:
        raise ValueError(f"colours must be 2-D (n, n_bins), got shape {hists.shape}")
    if not np.isfinite(hists).all():
        raise ValueError("colours must be finite")
    return np.rint(np.clip(hists, 0.0, 1.0) * _COLOUR_SCALE).astype(np.uint8)


def colour_distances(q_colour: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Colour distance in [0, 1]: half the L1 distance of the quantised histograms, sum|q - c| / 510, clipped to 1.

    q_colour: uint8 (n_bins,), colours: uint8 (n, n_bins) -> float64 (n,). It matches half the L1 distance of the
    float histograms up to the rounding to 1/255 per bin.
    """
    diff = np.abs(colours.astype(np.int16) - q_colour.astype(np.int16)[None, :]).sum(axis=1)
    return np.minimum(diff / _COLOUR_L1_SCALE, 1.0)


def _as_quantized_colours(colours: np.ndarray, n: int, name: str = "colours") -> np.ndarray:
    if not isinstance(colours, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(colours).__name__}")
    if colours.ndim != 2 or colours.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, n_bins), got {colours.shape}")
    if colours.dtype == np.float32:
        return quantize_colours(colours)
    if colours.dtype != np.uint8:
        raise TypeError(f"{name} must be float32 histograms or uint8 quantised histograms, got {colours.dtype}")
    return np.ascontiguousarray(colours)


def _query_colour(colour: np.ndarray | None, n_bins: int) -> np.ndarray | None:
    if colour is None:
        return None
    if not isinstance(colour, np.ndarray):
        raise TypeError(f"colour must be a numpy array, got {type(colour).__name__}")
    if colour.shape != (n_bins,):
        raise ValueError(f"colour must have shape ({n_bins},), got {colour.shape}")
    return _as_quantized_colours(colour[None, :], 1, "colour")[0]


# ---------------------------------------------------------------------------------------------------------------------
# Column arrays: what rows become, and what build() / apply() take.


@dataclass(frozen=True)
class ItemArrays:
    """A batch of items as columns. Attributes are CSR: item i has attribute_ids[attr_offsets[i]:attr_offsets[i+1]].

    ids: int64 (n,); category_ids: int64 (n,); attr_offsets: int64 (n + 1,); attribute_ids: int64 (nnz,);
    codes: uint8 (n, n_bytes) C-contiguous; colours: uint8 (n, n_bins) quantised (`quantize_colours`).
    """

    ids: np.ndarray
    category_ids: np.ndarray
    attr_offsets: np.ndarray
    attribute_ids: np.ndarray
    codes: np.ndarray
    colours: np.ndarray

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        _check_array("ids", self.ids, np.int64, 1)
        _check_array("category_ids", self.category_ids, np.int64, 1)
        _check_array("attr_offsets", self.attr_offsets, np.int64, 1)
        _check_array("attribute_ids", self.attribute_ids, np.int64, 1)
        _check_array("codes", self.codes, np.uint8, 2)
        _check_array("colours", self.colours, np.uint8, 2)
        if self.category_ids.shape[0] != n or self.codes.shape[0] != n or self.colours.shape[0] != n:
            raise ValueError(
                f"ids, category_ids, codes and colours must have the same length, got {n}, "
                f"{self.category_ids.shape[0]}, {self.codes.shape[0]}, {self.colours.shape[0]}"
            )
        if self.attr_offsets.shape[0] != n + 1 or self.attr_offsets[0] != 0:
            raise ValueError(f"attr_offsets must have shape ({n + 1},) and start at 0, got {self.attr_offsets.shape}")
        if self.attr_offsets[-1] != self.attribute_ids.shape[0] or (n and (np.diff(self.attr_offsets) < 0).any()):
            raise ValueError("attr_offsets must be non-decreasing and end at len(attribute_ids)")
        if self.codes.shape[1] == 0 or not self.codes.flags.c_contiguous:
            raise ValueError(f"codes must be C-contiguous with n_bytes >= 1, got shape {self.codes.shape}")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_bytes(self) -> int:
        return int(self.codes.shape[1])

    @property
    def n_bins(self) -> int:
        return int(self.colours.shape[1])

    @classmethod
    def create(
        cls,
        ids: Sequence[int] | np.ndarray,
        category_ids: Sequence[int] | np.ndarray,
        attribute_ids: Sequence[Sequence[int]] | tuple[np.ndarray, np.ndarray],
        codes: np.ndarray,
        colours: np.ndarray,
    ) -> ItemArrays:
        """Normalise user-facing inputs: attribute_ids as one sequence per item or a CSR pair (offsets, values);
        colours as float32 histograms (quantised here) or uint8 already quantised."""
        ids_a = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        n = ids_a.shape[0]
        cats = np.ascontiguousarray(category_ids, dtype=np.int64).reshape(-1)
        if isinstance(attribute_ids, tuple) and len(attribute_ids) == 2 and isinstance(attribute_ids[0], np.ndarray):
            offsets = np.ascontiguousarray(attribute_ids[0], dtype=np.int64)
            values = np.ascontiguousarray(attribute_ids[1], dtype=np.int64)
        else:
            if len(attribute_ids) != n:
                raise ValueError(f"attribute_ids must have one sequence per item ({n}), got {len(attribute_ids)}")
            counts = np.fromiter((len(a) for a in attribute_ids), dtype=np.int64, count=n)
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            values = np.fromiter((x for a in attribute_ids for x in a), dtype=np.int64, count=int(offsets[-1]))
        if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8:
            raise TypeError(f"codes must be uint8, got {getattr(codes, 'dtype', type(codes).__name__)}")
        return cls(ids_a, cats, offsets, values, np.ascontiguousarray(codes), _as_quantized_colours(colours, n))

    @classmethod
    def empty(cls, n_bytes: int, n_bins: int) -> ItemArrays:
        """No items, with the given widths."""
        return cls(
            np.empty(0, np.int64), np.empty(0, np.int64), np.zeros(1, np.int64), np.empty(0, np.int64),
            np.empty((0, n_bytes), np.uint8), np.empty((0, n_bins), np.uint8),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[ItemArrays]) -> ItemArrays:
        """Items of all parts, in order (widths must agree)."""
        if not parts:
            raise ValueError("concatenate needs at least one ItemArrays")
        if len(parts) == 1:
            return parts[0]
        shifts = np.cumsum([0] + [p.attr_offsets[-1] for p in parts[:-1]])
        offsets = np.concatenate([[0]] + [p.attr_offsets[1:] + s for p, s in zip(parts, shifts)]).astype(np.int64)
        return cls(
            np.concatenate([p.ids for p in parts]),
            np.concatenate([p.category_ids for p in parts]),
            offsets,
            np.concatenate([p.attribute_ids for p in parts]),
            np.ascontiguousarray(np.concatenate([p.codes for p in parts])),
            np.ascontiguousarray(np.concatenate([p.colours for p in parts])),
        )

    def take(self, index: np.ndarray) -> ItemArrays:
        """The items at positions `index` (int64 (m,)), in that order."""
        counts = np.diff(self.attr_offsets)[index]
        offsets = np.zeros(index.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        # Gather every item's attribute slice at once: entry e of new item i comes from old start_i + (e - new start_i).
        src = np.repeat(self.attr_offsets[:-1][index] - offsets[:-1], counts) + np.arange(offsets[-1])
        return ItemArrays(
            self.ids[index], self.category_ids[index], offsets, self.attribute_ids[src],
            np.ascontiguousarray(self.codes[index]), np.ascontiguousarray(self.colours[index]),
        )


def _check_array(name: str, a: Any, dtype: type, ndim: int) -> None:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")


# ---------------------------------------------------------------------------------------------------------------------
# Rows <-> arrays: the one converter between what Postgres returns and what the snapshot holds.

# The bulk-load query the daemon should run (`load_items` runs it): keyset-paginated chunks, each aggregated
# server-side into ONE row, so the client handles a few large values per 100k listings instead of 5 Python objects
# per listing. The fixed-size part of every listing travels as one record (int8send/int2send are big-endian):
#     listing_id int64 | category_id int16 | n_attributes int16 | code (n_bytes) | colour (n_bins)
# concatenated into one bytea (np.frombuffer with a structured dtype, no per-row work), and the attribute ids as
# one comma-separated text (parsed in C by np.fromstring). Measured on the 2-core dev box with Postgres 16 on the
# same machine: 1M listings in ~5 s, bounded by the server's aggregation; per-row fetching manages ~45-63k/s.
# The aggregates carry no ORDER BY on purpose: one aggregate pass sees the rows in one order, so records and
# attributes line up whatever it is (and re-sorting per aggregate cost ~30%); max(listing_id) is the keyset cursor.
# Parameters: generation_id, after (the last chunk's max listing_id; start below every id), chunk (rows per chunk).
BULK_LOAD_SQL = """
WITH chunk AS (
    SELECT listing_id, category_id, attribute_ids, code, colour
    FROM postings
    WHERE generation_id = %(generation_id)s AND listing_id > %(after)s
    ORDER BY listing_id
    LIMIT %(chunk)s
)
SELECT string_agg(int8send(listing_id) || int2send(category_id)
                  || int2send(cardinality(attribute_ids)::smallint) || code || colour, ''::bytea),
       string_agg(array_to_string(attribute_ids, ','), ',') FILTER (WHERE cardinality(attribute_ids) > 0),
       max(listing_id),
       count(*)
FROM chunk
"""


def arrays_from_records(
    records: bytes | memoryview, attribute_ids: Any, *, n_bytes: int, n_bins: int
) -> ItemArrays:
    """One chunk of BULK_LOAD_SQL -> ItemArrays.

    records: n concatenated records of 12 + n_bytes + n_bins bytes (listing_id >i8, category_id >i2,
    n_attributes >i2, code, colour); attribute_ids: the n_attributes ids of every listing in record order, as
    comma-separated text or an array-like (None for none).
    """
    rec = np.dtype([("id", ">i8"), ("cat", ">i2"), ("n_attr", ">i2"), ("code", "u1", (n_bytes,)),
                    ("colour", "u1", (n_bins,))])
    if len(records) % rec.itemsize:
        raise ValueError(f"records are {len(records)} bytes, not a multiple of {rec.itemsize} (12 + {n_bytes} code + "
                         f"{n_bins} colour bytes): a code or colour of the wrong length is in this chunk")
    r = np.frombuffer(records, dtype=rec)
    counts = r["n_attr"].astype(np.int64)
    offsets = np.zeros(r.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    attrs = _int_column(attribute_ids)
    if attrs.shape[0] != offsets[-1]:
        raise ValueError(f"attribute counts add up to {offsets[-1]} but {attrs.shape[0]} attribute ids were given")
    return ItemArrays(r["id"].astype(np.int64), r["cat"].astype(np.int64), offsets, attrs,
                      np.ascontiguousarray(r["code"]), np.ascontiguousarray(r["colour"]))


def arrays_from_rows(
    rows: Iterable[Sequence[Any]], *, n_bytes: int, n_bins: int
) -> ItemArrays:
    """Per-row Postgres results -> ItemArrays.

    rows: (listing_id bigint, category_id smallint, attribute_ids smallint[] | None, code bytea, colour bytea), as
    psycopg2 returns them (int, int, list[int] | None, memoryview | bytes, memoryview | bytes). code must be n_bytes
    long. colour is either n_bins bytes (quantised, what the pipeline stores) or 4 * n_bins bytes (float32
    little-endian histogram, quantised here); all rows of one call must use the same form. The loop only appends to
    lists; decoding happens once per batch with np.frombuffer, which keeps it well above 200k rows/s.
    """
    ids: list[int] = []
    cats: list[int] = []
    counts: list[int] = []
    attrs: list[int] = []
    codes: list[Any] = []
    colours: list[Any] = []
    for listing_id, category_id, attribute_ids, code, colour in rows:
        ids.append(listing_id)
        cats.append(category_id)
        if attribute_ids:
            counts.append(len(attribute_ids))
            attrs.extend(attribute_ids)
        else:
            counts.append(0)
        codes.append(code)
        colours.append(colour)
    return _items_from_parts(ids, cats, counts, attrs, b"".join(codes), b"".join(colours), n_bytes, n_bins,
                             code_parts=codes, colour_parts=colours)


def arrays_from_columns(
    listing_ids: Any,
    category_ids: Any,
    attribute_counts: Any,
    attribute_ids: Any,
    codes: bytes | memoryview,
    colours: bytes | memoryview,
    *,
    n_bytes: int,
    n_bins: int,
) -> ItemArrays:
    """One aggregated chunk (see BULK_LOAD_SQL) -> ItemArrays.

    listing_ids, category_ids, attribute_counts, attribute_ids: comma-separated text or array-likes (None or "" for
    none); codes: the n * n_bytes concatenated codes; colours: n * n_bins quantised bytes (or 4 * n_bins float32).
    """
    return _items_from_parts(
        _int_column(listing_ids), _int_column(category_ids), _int_column(attribute_counts),
        _int_column(attribute_ids), codes, colours, n_bytes, n_bins,
    )


def _int_column(x: Any) -> np.ndarray:
    if x is None:
        return np.empty(0, dtype=np.int64)
    if isinstance(x, str):
        if not x:
            return np.empty(0, dtype=np.int64)
        # Text parse in C: ~10x faster than int() per element; Postgres text of bigint/smallint is plain decimal.
        out = np.fromstring(x, dtype=np.int64, sep=",")
        if out.shape[0] != x.count(",") + 1:
            raise ValueError("malformed integer column: not a comma-separated list of integers")
        return out
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _items_from_parts(
    ids: Any, cats: Any, counts: Any, attrs: Any, code_bytes: bytes | memoryview, colour_bytes: bytes | memoryview,
    n_bytes: int, n_bins: int, *, code_parts: list[Any] | None = None, colour_parts: list[Any] | None = None,
) -> ItemArrays:
    n_bytes_for(n_bytes * 8)  # validates n_bytes
    ids_a = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = ids_a.shape[0]
    cats_a = np.asarray(cats, dtype=np.int64).reshape(-1)
    counts_a = np.asarray(counts, dtype=np.int64).reshape(-1)
    if cats_a.shape[0] != n or counts_a.shape[0] != n:
        raise ValueError(f"columns disagree on the number of items: {n} ids, {cats_a.shape[0]} categories, "
                         f"{counts_a.shape[0]} attribute counts")
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts_a, out=offsets[1:])
    attrs_a = np.asarray(attrs, dtype=np.int64).reshape(-1)
    if attrs_a.shape[0] != offsets[-1]:
        raise ValueError(f"attribute counts add up to {offsets[-1]} but {attrs_a.shape[0]} attribute ids were given")
    if len(code_bytes) != n * n_bytes:
        bad = _first_bad_length(code_parts, n_bytes) if code_parts is not None else None
        raise ValueError(f"every code must be {n_bytes} bytes; got {len(code_bytes)} bytes for {n} items"
                         + (f" (listing {ids_a[bad]} has {len(code_parts[bad])})" if bad is not None else ""))
    codes = np.frombuffer(code_bytes, dtype=np.uint8).reshape(n, n_bytes)
    if len(colour_bytes) == n * n_bins:
        colours = np.frombuffer(colour_bytes, dtype=np.uint8).reshape(n, n_bins)
    elif len(colour_bytes) == 4 * n * n_bins:
        colours = quantize_colours(np.frombuffer(colour_bytes, dtype="<f4").astype(np.float32).reshape(n, n_bins))
    else:
        bad = _first_bad_length(colour_parts, n_bins) if colour_parts is not None else None
        raise ValueError(f"every colour must be {n_bins} bytes (quantised) or {4 * n_bins} (float32); got "
                         f"{len(colour_bytes)} bytes for {n} items"
                         + (f" (listing {ids_a[bad]} has {len(colour_parts[bad])})" if bad is not None else ""))
    return ItemArrays(ids_a, cats_a, offsets, attrs_a, codes, colours)


def _first_bad_length(parts: list[Any], expected: int) -> int | None:
    lengths = {len(p) for p in parts[:1]}
    first = next(iter(lengths), expected)
    for i, p in enumerate(parts):
        if len(p) not in (expected, 4 * expected) or len(p) != first:
            return i
    return None


def items_from_cursor(cursor: Any, *, n_bytes: int, n_bins: int, batch_rows: int = 100_000) -> ItemArrays:
    """Drain an executed DB-API cursor of per-row results into ItemArrays.

    Rows: (listing_id, category_id, attribute_ids, code, colour). Use a server-side cursor (psycopg2
    `conn.cursor(name=...)`) so 1M rows are not held twice. Simple, but psycopg2 builds 5 objects per row: ~45-63k
    rows/s on the dev box, against ~180-205k for load_items on the same server. For deltas, not for bulk loads.
    """
    parts: list[ItemArrays] = []
    while True:
        batch = cursor.fetchmany(batch_rows)
        if not batch:
            break
        parts.append(arrays_from_rows(batch, n_bytes=n_bytes, n_bins=n_bins))
    if not parts:
        return ItemArrays.empty(n_bytes, n_bins)
    return ItemArrays.concatenate(parts)


def load_items(
    cursor: Any, *, generation_id: int, n_bytes: int, n_bins: int, chunk: int = 100_000, sql: str | None = None
) -> ItemArrays:
    """Bulk-load one generation's postings with BULK_LOAD_SQL (or `sql`, same parameters and columns), in chunks.

    cursor: a DB-API cursor (psycopg2) with pyformat parameters. Each round trip returns one row of aggregated
    columns for up to `chunk` listings, keyset-paginated on listing_id, so neither side holds per-row objects.
    """
    query = BULK_LOAD_SQL if sql is None else sql
    parts: list[ItemArrays] = []
    after = -(2**63)
    while True:
        cursor.execute(query, {"generation_id": generation_id, "after": after, "chunk": chunk})
        row = cursor.fetchone()
        if row is None or row[0] is None:
            break
        parts.append(arrays_from_records(row[0], row[1], n_bytes=n_bytes, n_bins=n_bins))
        after = int(row[2])
        if int(row[3]) < chunk:
            break
    return ItemArrays.concatenate(parts) if parts else ItemArrays.empty(n_bytes, n_bins)


# ---------------------------------------------------------------------------------------------------------------------
# Segments.


def _padded_bytes(n_bytes: int) -> int:
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


@dataclass(frozen=True, eq=False)
class _Segment:
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
    def build(cls, items: ItemArrays, padded_bytes: int) -> _Segment:
        """Sort items by (category, listing id) and index their attributes.

        One O(n log n) sort of the ids; everything else is counting sorts and gathers, O(n + nnz): ~1 s for 1M items
        with 10 attributes each on this machine, dominated by memory traffic.
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
        # Postings: the attribute entries in new row order (a CSR gather), then a stable counting sort by attribute,
        # so every attribute's rows come out ascending.
        counts = np.diff(items.attr_offsets)[order]
        new_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=new_offsets[1:])
        src = np.repeat(items.attr_offsets[:-1][order] - new_offsets[:-1], counts) + np.arange(new_offsets[-1])
        attr_keys, attr_index = _dense_codes(items.attribute_ids)
        entry_attr = attr_index[src].astype(_small_int(attr_keys.shape[0]))
        entry_rows = np.repeat(np.arange(n, dtype=np.int32), counts)
        perm = np.argsort(entry_attr, kind="stable")
        sorted_attr = np.repeat(np.arange(attr_keys.shape[0], dtype=entry_attr.dtype),
                                np.bincount(entry_attr, minlength=attr_keys.shape[0]))
        return cls._from_sorted(ids, codes, colours, cat_keys, cat_offsets, attr_keys, sorted_attr,
                                entry_rows[perm])

    @classmethod
    def _from_sorted(
        cls, ids: np.ndarray, codes: np.ndarray, colours: np.ndarray, cat_keys: np.ndarray, cat_offsets: np.ndarray,
        attr_keys: np.ndarray, entry_attr: np.ndarray, entry_rows: np.ndarray, *, dedupe: bool = True,
    ) -> _Segment:
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
    def merge(cls, base: _Segment, dead: np.ndarray, delta: _Segment) -> _Segment:
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


# ---------------------------------------------------------------------------------------------------------------------
# Search results.


@dataclass(frozen=True)
class Hit:
    """One result. appearance_distance = hamming / n_bits, colour_distance in [0, 1] (NaN: no query colour)."""

    listing_id: int
    score: float
    appearance_distance: float
    colour_distance: float
    matched_attribute_ids: tuple[int, ...]


@dataclass(frozen=True)
class SearchResult:
    """Hits [offset, offset + k) of the full ranking, as columns, plus what the search cost.

    listing_ids: int64 (m,); scores, appearance, colour: float64 (m,); hamming: int32 (m,);
    matched: bool (m, len(query_attribute_ids)). scanned: rows whose code was compared (all segments);
    candidates: rows eligible under the strategy; strategy: the strategy actually used ("category" after a fallback).
    """

    listing_ids: np.ndarray
    scores: np.ndarray
    hamming: np.ndarray
    appearance: np.ndarray
    colour: np.ndarray
    matched: np.ndarray
    query_attribute_ids: tuple[int, ...]
    scanned: int
    candidates: int
    strategy: str
    generation: int

    def __len__(self) -> int:
        return int(self.listing_ids.shape[0])

    @property
    def hits(self) -> list[Hit]:
        """The hits as objects (for JSON); the arrays are the cheap form."""
        q = self.query_attribute_ids
        return [
            Hit(int(self.listing_ids[i]), float(self.scores[i]), float(self.appearance[i]), float(self.colour[i]),
                tuple(a for a, m in zip(q, self.matched[i]) if m))
            for i in range(len(self))
        ]


# ---------------------------------------------------------------------------------------------------------------------
# The snapshot.


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
        base: _Segment,
        dead: np.ndarray,
        n_dead: int,
        delta: _Segment,
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
        padded = _padded_bytes(n_bytes)
        base = _Segment.build(items, padded)
        empty = ItemArrays.empty(n_bytes, items.n_bins)
        return cls(generation=generation, sequence=sequence, n_bits=n_bits, n_bytes=n_bytes, base=base,
                   dead=np.zeros(base.n, dtype=np.uint8), n_dead=0, delta=_Segment.build(empty, padded),
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
        padded = _padded_bytes(self._n_bytes)
        if merge:
            delta = self._delta if delta_items is old else _Segment.build(delta_items, padded)
            base = _Segment.merge(self._base, dead, delta)
            empty = ItemArrays.empty(self._n_bytes, self.n_bins)
            logger.info("merged delta into base: generation=%s items=%d", self.generation, base.n)
            return IndexSnapshot(generation=self.generation, sequence=new_sequence, n_bits=self.n_bits,
                                 n_bytes=self._n_bytes, base=base, dead=np.zeros(base.n, dtype=np.uint8), n_dead=0,
                                 delta=_Segment.build(empty, padded), delta_items=empty)
        delta = (
            self._delta if delta_items is old else _Segment.build(delta_items, padded)
        )
        return IndexSnapshot(generation=self.generation, sequence=new_sequence, n_bits=self.n_bits,
                             n_bytes=self._n_bytes, base=self._base, dead=dead, n_dead=n_dead, delta=delta,
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

    def segments(self) -> tuple[tuple[_Segment, np.ndarray | None], ...]:
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
        min_candidates: int = _DEFAULT_MIN_CANDIDATES,
        threads: int = 1,
        rows_filter: Callable[[_Segment, int, int, int], np.ndarray | None] | None = None,
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
        threads > 1 splits large Hamming-only range scans (category None, or a category of millions of rows) across
        that many threads (shared.codes.hamming.top_k_parallel); results are identical.
        rows_filter(segment, c, lo, hi) -> int32 rows (ascending, within [lo, hi)), or a uint8 (segment.n,) mask of
        rows to skip in [lo, hi) (replacing the tombstones, so it must include them), or None (the whole range): the
        exact candidates of each segment, replacing the strategy (shared.index.refine uses it for edits).
        """
        q = self._query_code(code)
        qc = _query_colour(colour, self.n_bins)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {offset!r}")
        w = float(colour_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"colour_weight must be in [0, 1], got {colour_weight}")
        if w > 0.0 and qc is None:
            raise ValueError("colour_weight > 0 needs a query colour")
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
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
                rows = _strategy_rows(seg, c, lo, hi, q_attrs, strategy, min_votes)
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
                    aux_scale=_COLOUR_L1_SCALE, ids=seg.ids, exclude=exclude, **span,
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
        padded = _padded_bytes(self._n_bytes)
        if padded == self._n_bytes:
            return np.ascontiguousarray(code)
        q = np.zeros(padded, dtype=np.uint8)
        q[: self._n_bytes] = code
        return q

    def _merge_parts(
        self, parts: list[tuple[_Segment, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]],
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
                col = np.minimum(np.concatenate([p[4] for p in parts]) / _COLOUR_L1_SCALE, 1.0)
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


def _strategy_rows(
    seg: _Segment, c: int, lo: int, hi: int, q_attrs: tuple[int, ...], strategy: str, min_votes: int
) -> np.ndarray:
    """Candidate rows (ascending) of a posting strategy within rows [lo, hi) of category index c (-1: all)."""
    lists = [seg.posting(a, c) for a in dict.fromkeys(q_attrs)]
    lists = [x for x in lists if x.shape[0]]
    if not lists:
        return np.empty(0, dtype=np.int32)
    if strategy == "union" and len(lists) == 1:
        return lists[0]
    votes = np.bincount(np.concatenate(lists) - lo, minlength=hi - lo)
    if strategy == "union":
        need = 1
    elif strategy == "vote":
        need = max(1, min(int(min_votes), len(q_attrs)))
    else:  # intersection: every query attribute, including ones no item in the category has
        need = len(dict.fromkeys(q_attrs))
    return (np.flatnonzero(votes >= need) + lo).astype(np.int32)


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
