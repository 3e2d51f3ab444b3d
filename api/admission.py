"""Admission control: a bounded number of image decodes + network passes at once, a short bounded queue, and
503 with Retry-After at once beyond it (a shopper is told to retry rather than left waiting).

Two lanes: uploads whose decode is expensive (a 40 Mpx PNG decodes every pixel whatever the work size) run in
a small heavy lane with no queue, on threads of lower CPU priority, so a burst of them cannot crowd out ordinary
searches.
"""
from __future__ import annotations

import contextvars
import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flask import current_app, request

from shared.config import Settings
from shared.errors import TransientError
from shared.imaging import decode_cost

F = TypeVar("F", bound=Callable[..., Any])
RETRY_AFTER_S = 1
# Heavy-lane threads run at this nice value: on a busy machine the kernel shares a process's CPU between its
# threads by weight, and nice 5 weighs about a third of an ordinary search thread (a heavy request still
# progresses while searches run; nice 10 starved it for seconds).
HEAVY_NICE = 5
logger = logging.getLogger(__name__)


class Overloaded(TransientError):
    """Every slot is busy and the queue is full (or the wait ran out); the API answers 503 + Retry-After."""

    code = "overloaded"
    retry_after_s = RETRY_AFTER_S


class Admission:
    """`concurrency` slots; up to `queue` callers wait for one, at most `wait_s` and only while the wait plus the
    recent time a slot is held (an average) fits in `target_s`; everyone else is refused at once."""

    def __init__(self, *, concurrency: int, queue: int, wait_s: float, target_s: float | None = None,
                 name: str = "general") -> None:
        self.name, self.concurrency, self.queue, self.wait_s = name, concurrency, queue, wait_s
        self.target_s = target_s
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.refused = 0
        self.held_s = 0.0  # moving average of how long a request holds a slot (0 until one finished)

    def _wait_budget(self) -> float:
        """How long a queued request may wait: its answer should come within target_s (the held time is what it
        still needs once it has a slot), and never later than wait_s."""
        if self.target_s is None:
            return self.wait_s
        return min(self.wait_s, self.target_s - self.held_s)

    def _refuse(self, why: str) -> Overloaded:
        self.refused += 1
        return Overloaded(f"the server is busy ({why}); retry in {RETRY_AFTER_S} s")

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                if self.waiting >= self.queue:
                    raise self._refuse(f"{self.concurrency} {self._what} running, {self.waiting} waiting")
                budget = self._wait_budget()
                # Slots free up about every held_s / concurrency: refuse now what could not be served in time.
                expected = (self.waiting + 1) * self.held_s / self.concurrency
                if budget <= 0 or expected > budget:
                    raise self._refuse(f"{self.concurrency} {self._what} running, {self.waiting} waiting, "
                                       f"about {self.held_s:.1f} s each")
                self.waiting += 1
            try:
                got = self._slots.acquire(timeout=budget)
            finally:
                with self._lock:
                    self.waiting -= 1
            if not got:
                with self._lock:
                    raise self._refuse(f"no slot free within {budget:.2g} s")
        with self._lock:
            self.running += 1
        t0 = time.monotonic()
        try:
            yield
        finally:
            held = time.monotonic() - t0
            with self._lock:
                self.running -= 1
                self.held_s = held if self.held_s == 0 else 0.8 * self.held_s + 0.2 * held
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
                                 wait_s=settings.api_queue_wait_s, target_s=settings.api_latency_target_s)
        self.heavy = Admission(concurrency=settings.api_heavy_concurrency, queue=0, wait_s=0.0, name="heavy")
        self.heavy_threads = ThreadPoolExecutor(settings.api_heavy_concurrency, thread_name_prefix="heavy",
                                                initializer=_lower_priority)

    def is_heavy(self) -> bool:
        """True for an upload whose header promises an expensive decode."""
        f = request.files.get("image")
        if f is None:
            return False
        head = f.read()
        f.seek(0)  # the view reads the upload again
        return decode_cost(head) > self.heavy_pixels

    def run(self, view: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a view in its lane: general requests on the calling thread, heavy ones on a low-priority thread
        (with this request's context)."""
        if not self.is_heavy():
            with self.general.slot():
                return view(*args, **kwargs)
        with self.heavy.slot():
            ctx = contextvars.copy_context()
            return self.heavy_threads.submit(ctx.run, view, *args, **kwargs).result()


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()  # PRIO_PROCESS with a thread id sets that thread only, on Linux
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + HEAVY_NICE))
    except (OSError, AttributeError) as exc:
        logger.info("heavy-lane thread keeps its priority (%s)", exc)


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
        return lanes().run(view, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
