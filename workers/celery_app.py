"""The Celery application: settings from `shared.config`, broker on Redis, no result backend.

Run a worker with `lookalike worker` (or `celery -A workers.celery_app worker -B`).
"""
from __future__ import annotations

from celery import Celery

from shared.config import Settings, load_settings

TASK_MODULES = ["workers.tasks"]


def celery_config(settings: Settings) -> dict:
    """Every Celery setting in one place."""
    return {
        "broker_url": settings.redis_url,
        "task_ignore_result": True,
        # Ack after the task ran, and give a message back when its worker dies: with our own job table and
        # idempotent writes, running twice is harmless while running zero times would lose a listing.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Above the longest task; the reconciler (job leases in Postgres) recovers sooner than this anyway.
        "broker_transport_options": {"visibility_timeout": 3600},
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 2,
        "task_default_queue": "lookalike",
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "reconcile-jobs": {"task": "jobs.reconcile", "schedule": float(settings.reconcile_interval_s)},
        },
        "beat_schedule_filename": str(settings.var_dir / "celerybeat-schedule"),
        "lookalike_settings": settings,
    }


app = Celery("lookalike", include=TASK_MODULES)
_explicit_settings: list[Settings] = []


def configure(settings: Settings) -> Celery:
    """Configure the module-level app with explicit settings (the supervisor, the API and the tests do)."""
    _explicit_settings[:] = [settings]
    app.conf.update(celery_config(settings))
    return app


def app_settings() -> Settings:
    """The settings the app was configured with (tasks read them here)."""
    return app.conf.lookalike_settings


@app.on_configure.connect
def _configure_on_first_use(sender: Celery, **_: object) -> None:
    # `celery -A workers.celery_app worker` configures from the environment, at first use, not at import.
    settings = _explicit_settings[0] if _explicit_settings else load_settings()
    if not settings.redis_url or not settings.database_url:
        from shared.errors import ConfigError

        raise ConfigError("a worker needs LOOKALIKE_DATABASE_URL and LOOKALIKE_REDIS_URL (run `lookalike worker`, "
                          "which resolves the embedded servers, or set them)")
    sender.conf.update(celery_config(settings))
