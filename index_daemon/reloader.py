"""Follows Postgres: bulk-loads the active generation, then applies the change sequence every poll,
building a new immutable snapshot each time and swapping it in (queries never see half an update)."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time

import numpy as np
from sqlalchemy import Engine

from index_daemon import loader
from index_daemon.holder import SnapshotHolder
from index_daemon.merging import BackgroundMerger
from shared.index.snapshot import IndexSnapshot
from shared.index.refine import prepare as prepare_facets
from shared.index.shards import Shard

logger = logging.getLogger(__name__)


class EmptySnapshot:
    """What the daemon serves before anything is indexed (the code width is not even known yet)."""

    n_items = 0
    nbytes = 0

    def __init__(self, generation: int) -> None:
        self.generation = generation


class Reloader:
    def __init__(self, engine: Engine, holder: SnapshotHolder, *, poll_s: float, shard: Shard | None = None) -> None:
        self.engine, self.holder, self.poll_s = engine, holder, poll_s
        self.shard = shard  # a shard daemon holds only its own listings (shared.index.shards)
        self.merger = BackgroundMerger()  # merges run beside the serving snapshot, not in this loop
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="reloader", daemon=True)

    def full_load(self) -> None:
        t0 = time.perf_counter()
        self.holder.state.status = "loading" if self.holder.current() is None else self.holder.state.status
        gen, model_version, last_seq, items = loader.load_generation(self.engine, self.shard)
        snap = (EmptySnapshot(gen or 0) if items is None or len(items) == 0
                else IndexSnapshot.from_items(items, generation=gen, sequence=last_seq))
        if isinstance(snap, IndexSnapshot):
            prepare_facets(snap)
        networks, params = loader.generation_contract(self.engine, gen) if gen is not None else (None, None)
        if params is None:
            logger.warning("generation %s records no ranking parameters (made before the version contract): "
                           "serving it with the daemon's fallback colour weight", gen)
        if self.holder.state.generation is not None and self.holder.state.generation != gen:
            self.holder.keep_previous()
        self.merger = BackgroundMerger()  # a merge of the replaced snapshot is dropped
        elapsed = time.perf_counter() - t0
        self.holder.swap(snap, status="ready", generation=gen, model_version=model_version, last_seq=last_seq,
                         loaded_at=time.time(), load_seconds=elapsed, error=None, networks=networks, params=params)
        logger.info("snapshot ready: generation %s, %d items, seq %d, %.2f s", gen, snap.n_items, last_seq, elapsed)

    def poll_once(self) -> int:
        """Apply pending changes; returns how many listings changed."""
        st = self.holder.state
        batch = loader.read_changes(self.engine, after_seq=st.last_seq, generation_id=st.generation)
        if batch.activated:
            logger.info("a new generation was activated; reloading")
            self.full_load()
            return -1
        if self.shard is not None:  # every shard reads the whole change sequence and keeps its own listings
            batch = dataclasses.replace(batch, upserted=self.shard.owned(batch.upserted),
                                        deleted=self.shard.owned(batch.deleted))
        if not batch.upserted and not batch.deleted:
            merged = self.merger.finish()  # a merge built meanwhile (changes since replayed on it)
            if merged is not None:
                prepare_facets(merged)
                self.holder.swap(merged, last_seq=batch.last_seq)
            st.last_seq = batch.last_seq
            return 0
        if isinstance(self.holder.current(), EmptySnapshot):
            self.full_load()  # the first postings: now the code width is known
            return len(batch.upserted) + len(batch.deleted)
        current = self.holder.current()
        items = loader.fetch_postings(self.engine, st.generation, batch.upserted, n_bytes=current.n_bytes,
                                      n_bins=current.n_bins) if batch.upserted else None
        # An upsert whose posting is gone by now was deleted since: treat it as a delete.
        found = set() if items is None else set(items.ids.tolist())
        missing = sorted(set(batch.upserted) - found)
        deletes = np.asarray(batch.deleted + missing, dtype=np.int64)
        snap = self.merger.apply(current, items if items is not None and len(items) else None, deletes,
                                 sequence=batch.last_seq)
        prepare_facets(snap)  # the small delta (a merged base was prepared on the merge thread)
        self.holder.swap(snap, last_seq=batch.last_seq)
        return len(batch.upserted) + len(batch.deleted)

    def _run(self) -> None:
        backoff = self.poll_s
        while not self._stop.is_set():
            try:
                if self.holder.current() is None:
                    self.full_load()
                else:
                    self.poll_once()
                backoff = self.poll_s
            except Exception as exc:  # noqa: BLE001 - keep serving the last good snapshot
                self.holder.state.error = f"{exc.__class__.__name__}: {exc}"
                logger.warning("reload failed (serving the previous snapshot): %s", exc)
                backoff = min(5.0, backoff * 2)
            self._stop.wait(backoff)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
