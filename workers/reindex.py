"""Admin reindex: queue pipeline jobs for a set of listings into the generation of the running models.

Under the same model version the active generation's postings are rewritten in place. Under a new model
version a new generation is built beside the active one (the daemon keeps serving the old codes); once every job
has finished it waits, built, for `lookalike models promote` (golden-set gate) to activate it in one step.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import Engine, exists, func, select

from shared.db import queries
from shared.db.models import AdminJob, IndexGeneration, Job, Listing, ListingCategory, Posting
from shared.db.session import session_scope
from shared.pipeline import Models

logger = logging.getLogger(__name__)
BATCH = 500


def target_listings(s, *, models: Models, generation_id: int, params: dict) -> list[tuple[int, int]]:
    """(listing id, version) of the live listings a reindex covers."""
    q = select(Listing.id, Listing.version).where(Listing.deleted_at.is_(None), Listing.status != "failed")
    if params.get("category"):
        cat_id = models.taxonomy.category(params["category"]).id
        q = q.where(exists().where(ListingCategory.listing_id == Listing.id,
                                   ListingCategory.taxonomy_version == models.taxonomy.version,
                                   ListingCategory.category_id == cat_id))
    if params.get("older_than"):
        # "Older than version V": not yet indexed in the generation of model version V.
        gen = s.execute(select(IndexGeneration.id).where(IndexGeneration.model_version == params["older_than"])
                        ).scalar_one_or_none()
        if gen is not None:
            q = q.where(~exists().where(Posting.listing_id == Listing.id, Posting.generation_id == gen))
    return [(r.id, r.version) for r in s.execute(q.order_by(Listing.id))]


def run_reindex(admin_job_id: int, *, engine: Engine, models: Models,
                enqueue: Callable[..., int]) -> int:
    """Create and send the jobs of one admin reindex; returns how many were queued."""
    with session_scope(engine) as s:
        admin = s.get(AdminJob, admin_job_id)
        if admin is None or admin.status != "running" or admin.total:
            return 0  # already expanded (a redelivered message)
        gen = queries.ensure_generation(session=s, model_version=models.model_version, networks=models.versions,
                                        params=models.ranking_params)
        admin.generation_id = gen.id
        targets = target_listings(s, models=models, generation_id=gen.id, params=admin.params)
        if gen.status != "active" and admin.params.get("category"):
            # A new generation must hold every listing before it can serve: widen to all.
            targets = target_listings(s, models=models, generation_id=gen.id, params={})
        admin.total = len(targets)
        job_ids: list[int] = []
        for lid, version in targets:
            job = Job(listing_id=lid, listing_version=version, kind="reindex", status="queued",
                      generation_id=gen.id, admin_job_id=admin.id)
            s.add(job)
            s.flush()
            job_ids.append(job.id)
    sent = 0
    for i in range(0, len(job_ids), BATCH):
        sent += enqueue(job_ids[i:i + BATCH], engine=engine)
    logger.info("reindex %s: %d listings queued into generation %s", admin_job_id, len(job_ids), gen.id)
    return sent


def finalize_admin_jobs(*, engine: Engine) -> None:
    """Close admin jobs with no work left (done or failed). A generation built beside an active one stays
    `building` until `lookalike models promote` has checked it against the golden set; with none active it serves."""
    with session_scope(engine) as s:
        running = s.execute(select(AdminJob).where(AdminJob.status == "running", AdminJob.generation_id.is_not(None))
                            .with_for_update(skip_locked=True)).scalars().all()
        for admin in running:
            left = s.execute(select(func.count()).where(Job.admin_job_id == admin.id,
                                                        Job.status.in_(("queued", "running")))).scalar_one()
            if left:
                continue
            gen = s.get(IndexGeneration, admin.generation_id)
            if gen is not None and gen.status == "building":
                if queries.active_generation(session=s) is None:
                    queries.activate_generation(session=s, generation=gen)
                else:
                    logger.info("generation %s is built; promote it with `lookalike models promote`", gen.id)
            admin.status, admin.finished_at = "done", queries.now()
            # Failed listings never hold an admin job open; they are counted here and keep their own message.
            failed = s.execute(select(func.count()).where(Job.admin_job_id == admin.id, Job.status == "failed")
                               ).scalar_one()
            if failed:
                admin.error = f"{failed} listing(s) failed (see each listing's status_message)"
