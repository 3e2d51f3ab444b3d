"""The one process launcher (`Child`, used by `lookalike up` and by the tests), and a running Lookalike (worker,
index daemon and API processes talking over sockets, as in production) for the integration tests and benchmarks."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from shared.config import REPO_ROOT, Settings, to_environ

logger = logging.getLogger("lookalike")
ROLES = ("worker", "indexd", "api")
PR_SET_PDEATHSIG = 1
CHILD_STOP_TIMEOUT_S = 15


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the child if its parent dies, even by SIGKILL, so a killed
    supervisor or test run leaves no orphan worker, daemon or API behind (Linux only; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Child:
    """One role process: in its own session (a terminal's Ctrl-C reaches only the parent, which stops children in
    order), dying with its parent, its output appended to <log_dir>/<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path,
                 cwd: Path | None = None) -> None:
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.log_offset = 0  # where this start's output begins in the (appended) log

    def start(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                         start_new_session=True, preexec_fn=die_with_parent)

    def output(self) -> str:
        """What this start of the process has written so far (not an earlier run's lines in the same log)."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL, *, timeout_s: float = 30) -> None:
        """Send `sig` to the whole process group and wait for the process to exit."""
        if not self.alive():
            return
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within CHILD_STOP_TIMEOUT_S."""
        try:
            self.kill(signal.SIGTERM, timeout_s=CHILD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %ss; killing it", self.name, CHILD_STOP_TIMEOUT_S)
            self.kill(signal.SIGKILL)


@dataclass
class LiveSystem:
    settings: Settings
    log_dir: Path
    procs: dict[str, Child] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    @property
    def index_url(self) -> str:
        return self.settings.resolved_index_url

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
        env.update(to_environ(self.settings))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, role: str, *args: str) -> None:
        """Start one role (`lookalike <role> <args>`), replacing a stopped process of that role."""
        child = Child(role, [sys.executable, "-m", "lookalike", role, *args], self.env(), self.log_dir, cwd=REPO_ROOT)
        child.start()
        self.procs[role] = child

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Signal a role's whole process group (a worker's pool children too) and wait for it to exit."""
        child = self.procs.get(role)
        if child is not None:
            child.kill(sig, timeout_s=30)

    def wait_ready(self, role: str, timeout_s: float = 180) -> None:
        url = {"api": f"{self.api_url}/healthz", "indexd": f"{self.index_url}/readyz"}.get(role)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[role]
            if proc.poll() is not None:
                raise RuntimeError(f"{role} exited: {self.log_tail(role)}")
            if url is None:
                if "ready." in proc.output():  # celery prints "celery@host ready."
                    return
            else:
                try:
                    if requests.get(url, timeout=1).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"{role} not ready after {timeout_s}s: {self.log_tail(role)}")

    def log_tail(self, role: str, n: int = 3000) -> str:
        path = self.log_dir / f"{role}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        for role in reversed(ROLES):
            if role in self.procs:
                self.procs[role].stop()


def start_system(settings: Settings, log_dir: Path) -> LiveSystem:
    log_dir.mkdir(parents=True, exist_ok=True)
    system = LiveSystem(settings=settings, log_dir=log_dir)
    for role in ROLES:
        system.start(role)
    for role in ROLES:
        system.wait_ready(role)
    return system
