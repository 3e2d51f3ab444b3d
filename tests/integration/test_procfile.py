"""The README's external-server path, as a user runs it: `honcho start` runs the Procfile roles against
PostgreSQL and Redis named by URLs; every role migrates first (concurrently, serialised by a lock), the API
and the index daemon become ready, and nothing exits until honcho is stopped."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from lookalike.services import free_port
from shared.config import REPO_ROOT
from tests.conftest import recreate_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROCFILE_DB = "lookalike_procfile_test"
PROCFILE_REDIS_DB = 13


def _wait_json(url: str, proc: subprocess.Popen, out_path: Path, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "honcho exited early:\n" + out_path.read_text()[-4000:]
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready in {timeout_s:.0f}s:\n" + out_path.read_text()[-4000:])


def test_honcho_start_runs_every_role_until_stopped(server_urls, tmp_path):
    db_admin_url, redis_url = server_urls
    api_port, index_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `lookalike` of this venv
        "LOOKALIKE_DATABASE_URL": recreate_database(db_admin_url, PROCFILE_DB),
        "LOOKALIKE_REDIS_URL": redis_url.rsplit("/", 1)[0] + f"/{PROCFILE_REDIS_DB}",
        "LOOKALIKE_API_PORT": str(api_port), "LOOKALIKE_INDEX_PORT": str(index_port),
        "LOOKALIKE_VAR_DIR": str(tmp_path / "var"), "LOOKALIKE_TORCH_THREADS": "1",
        "LOOKALIKE_WORKER_CONCURRENCY": "1", "PYTHONUNBUFFERED": "1",
    })
    out_path = tmp_path / "honcho.log"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "honcho", "-f", str(REPO_ROOT / "Procfile"), "start"],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        ready = _wait_json(f"http://127.0.0.1:{api_port}/readyz", proc, out_path, timeout_s=300)
        assert ready["status"] == "ready", ready
        _wait_json(f"http://127.0.0.1:{index_port}/readyz", proc, out_path, timeout_s=60)
        log = out_path.read_text()
        # Three roles migrated the same empty database at once; all of them got through.
        assert log.count("database schema is up to date") == 3, log[-4000:]
        assert proc.poll() is None, "a role exited and honcho stopped everything"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
