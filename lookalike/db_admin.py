"""Schema migrations through Alembic, for the CLI and the tests."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.config import REPO_ROOT, Settings
from shared.db.session import database_url


def alembic_config(url: str) -> Config:
    cfg = Config(str(REPO_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(Path(REPO_ROOT) / "migrations"))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url(settings)), revision)


def downgrade(settings: Settings, revision: str) -> None:
    command.downgrade(alembic_config(database_url(settings)), revision)
