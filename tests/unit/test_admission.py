"""Admission control: bounded slots, a bounded wait, 503-worthy refusals at once beyond the queue."""
from __future__ import annotations

import threading
import time

import pytest

from api.admission import Admission, Overloaded
from shared.errors import TransientError


def _hold(adm: Admission, entered: threading.Event, release: threading.Event) -> threading.Thread:
    def run() -> None:
        with adm.slot():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=run)
    t.start()
    assert entered.wait(5)
    return t


def test_beyond_slots_and_queue_is_refused_at_once() -> None:
    adm = Admission(concurrency=1, queue=1, wait_s=5.0)
    release = threading.Event()
    holder = _hold(adm, threading.Event(), release)
    waited: list[str] = []

    def waiter() -> None:
        with adm.slot():
            waited.append("ran")

    w = threading.Thread(target=waiter)
    w.start()
    deadline = time.monotonic() + 5
    while adm.snapshot()["waiting"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert adm.snapshot()["waiting"] == 1
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match="busy"):
        with adm.slot():
            pass
    assert time.monotonic() - t0 < 0.5  # refused at once, not after the wait
    release.set()
    holder.join()
    w.join()
    assert waited == ["ran"]  # the queued one got the slot
    assert adm.snapshot() == {"running": 0, "waiting": 0, "refused": 1, "concurrency": 1, "queue": 1}


def test_wait_is_bounded() -> None:
    adm = Admission(concurrency=1, queue=4, wait_s=0.2)
    release = threading.Event()
    holder = _hold(adm, threading.Event(), release)
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match="no slot free within 0.2 s"):
        with adm.slot():
            pass
    assert 0.15 < time.monotonic() - t0 < 2
    release.set()
    holder.join()


def test_overloaded_is_a_transient_error_with_retry_after() -> None:
    assert issubclass(Overloaded, TransientError) and Overloaded.retry_after_s >= 1


def test_exceptions_inside_release_the_slot() -> None:
    adm = Admission(concurrency=1, queue=0, wait_s=0)
    with pytest.raises(ValueError):
        with adm.slot():
            raise ValueError("boom")
    with adm.slot():
        assert adm.snapshot()["running"] == 1


def test_queued_requests_are_refused_when_they_could_not_be_answered_within_the_target() -> None:
    adm = Admission(concurrency=1, queue=10, wait_s=5.0, target_s=1.0)
    with adm.slot():
        time.sleep(0.6)  # a request held the slot 0.6 s: the moving average starts there
    assert 0.5 < adm.held_s < 1.5
    release = threading.Event()
    holder = _hold(adm, threading.Event(), release)
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match="about 0.6 s each"):
        # One waiter would need ~0.6 s of wait + ~0.6 s of work: over the 1 s target, so refused at once.
        with adm.slot():
            pass
    assert time.monotonic() - t0 < 0.5
    release.set()
    holder.join()


def test_without_history_the_queue_waits_up_to_the_target() -> None:
    adm = Admission(concurrency=1, queue=1, wait_s=5.0, target_s=0.3)
    release = threading.Event()
    holder = _hold(adm, threading.Event(), release)
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match="no slot free within 0.3 s"):
        with adm.slot():
            pass
    assert 0.25 < time.monotonic() - t0 < 2
    release.set()
    holder.join()


def test_expensive_uploads_run_in_the_heavy_lane_on_a_lower_priority_thread() -> None:
    import io
    import os

    from flask import Flask, jsonify, request
    from PIL import Image

    from api.admission import HEAVY_NICE, admitted
    from shared.config import load_settings

    app = Flask(__name__)

    class Res:
        settings = load_settings({"LOOKALIKE_API_HEAVY_PIXELS": "1000"})

    app.extensions["lookalike"] = Res()

    @app.post("/x")
    @admitted
    def view():
        tid = threading.get_native_id()
        return jsonify(nice=os.getpriority(os.PRIO_PROCESS, tid), n=len(request.files["image"].read()))

    def png(side: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (side, side)).save(buf, "PNG")
        return buf.getvalue()

    client = app.test_client()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    big, small = png(40), png(20)  # 1600 px > 1000: heavy; 400 px: general
    r = client.post("/x", data={"image": (io.BytesIO(big), "a.png")})
    assert r.json == {"nice": min(19, base + HEAVY_NICE), "n": len(big)}  # the view still sees the whole upload
    r = client.post("/x", data={"image": (io.BytesIO(small), "a.png")})
    assert r.json == {"nice": base, "n": len(small)}
