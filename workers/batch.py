"""Batched ingestion (`lookalike worker --batch N`): one delivered job wakes a worker process, which claims it and up to
N - 1 more queued pipeline jobs from Postgres, runs their photos through the networks as one batch and writes the
results in one transaction (per listing where that transaction fails).

The job semantics are `workers.processing`'s, job by job: each claimed job is leased (renewed while the batch runs)
and its attempt counted; a job whose worker dies is re-sent by the reconciler when its lease expires; the messages
of jobs a batch took are acked by whichever worker receives them (the job is then running or finished: skipped, as
for any duplicate delivery). One bad photo fails its own listing only: loading and decoding are per job, and when
the batched networks raise, the batch is re-run one photo at a time.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.config import Settings
from shared.db import queries
from shared.db.models import IndexGeneration, Job
from shared.db.session import session_scope
from shared.errors import PermanentError, TransientError
from shared.imaging import in_source_pixels
from shared.pipeline import Models, Request, analyze, analyze_batch
from workers.processing import (Claimed, LeaseKeeper, Outcome, attempt_failed, claim, commit, load_image, log_stages,
                                permanent_failure)

logger = logging.getLogger(__name__)
TRANSIENT = (TransientError, OperationalError, InterfaceError)
PIPELINE_KINDS = ("ingest", "reindex")  # deletes need no networks: they run alone, from their own message
LOAD_THREADS = 4  # photo loads (Postgres or a URL fetch) and decodes overlap each other and the networks


def default_batch(settings: Settings) -> int:
    """settings.worker_batch, or when 0: 1 on CPU (no wait for a batch to fill: freshness at idle), 32 on CUDA."""
    if settings.worker_batch:
        return settings.worker_batch
    import torch

    return 32 if torch.cuda.is_available() else 1


def claim_batch(*, engine: Engine, settings: Settings, models: Models, job_id: int, size: int
                ) -> tuple[list[Claimed], list[Outcome]]:
    """Claim the delivered job and up to `size - 1` more queued pipeline jobs this worker's networks can run
    (oldest first; rows another worker is claiming are skipped, never waited for), in one transaction."""
    with session_scope(engine) as s:
        first = claim(s, job_id=job_id, settings=settings, models=models)
        claimed = [first] if isinstance(first, Claimed) else []
        settled = [first] if isinstance(first, Outcome) else []
        if size > 1:
            mine = select(IndexGeneration.id).where(IndexGeneration.model_version == models.model_version,
                                                    IndexGeneration.status != "retired")
            mates = s.execute(
                select(Job.id).where(Job.status == "queued", Job.kind.in_(PIPELINE_KINDS), Job.id != job_id,
                                     Job.attempts < settings.job_max_attempts,
                                     or_(Job.generation_id.is_(None), Job.generation_id.in_(mine)))
                .order_by(Job.id).limit(size - len(claimed)).with_for_update(skip_locked=True)).scalars().all()
            for mate in mates:
                c = claim(s, job_id=mate, settings=settings, models=models)
                (claimed if isinstance(c, Claimed) else settled).append(c)
    return claimed, settled


def process_batch(job_id: int, *, engine: Engine, settings: Settings, models: Models, size: int) -> list[Outcome]:
    """Run the delivered job and its batch-mates; one Outcome per job touched. Raises a transient error (the
    database is away) after putting every claimed job back. Logs the batch's stage times (`log_stages`)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    claimed, outcomes = claim_batch(engine=engine, settings=settings, models=models, job_id=job_id, size=size)
    _add(timings, "claim", t)
    if not claimed:
        return outcomes
    with LeaseKeeper(engine=engine, job_ids=[c.job_id for c in claimed], lease_s=settings.job_lease_s):
        try:
            outcomes += _run_batch(claimed, engine=engine, settings=settings, models=models, timings=timings)
        except TRANSIENT:
            _release(engine, [c.job_id for c in claimed])
            raise
    log_stages(len(claimed), timings)
    return outcomes


def _run_batch(claimed: list[Claimed], *, engine: Engine, settings: Settings, models: Models,
               timings: dict[str, float]) -> list[Outcome]:
    t = time.perf_counter()
    with ThreadPoolExecutor(min(LOAD_THREADS, len(claimed))) as pool:
        loaded = list(pool.map(lambda c: _try(load_image, c, engine=engine, settings=settings), claimed))
    _add(timings, "load_decode", t)
    outcomes: list[Outcome] = []
    ready: list[tuple[Claimed, Any]] = []
    for c, (image, exc) in zip(claimed, loaded):
        if exc is None:
            ready.append((c, image))
        else:
            outcomes.append(_failed(c, exc, engine=engine, settings=settings))

    t = time.perf_counter()
    results = _analyze_all(models, ready)
    _add(timings, "pipeline", t)
    analysed = []
    for (c, image), (analysis, exc) in zip(ready, results):
        if exc is None:
            analysed.append((c, in_source_pixels(analysis, image)))
        else:
            outcomes.append(_failed(c, exc, engine=engine, settings=settings))

    t = time.perf_counter()
    outcomes += _commit_all(analysed, engine=engine, settings=settings, models=models)
    _add(timings, "write", t)
    return outcomes


def _analyze_all(models: Models, ready: list[tuple[Claimed, Any]]) -> list[tuple[Any, BaseException | None]]:
    """One batched pass; if it raises (a bad photo, a bug), one photo at a time so only the bad ones fail."""
    requests = [Request(image, title=c.title, description=c.description, category_key=c.seller_category)
                for c, image in ready]
    try:
        return [(a, None) for a in analyze_batch(models, requests)]
    except TRANSIENT:
        raise
    except Exception:  # noqa: BLE001 - find the photo(s) at fault
        logger.warning("a batch of %d failed; analysing its photos one by one", len(requests), exc_info=True)
    out: list[tuple[Any, BaseException | None]] = []
    for r in requests:
        try:
            out.append((analyze(models, r.image, title=r.title, description=r.description,
                                category_key=r.category_key), None))
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - this photo's failure, recorded on its listing
            out.append((None, exc))
    return out


def _commit_all(analysed: list[tuple[Claimed, Any]], *, engine: Engine, settings: Settings,
                models: Models) -> list[Outcome]:
    """Every result in one transaction (job ids ascending: one lock order for every worker); if it fails, each
    listing in its own (so one bad write fails one listing)."""
    analysed = sorted(analysed, key=lambda ca: ca[0].job_id)
    if not analysed:
        return []
    try:
        with session_scope(engine) as s:
            return [commit(s, c, a, models=models) for c, a in analysed]
    except Exception:  # noqa: BLE001 - transient or not, retry listing by listing (a lost race, a deadlock, a bad row)
        logger.warning("writing a batch of %d failed; writing listing by listing", len(analysed), exc_info=True)
    outcomes = []
    for c, a in analysed:
        try:
            with session_scope(engine) as s:
                outcomes.append(commit(s, c, a, models=models))
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - this listing's write failed: count the attempt
            outcomes.append(_failed(c, exc, engine=engine, settings=settings))
    return outcomes


def _failed(c: Claimed, exc: BaseException, *, engine: Engine, settings: Settings) -> Outcome:
    """One job's failure inside a batch, as `process_job` records it (a permanent error ends the listing failed;
    another error counts an attempt and puts the job back to be re-sent)."""
    if isinstance(exc, TRANSIENT):
        raise exc
    if isinstance(exc, PermanentError):
        return permanent_failure(engine=engine, job=c, message=str(exc))
    return attempt_failed(engine=engine, settings=settings, job_id=c.job_id, listing_id=c.listing_id,
                          version=c.version, kind=c.kind, exc=exc, raise_retry=False)


def _try(fn, *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
    try:
        return fn(*args, **kwargs), None
    except Exception as exc:  # noqa: BLE001 - returned to the caller, which decides per job
        return None, exc


def _release(engine: Engine, job_ids: list[int]) -> None:
    try:
        with session_scope(engine) as s:
            for jid in job_ids:
                queries.release_job_for_retry(session=s, job_id=jid, error="transient error in its batch")
    except Exception:  # noqa: BLE001 - the database may be what is down; the leases will expire
        logger.warning("could not release the jobs of a failed batch; their leases will expire")


def _add(timings: dict[str, float], key: str, t0: float) -> None:
    timings[key] = timings.get(key, 0.0) + (time.perf_counter() - t0) * 1000
