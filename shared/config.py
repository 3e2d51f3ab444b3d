"""Settings: the only place that reads the environment (variables prefixed LOOKALIKE_)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

from shared.errors import ConfigError

PREFIX = "LOOKALIKE_"
REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_bool(name: str, raw: str) -> bool:
    """Strict boolean: true/false, 1/0, yes/no, on/off; anything else names the variable."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected a boolean (true/false, 1/0, yes/no, on/off), got {raw!r}")


def parse_int(name: str, raw: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Strict integer within bounds."""
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: must be <= {maximum}, got {value}")
    return value


def parse_float(name: str, raw: str, *, minimum: float | None = None) -> float:
    """Strict float with an optional lower bound."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
    return value


def parse_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    """A URL whose scheme is one of `schemes`."""
    value = raw.strip()
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        raise ConfigError(f"{name}: expected a URL starting with one of {', '.join(s + '://' for s in schemes)}, got {raw!r}")
    return value


def _opt(kind: Callable[[str, str], Any], doc: str, default: Any = None) -> Any:
    return field(default=default, metadata={"parse": kind, "doc": doc})


def _int(minimum: int | None = None, maximum: int | None = None) -> Callable[[str, str], int]:
    return lambda name, raw: parse_int(name, raw, minimum=minimum, maximum=maximum)


def _float(minimum: float | None = None) -> Callable[[str, str], float]:
    return lambda name, raw: parse_float(name, raw, minimum=minimum)


def _str(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name}: must not be empty")
    return raw.strip()


def _path(name: str, raw: str) -> Path:
    return Path(_str(name, raw)).expanduser()


def _db_url(name: str, raw: str) -> str:
    return parse_url(name, raw, ("postgresql", "postgresql+psycopg2", "postgres"))


def _redis_url(name: str, raw: str) -> str:
    return parse_url(name, raw, ("redis", "rediss", "redis+socket", "unix"))


def _http_url(name: str, raw: str) -> str:
    return parse_url(name, raw, ("http", "https"))


def _shard(name: str, raw: str) -> str:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", raw)
    if m is None or not int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"{name}: expected 'i/N' (shard i of N, 0 <= i < N), got {raw!r}")
    return f"{int(m.group(1))}/{int(m.group(2))}"


def _http_urls(name: str, raw: str) -> str:
    urls = [u.strip() for u in raw.split(",") if u.strip()]
    if not urls:
        raise ConfigError(f"{name}: expected comma-separated http(s) URLs, got {raw!r}")
    return ",".join(_http_url(name, u) for u in urls)


@dataclass(frozen=True)
class Settings:
    """Every setting Lookalike reads; `LOOKALIKE_<FIELD NAME UPPERCASED>` sets a field."""

    database_url: str | None = _opt(_db_url, "PostgreSQL URL; unset = start the embedded server under var/")
    redis_url: str | None = _opt(_redis_url, "Redis URL (broker); unset = start the embedded server under var/")
    var_dir: Path = _opt(_path, "where embedded servers keep their data, logs and pid files", REPO_ROOT / "var")
    data_dir: Path = _opt(_path, "a folder laid out like ../shared/data (manifest.csv, boxes.csv, images)",
                          REPO_ROOT.parent / "shared" / "data")
    models_dir: Path = _opt(_path, "folder holding the promoted checkpoints and model cards", REPO_ROOT / "models")
    api_host: str = _opt(_str, "address the Flask API binds", "127.0.0.1")
    api_port: int = _opt(_int(1, 65535), "port the Flask API binds", 8000)
    index_host: str = _opt(_str, "address the index daemon binds (loopback: it is internal)", "127.0.0.1")
    index_port: int = _opt(_int(1, 65535), "port the index daemon binds", 8001)
    index_url: str | None = _opt(_http_url, "URL the API uses to reach the daemon; unset = http://INDEX_HOST:INDEX_PORT")
    index_poll_ms: int = _opt(_int(10, 60_000), "how often the daemon polls the change sequence", 200)
    index_shard: str | None = _opt(_shard, "this index daemon is shard i of N ('i/N'): it holds only the listings "
                                   "with listing_id % N == i; unset = the whole index")
    index_urls: str | None = _opt(_http_urls, "comma-separated URLs of every index shard, in shard order (shard i "
                                  "at position i), the API scatters searches to; unset = INDEX_URL alone")
    admin_token: str | None = _opt(_str, "bearer token for /v1/admin/*; unset = admin endpoints answer 403")
    worker_concurrency: int = _opt(_int(1, 64), "Celery worker processes (one per core pays: each runs one torch thread)",
                                   2)
    worker_batch: int = _opt(_int(0, 1024), "jobs a worker process claims and runs through the networks as one batch "
                             "(`lookalike worker --batch N`); 0 = 1 on CPU, 32 on CUDA", 0)
    torch_threads: int = _opt(_int(0, 256), "torch intra-op threads per process (0 = torch's default); 1 keeps "
                              "concurrent API requests and workers from fighting over cores", 1)
    max_image_bytes: int = _opt(_int(1024), "largest accepted image file, bytes", 10 * 1024 * 1024)
    max_image_pixels: int = _opt(_int(1024), "largest accepted image, width*height (decompression-bomb cap; "
                                 "images with 4 bytes per pixel get 3/4 of it)", 40_000_000)
    max_image_aspect: float = _opt(_float(1.0), "largest accepted ratio of an image's longer side to its shorter side",
                                   20.0)
    decode_max_side: int = _opt(_int(64, 4096), "images are decoded straight to this longer side at most (JPEG at "
                                "reduced scale, others reduced before conversion): what the networks need", 384)
    api_threads: int = _opt(_int(1, 256), "HTTP threads of the API (waitress)", 16)
    api_concurrency: int = _opt(_int(1, 64), "image decodes + network passes one API process runs at once "
                                "(search and listing uploads)", 2)
    api_queue: int = _opt(_int(0, 1000), "requests that may wait for one of those slots; beyond it the API answers "
                          "503 with Retry-After at once", 4)
    api_queue_wait_s: float = _opt(_float(0.0), "longest wait for a slot before a 503 with Retry-After, seconds", 0.5)
    api_latency_target_s: float = _opt(_float(0.1), "a request waits for a slot only while its wait plus the recent "
                                       "time per request fits in this, seconds; beyond it, 503 with Retry-After at "
                                       "once", 1.2)
    api_heavy_pixels: int = _opt(_int(0), "uploads that decode more pixels than this (JPEG counts a quarter) run in "
                                 "the heavy lane, so they cannot crowd out ordinary searches", 8_000_000)
    api_heavy_concurrency: int = _opt(_int(1, 64), "heavy-lane requests one API process runs at once; more get "
                                      "503 with Retry-After at once", 1)
    fetch_timeout_s: float = _opt(_float(0.1), "timeout for fetching an image URL, seconds", 10.0)
    fetch_allow_private: bool = _opt(parse_bool, "allow image URLs on loopback/private addresses (tests only)", False)
    job_max_attempts: int = _opt(_int(1, 100), "attempts before a listing job is marked failed", 5)
    job_lease_s: int = _opt(_int(3), "job lease, seconds: renewed every third of it while the job runs, so a job "
                            "whose worker was killed is re-queued this long (plus one reconcile) after", 30)
    job_resend_s: int = _opt(_int(5), "a queued job not sent to the broker for this long is sent again", 300)
    reconcile_interval_s: int = _opt(_int(1), "how often the reconciler re-queues stuck jobs", 10)
    restart_budget: int = _opt(_int(1, 1000), "`lookalike up` restarts a child process or embedded server at most "
                               "this many times per restart window; beyond it, the next restart waits for the window", 5)
    restart_window_s: int = _opt(_int(1), "the restart budget's window, seconds", 60)
    log_level: str = _opt(_str, "logging level", "INFO")

    @property
    def resolved_index_url(self) -> str:
        """The daemon's base URL as the API sees it."""
        return self.index_url or f"http://{self.index_host}:{self.index_port}"

    @property
    def resolved_index_urls(self) -> list[str]:
        """Every index shard's base URL as the API sees it, in shard order (one: the unsharded daemon)."""
        return self.index_urls.split(",") if self.index_urls else [self.resolved_index_url]

    def with_overrides(self, **changes: Any) -> "Settings":
        """A copy with some fields replaced (used when embedded servers resolve their URLs)."""
        from dataclasses import replace

        return replace(self, **changes)


def env_name(field_name: str) -> str:
    """The environment variable that sets a Settings field."""
    return PREFIX + field_name.upper()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse settings from `environ` (default os.environ); raise ConfigError naming the bad variable."""
    env = os.environ if environ is None else environ
    known = {env_name(f.name) for f in fields(Settings)}
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see .env.example for the list")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = env_name(f.name)
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        values[f.name] = f.metadata["parse"](name, raw)
    return Settings(**values)


def describe_settings() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the source of .env.example and the README table."""
    rows = []
    for f in fields(Settings):
        default = "" if f.default is None else str(f.default)
        if isinstance(f.default, Path):
            default = str(f.default).replace(str(REPO_ROOT), ".").replace(str(REPO_ROOT.parent), "..")
        rows.append((env_name(f.name), default, f.metadata["doc"]))
    return rows


def to_environ(settings: Settings) -> dict[str, str]:
    """The LOOKALIKE_* variables that reproduce `settings` in a child process."""
    out = {}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is None:
            continue
        out[env_name(f.name)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out
