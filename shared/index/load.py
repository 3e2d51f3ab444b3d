"""Rows <-> arrays: the one converter between what Postgres returns and what the snapshot holds (bulk load, deltas)."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from numba import njit

from shared.codes.binarize import n_bytes_for
from shared.index.arrays import ItemArrays
from shared.index.colours import quantize_colours

__all__ = ["BULK_LOAD_SQL", "COPY_SQL", "arrays_from_records", "arrays_from_rows", "arrays_from_columns",
           "arrays_from_copy", "items_from_cursor", "load_items", "copy_load_items"]

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
# COPY binary: the bulk load without server-side aggregation, in parallel over listing-id ranges.
#
# The rows travel in PostgreSQL's binary COPY format, columns as stored (no per-row work on the server beyond
# sending them), and one compiled pass over the stream turns them into columns (`arrays_from_copy`, ~50 ns a row).
# A row is n_fields int16 (5), then per field an int32 length and the value, big-endian: listing_id int64,
# category_id int16, code, colour, attribute_ids int2[] (ndim, flags, element oid, [length, lower bound], then per
# element int32 length + int16). The table is split into ranges of heap blocks (a TID range scan, PostgreSQL 14+:
# each part reads only its own blocks, in storage order; ranges of listing ids made the planner scan the whole table
# once per part), read on several connections at once, each inside the caller's exported snapshot (SET TRANSACTION
# SNAPSHOT), so together they are exactly what one REPEATABLE READ transaction sees. `where` may restrict the rows
# further (a shard's mod(listing_id, N) = i).
COPY_SQL = """
COPY (SELECT listing_id, category_id, code, colour, attribute_ids
      FROM postings
      WHERE ctid >= '({lo},0)'::tid{below} AND generation_id = {generation_id}{where})
TO STDOUT (FORMAT binary)
"""
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00"
_COPY_ERRORS = {1: "a row without 5 fields", 2: "a NULL or wrong-sized listing_id / category_id",
                3: "a code of the wrong length", 4: "a colour of the wrong length",
                5: "attribute_ids that are not a one-dimensional smallint array without NULLs",
                6: "a truncated stream"}


@njit(cache=True, nogil=True, inline="always")
def _be(buf, pos, size):
    v = 0
    for i in range(size):
        v = (v << 8) | buf[pos + i]
    if size < 8 and v >= 1 << (8 * size - 1):  # sign
        v -= 1 << (8 * size)
    return v


@njit(cache=True, nogil=True)
def _parse_copy(buf, n_bytes, n_bins, ids, cats, counts, attrs, codes, colours):
    """Rows of a binary COPY body (after the header) -> (rows, attribute entries, error code, error row)."""
    pos = 0
    n = 0
    na = 0
    end = buf.shape[0]
    while True:
        if pos + 2 > end:
            return n, na, 6, n
        nf = _be(buf, pos, 2)
        pos += 2
        if nf == -1:
            return n, na, 0, n
        if nf != 5:
            return n, na, 1, n
        if pos + 4 + 8 + 4 + 2 + 4 > end or _be(buf, pos, 4) != 8 or _be(buf, pos + 12, 4) != 2:
            return n, na, 2, n
        ids[n] = _be(buf, pos + 4, 8)
        cats[n] = _be(buf, pos + 16, 2)
        pos += 18
        if _be(buf, pos, 4) != n_bytes or pos + 4 + n_bytes > end:
            return n, na, 3, n
        for b in range(n_bytes):
            codes[n, b] = buf[pos + 4 + b]
        pos += 4 + n_bytes
        if _be(buf, pos, 4) != n_bins or pos + 4 + n_bins > end:
            return n, na, 4, n
        for b in range(n_bins):
            colours[n, b] = buf[pos + 4 + b]
        pos += 4 + n_bins
        size = _be(buf, pos, 4)
        if size < 12 or pos + 4 + size > end:
            return n, na, 5, n
        ndim = _be(buf, pos + 4, 4)
        if ndim == 0:
            counts[n] = 0
        elif ndim == 1 and _be(buf, pos + 8, 4) == 0 and _be(buf, pos + 12, 4) == 21:
            m = _be(buf, pos + 16, 4)
            if size != 20 + 6 * m:
                return n, na, 5, n
            e = pos + 24
            for i in range(m):
                if _be(buf, e, 4) != 2:
                    return n, na, 5, n
                attrs[na] = _be(buf, e + 4, 2)
                na += 1
                e += 6
            counts[n] = m
        else:
            return n, na, 5, n
        pos += 4 + size
        n += 1


def arrays_from_copy(data: bytes | memoryview, *, n_bytes: int, n_bins: int) -> ItemArrays:
    """One COPY_SQL result (header, rows, trailer) -> ItemArrays, checking every field's length."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if bytes(buf[:11]) != _COPY_HEADER:
        raise ValueError("not a binary COPY stream")
    body = buf[19 + int.from_bytes(bytes(buf[15:19]), "big"):]
    cap = body.shape[0] // (2 + 18 + 4 + n_bytes + 4 + n_bins + 16) + 1  # the smallest row: an empty array
    ids, cats, counts = np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, np.int64)
    attrs = np.empty(body.shape[0] // 6 + 1, np.int64)
    codes, colours = np.empty((cap, n_bytes), np.uint8), np.empty((cap, n_bins), np.uint8)
    n, na, err, row = _parse_copy(body, n_bytes, n_bins, ids, cats, counts, attrs, codes, colours)
    if err:
        where = f"listing {ids[row - 1]}'s successor" if row and err in (1, 2) else f"row {row}"
        raise ValueError(f"COPY stream, {where}: {_COPY_ERRORS[err]} (expected {n_bytes}-byte codes and "
                         f"{n_bins}-byte colours)")
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts[:n], out=offsets[1:])
    return ItemArrays(ids[:n].copy(), cats[:n].copy(), offsets, attrs[:na].copy(), codes[:n].copy(),
                      colours[:n].copy())


def copy_load_items(
    connect: Callable[[], Any], cursor: Any, *, generation_id: int, n_bytes: int, n_bins: int, where: str = "",
    n_parts: int = 8, n_connections: int = 2,
) -> ItemArrays:
    """Bulk-load one generation's postings with binary COPY over n_parts ranges of the table's heap blocks, on
    n_connections connections at once.

    cursor: the caller's psycopg2 cursor, inside a REPEATABLE READ transaction; its snapshot is exported and every
    range is read in it. connect() -> a new psycopg2 connection (closed here). where: an extra SQL condition on
    listing_id (integers only, e.g. " AND mod(listing_id, 2) = 0"). Items come back in storage order.
    """
    cursor.execute("SELECT pg_export_snapshot(), pg_relation_size('postings') / current_setting('block_size')::int")
    snapshot_id, n_blocks = cursor.fetchone()
    # Block ranges; the last one is open-ended (the table may have grown since, with rows this snapshot cannot see).
    bounds = np.linspace(0, int(n_blocks), max(1, n_parts) + 1).astype(np.int64)

    def read(part: int, conn: Any) -> ItemArrays:
        out = io.BytesIO()
        below = "" if part == n_parts - 1 else f" AND ctid < '({int(bounds[part + 1])},0)'::tid"
        sql = COPY_SQL.format(generation_id=int(generation_id), lo=int(bounds[part]), below=below, where=where)
        conn.cursor().copy_expert(sql, out)
        return arrays_from_copy(out.getbuffer(), n_bytes=n_bytes, n_bins=n_bins)

    def worker(parts: list[int]) -> list[tuple[int, ItemArrays]]:
        conn = connect()
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            cur = conn.cursor()
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_id,))
            cur.execute("SET LOCAL jit = off")  # compiling expressions costs more than it saves on this scan
            return [(p, read(p, conn)) for p in parts]
        finally:
            conn.rollback()
            conn.set_session(isolation_level="READ COMMITTED", readonly=False)  # a pooled connection goes back clean
            conn.close()

    n_conn = max(1, min(n_connections, n_parts))
    with ThreadPoolExecutor(max_workers=n_conn, thread_name_prefix="copy-load") as pool:
        done = pool.map(worker, [list(range(i, n_parts, n_conn)) for i in range(n_conn)])
        parts = dict(p for chunk in done for p in chunk)
    return ItemArrays.concatenate([parts[p] for p in range(n_parts)])
