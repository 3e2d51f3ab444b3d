"""Trusting the index on real servers: queries of other networks refused, promote/rollback, a swap under 8 searching
clients with zero errors, and the seller-intent conflict flag from intake to the admin list."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter

import pytest
import requests
from sqlalchemy import select, text

from lookalike import models_cmd
from shared.config import REPO_ROOT
from shared.db import queries
from shared.db.models import IndexGeneration, Listing
from shared.db.session import session_scope

pytestmark = pytest.mark.integration
HEADERS = {"Authorization": "Bearer test-token"}


def _ready(live_system) -> dict:
    return requests.get(f"{live_system.index_url}/readyz", timeout=5).json()


def _wait_generation(live_system, generation: int, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = _ready(live_system)
        if body.get("generation") == generation and body.get("status") == "ready":
            return body
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not switch to generation {generation}: {_ready(live_system)}")


def _copy_generation(engine, source: int) -> int:
    """A new built generation under other (fake) network versions, holding the same postings as `source`."""
    with session_scope(engine) as s:
        src = s.get(IndexGeneration, source)
        gen = queries.ensure_generation(session=s, model_version=f"test-networks-{uuid.uuid4().hex[:8]}",
                                        networks={"features": "test"}, params=dict(src.params or {}))
        s.execute(text("INSERT INTO postings (generation_id, listing_id, category_id, attribute_ids, code, colour, "
                       "listing_version) SELECT :g, listing_id, category_id, attribute_ids, code, colour, "
                       "listing_version FROM postings WHERE generation_id = :src"), {"g": gen.id, "src": source})
        return gen.id


@pytest.fixture
def real_generation(live_system, engine):
    """The generation the live system's networks built; active again after the test whatever happened."""
    with session_scope(engine) as s:
        real = queries.active_generation(session=s)
        real_id, version = real.id, real.model_version
    _wait_generation(live_system, real_id)
    yield real_id, version
    with session_scope(engine) as s:
        if queries.active_generation(session=s).id != real_id:
            queries.activate_generation(session=s, generation=s.get(IndexGeneration, real_id))
    _wait_generation(live_system, real_id)


def _sample_photo(i: int = 0) -> bytes:
    rows = [p for p in sorted((REPO_ROOT / "sample" / "images").iterdir()) if p.name.startswith("clothing_")]
    return rows[i].read_bytes()


def _api_search(live_system, data: bytes):
    return requests.post(f"{live_system.api_url}/v1/search", files={"image": ("q.jpg", data)}, data={"k": 5},
                         timeout=120)


def test_generation_records_its_contract_and_queries_of_other_networks_are_refused(live_system, engine,
                                                                                   real_generation):
    real_id, version = real_generation
    ready = _ready(live_system)
    assert ready["model_version"] == version
    assert set(ready["networks"]) == {"text", "attributes", "detector", "features"}
    assert 0 < ready["params"]["colour_weight"] < 1 and ready["params"]["n_bits"] % 64 == 0
    photo = _sample_photo()
    r = _api_search(live_system, photo)
    assert r.status_code == 200 and r.json()["index"]["model_version"] == version

    # Two promotions later the daemon serves neither the API's networks nor keeps them as the previous generation.
    x, y = _copy_generation(engine, real_id), _copy_generation(engine, real_id)
    assert models_cmd.promote(engine, None, generation_id=x, tolerance=0.02, force=True)["promoted"]
    _wait_generation(live_system, x)
    r = _api_search(live_system, photo)  # the previous generation still answers the old networks
    assert r.status_code == 200 and r.json()["index"]["generation"] == real_id
    assert models_cmd.promote(engine, None, generation_id=y, tolerance=0.02, force=True)["promoted"]
    _wait_generation(live_system, y)
    r = _api_search(live_system, photo)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"] == "version_mismatch" and version in r.json()["message"]
    direct = requests.post(f"{live_system.index_url}/search", json={"model_version": version, "code": "00" * 32,
                                                                    "k": 1}, timeout=5)
    assert direct.status_code == 409 and direct.json()["query_model_version"] == version

    # Rollback returns to the generation active before (x), and undoes itself when run twice.
    assert models_cmd.rollback(engine) == {"from": y, "to": x, "model_version": _version_of(engine, x)}
    _wait_generation(live_system, x)
    assert models_cmd.rollback(engine)["to"] == y
    _wait_generation(live_system, y)
    # Back to the real networks: promoted, then a rollback keeps them answerable from the previous generation.
    assert models_cmd.promote(engine, None, generation_id=real_id, tolerance=0.02, force=True)["promoted"]
    _wait_generation(live_system, real_id)
    assert _api_search(live_system, photo).json()["index"]["generation"] == real_id
    assert models_cmd.rollback(engine)["to"] == y
    _wait_generation(live_system, y)
    r = _api_search(live_system, photo)
    assert r.status_code == 200 and r.json()["index"]["generation"] == real_id  # the previous one, kept in RAM
    assert models_cmd.rollback(engine)["to"] == real_id
    _wait_generation(live_system, real_id)


def _version_of(engine, generation: int) -> str:
    with session_scope(engine) as s:
        return s.get(IndexGeneration, generation).model_version


def test_promote_refuses_a_generation_missing_listings(live_system, engine, settings, real_generation, monkeypatch,
                                                       capsys):
    real_id, _ = real_generation
    with session_scope(engine) as s:
        empty = queries.ensure_generation(session=s, model_version=f"test-empty-{uuid.uuid4().hex[:8]}").id
    report = models_cmd.promote(engine, None, generation_id=empty, tolerance=0.02)
    assert not report["promoted"] and report["missing_listings"] > 0
    assert "not in the candidate" in report["gate"]["reason"]
    rows = {g["id"]: g for g in models_cmd.generations(engine)}
    assert rows[empty]["status"] == "building" and rows[empty]["postings"] == 0
    assert rows[real_id]["status"] == "active" and rows[real_id]["params"]["colour_weight"] > 0
    # The command itself, on the test database: it cannot gate a generation of other networks than its own ...
    monkeypatch.setenv("LOOKALIKE_DATABASE_URL", settings.database_url)
    with pytest.raises(SystemExit, match="LOOKALIKE_MODELS_DIR"):
        models_cmd.main(["promote", "--generation", str(empty), "--json"])
    assert models_cmd.main(["status", "--json"]) == 0
    assert {g["id"] for g in json.loads(capsys.readouterr().out)["generations"]} >= {real_id, empty}
    assert models_cmd.main(["status"]) == 0
    assert f"{empty:>4} building" in capsys.readouterr().out
    with session_scope(engine) as s:
        assert queries.active_generation(session=s).id == real_id
        s.get(IndexGeneration, empty).status = "retired"


def _wait_answers(seen: Counter, *, current: bool, more: int = 8, timeout_s: float = 60) -> None:
    """Wait until the clients got `more` further answers of that kind (from the current generation or the kept one)."""
    target = seen[current] + more
    deadline = time.monotonic() + timeout_s
    while seen[current] < target:
        assert time.monotonic() < deadline, f"no {more} answers with current={current} in {timeout_s}s: {dict(seen)}"
        time.sleep(0.05)


def test_swap_under_8_searching_clients_has_no_errors(live_system, engine, real_generation):
    """8 clients of the running networks search the daemon while generations are promoted and rolled back twice:
    every answer is a 200 from the generation of their networks (current, or kept as the previous one)."""
    real_id, version = real_generation
    with engine.connect() as c:
        queries_ = [(bytes(row[0]).hex(), [b / max(1, sum(bytes(row[1]))) for b in bytes(row[1])]) for row in c.execute(text(
            "SELECT code, colour FROM postings WHERE generation_id = :g ORDER BY listing_id LIMIT 8"), {"g": real_id})]
    stop = threading.Event()
    seen: Counter = Counter()
    errors: list[str] = []

    def client(code: str, colour: list[float]) -> None:
        http = requests.Session()
        while not stop.is_set():
            try:
                r = http.post(f"{live_system.index_url}/search",
                              json={"model_version": version, "code": code, "colour": colour, "k": 10}, timeout=10)
                body = r.json()
                if r.status_code != 200 or body["generation"] != real_id or body["model_version"] != version:
                    errors.append(f"{r.status_code} {str(body)[:200]}")
                else:
                    seen[body["current"]] += 1
            except Exception as exc:  # noqa: BLE001 - every failure counts
                errors.append(repr(exc))

    assert len(queries_) == 8
    threads = [threading.Thread(target=client, args=q) for q in queries_]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            other = _copy_generation(engine, real_id)
            assert models_cmd.promote(engine, None, generation_id=other, tolerance=0.02, force=True)["promoted"]
            _wait_generation(live_system, other)
            _wait_answers(seen, current=False)  # the clients are answered by the kept previous generation
            assert models_cmd.rollback(engine)["to"] == real_id
            _wait_generation(live_system, real_id)
            _wait_answers(seen, current=True)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"swap under load: {sum(seen.values())} answers ({seen[True]} current, {seen[False]} kept previous), "
          f"{len(errors)} errors")
    assert not errors, errors[:5]
    assert seen[True] > 0 and seen[False] > 0, seen  # answered both as the current and as the kept generation


def test_seller_intent_conflict_is_flagged_listed_and_indexed_under_the_sellers_category(live_system, engine,
                                                                                         data_dir):
    """A Colorful Fashion street photo (a dress) titled with a handbag title: flagged, indexed as a bag; the same
    photo titled as a dress: not flagged. (Photo cfd_68444 of the val split, flagged correctly by the evaluation.)"""
    photo = (data_dir / "images" / "colorful_fashion" / "68444.jpg").read_bytes()
    seller = f"conflicts-{uuid.uuid4().hex[:8]}"
    ids = {}
    for name, title in (("bag", "Baggit Women Olive Purse"), ("dress", "Doodle Kids Girl Printed White Dress")):
        r = requests.post(f"{live_system.api_url}/v1/listings", data={"seller_id": seller, "external_id": name,
                                                                      "title": title},
                          files={"image": ("p.jpg", photo)}, timeout=30)
        assert r.status_code == 202, r.text
        ids[name] = r.json()["listing_id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with session_scope(engine) as s:
            states = set(s.execute(select(Listing.status).where(Listing.id.in_(ids.values()))).scalars())
        if states == {"ready"}:
            break
        time.sleep(0.3)
    assert states == {"ready"}, states
    bag = requests.get(f"{live_system.api_url}/v1/listings/{ids['bag']}", timeout=10).json()
    assert bag["category"]["key"] == "bag"  # the seller's category wins, as in the paper
    conflict = bag["category_conflict"]
    assert conflict["seller"]["category"] == "bag" and conflict["seller"]["source"] == "text"
    assert conflict["photo"]["category"] == "dress" and 0.5 < conflict["photo"]["confidence"] <= 1
    assert 0 < conflict["seller"]["confidence"] <= 1
    dress = requests.get(f"{live_system.api_url}/v1/listings/{ids['dress']}", timeout=10).json()
    assert dress["category"]["key"] == "dress" and dress["category_conflict"] is None
    listed = requests.get(f"{live_system.api_url}/v1/admin/conflicts", headers=HEADERS, timeout=10)
    assert listed.status_code == 200
    flagged = {c["listing_id"]: c for c in listed.json()["conflicts"]}
    assert ids["bag"] in flagged and ids["dress"] not in flagged
    assert flagged[ids["bag"]]["photo"]["category"] == "dress"
    assert requests.get(f"{live_system.api_url}/v1/admin/conflicts", timeout=10).status_code == 401


def test_golden_baseline_of_the_live_generation(live_system, engine, settings, real_generation):
    """The golden set evaluated on the live generation with its own networks (in-process, as `lookalike models
    baseline` does): recorded on the generation; a candidate of other networks cannot be evaluated by them."""
    from lookalike.golden import FIGURES, compare
    from shared.pipeline import Models

    real_id, _ = real_generation
    models = Models.load(settings)
    golden = models_cmd.record_golden(engine, models, real_id)
    print("golden figures of the live generation:", golden)
    assert golden["n_queries"] >= 5 and set(FIGURES) <= set(golden)
    assert golden["own_at_1"] >= 0.8  # the same photo, indexed, comes first
    with session_scope(engine) as s:
        assert s.get(IndexGeneration, real_id).golden == golden
    worse = {**golden, "p_at_10": golden["p_at_10"] - 0.1}
    gate = compare(worse, golden, tolerance=0.02)
    assert not gate["ok"] and set(gate["drops"]) == {"p_at_10"}
    assert compare(golden, golden, tolerance=0.02)["ok"] and not compare(golden, None, tolerance=0.02)["ok"]
    other = _copy_generation(engine, real_id)
    with pytest.raises(SystemExit, match="LOOKALIKE_MODELS_DIR"):
        models_cmd.record_golden(engine, models, other)
    with session_scope(engine) as s:
        s.get(IndexGeneration, other).status = "retired"


def test_listing_ingested_during_a_build_reaches_both_generations(live_system, engine, settings, real_generation):
    """While a generation of other networks is building, a new listing is written by the live worker into its own
    generation and queued for the other one; the live worker (other networks) puts that job back untouched, and a
    worker running the building generation's networks (here: in-process, the same weights under another version
    label) writes it there. Nothing becomes invisible in either generation."""
    import dataclasses

    from shared.db.models import Job, Posting
    from shared.pipeline import Models
    from workers.processing import process_job

    real_id, _ = real_generation
    models_next = Models.load(settings)
    models_next = dataclasses.replace(models_next, features_version=models_next.features_version + "-next")
    with session_scope(engine) as s:
        building = queries.ensure_generation(session=s, model_version=models_next.model_version,
                                             networks=models_next.versions, params=models_next.ranking_params)
        assert building.status == "building"
        building_id = building.id
    try:
        r = requests.post(f"{live_system.api_url}/v1/listings",
                          data={"seller_id": f"build-{uuid.uuid4().hex[:8]}", "external_id": "x",
                                "title": "Blue denim jacket"},
                          files={"image": ("p.jpg", _sample_photo(3))}, timeout=30)
        assert r.status_code == 202, r.text
        lid = r.json()["listing_id"]
        deadline = time.monotonic() + 120
        job = None
        while time.monotonic() < deadline:  # ready in the live generation, and its job for the other one sent
            with session_scope(engine) as s:
                ready = s.get(Listing, lid).status == "ready"
                job = s.execute(select(Job).where(Job.listing_id == lid, Job.generation_id == building_id)
                                ).scalar_one_or_none()
                if ready and job is not None and job.status == "queued" and "waits for a worker" in (
                        job.last_error or ""):
                    job_id, status, attempts = job.id, job.status, job.attempts
                    break
            time.sleep(0.3)
        else:
            raise AssertionError(f"listing {lid} not ready or its job for generation {building_id} never put back")
        assert job.kind == "reindex" and status == "queued" and attempts == 0  # the live worker put it back

        def posting_in(gen: int) -> bool:
            with session_scope(engine) as s:
                return s.get(Posting, (gen, lid)) is not None

        assert posting_in(real_id) and not posting_in(building_id)
        outcome = process_job(job_id, engine=engine, settings=settings, models=models_next)
        assert outcome.status == "done", outcome
        assert posting_in(building_id)
    finally:
        with session_scope(engine) as s:
            s.get(IndexGeneration, building_id).status = "retired"
