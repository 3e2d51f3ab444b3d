"""The batch worker (issue 16) and delivery races (issue 15) on real PostgreSQL with the shipped networks, called
in-process the way the Celery task calls them: a batch claims queued jobs with the usual lease and attempt, one bad
photo fails only its listing, jobs leased elsewhere or for other networks are left alone, and two deliveries of
one queued job racing each other index it exactly once (one posting, one change row, one attempt)."""
from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from lookalike.catalogue import SAMPLE_CSV, read_catalog_csv
from shared.db import queries
from shared.db.models import Change, IndexGeneration, Job, Listing, Posting
from shared.db.session import session_scope
from shared.imaging import image_sha256
from workers.batch import claim_batch, process_batch
from workers.processing import process_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(settings):
    from shared.pipeline import Models

    return Models.load(settings)


def _listing(engine, data: bytes, *, title: str = "Cotton T-shirt") -> tuple[int, int]:
    """A listing with its queued ingest job, marked as just sent (so the reconciler of a live system leaves it)."""
    with session_scope(engine) as s:
        sha = image_sha256(data)
        queries.store_image(session=s, sha256=sha, data=data, content_type="image/jpeg", width=1, height=1)
        r = queries.upsert_listing(session=s, seller_id="batch", external_id=uuid.uuid4().hex, title=title,
                                   description="", seller_category=None, image_url=None, image_sha256=sha)
        s.flush()
        r.job.enqueued_at = queries.now()
        return r.listing.id, r.job.id


def _photos(n: int) -> list[bytes]:
    rows = read_catalog_csv(SAMPLE_CSV, seller_id="batch")
    # Distinct bytes per listing (the image table is keyed by content) without changing what the photo shows.
    return [rows[(i * 11) % len(rows)].image_path.read_bytes() + uuid.uuid4().bytes for i in range(n)]


def _counts(engine, listing_ids: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    with session_scope(engine) as s:
        postings = dict(s.execute(select(Posting.listing_id, func.count()).where(Posting.listing_id.in_(listing_ids))
                                  .group_by(Posting.listing_id)).all())
        changes = dict(s.execute(select(Change.listing_id, func.count()).where(Change.listing_id.in_(listing_ids))
                                 .group_by(Change.listing_id)).all())
    return postings, changes


def test_a_batch_indexes_its_jobs_and_one_bad_photo_fails_alone(engine, settings, models):
    made = [_listing(engine, p) for p in _photos(5)]
    bad_listing, bad_job = _listing(engine, b"\xff\xd8\xff\xe0 not really a jpeg " + uuid.uuid4().bytes)
    made.insert(2, (bad_listing, bad_job))
    first_job = made[0][1]
    # Room for queued jobs other tests left in this database (a batch takes the oldest first).
    outcomes = process_batch(first_job, engine=engine, settings=settings, models=models, size=64)
    by_job = {o.job_id: o for o in outcomes}
    for lid, jid in made:
        assert jid in by_job, f"job {jid} was not part of the batch"
    with session_scope(engine) as s:
        for lid, jid in made:
            listing, job = s.get(Listing, lid), s.get(Job, jid)
            assert job.attempts == 1 and job.lease_until is None
            if jid == bad_job:
                assert by_job[jid].status == "failed" and job.status == "failed"
                assert listing.status == "failed" and listing.status_message
            else:
                assert by_job[jid].status == "done" and job.status == "done" and listing.status == "ready"
    postings, changes = _counts(engine, [lid for lid, _ in made])
    good = [lid for lid, _ in made if lid != bad_listing]
    assert postings == {lid: 1 for lid in good} and changes == {lid: 1 for lid in good}


def test_a_batch_leaves_leased_and_other_networks_jobs_alone(engine, settings, models):
    (a, job_a), (b, job_b), (c, job_c) = [_listing(engine, p) for p in _photos(3)]
    with session_scope(engine) as s:
        held = s.get(Job, job_b)  # another worker holds it: running, lease valid
        held.status, held.attempts, held.lease_until = "running", 1, queries.now() + timedelta(seconds=60)
        other = IndexGeneration(model_version=f"other-networks-{uuid.uuid4().hex[:8]}", status="building")
        s.add(other)
        s.flush()
        s.get(Job, job_c).generation_id, other_id = other.id, other.id
    claimed, settled = claim_batch(engine=engine, settings=settings, models=models, job_id=job_a, size=32)
    ids = {x.job_id for x in claimed}
    try:
        assert job_a in ids and job_b not in ids and job_c not in ids and not settled
        with session_scope(engine) as s:
            assert s.get(Job, job_b).attempts == 1 and s.get(Job, job_c).status == "queued"
            assert all(s.get(Job, j).status == "running" and s.get(Job, j).attempts == 1 for j in ids)
    finally:
        with session_scope(engine) as s:  # give back what this claim took, and retire the fake jobs
            for j in ids | {job_b, job_c}:
                job = s.get(Job, j)
                if j in (job_a, job_b, job_c):
                    job.status, job.lease_until = "superseded", None
                else:  # another test's queued job: back as it was
                    job.status, job.lease_until, job.attempts = "queued", None, job.attempts - 1
            s.get(IndexGeneration, other_id).status = "retired"


@pytest.mark.parametrize("batch", [1, 8])
def test_two_deliveries_of_one_queued_job_racing_index_it_once(engine, settings, models, batch):
    """Two worker processes receive the same queued job at the same moment (a redelivery while the first is
    still in Redis): both claim under the row lock, exactly one runs it."""
    lid, jid = _listing(engine, _photos(1)[0])
    start, results, errors = threading.Barrier(2), [], []

    def deliver():
        try:
            start.wait()
            if batch == 1:
                results.append([process_job(jid, engine=engine, settings=settings, models=models)])
            else:
                results.append(process_batch(jid, engine=engine, settings=settings, models=models, size=batch))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    mine = [o for outcomes in results for o in outcomes if o.job_id == jid]
    assert sorted(o.status for o in mine) == ["done", "skipped"], mine
    with session_scope(engine) as s:
        job, listing = s.get(Job, jid), s.get(Listing, lid)
        assert job.status == "done" and job.attempts == 1 and listing.status == "ready"
    postings, changes = _counts(engine, [lid])
    assert postings == {lid: 1} and changes == {lid: 1}
