"""Issue 14 regressions on real PostgreSQL/Redis: poison jobs end `failed` with a message and never hold an admin
job open, leases are renewed while a job runs, concurrent first POSTs never collide, and the live API answers
every hostile request with a 4xx that names the problem (never a 5xx)."""
from __future__ import annotations

import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image
from sqlalchemy import select

from shared.db import queries
from shared.db.models import AdminJob, IndexGeneration, Job, Listing
from shared.db.session import session_scope
from shared.imaging import image_sha256
from shared.listings import ListingInput, accept_listing_retrying
from workers.processing import LeaseKeeper, RetryLater, process_job
from workers.reindex import finalize_admin_jobs

pytestmark = pytest.mark.integration


def _png(colour=(200, 30, 30), size=(64, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _listing_with_job(engine, *, kind: str = "ingest", admin_job_id: int | None = None,
                      generation_id: int | None = None) -> tuple[int, int]:
    data = _png(colour=(uuid.uuid4().int % 255, 10, 10))
    with session_scope(engine) as s:
        sha = image_sha256(data)
        queries.store_image(session=s, sha256=sha, data=data, content_type="image/png", width=64, height=80)
        r = queries.upsert_listing(session=s, seller_id="poison", external_id=uuid.uuid4().hex, title="t",
                                   description="", seller_category=None, image_url=None, image_sha256=sha)
        job = r.job
        if kind != "ingest":
            job.kind, job.admin_job_id, job.generation_id = kind, admin_job_id, generation_id
        s.flush()
        return r.listing.id, job.id


def _run_until_settled(job_id: int, *, engine, settings, models) -> list[str]:
    """Run the job the way Celery retries would, recording each attempt's outcome."""
    seen = []
    for _ in range(settings.job_max_attempts + 2):
        try:
            outcome = process_job(job_id, engine=engine, settings=settings, models=models)
        except RetryLater:
            seen.append("retry")
            continue
        seen.append(outcome.status)
        if outcome.status in ("failed", "done", "skipped"):
            break
    return seen


def test_unexpected_exception_ends_failed_with_message_after_the_attempt_cap(engine, settings):
    listing_id, job_id = _listing_with_job(engine)
    # models=None: the pipeline raises AttributeError, as any bug or poison input would.
    seen = _run_until_settled(job_id, engine=engine, settings=settings, models=None)
    assert seen == ["retry"] * (settings.job_max_attempts - 1) + ["failed"]
    with session_scope(engine) as s:
        listing, job = s.get(Listing, listing_id), s.get(Job, job_id)
        assert listing.status == "failed" and job.status == "failed"
        assert f"processing failed {settings.job_max_attempts} times" in listing.status_message
        assert "AttributeError" in listing.status_message
        assert job.attempts == settings.job_max_attempts


def test_retry_notes_the_error_on_the_listing_before_giving_up(engine, settings):
    listing_id, job_id = _listing_with_job(engine)
    with pytest.raises(RetryLater):
        process_job(job_id, engine=engine, settings=settings, models=None)
    with session_scope(engine) as s:
        listing, job = s.get(Listing, listing_id), s.get(Job, job_id)
        assert job.status == "queued" and "AttributeError" in job.last_error
        assert listing.status_message.startswith(f"attempt 1 of {settings.job_max_attempts} failed")


def test_poison_listing_never_holds_an_admin_reindex_open(engine, settings):
    from types import SimpleNamespace

    with session_scope(engine) as s:
        gen = IndexGeneration(model_version=f"poison-{uuid.uuid4().hex}", status="building")
        s.add(gen)
        s.flush()
        admin = AdminJob(kind="reindex", params={}, status="running", generation_id=gen.id, total=1)
        s.add(admin)
        s.flush()
        gen_id, admin_id, version = gen.id, admin.id, gen.model_version
    _, job_id = _listing_with_job(engine, kind="reindex", admin_job_id=admin_id, generation_id=gen_id)
    finalize_admin_jobs(engine=engine)
    with session_scope(engine) as s:
        assert s.get(AdminJob, admin_id).status == "running"  # its job is still queued
    # Networks of the generation's version whose pipeline raises (no taxonomy): a poison listing for them.
    broken = SimpleNamespace(model_version=version)
    seen = _run_until_settled(job_id, engine=engine, settings=settings, models=broken)
    assert seen[-1] == "failed", seen
    with session_scope(engine) as s:
        # Retired before finalizing, so closing this admin job cannot activate a fake generation in the shared
        # test database.
        s.get(IndexGeneration, gen_id).status = "retired"
    finalize_admin_jobs(engine=engine)
    with session_scope(engine) as s:
        admin = s.get(AdminJob, admin_id)
        assert admin.status == "done" and admin.error == "1 listing(s) failed (see each listing's status_message)"


def test_lease_is_renewed_while_the_job_runs(engine):
    _, job_id = _listing_with_job(engine)
    with session_scope(engine) as s:
        job = queries.claim_job(session=s, job_id=job_id, lease_s=3, max_attempts=5)
        first = job.lease_until
    with LeaseKeeper(engine=engine, job_id=job_id, lease_s=3):
        deadline = time.monotonic() + 10
        renewed = first
        while renewed <= first and time.monotonic() < deadline:
            time.sleep(0.2)
            with session_scope(engine) as s:
                renewed = s.get(Job, job_id).lease_until
    assert renewed > first
    # A killed worker renews nothing: the lease runs out and the reconciler's query picks the job up.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with session_scope(engine) as s:
            if job_id in queries.jobs_to_requeue(session=s, stale_after_s=300):
                break
        time.sleep(0.3)
    else:
        pytest.fail("an expired lease was not offered for re-queueing")


def test_concurrent_first_posts_of_one_listing_never_collide(engine, settings):
    ext = uuid.uuid4().hex
    photos = [_png(colour=(i * 20, 100, 50)) for i in range(10)]

    def post(i: int):
        return accept_listing_retrying(engine=engine, settings=settings,
                                       data=ListingInput(seller_id="race", external_id=ext, title=f"v{i}"),
                                       image_bytes=photos[i])

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(post, range(10)))
    assert sum(r.created for r in results) == 1
    assert len({r.listing_id for r in results}) == 1
    with session_scope(engine) as s:
        listing = s.execute(select(Listing).where(Listing.seller_id == "race", Listing.external_id == ext)
                            ).scalar_one()
        assert listing.version == max(r.version for r in results)
        live = s.execute(select(Job).where(Job.listing_id == listing.id, Job.status == "queued")).scalars().all()
        assert len(live) == 1  # every older version's job is superseded


# -- the live API ------------------------------------------------------------------------------------------------

def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (120, 160), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "fragment"), [
    ("post", "/v1/listings", {"data": {"seller_id": "h", "external_id": "n", "title": "a\x00b"}, "image": True},
     400, "NUL"),
    ("post", "/v1/listings", {"data": {"seller_id": "h", "external_id": "e\x00"}, "image": True}, 400, "NUL"),
    ("post", "/v1/listings", {"data": b'{"seller_id":"h","external_id":"s","title":"\\ud800",'
                                      b'"image_url":"http://example.com/a.jpg"}', "headers": JSON}, 400, "surrogate"),
    ("post", "/v1/search", {"data": b"[" * 1000 + b"]" * 1000, "headers": JSON}, 400, "JSON"),
    ("post", "/v1/search", {"png": (10000, 1)}, 400, "at most 20 times"),
    ("post", "/v1/search", {"png": (1, 10000)}, 400, "at most 20 times"),
    ("post", "/v1/listings", {"data": {"seller_id": "h", "external_id": "strip"}, "png": (10000, 1)}, 400,
     "at most 20 times"),
    ("post", "/v1/search", {"data": {"k": ""}, "image": True}, 200, ""),
    ("post", "/v1/search", {"data": {"k": "9" * 5000}, "image": True}, 400, "k must be an integer"),
    ("post", "/v1/search", {"data": {"image_url": "http://example.com/a.jpg"}, "image": True}, 400, "not both"),
    ("post", "/v1/listings", {"data": {"seller_id": "h", "external_id": "u", "image_url": "http://127.0.0.1/a.jpg"}},
     400, "127.0.0.1"),
    ("post", "/v1/search", {"files": {"image": ("a.jpg", b"\xff\xd8\xff" + b"\x00" * (11 << 20))}}, 413, "MB limit"),
    ("get", "/v1/listings/999999999/image", {}, 404, "no image"),
])
def test_hostile_requests_get_a_named_4xx(live_system, method, path, kwargs, status, fragment):
    kwargs = dict(kwargs)
    if kwargs.pop("image", False):
        kwargs["files"] = {"image": ("a.jpg", _jpeg())}
    if "png" in kwargs:
        buf = io.BytesIO()
        Image.new("RGB", kwargs.pop("png")).save(buf, "PNG")
        kwargs["files"] = {"image": ("a.png", buf.getvalue())}
    r = getattr(requests, method)(f"{live_system.api_url}{path}", timeout=60, **kwargs)
    assert r.status_code == status, r.text[:300]
    if fragment:
        assert fragment in r.json()["message"]


def test_deleted_listing_photo_is_no_longer_served(live_system):
    api = live_system.api_url
    r = requests.post(f"{api}/v1/listings", data={"seller_id": "h", "external_id": uuid.uuid4().hex},
                      files={"image": ("a.jpg", _jpeg())}, timeout=60)
    assert r.status_code == 202, r.text
    lid = r.json()["listing_id"]
    assert requests.get(f"{api}/v1/listings/{lid}/image", timeout=30).status_code == 200
    assert requests.delete(f"{api}/v1/listings/{lid}", timeout=30).status_code == 202
    assert requests.get(f"{api}/v1/listings/{lid}/image", timeout=30).status_code == 404


def test_large_png_search_is_cheap_and_boxes_stay_in_client_pixels(live_system):
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    w, h = 3000, 3300
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(b"\x00" + b"\x80" * (w * 3)) for _ in range(h)) + comp.flush()
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    r = requests.post(f"{live_system.api_url}/v1/search", files={"image": ("big.png", png)},
                      data={"rect": "300,330,2700,2970"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["query"]["roi"]["box"] == [300.0, 330.0, 2700.0, 2970.0]  # client pixels, not work pixels


def test_embedded_redis_is_restarted_on_its_port(tmp_path):
    """What the `up` supervisor does when the embedded Redis dies: same port, so every child's URL still works."""
    import os
    import signal

    from lookalike.services import EmbeddedServices, _redis_ping

    services = EmbeddedServices(var_dir=tmp_path)
    services.start_redis()
    try:
        port, pid = services._redis_port, services._redis_pid
        assert services.redis_alive() and _redis_ping(port)
        os.kill(pid, signal.SIGKILL)
        services._redis_proc.wait(10)
        assert not services.redis_alive()
        services.restart_redis()
        assert services.redis_alive() and services._redis_pid != pid and services._redis_port == port
        assert _redis_ping(port)
    finally:
        services._stop_redis()


def test_embedded_postgres_is_restarted_with_the_same_url(tmp_path):
    """What the `up` supervisor does when the embedded PostgreSQL dies: same data folder and socket, same URL."""
    import os
    import signal

    from sqlalchemy import create_engine, text

    from lookalike.services import EmbeddedServices

    services = EmbeddedServices(var_dir=tmp_path)
    services.start_postgres()
    try:
        url, pid = services.database_url, services._pg_pid
        assert services.postgres_alive()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while services.postgres_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not services.postgres_alive()
        services.restart_postgres()
        assert services.postgres_alive() and services._pg_pid != pid and services.database_url == url
        eng = create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
        with eng.connect() as c:
            assert c.execute(text("SELECT 1")).scalar_one() == 1
        eng.dispose()
    finally:
        services._stop_postgres()
