"""The supervisor's restart budget: at most N restarts per window, and restarts resume once the window moves."""
from __future__ import annotations

from lookalike.supervisor import RestartBudget, Watched


def test_budget_per_window() -> None:
    b = RestartBudget(5, 60)
    for t in range(5):
        assert b.allow(float(t))
        b.record(float(t))
    assert not b.allow(10.0)
    assert 49 < b.wait_s(10.0) <= 50
    assert b.allow(60.0)  # the first restart left the window


def test_watched_restarts_within_budget_then_waits_and_never_gives_up() -> None:
    state = {"alive": False, "starts": 0}

    def restart() -> None:
        state["starts"] += 1  # the child dies again at once (a crash loop)

    w = Watched("worker", RestartBudget(2, 60), alive=lambda: state["alive"], restart=restart,
                describe_exit=lambda: "exit code 1")
    for t in range(10):
        w.check(float(t))
    assert state["starts"] == 2 and w.restarts == 2
    report = w.report(10.0)
    assert report["state"] == "down" and report["last_exit"] == "exit code 1"
    assert "restart budget used" in report["error"]
    w.check(61.0)  # the window moved: it is restarted again, not abandoned
    assert state["starts"] == 3
    state["alive"] = True
    w.check(62.0)
    assert w.report(62.0)["state"] == "running" and w.report(62.0)["restarts"] == 3


def test_failed_restart_is_reported_and_retried() -> None:
    calls = []

    def restart() -> None:
        calls.append(1)
        raise RuntimeError("port in use")

    w = Watched("redis", RestartBudget(5, 60), alive=lambda: False, restart=restart)
    w.check(0.0)
    w.check(1.0)
    assert len(calls) == 2 and "port in use" in w.report(1.0)["error"]
