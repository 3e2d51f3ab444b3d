"""Shared fixtures: real PostgreSQL and Redis (embedded, or the servers TEST_LOOKALIKE_DATABASE_URL /
TEST_LOOKALIKE_REDIS_URL name), a migrated `_test` database, and per-test rollback sessions."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from lookalike.services import free_port
from shared.config import REPO_ROOT, Settings, load_settings

TEST_DB = "lookalike_test"
TEST_REDIS_DB = 15


@pytest.fixture(scope="session")
def embedded_services():
    """The embedded servers of this test run, or None when the env names external ones."""
    if os.environ.get("TEST_LOOKALIKE_DATABASE_URL") and os.environ.get("TEST_LOOKALIKE_REDIS_URL"):
        yield None
        return
    from lookalike.services import EmbeddedServices

    # One folder per test run, so two runs on one machine never stop each other's servers.
    services = EmbeddedServices(var_dir=REPO_ROOT / "var" / "test-services" / f"run-{os.getpid()}")
    services.var_dir.mkdir(parents=True, exist_ok=True)
    services.start_postgres()
    services.start_redis()
    try:
        yield services
    finally:
        services.stop()
        shutil.rmtree(services.var_dir, ignore_errors=True)


@pytest.fixture
def server_tmp_path() -> Iterator[Path]:
    """A fresh folder for tests that start embedded servers themselves. Not pytest's tmp_path: that lives
    under a 0700 folder of root's, which the unprivileged user PostgreSQL runs as (pgserver) cannot enter."""
    import uuid

    path = REPO_ROOT / "var" / "test-services" / f"tmp-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def server_urls(embedded_services) -> tuple[str, str]:
    """(admin database URL, redis base URL): external when the env names them, else embedded under var/."""
    if embedded_services is None:
        return os.environ["TEST_LOOKALIKE_DATABASE_URL"], os.environ["TEST_LOOKALIKE_REDIS_URL"]
    return embedded_services.database_url, embedded_services.redis_url


@pytest.fixture(scope="session")
def settings(server_urls, tmp_path_factory) -> Settings:
    db_url, redis_url = server_urls
    url = make_url(db_url).set(database=TEST_DB)
    redis_test = redis_url.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}"
    var_dir = tmp_path_factory.mktemp("var")
    # LOOKALIKE_MODELS_DIR may point a development run at other checkpoints; default: the shipped ones.
    models = {"LOOKALIKE_MODELS_DIR": os.environ["LOOKALIKE_MODELS_DIR"]} if os.environ.get(
        "LOOKALIKE_MODELS_DIR") else {}
    return load_settings({**models,
        "LOOKALIKE_DATABASE_URL": url.render_as_string(hide_password=False),
        "LOOKALIKE_REDIS_URL": redis_test,
        "LOOKALIKE_VAR_DIR": str(var_dir),
        "LOOKALIKE_API_PORT": str(free_port()),
        "LOOKALIKE_INDEX_PORT": str(free_port()),
        "LOOKALIKE_ADMIN_TOKEN": "test-token",
        "LOOKALIKE_JOB_LEASE_S": "8",
        "LOOKALIKE_RECONCILE_INTERVAL_S": "2",
        # A worker killed with -9 takes the messages it had prefetched with it; their jobs are still `queued` and
        # the reconciler sends them again after this long (300 s in production; short here so the drill fits).
        "LOOKALIKE_JOB_RESEND_S": "15",
        "LOOKALIKE_INDEX_POLL_MS": "100",
        "LOOKALIKE_TORCH_THREADS": "1",
    })


def recreate_database(database_url: str, name: str | None = None) -> str:
    """Drop and create a `_test` database on the server of `database_url` (named `name`, default the URL's own);
    returns its URL."""
    url = make_url(database_url)
    url = url.set(database=name) if name else url
    assert url.database and url.database.endswith("_test"), f"refusing to use non-test database {url.database}"
    admin = create_engine(url.set(database="postgres", drivername="postgresql+psycopg2"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {url.database}"))
    admin.dispose()
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def engine(settings):
    """The test database, recreated and migrated once per run (so migrations run on every test run)."""
    from lookalike.db_admin import upgrade
    from shared.db.session import make_engine

    recreate_database(settings.database_url)
    upgrade(settings)
    eng = make_engine(settings)
    yield eng
    eng.dispose()


@pytest.fixture
def db_session(engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    conn = engine.connect()
    trans = conn.begin()
    session = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        trans.rollback()
        conn.close()


@pytest.fixture
def redis_client(settings):
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The team data folder (../shared/data); a test that asks for it is skipped, with the reason, where the
    checkout has none beside it (a fresh clone on a user's machine). CI has it."""
    path = Path(load_settings().data_dir)
    if not (path / "manifest.csv").exists():
        pytest.skip(f"needs the team data folder, absent at {path}")
    return path


@pytest.fixture(scope="session")
def live_system(settings, engine, tmp_path_factory):
    """Worker, index daemon and API processes on the test database, with part of the sample catalogue
    indexed through the public API (so every later test sees real search results)."""
    from lookalike.catalogue import ingest_catalogue, read_catalog_csv, SAMPLE_CSV
    from lookalike.system import start_system

    system = start_system(settings, tmp_path_factory.mktemp("logs"))
    try:
        rows = read_catalog_csv(SAMPLE_CSV, seller_id="sample")[::4]  # every 4th: ~100 listings, all categories
        counts = ingest_catalogue(rows, api_url=system.api_url, settings=settings, wait=True)
        assert counts["submitted"] == len(rows), counts
        system.sample_rows = rows
        yield system
    finally:
        system.stop()
