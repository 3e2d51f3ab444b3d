"""Keyword-only read/write helpers. The caller owns the transaction: helpers flush, callers commit."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.db.models import (AdminJob, Change, Image, IndexGeneration, Job, Listing, ListingAttribute,
                              ListingCategory, Posting, Roi)
from shared.errors import InvalidInput

# Any constant works; it only has to be the same for every writer of the change sequence.
CHANGE_LOCK_KEY = 7_412_031


def now() -> datetime:
    return datetime.now(timezone.utc)


def get_listing_or_raise(*, session: Session, listing_id: int) -> Listing:
    listing = session.get(Listing, listing_id)
    if listing is None:
        raise InvalidInput(f"listing {listing_id} does not exist")
    return listing


def store_image(*, session: Session, sha256: str, data: bytes, content_type: str, width: int, height: int) -> None:
    """Content-addressed insert; a second listing with the same photo shares the row."""
    session.execute(insert(Image).values(sha256=sha256, data=data, content_type=content_type, width=width,
                                         height=height).on_conflict_do_nothing(index_elements=["sha256"]))


@dataclass(frozen=True)
class UpsertResult:
    listing: Listing
    job: Job | None  # None when nothing changed (same content re-posted)
    created: bool


def upsert_listing(*, session: Session, seller_id: str, external_id: str, title: str, description: str,
                   seller_category: str | None, image_url: str | None, image_sha256: str | None) -> UpsertResult:
    """Create or update a listing and queue its job in the same transaction (before anything is sent to
    the broker). Re-posting identical content is a no-op, so at-least-once publishers create no duplicates."""
    # INSERT ... ON CONFLICT DO NOTHING first: of concurrent first POSTs exactly one inserts, the others wait on
    # its row and then see it (a plain SELECT-then-INSERT lets two of them insert and one hit the unique key).
    new_id = session.execute(
        insert(Listing).values(seller_id=seller_id, external_id=external_id, title=title, description=description,
                               seller_category=seller_category, image_url=image_url, image_sha256=image_sha256,
                               status="pending", version=1)
        .on_conflict_do_nothing(index_elements=["seller_id", "external_id"]).returning(Listing.id)
    ).scalar_one_or_none()
    created = new_id is not None
    listing = session.execute(
        select(Listing).where(Listing.seller_id == seller_id, Listing.external_id == external_id).with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()
    if not created:
        same = (listing.title == title and listing.description == description
                and listing.seller_category == seller_category and listing.image_sha256 == image_sha256
                and listing.image_url == image_url and listing.deleted_at is None)
        if same and listing.status != "failed":
            return UpsertResult(listing=listing, job=None, created=False)
        listing.title, listing.description = title, description
        listing.seller_category, listing.image_url, listing.image_sha256 = seller_category, image_url, image_sha256
        listing.version += 1
        listing.status, listing.status_message, listing.deleted_at = "pending", None, None
        # Older queued work for this listing is superseded; the new job carries the new version.
        session.execute(update(Job).where(Job.listing_id == listing.id, Job.status.in_(("queued", "running")))
                        .values(status="superseded", finished_at=now()))
    job = Job(listing_id=listing.id, listing_version=listing.version, kind="ingest", status="queued")
    session.add(job)
    session.flush()
    return UpsertResult(listing=listing, job=job, created=created)


def delete_listing(*, session: Session, listing: Listing) -> Job:
    """Soft-delete: the listing row stays (audit), search forgets it through a delete job."""
    listing.version += 1
    listing.status, listing.deleted_at = "deleted", now()
    session.execute(update(Job).where(Job.listing_id == listing.id, Job.status.in_(("queued", "running")))
                    .values(status="superseded", finished_at=now()))
    job = Job(listing_id=listing.id, listing_version=listing.version, kind="delete", status="queued")
    session.add(job)
    session.flush()
    return job


def record_change(*, session: Session, generation_id: int, listing_id: int | None, op: str) -> None:
    """Append to the change sequence. The transaction-scoped advisory lock makes concurrent writers commit
    in sequence order, so the daemon's `seq > last_seen` never skips a row that commits late."""
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHANGE_LOCK_KEY})
    session.add(Change(generation_id=generation_id, listing_id=listing_id, op=op))
    session.flush()


def active_generation(*, session: Session) -> IndexGeneration | None:
    return session.execute(select(IndexGeneration).where(IndexGeneration.status == "active")).scalar_one_or_none()


def ensure_generation(*, session: Session, model_version: str, networks: dict[str, str] | None = None,
                      params: dict[str, Any] | None = None) -> IndexGeneration:
    """The generation for a model version; the first one ever becomes active at once. `networks` and `params`
    (the version contract, see IndexGeneration) are recorded on creation, and filled in on an older row lacking them."""
    gen = session.execute(select(IndexGeneration).where(IndexGeneration.model_version == model_version)
                          ).scalar_one_or_none()
    if gen is not None:
        if (networks and gen.networks is None) or (params and gen.params is None):
            gen.networks, gen.params = gen.networks or networks, gen.params or params
            session.flush()
        return gen
    session.execute(insert(IndexGeneration).values(model_version=model_version, status="building",
                                                   networks=networks, params=params)
                    .on_conflict_do_nothing(index_elements=["model_version"]))
    gen = session.execute(select(IndexGeneration).where(IndexGeneration.model_version == model_version)
                          ).scalar_one()
    if active_generation(session=session) is None:
        activate_generation(session=session, generation=gen)
    return gen


def activate_generation(*, session: Session, generation: IndexGeneration) -> None:
    """Switch search to `generation` in one step (the daemon reloads on the 'activate' change)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CHANGE_LOCK_KEY})
    previous = active_generation(session=session)
    session.execute(update(IndexGeneration).where(IndexGeneration.status == "active",
                                                  IndexGeneration.id != generation.id).values(status="retired"))
    session.flush()
    if previous is not None and previous.id != generation.id:
        generation.previous_id = previous.id  # what `lookalike models rollback` returns to
    generation.status, generation.activated_at = "active", now()
    session.flush()
    record_change(session=session, generation_id=generation.id, listing_id=None, op="activate")


def queue_for_other_generations(*, session: Session, listing: Listing, generation_id: int) -> list[int]:
    """While another generation is live (active, or building beside it) under other networks, a listing just
    written to `generation_id` also needs a posting there: queue a reindex job targeted at it (a worker running
    those networks takes it; see `workers.processing`). The reconciler sends jobs never sent. Returns their ids."""
    others = session.execute(select(IndexGeneration.id).where(IndexGeneration.status.in_(("active", "building")),
                                                              IndexGeneration.id != generation_id)).scalars().all()
    ids = []
    for gen in others:
        job = Job(listing_id=listing.id, listing_version=listing.version, kind="reindex", status="queued",
                  generation_id=gen)
        session.add(job)
        session.flush()
        ids.append(job.id)
    return ids


def claim_job(*, session: Session, job_id: int, lease_s: int, max_attempts: int) -> Job | None:
    """Take a job for processing: queued, or running with an expired lease (its worker died).
    Returns None when another worker holds it, it is finished, or it ran out of attempts (then marked failed)."""
    # Wait for the row lock rather than skip it: the API's short `enqueued_at` update may hold it at the very
    # moment the message arrives, and skipping would ack the message while the job stays queued.
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        return None
    t = now()
    runnable = job.status == "queued" or (job.status == "running" and job.lease_until is not None
                                          and job.lease_until < t)
    if not runnable:
        return None
    if job.attempts >= max_attempts:
        job.status, job.finished_at = "failed", t
        job.last_error = (job.last_error or "") + f" | gave up after {job.attempts} attempts"
        listing = session.get(Listing, job.listing_id)
        if listing is not None and listing.version == job.listing_version and job.kind != "delete":
            listing.status = "failed"
            listing.status_message = f"processing failed {job.attempts} times: {job.last_error}"
        session.flush()
        return None
    job.status, job.attempts, job.lease_until = "running", job.attempts + 1, t + timedelta(seconds=lease_s)
    session.flush()
    return job


def finish_job(*, session: Session, job: Job, status: str = "done", error: str | None = None) -> None:
    job.status, job.finished_at, job.lease_until = status, now(), None
    if error is not None:
        job.last_error = error
    session.flush()


def release_job_for_retry(*, session: Session, job_id: int, error: str) -> None:
    """A transient failure: back to queued so a retry (or the reconciler) picks it up."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == "running")
                    .values(status="queued", lease_until=None, last_error=error))


def jobs_to_requeue(*, session: Session, stale_after_s: int, limit: int = 1000) -> list[int]:
    """Jobs whose message may be lost: running with an expired lease (its worker died: leases are renewed while
    a job runs), or queued and not sent for `stale_after_s`."""
    t = now()
    rows = session.execute(
        select(Job.id).where(or_(
            and_(Job.status == "running", Job.lease_until < t),
            and_(Job.status == "queued", or_(Job.enqueued_at.is_(None),
                                             Job.enqueued_at < t - timedelta(seconds=stale_after_s)))))
        .order_by(Job.id).limit(limit)).scalars().all()
    return list(rows)


def mark_enqueued(*, session: Session, job_ids: Sequence[int]) -> None:
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(list(job_ids))).values(enqueued_at=now()))


def write_results(*, session: Session, listing: Listing, generation_id: int, taxonomy_version: str,
                  category_id: int, category_source: str, category_confidence: float,
                  attribute_net_version: str, attributes: Sequence[tuple[int, float]],
                  detector_version: str, rois: Sequence[dict], code: bytes, colour: bytes,
                  conflict: dict[str, Any] | None = None, rerank: bytes | None = None) -> None:
    """Idempotent upserts of everything the pipeline derives for one listing version, plus the posting and
    its change row. Running it twice for the same inputs leaves the same rows."""
    v = listing.version
    stmt = insert(ListingCategory).values(listing_id=listing.id, taxonomy_version=taxonomy_version,
                                          category_id=category_id, source=category_source,
                                          confidence=category_confidence, listing_version=v,
                                          category_conflict=conflict is not None, conflict=conflict)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["listing_id", "taxonomy_version"],
        set_={"category_id": stmt.excluded.category_id, "source": stmt.excluded.source,
              "confidence": stmt.excluded.confidence, "listing_version": v,
              "category_conflict": stmt.excluded.category_conflict, "conflict": stmt.excluded.conflict}))
    # Replace, not merge: an updated listing may lose attributes or boxes.
    session.execute(ListingAttribute.__table__.delete().where(
        ListingAttribute.listing_id == listing.id, ListingAttribute.attribute_net_version == attribute_net_version))
    if attributes:
        session.execute(insert(ListingAttribute), [
            {"listing_id": listing.id, "attribute_net_version": attribute_net_version, "attribute_id": a,
             "probability": float(p), "listing_version": v} for a, p in attributes])
    session.execute(Roi.__table__.delete().where(Roi.listing_id == listing.id,
                                                 Roi.detector_version == detector_version))
    if rois:
        session.execute(insert(Roi), [{"listing_id": listing.id, "detector_version": detector_version,
                                       "listing_version": v, **r} for r in rois])
    stmt = insert(Posting).values(generation_id=generation_id, listing_id=listing.id, category_id=category_id,
                                  attribute_ids=[a for a, _ in attributes], code=code, colour=colour,
                                  rerank=rerank, listing_version=v)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["generation_id", "listing_id"],
        set_={"category_id": stmt.excluded.category_id, "attribute_ids": stmt.excluded.attribute_ids,
              "code": stmt.excluded.code, "colour": stmt.excluded.colour, "rerank": stmt.excluded.rerank,
              "listing_version": v, "updated_at": func.now()}))
    record_change(session=session, generation_id=generation_id, listing_id=listing.id, op="upsert")


def remove_postings(*, session: Session, listing_id: int) -> None:
    """Take a listing out of every generation's postings, recording a delete change for each."""
    gens = session.execute(select(Posting.generation_id).where(Posting.listing_id == listing_id)).scalars().all()
    session.execute(Posting.__table__.delete().where(Posting.listing_id == listing_id))
    for gen in gens:
        record_change(session=session, generation_id=gen, listing_id=listing_id, op="delete")


def admin_job_progress(*, session: Session, admin_job: AdminJob) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).where(Job.admin_job_id == admin_job.id)
                           .group_by(Job.status)).all()
    counts = {status: n for status, n in rows}
    return {"total": admin_job.total, **{s: counts.get(s, 0) for s in ("queued", "running", "done", "failed",
                                                                          "superseded")}}
