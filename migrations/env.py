"""Alembic environment: the URL comes from shared.config (or from the caller's config attribute)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from shared.config import load_settings
from shared.db.models import Base
from shared.db.session import database_url

config = context.config
target_metadata = Base.metadata
# Every process role may run `lookalike migrate` before it starts (Procfile): a session-level advisory lock makes
# concurrent upgrades wait for each other instead of racing on the same DDL.
MIGRATION_LOCK_KEY = 1609_07859


def _url() -> str:
    # `lookalike migrate` and the tests pass the resolved URL; plain `alembic` falls back to the environment.
    return config.attributes.get("database_url") or database_url(load_settings())


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        conn.commit()
        try:
            context.configure(connection=conn, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            conn.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
