"""The work behind each task, as plain functions over a session (tests call them directly, twice)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.config import Settings
from shared.db import queries
from shared.db.models import Image, IndexGeneration, Job, Listing
from shared.db.session import session_scope
from shared.errors import PermanentError, TransientError
from shared.fetch import fetch_image_bytes
from shared.imaging import decode_image, image_sha256, in_source_pixels, source_size
from shared.pipeline import Analysis, Models, analyze

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    job_id: int
    status: str  # done | failed | skipped | superseded | retry (batches: put back, to be re-sent after a pause)
    message: str = ""


def _load_image_bytes(*, engine: Engine, settings: Settings, listing_id: int) -> bytes:
    """The listing's photo from Postgres, fetching (and storing) it first when it was given by URL."""
    with session_scope(engine) as s:
        listing = queries.get_listing_or_raise(session=s, listing_id=listing_id)
        if listing.image_sha256:
            img = s.get(Image, listing.image_sha256)
            if img is not None:
                return img.data
        url = listing.image_url
    if not url:
        raise PermanentError("listing has neither an uploaded image nor an image URL")
    fetched = fetch_image_bytes(url, timeout_s=settings.fetch_timeout_s, max_bytes=settings.max_image_bytes,
                                allow_private=settings.fetch_allow_private)
    width, height = source_size(_decode(fetched.data, settings))
    sha = image_sha256(fetched.data)
    with session_scope(engine) as s:
        queries.store_image(session=s, sha256=sha, data=fetched.data, content_type=fetched.content_type,
                            width=width, height=height)
        listing = queries.get_listing_or_raise(session=s, listing_id=listing_id)
        listing.image_sha256 = sha
    return fetched.data


@dataclass(frozen=True)
class Claimed:
    """A job this worker holds (running, leased) and what its work needs, read in the claiming transaction."""

    job_id: int
    kind: str
    listing_id: int
    version: int
    title: str
    description: str
    seller_category: str | None
    target_generation: int | None


def claim(s, *, job_id: int, settings: Settings, models: Models) -> Claimed | Outcome:
    """Claim one job (lease in Postgres) and settle what needs no pipeline (superseded, delete, another worker's
    networks): an Outcome, or the Claimed job whose pipeline work is to run outside any transaction."""
    job = queries.claim_job(session=s, job_id=job_id, lease_s=settings.job_lease_s,
                            max_attempts=settings.job_max_attempts)
    if job is None:
        return Outcome(job_id, "skipped", "not runnable (finished, leased elsewhere or out of attempts)")
    listing = s.get(Listing, job.listing_id)
    if listing is None or listing.version != job.listing_version:
        queries.finish_job(session=s, job=job, status="superseded")
        return Outcome(job_id, "superseded")
    if job.kind == "delete":
        queries.remove_postings(session=s, listing_id=listing.id)
        queries.finish_job(session=s, job=job)
        return Outcome(job_id, "done", "deleted")
    if job.generation_id is not None:
        deferred = _defer_other_version(s, job=job, models=models)
        if deferred is not None:
            return deferred
    if job.kind == "ingest":
        listing.status = "processing"
    return Claimed(job_id=job_id, kind=job.kind, listing_id=listing.id, version=listing.version, title=listing.title,
                   description=listing.description, seller_category=listing.seller_category,
                   target_generation=job.generation_id)


def process_job(job_id: int, *, engine: Engine, settings: Settings, models: Models) -> Outcome:
    """Run one job: claim it (lease in Postgres), do the work outside any transaction, then write every
    derived row, the posting and the change row in one transaction. Safe to run any number of times."""
    t0 = time.perf_counter()
    with session_scope(engine) as s:
        c = claim(s, job_id=job_id, settings=settings, models=models)
    if isinstance(c, Outcome):
        return c
    timings = {"claim": (time.perf_counter() - t0) * 1000}

    with LeaseKeeper(engine=engine, job_ids=[job_id], lease_s=settings.job_lease_s):
        try:
            return _run(c, engine=engine, settings=settings, models=models, timings=timings)
        except PermanentError as exc:
            return permanent_failure(engine=engine, job=c, message=str(exc))
        except (TransientError, OperationalError, InterfaceError):
            raise  # the database, broker or daemon is away: the task retries, the attempt cap still applies
        except Exception as exc:  # noqa: BLE001 - a bug or a poison input: count it, never crash-loop on it
            return attempt_failed(engine=engine, settings=settings, job_id=job_id, listing_id=c.listing_id,
                                   version=c.version, kind=c.kind, exc=exc)


def permanent_failure(*, engine: Engine, job: Claimed, message: str) -> Outcome:
    """A PermanentError (an undecodable photo, a refused URL): the job and the listing end failed with it."""
    _record_failure(engine=engine, job_id=job.job_id, listing_id=job.listing_id, version=job.version, kind=job.kind,
                    message=message)
    logger.info("listing %s failed permanently: %s", job.listing_id, message)
    return Outcome(job.job_id, "failed", message)


def _defer_other_version(s, *, job: Job, models: Models) -> Outcome | None:
    """A job targeted at a generation of other networks is not this worker's: put it back (the attempt does not
    count) for a worker running them; the reconciler re-sends it after job_resend_s. A retired target: superseded."""
    generation = s.get(IndexGeneration, job.generation_id)
    if generation is None or generation.status == "retired":
        queries.finish_job(session=s, job=job, status="superseded")
        return Outcome(job.id, "superseded", "its generation is retired")
    if generation.model_version == models.model_version:
        return None
    message = f"waits for a worker running {generation.model_version}"
    job.status, job.attempts, job.lease_until, job.enqueued_at = "queued", job.attempts - 1, None, queries.now()
    job.last_error = message
    s.flush()
    return Outcome(job.id, "skipped", message)


def _decode(data: bytes, settings: Settings):
    return decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                        max_side=settings.decode_max_side, max_aspect=settings.max_image_aspect)


def load_image(job: Claimed, *, engine: Engine, settings: Settings):
    """The claimed listing's photo, decoded (PermanentError when it cannot be)."""
    return _decode(_load_image_bytes(engine=engine, settings=settings, listing_id=job.listing_id), settings)


def _run(job: Claimed, *, engine: Engine, settings: Settings, models: Models, timings: dict[str, float]) -> Outcome:
    """The work of one claimed job: load and analyse the photo, then write everything in one transaction."""
    t0 = time.perf_counter()
    image = load_image(job, engine=engine, settings=settings)
    t1 = time.perf_counter()
    # Boxes are stored in the photo's own pixels, whatever size it was analysed at.
    analysis = in_source_pixels(analyze(models, image, title=job.title, description=job.description,
                                        category_key=job.seller_category), image)
    t2 = time.perf_counter()
    with session_scope(engine) as s:
        outcome = commit(s, job, analysis, models=models)
    timings.update(load_decode=(t1 - t0) * 1000, pipeline=(t2 - t1) * 1000, write=(time.perf_counter() - t2) * 1000)
    if outcome.status == "done":
        logger.info("listing %s indexed in %.0f ms (category %s via %s)", job.listing_id,
                    (time.perf_counter() - t0) * 1000, analysis.category_key, analysis.category_source)
    log_stages(1, timings)
    return outcome


def log_stages(n: int, timings: dict[str, float]) -> None:
    """One line per job or batch with its stage times (bench/ingest.py reads them from the worker's log)."""
    logger.info("stages n=%d " + " ".join(f"{k}=%.1f" for k in STAGES), n, *(timings.get(k, 0.0) for k in STAGES))


STAGES = ("claim", "load_decode", "pipeline", "write")  # ms per job or batch, as `log_stages` writes them


def commit(s, job: Claimed, analysis: Analysis, *, models: Models) -> Outcome:
    """Write one analysed job's rows, posting and change row inside the caller's transaction (locks the job, then
    the listing): superseded when the listing changed meanwhile, failed when the target generation's networks
    are not this worker's (the version contract)."""
    row = s.execute(select(Job).where(Job.id == job.job_id).with_for_update()).scalar_one()
    listing = s.execute(select(Listing).where(Listing.id == job.listing_id).with_for_update()).scalar_one()
    if row.status != "running" or listing.version != job.version:
        if row.status == "running":
            queries.finish_job(session=s, job=row, status="superseded")
        return Outcome(job.job_id, "superseded")
    if job.target_generation is not None:
        generation = s.get(IndexGeneration, job.target_generation)
        if generation.model_version != models.model_version:
            # The version contract: codes of these networks must never land in another generation.
            message = (f"generation {generation.id} is built with {generation.model_version}; this worker runs "
                       f"{models.model_version}")
            queries.finish_job(session=s, job=row, status="failed", error=message)
            return Outcome(job.job_id, "failed", message)
    else:
        generation = queries.ensure_generation(session=s, model_version=models.model_version,
                                               networks=models.versions, params=models.ranking_params)
    _write(s, listing=listing, generation_id=generation.id, analysis=analysis, models=models)
    if job.kind == "ingest":
        listing.status, listing.status_message = "ready", None
        # During a model change the other live generation needs this listing too (nothing becomes invisible).
        queries.queue_for_other_generations(session=s, listing=listing, generation_id=generation.id)
    queries.finish_job(session=s, job=row)
    return Outcome(job.job_id, "done")


def _write(s, *, listing: Listing, generation_id: int, analysis: Analysis, models: Models) -> None:
    queries.write_results(
        session=s, listing=listing, generation_id=generation_id, taxonomy_version=models.taxonomy.version,
        category_id=analysis.category_id, category_source=analysis.category_source,
        category_confidence=analysis.category_confidence, attribute_net_version=models.attribute_version,
        attributes=[(a.attribute_id, a.probability) for a in analysis.attributes],
        detector_version=models.detector_version, rois=analysis.roi_rows(), code=analysis.code,
        colour=analysis.colour_bytes(), conflict=analysis.conflict, rerank=analysis.rerank_bytes(models))


def _record_failure(*, engine: Engine, job_id: int, listing_id: int, version: int, kind: str, message: str) -> None:
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        if job is not None and job.status == "running":
            queries.finish_job(session=s, job=job, status="failed", error=message)
        listing = s.get(Listing, listing_id)
        if listing is not None and listing.version == version and kind == "ingest":
            listing.status, listing.status_message = "failed", message


class RetryLater(TransientError):
    """An unexpected error on an attempt that is not the last: the task retries the job after a pause."""


def attempt_failed(*, engine: Engine, settings: Settings, job_id: int, listing_id: int, version: int, kind: str,
                    exc: BaseException, raise_retry: bool = True) -> Outcome:
    """An unexpected exception: the last allowed attempt ends the job `failed` with the error as its message;
    an earlier one puts the job back (queued, error noted on the listing) and asks for a retry (raises RetryLater,
    or with raise_retry=False returns an Outcome "retry": a batch re-sends that job alone, after a pause)."""
    message = f"{type(exc).__name__}: {exc}"[:500]
    logger.exception("listing %s: job %s failed unexpectedly", listing_id, job_id)
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        attempts = job.attempts if job is not None else settings.job_max_attempts
    if attempts >= settings.job_max_attempts:
        _record_failure(engine=engine, job_id=job_id, listing_id=listing_id, version=version, kind=kind,
                        message=f"processing failed {attempts} times: {message}")
        return Outcome(job_id, "failed", message)
    with session_scope(engine) as s:
        queries.release_job_for_retry(session=s, job_id=job_id, error=message)
        listing = s.get(Listing, listing_id)
        if listing is not None and listing.version == version and kind == "ingest":
            listing.status_message = f"attempt {attempts} of {settings.job_max_attempts} failed ({message}); retrying"
    if not raise_retry:
        return Outcome(job_id, "retry", message)
    raise RetryLater(message)


class LeaseKeeper:
    """Renews running jobs' leases (one job, or a batch) every third of its length while the work runs, so the lease can be short:
    a job whose worker died (SIGKILL, OOM) is re-queued by the reconciler within one lease, not a long timeout."""

    def __init__(self, *, engine: Engine, lease_s: int, job_id: int | None = None,
                 job_ids: list[int] | None = None) -> None:
        self.engine, self.lease_s = engine, lease_s
        self.job_ids = list(job_ids or []) + ([job_id] if job_id is not None else [])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.job_ids[:1]}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with session_scope(self.engine) as s:
                    s.execute(update(Job).where(Job.id.in_(self.job_ids), Job.status == "running")
                              .values(lease_until=queries.now() + timedelta(seconds=self.lease_s)))
            except Exception as exc:  # noqa: BLE001 - the lease then expires and the job is retried
                logger.warning("could not renew the lease of job(s) %s: %s", self.job_ids, exc)
