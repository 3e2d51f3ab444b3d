"""Postgres -> arrays: the bulk load of a generation's postings and the deltas of the change sequence.

The bulk load lets Postgres concatenate each chunk's codes and colours into one bytea (string_agg), so
Python touches a few objects per chunk instead of several per row; that is what makes 1M items load in
seconds rather than a minute.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine

logger = logging.getLogger(__name__)
CHUNK = 100_000


@dataclass(frozen=True)
class PostingArrays:
    """Rows of the postings table as arrays. ids int64 (n,); category_ids int16 (n,); attr_offsets int64 (n+1,)
    and attr_values int16 (m,) (CSR: item i has attr_values[attr_offsets[i]:attr_offsets[i+1]]);
    codes uint8 (n, n_bytes); colours uint8 (n, n_bins)."""

    ids: np.ndarray
    category_ids: np.ndarray
    attr_offsets: np.ndarray
    attr_values: np.ndarray
    codes: np.ndarray
    colours: np.ndarray

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    def attribute_lists(self) -> list[np.ndarray]:
        return [self.attr_values[self.attr_offsets[i]:self.attr_offsets[i + 1]] for i in range(self.n)]


_CHUNK_SQL = """
SELECT array_agg(listing_id ORDER BY listing_id),
       array_agg(category_id ORDER BY listing_id),
       array_agg(cardinality(attribute_ids) ORDER BY listing_id),
       string_agg(array_to_string(attribute_ids, ' '), ' ' ORDER BY listing_id),
       string_agg(code, ''::bytea ORDER BY listing_id),
       string_agg(colour, ''::bytea ORDER BY listing_id),
       max(listing_id)
FROM (SELECT listing_id, category_id, attribute_ids, code, colour FROM postings
      WHERE generation_id = %(gen)s AND listing_id > %(after)s {extra}
      ORDER BY listing_id LIMIT %(limit)s) AS chunk
"""


def _parse_chunk(row, n_bytes: int | None, n_bins: int | None) -> tuple[PostingArrays, int] | None:
    ids, cats, lens, attrs, codes, colours, last = row
    if not ids:
        return None
    n = len(ids)
    # bytearray, not bytes: numba compiles a separate (slow to build) variant of every kernel for read-only
    # arrays, and np.frombuffer over bytes is read-only.
    codes_b, colours_b = bytearray(codes), bytearray(colours)
    nb = n_bytes or len(codes_b) // n
    nc = n_bins or len(colours_b) // n
    lens_arr = np.asarray(lens, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens_arr, out=offsets[1:])
    values = (np.array(attrs.split(), dtype=np.int16) if attrs else np.zeros(0, np.int16))
    arrays = PostingArrays(ids=np.asarray(ids, dtype=np.int64), category_ids=np.asarray(cats, dtype=np.int16),
                           attr_offsets=offsets, attr_values=values,
                           codes=np.frombuffer(codes_b, dtype=np.uint8).reshape(n, nb),
                           colours=np.frombuffer(colours_b, dtype=np.uint8).reshape(n, nc))
    return arrays, int(last)


def concat(parts: list[PostingArrays]) -> PostingArrays:
    if not parts:
        return empty_arrays(0, 0)
    if len(parts) == 1:
        return parts[0]
    offsets = [parts[0].attr_offsets]
    base = parts[0].attr_offsets[-1]
    for p in parts[1:]:
        offsets.append(p.attr_offsets[1:] + base)
        base += p.attr_offsets[-1]
    return PostingArrays(ids=np.concatenate([p.ids for p in parts]),
                         category_ids=np.concatenate([p.category_ids for p in parts]),
                         attr_offsets=np.concatenate(offsets), attr_values=np.concatenate([p.attr_values for p in parts]),
                         codes=np.concatenate([p.codes for p in parts]),
                         colours=np.concatenate([p.colours for p in parts]))


def empty_arrays(n_bytes: int, n_bins: int) -> PostingArrays:
    return PostingArrays(ids=np.zeros(0, np.int64), category_ids=np.zeros(0, np.int16),
                         attr_offsets=np.zeros(1, np.int64), attr_values=np.zeros(0, np.int16),
                         codes=np.zeros((0, n_bytes), np.uint8), colours=np.zeros((0, n_bins), np.uint8))


def fetch_postings(engine: Engine, generation_id: int, *, listing_ids: list[int] | None = None,
                   cursor=None) -> PostingArrays:
    """All postings of a generation (or only `listing_ids`), sorted by listing id."""
    extra = "AND listing_id = ANY(%(ids)s)" if listing_ids is not None else ""
    sql = _CHUNK_SQL.format(extra=extra)
    parts: list[PostingArrays] = []
    after = -1
    own = cursor is None
    raw = engine.raw_connection() if own else None
    try:
        cur = raw.cursor() if own else cursor
        while True:
            cur.execute(sql, {"gen": generation_id, "after": after, "limit": CHUNK, "ids": listing_ids})
            parsed = _parse_chunk(cur.fetchone(), None, None)
            if parsed is None:
                break
            part, after = parsed
            parts.append(part)
            if part.n < CHUNK:
                break
    finally:
        if own:
            raw.close()
    return concat(parts)


def load_generation(engine: Engine) -> tuple[int | None, str | None, int, PostingArrays]:
    """(active generation id, its model version, change seq at load time, its postings), read in one
    REPEATABLE READ transaction so the seq and the rows agree."""
    t0 = time.perf_counter()
    raw = engine.raw_connection()
    try:
        raw.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = raw.cursor()
        cur.execute("SELECT id, model_version FROM index_generations WHERE status = 'active'")
        row = cur.fetchone()
        cur.execute("SELECT coalesce(max(seq), 0) FROM changes")
        last_seq = int(cur.fetchone()[0])
        if row is None:
            raw.rollback()
            return None, None, last_seq, empty_arrays(0, 0)
        gen_id, model_version = int(row[0]), str(row[1])
        arrays = fetch_postings(engine, gen_id, cursor=cur)
        raw.rollback()
    finally:
        raw.set_session(isolation_level="READ COMMITTED", readonly=False)
        raw.close()
    logger.info("generation %s: loaded %d postings in %.2f s", gen_id, arrays.n, time.perf_counter() - t0)
    return gen_id, model_version, last_seq, arrays


@dataclass(frozen=True)
class ChangeBatch:
    last_seq: int
    activated: bool  # a new generation became active: reload everything
    upserted: list[int]
    deleted: list[int]


def read_changes(engine: Engine, *, after_seq: int, generation_id: int | None, limit: int = 50_000) -> ChangeBatch:
    """Changes after `after_seq`; per listing only its latest op counts."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT seq, generation_id, listing_id, op FROM changes WHERE seq > %s ORDER BY seq LIMIT %s",
                    (after_seq, limit))
        rows = cur.fetchall()
        raw.rollback()
    finally:
        raw.close()
    last = after_seq
    latest: dict[int, str] = {}
    activated = False
    for seq, gen, listing_id, op in rows:
        last = int(seq)
        if op == "activate":
            activated = activated or gen != generation_id
            continue
        if gen == generation_id and listing_id is not None:
            latest[int(listing_id)] = op
    return ChangeBatch(last_seq=last, activated=activated,
                       upserted=[i for i, op in latest.items() if op == "upsert"],
                       deleted=[i for i, op in latest.items() if op == "delete"])
