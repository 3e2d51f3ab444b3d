"""The index daemon against real PostgreSQL: bulk load, following the change sequence, atomic swaps."""
from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
from sqlalchemy import text

from index_daemon import loader
from index_daemon.holder import SnapshotHolder
from index_daemon.reloader import Reloader
from shared.db import queries
from shared.db.models import Listing
from shared.db.session import session_scope

pytestmark = pytest.mark.integration
N_BYTES, N_BINS = 32, 8


def _write_posting(s, gen_id: int, listing_id: int, code: np.ndarray, category: int = 1, attrs=(3, 4)):
    colour = np.zeros(N_BINS, np.uint8)
    colour[listing_id % N_BINS] = 255
    s.execute(text("INSERT INTO postings (generation_id, listing_id, category_id, attribute_ids, code, colour, "
                   "listing_version) VALUES (:g, :l, :c, :a, :code, :col, 1) ON CONFLICT (generation_id, listing_id)"
                   " DO UPDATE SET code = excluded.code, category_id = excluded.category_id"),
              {"g": gen_id, "l": listing_id, "c": category, "a": list(attrs), "code": code.tobytes(),
               "col": colour.tobytes()})
    queries.record_change(session=s, generation_id=gen_id, listing_id=listing_id, op="upsert")


@pytest.fixture
def daemon_db(engine):
    """A clean generation with 50 postings, in committed rows (the daemon reads with its own connections)."""
    rng = np.random.default_rng(0)
    with session_scope(engine) as s:
        previous = queries.active_generation(session=s)
        previous_id = None if previous is None else previous.id
        s.execute(text("UPDATE index_generations SET status = 'retired' WHERE status = 'active'"))
        gen = queries.ensure_generation(session=s, model_version=f"daemon-test-{uuid.uuid4()}")
        queries.activate_generation(session=s, generation=gen)
        ids, codes = [], {}
        for i in range(50):
            listing = Listing(seller_id="daemon", external_id=f"d-{gen.id}-{i}", title="t", status="ready")
            s.add(listing)
            s.flush()
            codes[listing.id] = rng.integers(0, 256, N_BYTES, dtype=np.uint8)
            _write_posting(s, gen.id, listing.id, codes[listing.id], category=1 + i % 3)
            ids.append(listing.id)
        gen_id = gen.id
    yield gen_id, ids, codes
    # Give the rest of the suite (and a running live system) its generation back.
    if previous_id is not None:
        from shared.db.models import IndexGeneration

        with session_scope(engine) as s:
            queries.activate_generation(session=s, generation=s.get(IndexGeneration, previous_id))


def test_bulk_load_matches_rows(engine, daemon_db):
    gen_id, ids, codes = daemon_db
    gen, _, last_seq, items = loader.load_generation(engine)
    assert gen == gen_id and len(items) == 50 and last_seq > 0
    assert sorted(items.ids.tolist()) == sorted(ids)
    for i, lid in enumerate(items.ids):
        assert items.codes[i].tobytes() == codes[int(lid)].tobytes()
        assert sorted(items.attribute_ids[items.attr_offsets[i]:items.attr_offsets[i + 1]].tolist()) == [3, 4]
    assert items.codes.flags.writeable  # read-only arrays would make numba compile another kernel variant


def test_follow_changes_and_swap_without_touching_readers(engine, daemon_db):
    gen_id, ids, codes = daemon_db
    holder = SnapshotHolder()
    rel = Reloader(engine, holder, poll_s=0.05)
    rel.full_load()
    old = holder.current()
    q = codes[ids[0]]
    first = old.search(code=q, category_id=None, k=1)
    assert first.hits[0].listing_id == ids[0]
    # Delete one listing, move another's code onto the query: both visible after one poll.
    with session_scope(engine) as s:
        s.execute(text("DELETE FROM postings WHERE listing_id = :l"), {"l": ids[0]})
        queries.record_change(session=s, generation_id=gen_id, listing_id=ids[0], op="delete")
        _write_posting(s, gen_id, ids[1], q, category=1)
    assert rel.poll_once() == 2
    new = holder.current()
    assert new is not old
    assert new.search(code=q, category_id=None, k=1).hits[0].listing_id == ids[1]
    assert new.n_items == 49
    # The reader that took the old snapshot still sees the old world.
    assert old.n_items == 50 and old.search(code=q, category_id=None, k=1).hits[0].listing_id == ids[0]


def test_new_generation_triggers_full_reload(engine, daemon_db):
    gen_id, ids, codes = daemon_db
    holder = SnapshotHolder()
    rel = Reloader(engine, holder, poll_s=0.05)
    rel.full_load()
    with session_scope(engine) as s:
        gen2 = queries.ensure_generation(session=s, model_version=f"daemon-test-next-{gen_id}")
        for lid in ids[:5]:
            _write_posting(s, gen2.id, lid, codes[lid])
        queries.activate_generation(session=s, generation=gen2)
        gen2_id = gen2.id
    assert rel.poll_once() == -1
    assert holder.state.generation == gen2_id and holder.current().n_items == 5


def test_concurrent_reads_during_swaps_never_see_partial_state(engine, daemon_db):
    gen_id, ids, codes = daemon_db
    holder = SnapshotHolder()
    rel = Reloader(engine, holder, poll_s=0.01)
    rel.full_load()
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            snap = holder.current()
            n = snap.n_items
            res = snap.search(code=codes[ids[5]], category_id=None, k=100)
            if len(res.hits) != min(100, n):
                errors.append(f"{len(res.hits)} hits from a snapshot of {n}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for lid in ids[10:30]:
            with session_scope(engine) as s:
                s.execute(text("DELETE FROM postings WHERE listing_id = :l"), {"l": lid})
                queries.record_change(session=s, generation_id=gen_id, listing_id=lid, op="delete")
            rel.poll_once()
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert holder.current().n_items == 30


def test_copy_load_equals_the_aggregate_load_whole_and_per_shard(engine, daemon_db):
    from shared.index.load import copy_load_items, load_items
    from shared.index.shards import Shard

    gen_id, ids, _ = daemon_db
    raw = engine.raw_connection()
    try:
        raw.set_session(isolation_level="REPEATABLE READ", readonly=True)
        cur = raw.cursor()
        want = load_items(cur, generation_id=gen_id, n_bytes=N_BYTES, n_bins=N_BINS)
        for shard in (None, Shard(0, 2), Shard(1, 2)):
            got = copy_load_items(engine.raw_connection, cur, generation_id=gen_id, n_bytes=N_BYTES, n_bins=N_BINS,
                                  where="" if shard is None else shard.condition(), n_parts=3)
            mine = want.take(np.flatnonzero([shard is None or shard.owns(i) for i in want.ids]))
            got, mine = got.take(np.argsort(got.ids)), mine.take(np.argsort(mine.ids))  # storage order: compare by id
            for f in ("ids", "category_ids", "codes", "colours", "attr_offsets", "attribute_ids"):
                assert np.array_equal(getattr(got, f), getattr(mine, f)), f
        raw.rollback()
    finally:
        raw.set_session(isolation_level="READ COMMITTED", readonly=False)
        raw.close()


def test_restart_reads_the_snapshot_file_and_replays_changes_since(engine, daemon_db, tmp_path):
    gen_id, ids, codes = daemon_db
    first = Reloader(engine, SnapshotHolder(), poll_s=0.05, snapshot_dir=tmp_path)
    first.full_load()
    first._writer.join(30)  # the file is written beside serving
    assert (tmp_path / f"generation-{gen_id}" / "meta.json").exists()
    q = codes[ids[0]]
    with session_scope(engine) as s:  # changes after the file: a delete and a changed code
        s.execute(text("DELETE FROM postings WHERE listing_id = :l"), {"l": ids[0]})
        queries.record_change(session=s, generation_id=gen_id, listing_id=ids[0], op="delete")
        _write_posting(s, gen_id, ids[1], q, category=1)
    holder = SnapshotHolder()
    Reloader(engine, holder, poll_s=0.05, snapshot_dir=tmp_path).full_load()
    assert holder.state.status == "ready" and holder.state.extra["snapshot_file"]["replayed"] == 2
    fresh = SnapshotHolder()
    Reloader(engine, fresh, poll_s=0.05).full_load()  # a bulk load of the same state
    assert holder.state.last_seq == fresh.state.last_seq and holder.current().n_items == 49
    for lid in ids[:10]:
        a = holder.current().search(code=codes[lid], category_id=None, k=10, colour_weight=0.0)
        b = fresh.current().search(code=codes[lid], category_id=None, k=10, colour_weight=0.0)
        assert a.listing_ids.tolist() == b.listing_ids.tolist() and a.scores.tolist() == b.scores.tolist()
    # Another generation active: the file no longer matches, so the next start bulk-loads it.
    with session_scope(engine) as s:
        gen2 = queries.ensure_generation(session=s, model_version=f"daemon-test-file-{gen_id}")
        for lid in ids[:5]:
            _write_posting(s, gen2.id, lid, codes[lid])
        queries.activate_generation(session=s, generation=gen2)
    other = SnapshotHolder()
    Reloader(engine, other, poll_s=0.05, snapshot_dir=tmp_path).full_load()
    assert other.current().n_items == 5 and "snapshot_file" not in other.state.extra
