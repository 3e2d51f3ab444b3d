"""Embedded PostgreSQL and Redis: real servers that start, are reused, and stop without leftovers."""
from __future__ import annotations

import shutil
import subprocess
import sys

import psutil
import pytest
import redis
from sqlalchemy import create_engine, text

from lookalike.services import EmbeddedServices
from shared.config import REPO_ROOT

pytestmark = pytest.mark.integration


def _server_pids(var_dir) -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(var_dir) in cmd and ("postgres" in cmd or "redis-server" in cmd):
            out.append(p.pid)
    return out


def test_start_reuse_and_stop_leave_no_processes(server_tmp_path):
    var_dir = server_tmp_path / "var"
    svc = EmbeddedServices(var_dir=var_dir)
    svc.start_postgres()
    svc.start_redis()
    try:
        eng = create_engine(svc.database_url.replace("postgresql://", "postgresql+psycopg2://"))
        with eng.begin() as conn:
            conn.execute(text("CREATE TABLE kept (x int)"))
            conn.execute(text("INSERT INTO kept VALUES (42)"))
        eng.dispose()
        assert redis.Redis.from_url(svc.redis_url).ping()
        assert _server_pids(var_dir)
    finally:
        svc.stop()
    assert _server_pids(var_dir) == []
    # Second run reuses the data directory.
    svc2 = EmbeddedServices(var_dir=var_dir)
    svc2.start_postgres()
    svc2.start_redis()
    try:
        eng = create_engine(svc2.database_url.replace("postgresql://", "postgresql+psycopg2://"))
        with eng.connect() as conn:
            assert conn.execute(text("SELECT x FROM kept")).scalar_one() == 42
        eng.dispose()
    finally:
        svc2.stop()
    assert _server_pids(var_dir) == []


def test_migrate_command_starts_and_stops_embedded_servers(server_tmp_path):
    tmp_path = server_tmp_path
    env = {"LOOKALIKE_VAR_DIR": str(tmp_path / "var"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "lookalike", "migrate"], env=env, capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "up to date" in out.stdout
    assert _server_pids(tmp_path / "var") == []


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is installed by bin/test")
def test_compose_file_is_valid():
    out = subprocess.run(["docker-compose", "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_procfile_roles_run_under_honcho():
    out = subprocess.run([sys.executable, "-m", "honcho", "-f", str(REPO_ROOT / "Procfile"), "check"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    roles = {line.split(":", 1)[0] for line in (REPO_ROOT / "Procfile").read_text().splitlines()
             if line and not line.startswith("#")}
    assert {"web", "worker", "indexd"} <= roles
