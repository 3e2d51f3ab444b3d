"""Follows Postgres: bulk-loads the active generation, then applies the change sequence every poll,
building a new immutable snapshot each time and swapping it in (queries never see half an update).

With a snapshot folder, a (re)start reads the active generation's snapshot file instead of bulk-loading when the file
matches (generation, model version, shard, a change seq the database has reached), replays the changes since it,
and only then reports ready; a bulk load and every background merge rewrite the file on a thread of its own."""
from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from sqlalchemy import Engine

from index_daemon import loader
from index_daemon.holder import SnapshotHolder
from index_daemon.merging import BackgroundMerger
from shared.index import files
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
    def __init__(self, engine: Engine, holder: SnapshotHolder, *, poll_s: float, shard: Shard | None = None,
                 snapshot_dir: Path | None = None) -> None:
        self.engine, self.holder, self.poll_s = engine, holder, poll_s
        self.shard = shard  # a shard daemon holds only its own listings (shared.index.shards)
        self.snapshot_dir = snapshot_dir  # None: no snapshot files (every start bulk-loads)
        self._writer: threading.Thread | None = None
        self._created: str | None = None  # the served generation's creation time (the snapshot file records it)
        self.merger = BackgroundMerger()  # merges run beside the serving snapshot, not in this loop
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="reloader", daemon=True)

    def full_load(self) -> None:
        t0 = time.perf_counter()
        self.holder.state.status = "loading" if self.holder.current() is None else self.holder.state.status
        from_file = self._from_file()
        if from_file is not None:
            snap, model_version = from_file
            gen, last_seq = snap.generation, snap.sequence
        else:
            if self.snapshot_dir is not None:
                self._created = loader.active_generation(self.engine)[2]
            gen, model_version, last_seq, items = loader.load_generation(self.engine, self.shard)
            snap = (EmptySnapshot(gen or 0) if items is None or len(items) == 0
                    else IndexSnapshot.from_items(items, generation=gen, sequence=last_seq))
            if isinstance(snap, IndexSnapshot):
                self._save_later(snap, model_version)
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
        batch = self._owned(loader.read_changes(self.engine, after_seq=st.last_seq, generation_id=st.generation))
        if batch.activated:
            logger.info("a new generation was activated; reloading")
            self.full_load()
            return -1
        if not batch.upserted and not batch.deleted:
            merged = self.merger.finish()  # a merge built meanwhile (changes since replayed on it)
            if merged is not None:
                prepare_facets(merged)
                self.holder.swap(merged, last_seq=batch.last_seq)
                self._save_later(merged, st.model_version)
            st.last_seq = batch.last_seq
            return 0
        if isinstance(self.holder.current(), EmptySnapshot):
            self.full_load()  # the first postings: now the code width is known
            return len(batch.upserted) + len(batch.deleted)
        current = self.holder.current()
        items, deletes = self._fetch(current, st.generation, batch)
        snap = self.merger.apply(current, items, deletes, sequence=batch.last_seq)
        prepare_facets(snap)  # the small delta (a merged base was prepared on the merge thread)
        self.holder.swap(snap, last_seq=batch.last_seq)
        return len(batch.upserted) + len(batch.deleted)

    def _owned(self, batch: loader.ChangeBatch) -> loader.ChangeBatch:
        if self.shard is None:  # every shard reads the whole change sequence and keeps its own listings
            return batch
        return dataclasses.replace(batch, upserted=self.shard.owned(batch.upserted),
                                   deleted=self.shard.owned(batch.deleted))

    def _fetch(self, current: IndexSnapshot, generation: int, batch: loader.ChangeBatch):
        """(upserted items or None, ids to delete) for a batch of changes."""
        items = loader.fetch_postings(self.engine, generation, batch.upserted, n_bytes=current.n_bytes,
                                      n_bins=current.n_bins) if batch.upserted else None
        # An upsert whose posting is gone by now was deleted since: treat it as a delete.
        found = set() if items is None else set(items.ids.tolist())
        missing = sorted(set(batch.upserted) - found)
        deletes = np.asarray(batch.deleted + missing, dtype=np.int64)
        return (items if items is not None and len(items) else None), deletes

    # -- snapshot files ----------------------------------------------------------------------------------------------

    def _file(self, generation: int | None) -> Path | None:
        if self.snapshot_dir is None or generation is None:
            return None
        shard = "" if self.shard is None else f"-shard-{self.shard.index}-of-{self.shard.count}"
        return self.snapshot_dir / f"generation-{generation}{shard}"

    def _from_file(self) -> tuple[IndexSnapshot, str | None] | None:
        """(the active generation's snapshot file with every change since it replayed, its model version), or None
        (then bulk-load)."""
        if self.snapshot_dir is None:
            return None
        gen, model_version, created, last_seq = loader.active_generation(self.engine)
        path = self._file(gen)
        meta = None if path is None else files.read_meta(path)
        if meta is None:
            return None
        if (meta.get("generation") != gen or meta.get("model_version") != model_version
                or meta.get("created") != created
                or meta.get("shard") != (None if self.shard is None else str(self.shard))
                or int(meta.get("sequence", -1)) > last_seq):
            logger.info("snapshot file %s does not match the database (generation %s, seq %d): bulk-loading",
                        path, gen, last_seq)
            return None
        t0 = time.perf_counter()
        try:
            snap, meta = files.load(path)
        except ValueError as exc:
            logger.warning("snapshot file unusable, bulk-loading instead: %s", exc)
            return None
        read_s = time.perf_counter() - t0
        replayed = 0
        while True:  # catch up before reporting ready: a restart never serves a stale index
            batch = self._owned(loader.read_changes(self.engine, after_seq=snap.sequence, generation_id=gen))
            if batch.activated:
                return None  # another generation became active meanwhile: load that one
            if batch.last_seq == snap.sequence:
                break
            items, deletes = self._fetch(snap, gen, batch)
            snap = snap.apply(items, deletes, sequence=batch.last_seq)
            replayed += len(batch.upserted) + len(batch.deleted)
        self._created = created
        self.holder.state.extra["snapshot_file"] = {"path": str(path), "read_s": round(read_s, 2),
                                                    "replayed": replayed, "sequence": int(meta["sequence"])}
        logger.info("snapshot file %s read in %.2f s; %d changes replayed", path, read_s, replayed)
        return snap, model_version

    def _save_later(self, snap: IndexSnapshot, model_version: str | None) -> None:
        """Write the snapshot's file on a thread (skipped while a previous write still runs: the next merge or load
        writes a newer one), and remove the files of other generations."""
        path, created = self._file(snap.generation), self._created
        if path is None or created is None or (self._writer is not None and self._writer.is_alive()):
            return

        def write() -> None:
            t0 = time.perf_counter()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                files.save(snap, path, meta={"model_version": model_version, "created": created,
                                             "shard": None if self.shard is None else str(self.shard)})
                for old in path.parent.glob("generation-*"):
                    if old.name != path.name and not old.name.startswith(path.name + "."):
                        shutil.rmtree(old, ignore_errors=True)
                logger.info("snapshot file %s written in %.1f s", path, time.perf_counter() - t0)
            except OSError as exc:
                logger.warning("could not write the snapshot file %s: %s", path, exc)

        self._writer = threading.Thread(target=write, name="snapshot-file", daemon=True)
        self._writer.start()

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
