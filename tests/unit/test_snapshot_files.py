"""shared.index.files: a snapshot written to a folder reads back identical (tombstones and delta included), and a
folder that is not a complete snapshot is refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shared.index import files
from shared.index.arrays import ItemArrays
from shared.index.snapshot import IndexSnapshot


def _snapshot() -> IndexSnapshot:
    rng = np.random.default_rng(3)
    n = 400
    snap = IndexSnapshot.build(np.arange(1, n + 1) * 3, rng.integers(1, 5, n),
                               [sorted(set(rng.integers(1, 12, 4).tolist())) for _ in range(n)],
                               rng.integers(0, 256, (n, 32), dtype=np.uint8), rng.integers(0, 40, (n, 8), np.uint8),
                               generation=7, sequence=11)
    ups = ItemArrays.create([3, 5000], [2, 1], [[1, 2], []], rng.integers(0, 256, (2, 32), dtype=np.uint8),
                            rng.integers(0, 40, (2, 8), np.uint8))
    return snap.apply(ups, [6, 9], sequence=12, merge=False)


def test_round_trip_answers_identically(tmp_path) -> None:
    snap = _snapshot()
    files.save(snap, tmp_path / "s", meta={"model_version": "v1"})
    back, meta = files.load(tmp_path / "s")
    assert meta["model_version"] == "v1" and meta["sequence"] == 12 and back.sequence == 12
    assert (back.n_items, back.n_deleted, back.delta_size, back.generation) == (
        snap.n_items, snap.n_deleted, snap.delta_size, snap.generation)
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = dict(code=rng.integers(0, 256, 32, dtype=np.uint8), colour=rng.integers(0, 40, 8).astype(np.uint8),
                 category_id=int(rng.integers(1, 5)), attribute_ids=[1, 2], k=15, colour_weight=0.3)
        assert back.search(**q).hits == snap.search(**q).hits
    files.save(back, tmp_path / "s", meta={"model_version": "v2"})  # replaces the folder in place
    assert files.read_meta(tmp_path / "s")["model_version"] == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_incomplete_folders_are_refused(tmp_path) -> None:
    files.save(_snapshot(), tmp_path / "s")
    (tmp_path / "s" / "base.codes.npy").write_bytes(b"truncated")
    with pytest.raises(ValueError):
        files.load(tmp_path / "s")
    (tmp_path / "s" / "meta.json").write_text(json.dumps({"format": 99}))
    assert files.read_meta(tmp_path / "s") is None
    with pytest.raises(ValueError):
        files.load(tmp_path / "nothing")
