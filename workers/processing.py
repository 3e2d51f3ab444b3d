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
    status: str  # done | failed | skipped | superseded
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


def process_job(job_id: int, *, engine: Engine, settings: Settings, models: Models) -> Outcome:
    """Run one job: claim it (lease in Postgres), do the work outside any transaction, then write every
    derived row, the posting and the change row in one transaction. Safe to run any number of times."""
    with session_scope(engine) as s:
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
        kind, listing_id, version = job.kind, listing.id, listing.version
        title, description, seller_category = listing.title, listing.description, listing.seller_category
        target_generation = job.generation_id

    with LeaseKeeper(engine=engine, job_id=job_id, lease_s=settings.job_lease_s):
        try:
            return _run(job_id, engine=engine, settings=settings, models=models, kind=kind, listing_id=listing_id,
                        version=version, title=title, description=description, seller_category=seller_category,
                        target_generation=target_generation)
        except PermanentError as exc:
            _record_failure(engine=engine, job_id=job_id, listing_id=listing_id, version=version, kind=kind,
                            message=str(exc))
            logger.info("listing %s failed permanently: %s", listing_id, exc)
            return Outcome(job_id, "failed", str(exc))
        except (TransientError, OperationalError, InterfaceError):
            raise  # the database, broker or daemon is away: the task retries, the attempt cap still applies
        except Exception as exc:  # noqa: BLE001 - a bug or a poison input: count it, never crash-loop on it
            return _attempt_failed(engine=engine, settings=settings, job_id=job_id, listing_id=listing_id,
                                   version=version, kind=kind, exc=exc)


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


def _run(job_id: int, *, engine: Engine, settings: Settings, models: Models, kind: str, listing_id: int,
         version: int, title: str, description: str, seller_category: str | None,
         target_generation: int | None) -> Outcome:
    """The work of one claimed job: load and analyse the photo, then write everything in one transaction."""
    t0 = time.perf_counter()
    data = _load_image_bytes(engine=engine, settings=settings, listing_id=listing_id)
    image = _decode(data, settings)
    # Boxes are stored in the photo's own pixels, whatever size it was analysed at.
    analysis = in_source_pixels(analyze(models, image, title=title, description=description,
                                        category_key=seller_category), image)

    with session_scope(engine) as s:
        job = s.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one()
        listing = s.execute(select(Listing).where(Listing.id == listing_id).with_for_update()).scalar_one()
        if job.status != "running" or listing.version != version:
            if job.status == "running":
                queries.finish_job(session=s, job=job, status="superseded")
            return Outcome(job_id, "superseded")
        if target_generation is not None:
            generation = s.get(IndexGeneration, target_generation)
            if generation.model_version != models.model_version:
                # The version contract: codes of these networks must never land in another generation.
                message = (f"generation {generation.id} is built with {generation.model_version}; this worker runs "
                           f"{models.model_version}")
                queries.finish_job(session=s, job=job, status="failed", error=message)
                return Outcome(job_id, "failed", message)
        else:
            generation = queries.ensure_generation(session=s, model_version=models.model_version,
                                                   networks=models.versions, params=models.ranking_params)
        _write(s, listing=listing, generation_id=generation.id, analysis=analysis, models=models)
        if kind == "ingest":
            listing.status, listing.status_message = "ready", None
            # During a model change the other live generation needs this listing too (nothing becomes invisible).
            queries.queue_for_other_generations(session=s, listing=listing, generation_id=generation.id)
        queries.finish_job(session=s, job=job)
    logger.info("listing %s indexed in %.0f ms (category %s via %s)", listing_id,
                (time.perf_counter() - t0) * 1000, analysis.category_key, analysis.category_source)
    return Outcome(job_id, "done")


def _write(s, *, listing: Listing, generation_id: int, analysis: Analysis, models: Models) -> None:
    queries.write_results(
        session=s, listing=listing, generation_id=generation_id, taxonomy_version=models.taxonomy.version,
        category_id=analysis.category_id, category_source=analysis.category_source,
        category_confidence=analysis.category_confidence, attribute_net_version=models.attribute_version,
        attributes=[(a.attribute_id, a.probability) for a in analysis.attributes],
        detector_version=models.detector_version, rois=analysis.roi_rows(), code=analysis.code,
        colour=analysis.colour_bytes(), conflict=analysis.conflict)


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


def _attempt_failed(*, engine: Engine, settings: Settings, job_id: int, listing_id: int, version: int, kind: str,
                    exc: BaseException) -> Outcome:
    """An unexpected exception: the last allowed attempt ends the job `failed` with the error as its message;
    an earlier one puts the job back (queued, error noted on the listing) and asks for a retry."""
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
    raise RetryLater(message)


class LeaseKeeper:
    """Renews a running job's lease every third of its length while the work runs, so the lease can be short:
    a job whose worker died (SIGKILL, OOM) is re-queued by the reconciler within one lease, not a long timeout."""

    def __init__(self, *, engine: Engine, job_id: int, lease_s: int) -> None:
        self.engine, self.job_id, self.lease_s = engine, job_id, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

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
                    s.execute(update(Job).where(Job.id == self.job_id, Job.status == "running")
                              .values(lease_until=queries.now() + timedelta(seconds=self.lease_s)))
            except Exception as exc:  # noqa: BLE001 - the lease then expires and the job is retried
                logger.warning("could not renew the lease of job %s: %s", self.job_id, exc)
