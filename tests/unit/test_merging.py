"""index_daemon.merging: a merge built beside the serving snapshot, changes applied meanwhile and replayed on it,
answers exactly like applying every change in order."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import shared.index.snapshot as snapshot_module
from index_daemon.merging import BackgroundMerger
from shared.index.arrays import ItemArrays
from shared.index.snapshot import IndexSnapshot

N_BYTES, N_BINS = 4, 8


def _items(rng, ids) -> ItemArrays:
    n = len(ids)
    return ItemArrays.create(list(ids), rng.integers(1, 4, size=n).tolist(),
                             [sorted(set(rng.integers(1, 9, size=3).tolist())) for _ in range(n)],
                             rng.integers(0, 256, size=(n, N_BYTES), dtype=np.uint8),
                             rng.integers(0, 64, size=(n, N_BINS), dtype=np.uint8))


def _answers(snap: IndexSnapshot, queries) -> list:
    return [snap.search(code=q, colour=c, category_id=cat, attribute_ids=[1, 2], k=25, colour_weight=0.2).hits
            for q, c, cat in queries]


@pytest.fixture
def slow_merges(monkeypatch):
    """Merge thresholds small enough for a small index, and a gate that holds every merge until released, so
    changes surely arrive while one is being built."""
    monkeypatch.setattr(snapshot_module, "_MERGE_MIN_ITEMS", 20)
    monkeypatch.setattr(snapshot_module, "_MERGE_FRACTION", 0.0)
    gate = threading.Event()
    apply = IndexSnapshot.apply

    def gated(self, *args, **kwargs):
        if kwargs.get("merge"):
            gate.wait(30)
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(IndexSnapshot, "apply", gated)
    return gate


def test_changes_during_a_merge_are_replayed_on_the_merged_snapshot(slow_merges):
    rng = np.random.default_rng(0)
    snap = IndexSnapshot.from_items(_items(rng, range(1, 501)), generation=1)
    reference = snap
    merger = BackgroundMerger()
    queries = [(rng.integers(0, 256, size=N_BYTES, dtype=np.uint8), rng.dirichlet(np.ones(N_BINS)).astype(np.float32),
                c) for c in (None, 1, 2, 3)]
    next_id, seq = 501, 0
    bases = {id(snap.segments()[0][0])}
    for step in range(30):
        seq += 1
        ups = _items(rng, range(next_id, next_id + 5)) if step % 3 else _items(rng, rng.choice(
            np.arange(1, next_id), 5, replace=False))  # new listings, or changed ones
        next_id += 5 if step % 3 else 0
        dels = np.setdiff1d(rng.choice(np.arange(1, next_id), 3, replace=False), ups.ids)
        reference = reference.apply(ups, dels, sequence=seq, merge=False)
        snap = merger.apply(snap, ups, dels, sequence=seq)
        if step == 12:
            assert merger.running and snap.delta_size > 20  # the merge waits; the serving snapshot keeps changing
            slow_merges.set()
        bases.add(id(snap.segments()[0][0]))  # a new base segment: a merged snapshot is being served
        assert snap.sequence == seq
        assert _answers(snap, queries) == _answers(reference, queries)
    merger._thread and merger._thread.join(10)
    done = merger.finish()
    if done is not None:  # the merge finished after the last change (a loaded machine): served from here on
        snap = done
        bases.add(id(snap.segments()[0][0]))
        assert _answers(snap, queries) == _answers(reference, queries)
    assert merger.merges >= 1 and len(bases) >= 2  # a merged snapshot (changes replayed) was served
