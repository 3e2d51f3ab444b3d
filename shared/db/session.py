"""Engines and transaction scopes."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from shared.config import Settings
from shared.errors import ConfigError


def database_url(settings: Settings) -> str:
    """The resolved database URL (embedded servers fill it in before anything connects)."""
    if not settings.database_url:
        raise ConfigError("LOOKALIKE_DATABASE_URL is not set and no embedded server was started "
                          "(run through `lookalike`, which starts one, or set the variable)")
    url = settings.database_url
    # We ship psycopg2; name the driver so SQLAlchemy never picks another default.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg2://" + url[len(prefix):]
    return url


def make_engine(settings: Settings, *, nullpool: bool = False) -> Engine:
    """An engine for the settings' database. Create it after forking (workers) or use nullpool=True."""
    kwargs = {"poolclass": NullPool} if nullpool else {"pool_size": 5, "max_overflow": 5, "pool_pre_ping": True}
    return create_engine(database_url(settings), future=True, **kwargs)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
