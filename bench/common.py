"""Helpers shared by the system benchmarks: a private running system and percentile tables."""
from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from lookalike.services import free_port
from shared.config import Settings, load_settings


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "mean": round(float(a.mean()), 2)}


def print_table(title: str, rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


def emit(result: dict, as_json: bool, table: callable) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        table(result)


@contextmanager
def private_system(*, var_dir: str | None = None, extra: dict[str, str] | None = None):
    """Embedded servers (unless LOOKALIKE_*_URL are set), a fresh schema, and worker + daemon + API processes
    on free ports: (settings, LiveSystem)."""
    from lookalike.db_admin import upgrade
    from lookalike.services import resolve_services
    from lookalike.system import start_system

    base = load_settings()
    tmp = tempfile.mkdtemp(prefix="lookalike-bench-")
    env = {"LOOKALIKE_VAR_DIR": var_dir or tmp, "LOOKALIKE_API_PORT": str(free_port()),
           "LOOKALIKE_INDEX_PORT": str(free_port()), "LOOKALIKE_ADMIN_TOKEN": "bench"}
    if base.database_url:
        env["LOOKALIKE_DATABASE_URL"] = base.database_url
    if base.redis_url:
        env["LOOKALIKE_REDIS_URL"] = base.redis_url
    env.update(extra or {})
    settings: Settings = load_settings(env)
    settings, services = resolve_services(settings)
    system = None
    try:
        upgrade(settings)
        system = start_system(settings, Path(tmp) / "logs")
        yield settings, system
    finally:
        if system is not None:
            system.stop()
        if services is not None:
            services.stop()
