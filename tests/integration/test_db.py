"""Schema and migrations on real PostgreSQL."""
from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from lookalike.db_admin import alembic_config, downgrade, upgrade
from shared.db import queries
from shared.db.models import Base, Change, Job, Listing, ListingCategory

pytestmark = pytest.mark.integration


def test_single_migration_head(settings):
    script = ScriptDirectory.from_config(alembic_config(settings.database_url))
    assert len(script.get_heads()) == 1


def test_upgrade_downgrade_upgrade(settings, engine):
    # A separate database so the shared test schema stays intact.
    url = make_url(settings.database_url)
    other = url.set(database=url.database.replace("_test", "_migrations_test"))
    admin = create_engine(url.set(database="postgres", drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {other.database} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {other.database}"))
    s2 = settings.with_overrides(database_url=other.render_as_string(hide_password=False))
    upgrade(s2)
    eng = create_engine(other.set(drivername="postgresql+psycopg2"))
    assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
    downgrade(s2, "base")
    assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
    upgrade(s2)
    assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
    eng.dispose()
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {other.database} WITH (FORCE)"))
    admin.dispose()


def test_models_match_migrations(engine):
    """Autogenerate finds nothing to do: the ORM and the migrations describe the same schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_external_id_unique_per_seller(db_session):
    db_session.add(Listing(seller_id="s1", external_id="x", title="a"))
    db_session.add(Listing(seller_id="s2", external_id="x", title="b"))  # another seller: fine
    db_session.flush()
    db_session.add(Listing(seller_id="s1", external_id="x", title="c"))
    with pytest.raises(IntegrityError):
        db_session.flush()


@pytest.mark.parametrize("source", ["text", "image", "seller", "detector", "detector+image"])
def test_every_category_source_the_pipeline_writes_is_accepted(db_session, source):
    # Regression: the shop-the-look rule names 'detector' / 'detector+image' sources; the column refused them.
    listing = Listing(seller_id="src", external_id=source, title="")
    db_session.add(listing)
    db_session.flush()
    db_session.add(ListingCategory(listing_id=listing.id, taxonomy_version="t", category_id=1, source=source,
                                   listing_version=1, confidence=0.5))
    db_session.flush()


def test_unknown_category_source_is_refused(db_session):
    listing = Listing(seller_id="src", external_id="bad", title="")
    db_session.add(listing)
    db_session.flush()
    db_session.add(ListingCategory(listing_id=listing.id, taxonomy_version="t", category_id=1, source="guess",
                                   listing_version=1, confidence=0.5))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_upsert_listing_creates_job_and_is_idempotent(db_session):
    r1 = queries.upsert_listing(session=db_session, seller_id="s", external_id="e", title="Red dress",
                                description="", seller_category=None, image_url="http://example.com/a.jpg",
                                image_sha256=None)
    assert r1.created and r1.job is not None and r1.listing.version == 1
    r2 = queries.upsert_listing(session=db_session, seller_id="s", external_id="e", title="Red dress",
                                description="", seller_category=None, image_url="http://example.com/a.jpg",
                                image_sha256=None)
    assert r2.job is None and r2.listing.id == r1.listing.id  # same content: nothing to do
    r3 = queries.upsert_listing(session=db_session, seller_id="s", external_id="e", title="Blue dress",
                                description="", seller_category=None, image_url="http://example.com/a.jpg",
                                image_sha256=None)
    assert r3.listing.version == 2 and r3.job.listing_version == 2
    old = db_session.get(Job, r1.job.id)
    assert old.status == "superseded"


def test_change_sequence_is_monotonic(db_session):
    # Inside this test's rolled-back transaction: no generation is active yet.
    db_session.execute(text("UPDATE index_generations SET status = 'retired' WHERE status = 'active'"))
    gen = queries.ensure_generation(session=db_session, model_version="m1")
    assert gen.status == "active"  # the first generation is active at once
    listing = Listing(seller_id="s", external_id="z", title="t")
    db_session.add(listing)
    db_session.flush()
    for _ in range(3):
        queries.record_change(session=db_session, generation_id=gen.id, listing_id=listing.id, op="upsert")
    seqs = db_session.execute(select(Change.seq).where(Change.generation_id == gen.id).order_by(Change.seq)
                              ).scalars().all()
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) >= 4  # activate + 3 upserts


def test_claim_job_lease_and_attempt_cap(db_session):
    r = queries.upsert_listing(session=db_session, seller_id="s", external_id="lease", title="t", description="",
                               seller_category=None, image_url="http://example.com/b.jpg", image_sha256=None)
    job = queries.claim_job(session=db_session, job_id=r.job.id, lease_s=60, max_attempts=2)
    assert job is not None and job.status == "running" and job.attempts == 1
    assert queries.claim_job(session=db_session, job_id=r.job.id, lease_s=60, max_attempts=2) is None  # leased
    job.lease_until = queries.now().replace(year=2000)  # the worker died: lease expired
    db_session.flush()
    again = queries.claim_job(session=db_session, job_id=r.job.id, lease_s=60, max_attempts=2)
    assert again is not None and again.attempts == 2
    again.lease_until = queries.now().replace(year=2000)
    db_session.flush()
    assert queries.claim_job(session=db_session, job_id=r.job.id, lease_s=60, max_attempts=2) is None
    assert db_session.get(Job, r.job.id).status == "failed"
    assert db_session.get(Listing, r.listing.id).status == "failed"


def test_reindex_into_a_new_generation_waits_for_promotion(engine):
    """A reindex under a new model version writes beside the active generation; once done it stays built (not
    serving) until promoted, and the promotion switches in one step."""
    import uuid

    from shared.db.models import AdminJob, IndexGeneration
    from shared.db.session import session_scope
    from workers.reindex import finalize_admin_jobs

    with session_scope(engine) as s:
        old = queries.active_generation(session=s) or queries.ensure_generation(session=s, model_version="old")
        new = queries.ensure_generation(session=s, model_version=f"new-{uuid.uuid4()}")
        assert new.status == "building"  # an active generation exists: the new one waits
        listing = Listing(seller_id="reidx", external_id=str(uuid.uuid4()), title="t", status="ready")
        s.add(listing)
        s.flush()
        admin = AdminJob(kind="reindex", params={}, status="running", generation_id=new.id, total=1)
        s.add(admin)
        s.flush()
        job = Job(listing_id=listing.id, listing_version=1, kind="reindex", status="running", generation_id=new.id,
                  admin_job_id=admin.id)
        s.add(job)
        s.flush()
        ids = (old.id, new.id, admin.id, job.id)
    finalize_admin_jobs(engine=engine)
    with session_scope(engine) as s:
        assert s.get(IndexGeneration, ids[1]).status == "building"  # a job is still running
        s.get(Job, ids[3]).status = "done"
    finalize_admin_jobs(engine=engine)
    with session_scope(engine) as s:
        assert s.get(IndexGeneration, ids[1]).status == "building"  # built: waits for `lookalike models promote`
        assert s.get(AdminJob, ids[2]).status == "done"
        queries.activate_generation(session=s, generation=s.get(IndexGeneration, ids[1]))
    with session_scope(engine) as s:
        assert s.get(IndexGeneration, ids[1]).status == "active"
        assert s.get(IndexGeneration, ids[1]).previous_id == ids[0]
        assert s.get(IndexGeneration, ids[0]).status == "retired"
        last = s.execute(select(Change).order_by(Change.seq.desc()).limit(1)).scalar_one()
        assert last.op == "activate" and last.generation_id == ids[1]
        # Put the old generation back so later tests see the world they expect.
        queries.activate_generation(session=s, generation=s.get(IndexGeneration, ids[0]))
