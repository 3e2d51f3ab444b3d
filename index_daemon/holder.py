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
    # The generation's version contract (index_generations.networks / params): what queries must match and the
    # ranking parameters it is served with.
    networks: dict[str, str] | None = None
    params: dict[str, Any] | None = None
    previous_generation: int | None = None
    previous_model_version: str | None = None


@dataclass(frozen=True)
class Served:
    """A snapshot together with the generation it belongs to: one reference, so a request never mixes them."""

    snapshot: Any
    generation: int | None
    model_version: str | None
    params: dict[str, Any]
    current: bool  # False: the previously active generation, kept while API processes switch networks


class SnapshotHolder:
    def __init__(self) -> None:
        self._snapshot: Any = None
        self._served: Served | None = None
        self._previous: Served | None = None
        self._lock = threading.Lock()
        self.state = DaemonState()

    def current(self) -> Any:
        """The snapshot to answer one request with (a reference: later swaps do not affect it)."""
        return self._snapshot

    def pick(self, model_version: str | None) -> Served | None:
        """What answers a query encoded by networks of `model_version`: the active generation when it matches
        (or when the caller names no version), the previously active one when that matches, else None."""
        served, previous = self._served, self._previous
        if served is not None and (model_version is None or served.model_version == model_version):
            return served
        if previous is not None and previous.model_version == model_version:
            return previous
        return None

    def keep_previous(self) -> None:
        """Before another generation is swapped in: keep the one being served for queries of its networks, so API
        processes still running them get consistent answers until they switch (it no longer follows changes)."""
        with self._lock:
            if self._served is not None and self._served.snapshot is not None:
                self._previous = Served(self._served.snapshot, self._served.generation, self._served.model_version,
                                        self._served.params, current=False)
                self.state.previous_generation = self._served.generation
                self.state.previous_model_version = self._served.model_version

    def swap(self, snapshot: Any, **state: Any) -> None:
        with self._lock:
            self._snapshot = snapshot
            for k, v in state.items():
                setattr(self.state, k, v)
            self.state.items = 0 if snapshot is None else int(snapshot.n_items)
            self.state.index_bytes = 0 if snapshot is None else int(snapshot.nbytes)
            self.state.last_applied_at = time.time()
            self._served = Served(snapshot, self.state.generation, self.state.model_version,
                                  dict(self.state.params or {}), current=True)
            if self._previous is not None and self._previous.generation == self.state.generation:
                self._previous = None  # rolled back onto it: the fresh load replaces the frozen copy
                self.state.previous_generation = self.state.previous_model_version = None
