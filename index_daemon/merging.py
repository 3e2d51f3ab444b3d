"""Merges off the serving path: the merged snapshot is built on a thread beside the serving one, then swapped in with
the changes that arrived meanwhile replayed, so the change loop keeps its pace while a merge runs."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from shared.index.arrays import ItemArrays
from shared.index.snapshot import IndexSnapshot
from shared.index.refine import prepare as prepare_facets

logger = logging.getLogger(__name__)


class BackgroundMerger:
    """Applies changes without merging; once a snapshot needs a merge, builds it on a thread, and hands it back (with
    the changes since replayed) from `apply` or `finish`. One per served generation: a full load starts a new one."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._result: IndexSnapshot | None = None
        self._error: BaseException | None = None
        self._log: list[tuple[ItemArrays | None, np.ndarray, int | None]] = []
        self.merges = 0
        self.last_merge_s: float | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def apply(self, current: IndexSnapshot, upserts: ItemArrays | None, deletes: np.ndarray, *,
              sequence: int | None) -> IndexSnapshot:
        """The snapshot to serve after these changes (never merged here: the delta just grows meanwhile)."""
        snap = current.apply(upserts, deletes, sequence=sequence, merge=False)
        if self._thread is not None:
            self._log.append((upserts, deletes, sequence))  # the merge's base does not have them
            return self.finish() or snap
        if snap.needs_merge:
            self._start(snap)
        return snap

    def finish(self) -> IndexSnapshot | None:
        """The merged snapshot with every change since its base replayed, once its thread is done; else None."""
        if self._thread is None or self._thread.is_alive():
            return None
        self._thread.join()
        merged, error, log = self._result, self._error, self._log
        self._thread, self._result, self._error, self._log = None, None, None, []
        if merged is None:
            logger.warning("background merge failed (serving the unmerged snapshot): %s", error)
            return None
        for upserts, deletes, sequence in log:
            merged = merged.apply(upserts, deletes, sequence=sequence, merge=False)
        return merged

    def _start(self, base: IndexSnapshot) -> None:
        def run() -> None:
            t0 = time.perf_counter()
            try:
                merged = base.apply(None, np.empty(0, np.int64), merge=True)
                prepare_facets(merged)  # the new base's facet tables, also off the loop
                self._result = merged
            except BaseException as exc:  # noqa: BLE001 - reported by finish(); the loop keeps serving
                self._error = exc
            self.merges += 1
            self.last_merge_s = time.perf_counter() - t0

        self._log = []
        self._thread = threading.Thread(target=run, name="merge", daemon=True)
        self._thread.start()

