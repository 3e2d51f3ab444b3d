"""A running Lookalike (worker, index daemon and API processes talking over sockets, as in production) for
the integration tests and the benchmarks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from shared.config import REPO_ROOT, Settings, to_environ

ROLES = ("worker", "indexd", "api")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to the child if its parent dies, even by SIGKILL, so a killed
    supervisor or test run leaves no orphan worker, daemon or API behind (Linux only; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class LiveSystem:
    settings: Settings
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

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

    def start(self, role: str) -> None:
        log = open(self.log_dir / f"{role}.log", "ab")
        self.procs[role] = subprocess.Popen([sys.executable, "-m", "lookalike", role], env=self.env(),
                                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                            start_new_session=True, preexec_fn=die_with_parent)
        log.close()

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Kill a role's whole process group (a worker's pool children too)."""
        proc = self.procs.get(role)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def wait_ready(self, role: str, timeout_s: float = 180) -> None:
        url = {"api": f"{self.api_url}/healthz", "indexd": f"{self.index_url}/readyz"}.get(role)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[role]
            if proc.poll() is not None:
                raise RuntimeError(f"{role} exited: {self.log_tail(role)}")
            if url is None:
                if "ready." in self.log_tail(role, 20000):  # celery prints "celery@host ready."
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
            self.kill(role, signal.SIGTERM)


def start_system(settings: Settings, log_dir: Path) -> LiveSystem:
    log_dir.mkdir(parents=True, exist_ok=True)
    system = LiveSystem(settings=settings, log_dir=log_dir)
    for role in ROLES:
        system.start(role)
    for role in ROLES:
        system.wait_ready(role)
    return system
