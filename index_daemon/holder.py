"""SnapshotHolder: the current immutable snapshot, swapped atomically; readers keep the one they took."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DaemonState:
    """What readiness reports."""

    status: str = "loading"  # loading | ready | error
    generation: int | None = None
    model_version: str | None = None
    last_seq: int = 0
    items: int = 0
    index_bytes: int = 0
    loaded_at: float | None = None
    load_seconds: float | None = None
    last_applied_at: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SnapshotHolder:
    def __init__(self) -> None:
        self._snapshot: Any = None
        self._lock = threading.Lock()
        self.state = DaemonState()

    def current(self) -> Any:
        """The snapshot to answer one request with (a reference: later swaps do not affect it)."""
        return self._snapshot

    def swap(self, snapshot: Any, **state: Any) -> None:
        with self._lock:
            self._snapshot = snapshot
            for k, v in state.items():
                setattr(self.state, k, v)
            self.state.items = 0 if snapshot is None else int(snapshot.n_items)
            self.state.index_bytes = 0 if snapshot is None else int(snapshot.nbytes)
            self.state.last_applied_at = time.time()
