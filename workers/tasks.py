"""Celery tasks (thin): each re-reads Postgres, delegates to `workers.processing`, and is safe to repeat.

Task names are stable strings because messages already in Redis refer to them.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Task
from celery.signals import worker_ready
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.db import queries
from shared.db.session import make_engine, session_scope
from shared.errors import TransientError
from shared.pipeline import Models
from workers import events
from workers.celery_app import app, app_settings
from workers.processing import process_job
from workers.publish import (BROKER_ERRORS, LISTING_EVENT, PROCESS_JOB, PUBLISH_RETRY, RECONCILE, REINDEX,
                             JobPublisher)
from workers.publish import enqueue_jobs as _enqueue_jobs

logger = logging.getLogger(__name__)


class PipelineTask(Task):
    """Per-process lazy resources: the engine (created after the fork) and the networks (loaded once)."""

    _engine: Engine | None = None
    _models: Models | None = None

    @property
    def engine(self) -> Engine:
        if PipelineTask._engine is None:
            PipelineTask._engine = make_engine(app_settings())
        return PipelineTask._engine

    @property
    def models(self) -> Models:
        if PipelineTask._models is None:
            PipelineTask._models = Models.load(app_settings())
        return PipelineTask._models


@app.task(bind=True, base=PipelineTask, name=PROCESS_JOB, max_retries=8)
def process_job_task(self: PipelineTask, job_id: int) -> str:
    settings = app_settings()
    try:
        size = _batch_size(settings)
        if size <= 1:
            return process_job(job_id, engine=self.engine, settings=settings, models=self.models).status
        from workers.batch import process_batch

        outcomes = process_batch(job_id, engine=self.engine, settings=settings, models=self.models, size=size)
    except (TransientError, OperationalError, DBAPIError) as exc:
        # Put the job back first so the reconciler can take over if this retry is lost too.
        try:
            with session_scope(self.engine) as s:
                queries.release_job_for_retry(session=s, job_id=job_id, error=f"transient: {exc}")
        except Exception:  # noqa: BLE001 - the database may be what is down; the lease will expire
            logger.warning("could not release job %s after a transient error", job_id)
        countdown = min(60, 2 ** self.request.retries)
        raise self.retry(exc=exc, countdown=countdown) from exc
    # A batch-mate whose attempt failed (not its last) is queued again: re-send it alone after a pause, as a retry.
    for o in outcomes:
        if o.status == "retry":
            _resend_later(o.job_id)
    mine = [o for o in outcomes if o.job_id == job_id]
    return mine[0].status if mine else "skipped"


_BATCH: list[int] = []


def _batch_size(settings) -> int:
    if not _BATCH:
        from workers.batch import default_batch

        _BATCH.append(default_batch(settings))
    return _BATCH[0]


def _resend_later(job_id: int, countdown: float = 2.0) -> None:
    try:
        process_job_task.apply_async((job_id,), countdown=countdown, retry=True, retry_policy=PUBLISH_RETRY)
    except BROKER_ERRORS as exc:  # the reconciler re-sends it after job_resend_s
        logger.warning("could not re-send job %s (broker unavailable): %s", job_id, exc)


@app.task(bind=True, base=PipelineTask, name=RECONCILE)
def reconcile_task(self: PipelineTask) -> int:
    """Re-send jobs whose message may be lost (expired lease, or queued but never/long ago sent)."""
    settings = app_settings()
    with session_scope(self.engine) as s:
        job_ids = queries.jobs_to_requeue(session=s, stale_after_s=settings.job_resend_s)
    sent = enqueue_jobs(job_ids, engine=self.engine)
    from workers.reindex import finalize_admin_jobs

    finalize_admin_jobs(engine=self.engine)
    if sent:
        logger.info("reconciler re-queued %d job(s)", sent)
    return sent


@app.task(bind=True, base=PipelineTask, name=LISTING_EVENT, max_retries=8)
def listing_event_task(self: PipelineTask, event: dict[str, Any]) -> str:
    """An upstream marketplace event (see workers/events.py for the schema)."""
    try:
        job_id = events.apply_event(event, engine=self.engine, settings=app_settings())
    except (OperationalError, DBAPIError) as exc:
        raise self.retry(exc=exc, countdown=min(60, 2 ** self.request.retries)) from exc
    if job_id is not None:
        enqueue_jobs([job_id], engine=self.engine)
    return "queued" if job_id is not None else "unchanged"


@app.task(bind=True, base=PipelineTask, name=REINDEX)
def reindex_task(self: PipelineTask, admin_job_id: int) -> int:
    from workers import reindex

    return reindex.run_reindex(admin_job_id, engine=self.engine, models=self.models, enqueue=enqueue_jobs)


@worker_ready.connect
def _start_reconcile_ticker(**_: object) -> None:
    """Send jobs.reconcile every reconcile_interval_s from a thread of the worker's main process. Not an embedded
    beat: that is a child process a SIGKILL or the OOM killer can take with the pool, after which nothing would
    re-send stuck jobs; this thread lives exactly as long as the worker (which `lookalike up` restarts)."""
    interval = app_settings().reconcile_interval_s
    threading.Thread(target=_reconcile_ticker, args=(interval,), name="reconcile-ticker", daemon=True).start()


def _reconcile_ticker(interval: float) -> None:
    while True:
        try:
            # expires: after a pool outage, stale ticks are dropped instead of running back to back.
            reconcile_task.apply_async(expires=max(2.0, interval * 2), retry=True, retry_policy=PUBLISH_RETRY)
        except BROKER_ERRORS as exc:
            logger.warning("could not send the reconcile tick (broker unavailable): %s", exc)
        time.sleep(interval)


def enqueue_jobs(job_ids: list[int], *, engine: Engine) -> int:
    """workers.publish.enqueue_jobs on the worker's own (configured) Celery app."""
    return _enqueue_jobs(JobPublisher(app), job_ids, engine=engine)