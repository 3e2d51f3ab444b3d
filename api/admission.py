"""Admission control: a bounded number of image decodes + network passes at once, a short bounded queue, and
503 with Retry-After at once beyond it (a shopper is told to retry rather than left waiting).

Two lanes: uploads whose decode is expensive (a 40 Mpx PNG decodes every pixel whatever the work size) run in
a small heavy lane with no queue, so a burst of them cannot crowd out ordinary searches.
"""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import current_app, request

from shared.config import Settings
from shared.errors import TransientError
from shared.imaging import decode_cost

F = TypeVar("F", bound=Callable[..., Any])
RETRY_AFTER_S = 1


class Overloaded(TransientError):
    """Every slot is busy and the queue is full (or the wait ran out); the API answers 503 + Retry-After."""

    code = "overloaded"
    retry_after_s = RETRY_AFTER_S


class Admission:
    """`concurrency` slots; up to `queue` callers wait at most `wait_s` for one; everyone else is refused."""

    def __init__(self, *, concurrency: int, queue: int, wait_s: float, name: str = "general") -> None:
        self.name, self.concurrency, self.queue, self.wait_s = name, concurrency, queue, wait_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.refused = 0


    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                if self.waiting >= self.queue:
                    self.refused += 1
                    raise Overloaded(f"the server is busy ({self.concurrency} {self._what} running, "
                                     f"{self.waiting} waiting); retry in {RETRY_AFTER_S} s")
                self.waiting += 1
            try:
                got = self._slots.acquire(timeout=self.wait_s)
            finally:
                with self._lock:
                    self.waiting -= 1
            if not got:
                with self._lock:
                    self.refused += 1
                raise Overloaded(f"the server is busy (no slot free within {self.wait_s:g} s); "
                                 f"retry in {RETRY_AFTER_S} s")
        with self._lock:
            self.running += 1
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1
            self._slots.release()

    @property
    def _what(self) -> str:
        return "large-image requests" if self.name == "heavy" else "requests"

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"running": self.running, "waiting": self.waiting, "refused": self.refused,
                    "concurrency": self.concurrency, "queue": self.queue}


class Lanes:
    """The general lane and the heavy lane of one app."""

    def __init__(self, settings: Settings) -> None:
        self.heavy_pixels = settings.api_heavy_pixels
        self.general = Admission(concurrency=settings.api_concurrency, queue=settings.api_queue,
                                 wait_s=settings.api_queue_wait_s)
        self.heavy = Admission(concurrency=settings.api_heavy_concurrency, queue=0, wait_s=0.0, name="heavy")

    def for_request(self) -> Admission:
        """The heavy lane for an upload whose header promises an expensive decode, else the general lane."""
        f = request.files.get("image")
        if f is None:
            return self.general
        head = f.read()
        f.seek(0)  # the view reads the upload again
        return self.heavy if decode_cost(head) > self.heavy_pixels else self.general


def lanes() -> Lanes:
    """This app's admission lanes (created from its settings on first use)."""
    ext = current_app.extensions
    if "lookalike_admission" not in ext:
        with _create_lock:
            if "lookalike_admission" not in ext:
                ext["lookalike_admission"] = Lanes(ext["lookalike"].settings)
    return ext["lookalike_admission"]


_create_lock = threading.Lock()


def admitted(view: F) -> F:
    """Decorator for views that decode an image or run the networks: they run inside an admission slot."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with lanes().for_request().slot():
            return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
