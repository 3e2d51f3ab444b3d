"""Sending work to the workers by task name: the one place that knows the names, the queue and the publish retry.

The API builds its own `JobPublisher` (a producer-only Celery app) from its settings, so it never imports the worker
code nor configures the workers' module-level app; the workers use the same `enqueue_jobs`.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy import Engine

from shared.config import Settings
from shared.db import queries
from shared.db.session import session_scope

logger = logging.getLogger(__name__)

# Stable names: messages already in Redis refer to them.
PROCESS_JOB = "listing.process_job"
RECONCILE = "jobs.reconcile"
LISTING_EVENT = "listing.event"
REINDEX = "admin.reindex"
QUEUE = "lookalike"
# Publishing gives up after about a second: the job is safe in Postgres and the reconciler re-sends it.
PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.4, "interval_max": 0.5}
BROKER_ERRORS = (KombuOperationalError, RedisError, OSError)


class JobPublisher:
    """Sends task messages by name to the workers' queue (json, like the workers accept)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    @classmethod
    def for_settings(cls, settings: Settings) -> "JobPublisher":
        app = Celery("lookalike-producer", set_as_current=False)
        app.conf.update(broker_url=settings.redis_url, task_serializer="json", accept_content=["json"],
                        broker_connection_timeout=2, broker_connection_retry_on_startup=True,
                        task_default_queue=QUEUE, task_ignore_result=True)
        return cls(app)

    def send(self, task_name: str, args: Sequence[Any] = (), **options: Any) -> None:
        """Raises one of BROKER_ERRORS when the broker stays unavailable through PUBLISH_RETRY."""
        self.app.send_task(task_name, args=tuple(args), queue=QUEUE, retry=True, retry_policy=PUBLISH_RETRY,
                           **options)


def enqueue_jobs(publisher: JobPublisher, job_ids: list[int], *, engine: Engine) -> int:
    """Send process_job messages and stamp enqueued_at. A broker failure leaves the jobs queued in
    Postgres, where the reconciler finds them once the broker is back."""
    sent: list[int] = []
    try:
        for job_id in job_ids:
            publisher.send(PROCESS_JOB, (job_id,))
            sent.append(job_id)
    except BROKER_ERRORS as exc:
        logger.warning("broker unavailable, %d job(s) stay queued in Postgres: %s", len(job_ids) - len(sent), exc)
    if sent:
        with session_scope(engine) as s:
            queries.mark_enqueued(session=s, job_ids=sent)
    return len(sent)
