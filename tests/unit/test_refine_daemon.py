"""The daemon's /search endpoint with edits, target colours, facets and score terms (Flask test client, in-process
snapshot; the HTTP path through IndexClient is covered by tests/integration/test_refine_page.py)."""
from __future__ import annotations

import numpy as np
import pytest

from index_daemon.holder import SnapshotHolder
from index_daemon.server import create_daemon_app
from shared.index.snapshot import IndexSnapshot


@pytest.fixture(scope="module")
def client():
    rng = np.random.default_rng(1)
    n = 400
    attrs = [sorted(set(rng.integers(0, 8, 3).tolist())) for _ in range(n)]
    hist = rng.random((n, 6)).astype(np.float32)
    hist /= hist.sum(axis=1, keepdims=True)
    snap = IndexSnapshot.build(np.arange(1, n + 1), rng.integers(0, 2, n), attrs,
                               rng.integers(0, 256, (n, 32), dtype=np.uint8), hist, generation=3)
    holder = SnapshotHolder()
    holder.swap(snap, status="ready", generation=3)
    app = create_daemon_app(holder, colour_weight=0.1)
    c = app.test_client()
    c.attrs = {i + 1: set(a) for i, a in enumerate(attrs)}
    c.cats = snap
    return c


def _body(**extra):
    return {"code": "ab" * 32, "colour": [1 / 6] * 6, "category_id": 1, "attribute_ids": [2, 5], "k": 30, **extra}


def test_unedited_request_keeps_its_answer_and_gains_terms(client):
    r = client.post("/search", json=_body()).get_json()
    assert r["weights"] == {"appearance": 0.9, "colour": 0.1}
    assert r["matched"] > 0 and "facets" not in r
    for h in r["hits"]:
        assert h["appearance_term"] + h["colour_term"] == h["score"]


def test_edit_restricts_exactly_and_counts_matches(client):
    target = [0, 0, 1, 0, 0, 0]
    r = client.post("/search", json=_body(require=[3], exclude=[4], target_colour=target, colour_weight=0.5,
                                          facets=50)).get_json()
    assert r["weights"] == {"appearance": 0.5, "colour": 0.5}
    assert r["hits"] and all(3 in client.attrs[h["listing_id"]] and 4 not in client.attrs[h["listing_id"]]
                             for h in r["hits"])
    f = r["facets"]
    assert f["n"] == min(50, r["matched"]) and dict(f["attributes"])[3] == f["n"] and 4 not in dict(f["attributes"])
    assert dict(f["categories"]) == {1: f["n"]}


def test_colour_only_search_needs_no_code(client):
    r = client.post("/search", json={"category_id": 0, "k": 5, "appearance": False,
                                     "target_colour": [1, 0, 0, 0, 0, 0]}).get_json()
    assert len(r["hits"]) == 5 and r["weights"]["colour"] == 1.0
    assert all(h["appearance_distance"] is None and h["appearance_term"] == 0 for h in r["hits"])
    assert [h["score"] for h in r["hits"]] == sorted(h["score"] for h in r["hits"])


@pytest.mark.parametrize("extra,message", [
    ({"require": [1], "exclude": [1]}, "both required and excluded"),
    ({"facets": 5000}, "facets"),
    ({"require": ["x"]}, "malformed"),
    ({"colour": None}, "needs a query colour"),
])
def test_bad_edits_are_400(client, extra, message):
    r = client.post("/search", json=_body(**extra))
    assert r.status_code == 400 and message in r.get_json()["message"]
