"""Process roles and the `up` supervisor: embedded servers, migrations, worker, index daemon, API, and the
sample catalogue, started in order and stopped in reverse on Ctrl-C / SIGTERM / `lookalike down`."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from lookalike.services import services_for
from lookalike.system import Child
from shared.config import Settings, load_settings
from shared.supervision import REPORT_FILE

logger = logging.getLogger("lookalike")


def child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["LOOKALIKE_DATABASE_URL"] = settings.database_url or ""
    env["LOOKALIKE_REDIS_URL"] = settings.redis_url or ""
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# -- single roles (Procfile) ------------------------------------------------------------------------------

def cmd_migrate(args: argparse.Namespace) -> int:
    from lookalike.db_admin import downgrade, upgrade

    with services_for(load_settings(), need_redis=False) as (settings, _):
        if args.downgrade:
            downgrade(settings, args.downgrade)
        else:
            upgrade(settings, args.revision)
    print("database schema is up to date" if not args.downgrade else f"downgraded to {args.downgrade}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    with services_for(load_settings()) as (settings, _):
        from workers.celery_app import configure

        if getattr(args, "batch", None) is not None:
            settings = settings.with_overrides(worker_batch=args.batch)
        app = configure(settings)
        # No -B: the reconciler is a thread of this main process (workers.tasks), not a beat child that can die alone.
        argv = ["worker", "--loglevel", settings.log_level, "--concurrency", str(settings.worker_concurrency),
                "-Q", "lookalike", "--without-gossip", "--without-mingle"]
        watch = WorkerExitWatch()
        code = watch.run(app, argv)
    if watch.unexpected():
        # Celery's consumer has been seen to give up after the broker went away and came back (the worker exits
        # 0 with no stop signal; celery/celery#9054, WeblateOrg/docker#1820). Nothing is lost (Postgres holds
        # the jobs), but a worker that is gone processes nothing: start again in this same process, so whatever
        # supervises us (or nothing) sees one long-lived worker.
        logger.error("the Celery worker stopped without being asked to (exit %s); starting it again", code)
        time.sleep(WORKER_REEXEC_DELAY_S)
        os.execv(sys.executable, [sys.executable, "-m", "lookalike", *sys.argv[1:]])
    return code


WORKER_REEXEC_DELAY_S = 2.0


class WorkerExitWatch:
    """Runs a Celery worker and tells whether it stopped on its own: it had been ready, and no stop signal
    (SIGTERM, SIGINT, SIGQUIT, which Celery reports as worker_shutting_down) arrived."""

    def __init__(self) -> None:
        self.ready = False
        self.asked_to_stop = False

    def run(self, app: Any, argv: list[str]) -> int:
        from celery.signals import worker_ready, worker_shutting_down

        worker_ready.connect(self._on_ready, weak=False)
        worker_shutting_down.connect(self._on_stop, weak=False)
        try:
            app.worker_main(argv)
            return 0
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1

    def unexpected(self) -> bool:
        return self.ready and not self.asked_to_stop

    def _on_ready(self, **_: object) -> None:
        self.ready = True

    def _on_stop(self, **_: object) -> None:
        self.asked_to_stop = True


def cmd_indexd(args: argparse.Namespace) -> int:
    from index_daemon.__main__ import run

    with services_for(load_settings(), need_redis=False) as (settings, _):
        return run(settings)


def cmd_api(args: argparse.Namespace) -> int:
    from waitress import serve

    from api import create_app

    with services_for(load_settings()) as (settings, _):
        app = create_app(settings, preload_models=True)
        logger.info("API listening on http://%s:%s/", settings.api_host, settings.api_port)
        # More threads than admission slots + queue: the extra ones only answer 503s, health checks and cheap reads.
        serve(app, host=settings.api_host, port=settings.api_port, threads=settings.api_threads, ident="lookalike")
    return 0


# -- the supervisor ---------------------------------------------------------------------------------------

class RestartBudget:
    """At most `budget` restarts in any `window_s` seconds: a crash-looping child is restarted at a bounded
    rate, and never given up on."""

    def __init__(self, budget: int, window_s: float) -> None:
        self.budget, self.window_s = budget, window_s
        self.times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self.times and now - self.times[0] >= self.window_s:
            self.times.popleft()

    def allow(self, now: float) -> bool:
        self._prune(now)
        return len(self.times) < self.budget

    def record(self, now: float) -> None:
        self.times.append(now)

    def wait_s(self, now: float) -> float:
        """Seconds until the next restart is allowed."""
        self._prune(now)
        return 0.0 if len(self.times) < self.budget else self.window_s - (now - self.times[0])


class Watched:
    """Something the supervisor restarts: a child process or an embedded server."""

    def __init__(self, name: str, budget: RestartBudget, *, alive: Callable[[], bool],
                 restart: Callable[[], None], describe_exit: Callable[[], str] = lambda: "",
                 pid: Callable[[], int | None] = lambda: None) -> None:
        self.name, self.budget, self.pid = name, budget, pid
        self.alive, self._restart, self.describe_exit = alive, restart, describe_exit
        self.restarts = 0
        self.last_exit: str | None = None
        self.last_restart_at: float | None = None
        self.down_since: float | None = None
        self.error: str | None = None

    def check(self, now: float) -> None:
        """Restart it if it is down and the budget allows; log what happened."""
        if self.alive():
            self.down_since = None
            return
        if self.down_since is None:
            self.down_since, self.last_exit = now, self.describe_exit() or "exited"
            logger.warning("%s is down (%s)", self.name, self.last_exit)
        if not self.budget.allow(now):
            if self.error is None:
                logger.error("%s used its restart budget (%d in %ss); next restart in %.0f s", self.name,
                             self.budget.budget, self.budget.window_s, self.budget.wait_s(now))
            self.error = f"restart budget used; next restart in {self.budget.wait_s(now):.0f} s"
            return
        self.budget.record(now)
        self.restarts += 1
        self.last_restart_at = time.time()
        logger.warning("restarting %s (restart %d, %d in the last %ss)", self.name, self.restarts,
                       len(self.budget.times), self.budget.window_s)
        try:
            self._restart()
            self.error = None
        except Exception as exc:  # noqa: BLE001 - a failed restart is retried under the same budget
            self.error = f"restart failed: {exc}"
            logger.error("restarting %s failed: %s", self.name, exc)

    def report(self, now: float) -> dict[str, Any]:
        return {"state": "running" if self.down_since is None else "down", "pid": self.pid(), "restarts": self.restarts,
                "restarts_in_window": len(self.budget.times), "last_exit": self.last_exit,
                "last_restart_at": self.last_restart_at, "error": self.error}


def _wait_http(url: str, *, timeout_s: float, what: str, child: Child) -> dict:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{what} exited during start-up; see {child.log_path}")
        try:
            r = requests.get(url, timeout=2)
            if r.status_code == 200:
                return r.json()
            last = r.text[:200]
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not become ready within {timeout_s:.0f}s ({last}); see {child.log_path}")


def cmd_up(args: argparse.Namespace) -> int:
    base = load_settings()
    log_file = Path(base.var_dir) / "logs" / "up.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_file)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(file_handler)
    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(1))
    # A shell that starts `up` in the background leaves SIGINT ignored; Ctrl-C / kill -INT must still stop it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with services_for(base) as (settings, services):
        from lookalike.db_admin import upgrade

        upgrade(settings)
        print(f"PostgreSQL and Redis ready ({'embedded, under ' + str(settings.var_dir) if services else 'external'});"
              " schema migrated", flush=True)
        log_dir = Path(settings.var_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        (Path(settings.var_dir) / "up.pid").write_text(str(os.getpid()))
        env = child_env(settings)
        py = sys.executable
        indexds, index_urls, api_env = _index_children(settings, env, getattr(args, "shards", 1), py, log_dir)
        api = Child("api", [py, "-m", "lookalike", "api"], api_env, log_dir)
        children = [Child("worker", [py, "-m", "lookalike", "worker"], env, log_dir), *indexds, api]
        watchdog: Watchdog | None = None
        try:
            for c in children:
                c.start()
            watchdog = Watchdog(_watched(settings, services, children), Path(settings.var_dir) / REPORT_FILE)
            watchdog.start()
            api_url = f"http://{settings.api_host}:{settings.api_port}"
            for url, child in zip(index_urls, indexds):
                _wait_http(f"{url}/healthz", timeout_s=120, what=child.name, child=child)
            _wait_http(f"{api_url}/healthz", timeout_s=180, what="API", child=api)
            print(f"worker, index daemon and API started (logs in {log_dir})", flush=True)
            from lookalike.models_cmd import catch_up_with_checkpoints

            catch_up_with_checkpoints(settings, stop=lambda: bool(stop_requested))
            if not args.no_ingest:
                from lookalike.catalogue import ingest_catalogue, rows_for

                rows = rows_for(data=args.data, catalog=args.catalog, limit=args.limit)
                ingest_catalogue(rows, api_url=api_url, settings=settings, wait=True,
                                 stop=lambda: bool(stop_requested))
            print(f"\nLookalike is running. Search at: {api_url}/\n"
                  f"API docs: {api_url}/docs   Stop with Ctrl-C or `lookalike down`.", flush=True)
            while not stop_requested:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            if watchdog is not None:
                watchdog.stop()
            print("stopping API, index daemon and worker ...", flush=True)
            for c in reversed(children):
                c.stop()
            (Path(settings.var_dir) / "up.pid").unlink(missing_ok=True)
            if services is not None:
                print("stopping embedded PostgreSQL and Redis ...", flush=True)
    print("stopped", flush=True)
    return 0


def _index_children(settings: Settings, env: dict[str, str], shards: int, py: str,
                    log_dir: Path) -> tuple[list[Child], list[str], dict[str, str]]:
    """The index daemon(s), their URLs and the API's environment. One shard: one daemon, as always. N shards: daemon i holds
    the listings with id % N == i (LOOKALIKE_INDEX_SHARD) on INDEX_PORT + i; the API scatters to all of them."""
    if shards < 1:
        raise SystemExit("--shards must be at least 1")
    if shards == 1:
        return [Child("indexd", [py, "-m", "lookalike", "indexd"], env, log_dir)], [settings.resolved_index_url], env
    children, urls = [], []
    for i in range(shards):
        port = settings.index_port + i
        children.append(Child(f"indexd-{i}", [py, "-m", "lookalike", "indexd"],
                              {**env, "LOOKALIKE_INDEX_SHARD": f"{i}/{shards}", "LOOKALIKE_INDEX_PORT": str(port),
                               "LOOKALIKE_INDEX_URL": ""}, log_dir))
        urls.append(f"http://{settings.index_host}:{port}")
    return children, urls, {**env, "LOOKALIKE_INDEX_URLS": ",".join(urls)}


def _watched(settings: Settings, services: Any, children: list[Child]) -> list[Watched]:
    """Embedded servers first (children fail while they are down), then the children."""
    def budget() -> RestartBudget:
        return RestartBudget(settings.restart_budget, settings.restart_window_s)

    out = []
    if services is not None and "postgres" in services.owned:
        out.append(Watched("postgres", budget(), alive=services.postgres_alive, restart=services.restart_postgres,
                           pid=lambda: services._pg_pid))
    if services is not None and "redis" in services.owned:
        out.append(Watched("redis", budget(), alive=services.redis_alive, restart=services.restart_redis,
                           pid=lambda: services._redis_pid))
    for c in children:
        out.append(Watched(c.name, budget(), alive=c.alive, restart=c.start,
                           pid=lambda c=c: c.proc.pid if c.proc is not None else None,
                           describe_exit=lambda c=c: f"exit code {c.proc.returncode}; see {c.log_path}"
                           if c.proc is not None and c.proc.returncode is not None else ""))
    return out


class Watchdog:
    """A thread that checks every watched thing each second, restarts what is down within its budget, and
    writes what it did to var/supervisor.json (the API's /readyz shows it)."""

    def __init__(self, watched: list[Watched], report_path: Path, interval_s: float = 1.0) -> None:
        self.watched, self.report_path, self.interval_s = watched, report_path, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.report_path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            for w in self.watched:
                if self._stop.is_set():
                    return
                w.check(now)
            self._write(now)

    def _write(self, now: float) -> None:
        report = {"pid": os.getpid(), "updated_at": time.time(),
                  "watched": {w.name: w.report(now) for w in self.watched}}
        tmp = self.report_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(report))
            tmp.replace(self.report_path)
        except OSError as exc:
            logger.warning("could not write %s: %s", self.report_path, exc)



def cmd_down(args: argparse.Namespace) -> int:
    pid_file = Path(load_settings().var_dir) / "up.pid"
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        print("no running `lookalike up` found")
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        print("no running `lookalike up` found (stale pid file removed)")
        return 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("stopped")
            return 0
        time.sleep(0.3)
    print(f"`lookalike up` (pid {pid}) is still stopping", file=sys.stderr)
    return 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from lookalike.catalogue import ingest_catalogue, rows_for

    settings = load_settings()
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    try:
        requests.get(f"{api_url}/healthz", timeout=2).raise_for_status()
    except requests.RequestException:
        print(f"the API is not running at {api_url}; start it with `lookalike up`", file=sys.stderr)
        return 1
    with services_for(settings, need_redis=False) as (resolved, _):
        rows = rows_for(data=args.data, catalog=args.catalog, limit=args.limit)
        ingest_catalogue(rows, api_url=api_url, settings=resolved, wait=args.wait)
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    settings = load_settings()
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    if not settings.admin_token:
        print("set LOOKALIKE_ADMIN_TOKEN (the API's admin token) to reindex", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {settings.admin_token}"}
    body = {k: v for k, v in (("category", args.category), ("older_than", args.older_than)) if v}
    try:
        r = requests.post(f"{api_url}/v1/admin/reindex", json=body, headers=headers, timeout=10)
    except requests.RequestException:
        print(f"the API is not running at {api_url}; start it with `lookalike up`", file=sys.stderr)
        return 1
    if r.status_code != 202:
        print(f"reindex refused: {r.status_code} {r.text}", file=sys.stderr)
        return 1
    job = r.json()
    print(json.dumps(job))
    if args.no_wait:
        return 0
    from tqdm import tqdm

    bar = None
    while True:
        p = requests.get(f"{api_url}/v1/admin/jobs/{job['job_id']}", headers=headers, timeout=10).json()
        prog = p["progress"]
        if bar is None and prog["total"]:
            bar = tqdm(total=prog["total"], desc="reindex", unit="listing")
        if bar is not None:
            bar.n = prog["done"] + prog["failed"] + prog["superseded"]
            bar.refresh()
        if p["status"] != "running":
            if bar is not None:
                bar.close()
            print(json.dumps(p))
            return 0 if p["status"] == "done" else 1
        time.sleep(0.5)
