"""Snapshot files: an IndexSnapshot written as one .npy file per array, read back without per-row work.

A folder holds the base segment's arrays (`base.<field>.npy`), the tombstones (`dead.npy`), the delta's items
(`delta.<field>.npy`) and `meta.json` (format, generation, sequence, n_bits, plus what the caller adds: the model
version and shard the daemon checks before trusting the file). Reading is one np.load (a single read into a fresh
array) per file, so a restart costs about what the disk or page cache delivers; the delta segment is rebuilt (small).
A folder is written beside its final name and renamed into place, meta.json last, so a reader never sees half of one:
a folder without a readable meta.json, or whose arrays do not load, is not a snapshot (`load` raises ValueError).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shared.index.arrays import ItemArrays
from shared.index.segment import Segment
from shared.index.snapshot import IndexSnapshot

__all__ = ["FORMAT", "save", "load", "read_meta"]

FORMAT = 1
_ITEM_FIELDS = tuple(f.name for f in dataclasses.fields(ItemArrays))
_SEGMENT_FIELDS = tuple(f.name for f in dataclasses.fields(Segment))


def save(snap: IndexSnapshot, directory: Path, *, meta: dict[str, Any] | None = None) -> None:
    """Write `snap` to `directory` (replaced if it exists). meta: JSON-able fields stored beside the arrays."""
    directory = Path(directory)
    base, dead, delta = snap.parts()
    tmp = directory.with_name(directory.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    arrays = {f"base.{f}": getattr(base, f) for f in _SEGMENT_FIELDS}
    arrays["dead"] = dead
    arrays.update({f"delta.{f}": getattr(delta, f) for f in _ITEM_FIELDS})
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
    info = {"format": FORMAT, "generation": snap.generation, "sequence": snap.sequence, "n_bits": snap.n_bits,
            "n_items": snap.n_items, **(meta or {})}
    with open(tmp / "meta.json", "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def read_meta(directory: Path) -> dict[str, Any] | None:
    """The folder's meta.json, or None when there is no complete snapshot there."""
    try:
        meta = json.loads((Path(directory) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def load(directory: Path) -> tuple[IndexSnapshot, dict[str, Any]]:
    """(the snapshot, its meta) from a folder written by `save`; ValueError when it is not a complete snapshot."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta is None:
        raise ValueError(f"{directory} holds no snapshot of format {FORMAT}")
    try:
        def arr(name: str) -> np.ndarray:
            return np.load(directory / f"{name}.npy", allow_pickle=False)

        base = Segment(**{f: arr(f"base.{f}") for f in _SEGMENT_FIELDS})
        delta = ItemArrays(**{f: arr(f"delta.{f}") for f in _ITEM_FIELDS})
        snap = IndexSnapshot.from_parts(generation=int(meta["generation"]), sequence=int(meta["sequence"]),
                                        n_bits=int(meta["n_bits"]), base=base, dead=arr("dead"), delta_items=delta)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{directory}: unreadable snapshot ({exc})") from exc
    if snap.n_items != int(meta.get("n_items", -1)):
        raise ValueError(f"{directory}: {snap.n_items} items, meta.json says {meta.get('n_items')}")
    return snap, meta
