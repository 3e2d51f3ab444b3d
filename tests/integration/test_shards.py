"""Sharded index daemons on the indexed sample catalogue: 3 shards answer exactly what one daemon answers (200
queries: categories, the whole index, several categories, edits, facets, ties, pages); a killed shard makes the API
answer 503 with Retry-After (or, with partial=true, say which shards answered) and it recovers once restarted."""
from __future__ import annotations

import signal

import numpy as np
import pytest
from sqlalchemy import text

from api import create_app
from lookalike.services import free_port
from lookalike.system import LiveSystem
from shared.errors import Unavailable
from shared.index.client import IndexClient
from shared.index.shards import ShardedIndexClient, allow_partial
from shared.taxonomy import load_taxonomy

pytestmark = pytest.mark.integration
N_SHARDS = 3


@pytest.fixture(scope="module")
def shards(live_system, settings, tmp_path_factory):
    """N_SHARDS shard daemons (real processes, `lookalike indexd` with LOOKALIKE_INDEX_SHARD=i/N) on the live
    system's database, beside its own unsharded daemon."""
    systems = []
    try:
        for i in range(N_SHARDS):
            s = LiveSystem(settings=settings.with_overrides(index_port=free_port(), index_shard=f"{i}/{N_SHARDS}"),
                           log_dir=tmp_path_factory.mktemp(f"shard{i}"))
            s.start("indexd")
            systems.append(s)
        for s in systems:
            s.wait_ready("indexd")
        yield systems
    finally:
        for s in systems:
            s.kill("indexd", signal.SIGTERM)


def _postings(engine) -> list[tuple[int, int, list[int], bytes, np.ndarray]]:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT p.listing_id, p.category_id, p.attribute_ids, p.code, p.colour FROM postings p "
            "JOIN index_generations g ON g.id = p.generation_id AND g.status = 'active' ORDER BY p.listing_id"))
        out = []
        for lid, cat, attrs, code, colour in rows:
            hist = np.frombuffer(bytes(colour), np.uint8).astype(np.float64) + 1.0  # any histogram summing to 1
            out.append((int(lid), int(cat), list(attrs), bytes(code), hist / hist.sum()))
    return out


def _same(a, b) -> None:
    assert [(h.listing_id, h.score, h.colour_distance, h.matched_attribute_ids) for h in a.hits] == \
           [(h.listing_id, h.score, h.colour_distance, h.matched_attribute_ids) for h in b.hits]
    assert [h.appearance_distance for h in a.hits] == [h.appearance_distance for h in b.hits]
    assert (a.n_items, a.matched, a.facets, a.weights, a.generation) == (b.n_items, b.matched, b.facets, b.weights,
                                                                         b.generation)
    assert {h.listing_id: a.terms.get(h.listing_id) for h in a.hits} == \
           {h.listing_id: b.terms.get(h.listing_id) for h in b.hits}


def test_three_shards_answer_exactly_what_one_daemon_answers(live_system, shards, engine):
    one = IndexClient(live_system.index_url)
    three = ShardedIndexClient([s.index_url for s in shards])
    ready = three.ready()
    counts = [d["items"] for d in ready["shards"]]
    assert sum(counts) == one.ready()["items"] and min(counts) > 0, counts  # a partition, every shard holds some
    assert [d["shard"] for d in ready["shards"]] == [f"{i}/{N_SHARDS}" for i in range(N_SHARDS)]

    rows = _postings(engine)
    cats = sorted({r[1] for r in rows})
    rng = np.random.default_rng(19)
    kinds = ["category", "all", "categories", "facets", "require", "ties", "page"]
    ties = 0
    for q in range(200):
        lid, cat, attrs, code, colour = rows[int(rng.integers(len(rows)))]
        kind = kinds[q % len(kinds)]
        base = dict(code=code, colour=colour, attribute_ids=attrs[:4])
        if kind == "categories":
            other = cats[int(rng.integers(len(cats)))]
            call = lambda c: c.search_categories(**base, category_ids=[cat, other], k=10, offset=3)  # noqa: E731
        else:
            category = None if kind in ("all", "ties", "page") else cat
            k, offset, refine = 10, 0, None
            if kind == "facets":
                k, refine = 5, {"facets": int(rng.integers(1, 60))}
            elif kind == "require" and attrs:
                refine = {"require": [attrs[0]]}
            elif kind == "ties":  # a sparse code without colour: many equal distances, ordered by listing id
                sparse = np.zeros(len(code), np.uint8)
                sparse[0] = 1
                base = dict(code=sparse.tobytes(), colour=None, attribute_ids=[])
                k, refine = 30, {"colour_weight": 0.0}
            elif kind == "page":
                k, offset = 7, int(rng.integers(0, 40))
            call = lambda c: c.search(**base, category_id=category, k=k, offset=offset, refine=refine)  # noqa: E731
        a, b = call(one), call(three)
        _same(a, b)
        assert b.shards == {"count": N_SHARDS, "answered": [0, 1, 2], "missing": [], "partial": False}
        if kind == "ties":
            scores = [h.score for h in a.hits]
            ties += len(scores) - len(set(scores))
    assert ties > 0  # the tie rule was exercised


def test_a_killed_shard_gives_503_and_recovers_when_restarted(live_system, shards, settings, engine):
    tax = load_taxonomy()
    with engine.connect() as conn:  # the category with the most listings; a palette search needs no networks
        cat_id = conn.execute(text("SELECT p.category_id FROM postings p JOIN index_generations g ON g.id = "
                                   "p.generation_id AND g.status = 'active' GROUP BY 1 ORDER BY count(*) DESC "
                                   "LIMIT 1")).scalar_one()
    sharded = create_app(settings.with_overrides(index_urls=",".join(s.index_url for s in shards)))
    single = create_app(settings)
    body = {"palette": "navy:0.6,white:0.4", "category": tax.category(cat_id).key, "k": 10}
    expected = single.test_client().post("/v1/search", json=body)
    assert expected.status_code == 200, expected.get_data(as_text=True)
    client = sharded.test_client()
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200 and r.json["results"] == expected.json["results"]
    assert r.json["index"]["shards"]["missing"] == []

    shards[1].kill("indexd")  # SIGKILL
    r = client.post("/v1/search", json=body)
    assert r.status_code == 503 and r.headers.get("Retry-After"), r.get_data(as_text=True)
    assert "1/3" in r.json["message"]
    r = client.post("/v1/search", json={**body, "partial": True})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["index"]["shards"] == {"count": 3, "answered": [0, 2], "missing": [1], "partial": True}
    assert all(x["listing_id"] % N_SHARDS != 1 for x in r.json["results"])
    ids = [x["listing_id"] for x in expected.json["results"] if x["listing_id"] % N_SHARDS != 1]
    assert [x["listing_id"] for x in r.json["results"]][:len(ids)] == ids[:len(r.json["results"])]
    with pytest.raises(Unavailable):
        ShardedIndexClient([s.index_url for s in shards]).ready()

    shards[1].start("indexd")  # the same shard again: it rebuilds its part from Postgres
    shards[1].wait_ready("indexd")
    r = client.post("/v1/search", json=body)  # no restart of the API: the next search finds the shard back
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.json["results"] == expected.json["results"] and r.json["index"]["shards"]["missing"] == []
    allow_partial(False)
