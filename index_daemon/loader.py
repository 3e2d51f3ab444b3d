"""Postgres -> ItemArrays: the bulk load of a generation's postings and the deltas of the change sequence.

Rows become arrays in `shared.index.load` only (copy_load_items for the bulk load: binary COPY over listing-id
ranges on two connections in one exported snapshot; items_from_cursor for deltas).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from shared.index.arrays import ItemArrays
from shared.index.load import copy_load_items, items_from_cursor
from shared.index.shards import Shard

logger = logging.getLogger(__name__)

_DELTA_SQL = ("SELECT listing_id, category_id, attribute_ids, code, colour FROM postings "
              "WHERE generation_id = %s AND listing_id = ANY(%s) ORDER BY listing_id")


def _widths(cur, generation_id: int) -> tuple[int, int] | None:
    """(code bytes, colour bins) of a generation, or None when it has no postings."""
    cur.execute("SELECT length(code), length(colour) FROM postings WHERE generation_id = %s LIMIT 1",
                (generation_id,))
    row = cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def load_generation(engine: Engine, shard: Shard | None = None) -> tuple[int | None, str | None, int, ItemArrays | None]:
    """(active generation id, its model version, change seq at load time, its postings or None when empty),
    read in one REPEATABLE READ transaction so the seq and the rows agree. shard: load only its listings."""
    t0 = time.perf_counter()
    raw = engine.raw_connection()
    try:
        raw.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = raw.cursor()
        cur.execute("SELECT coalesce(max(seq), 0) FROM changes")
        last_seq = int(cur.fetchone()[0])
        cur.execute("SELECT id, model_version FROM index_generations WHERE status = 'active'")
        row = cur.fetchone()
        items = None
        gen_id = model_version = None
        if row is not None:
            gen_id, model_version = int(row[0]), str(row[1])
            widths = _widths(cur, gen_id)
            if widths is not None:
                items = copy_load_items(engine.raw_connection, cur, generation_id=gen_id, n_bytes=widths[0],
                                        n_bins=widths[1], where="" if shard is None else shard.condition())
        raw.rollback()
    finally:
        raw.set_session(isolation_level="READ COMMITTED", readonly=False)
        raw.close()
    logger.info("generation %s: loaded %d postings in %.2f s", gen_id, 0 if items is None else len(items),
                time.perf_counter() - t0)
    return gen_id, model_version, last_seq, items


def active_generation(engine: Engine) -> tuple[int | None, str | None, str | None, int]:
    """(active generation id, its model version, its creation time as text, the last change seq): what a snapshot
    file must match (the creation time tells a recreated database's generation 1 from the old one's)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT coalesce(max(seq), 0) FROM changes")
        last_seq = int(cur.fetchone()[0])
        cur.execute("SELECT id, model_version, created_at::text FROM index_generations WHERE status = 'active'")
        row = cur.fetchone()
        raw.rollback()
    finally:
        raw.close()
    return (None, None, None, last_seq) if row is None else (int(row[0]), str(row[1]), str(row[2]), last_seq)


def generation_contract(engine: Engine, generation_id: int) -> tuple[dict | None, dict | None]:
    """(networks, params) recorded on a generation: the versions its postings were built with and the ranking
    parameters to serve it with."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SELECT networks, params FROM index_generations WHERE id = %s", (generation_id,))
        row = cur.fetchone()
        raw.rollback()
    finally:
        raw.close()
    return (None, None) if row is None else (row[0], row[1])


def fetch_postings(engine: Engine, generation_id: int, listing_ids: list[int], *, n_bytes: int,
                   n_bins: int) -> ItemArrays:
    """The current postings of some listings (a delta)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(_DELTA_SQL, (generation_id, listing_ids))
        items = items_from_cursor(cur, n_bytes=n_bytes, n_bins=n_bins)
        raw.rollback()
    finally:
        raw.close()
    return items


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
