"""The public API over a real socket: search options, clear 4xx for every bad input, health and docs."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image

from shared.config import REPO_ROOT

pytestmark = pytest.mark.integration
SAMPLE = REPO_ROOT / "sample" / "images"


def _jpeg(size=(120, 160), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _sample_photo(live_system) -> tuple[bytes, str]:
    row = live_system.sample_rows[0]
    return row.image_path.read_bytes(), row.external_id


def test_search_finds_an_indexed_listing_by_its_own_photo(live_system):
    data, external_id = _sample_photo(live_system)
    r = requests.post(f"{live_system.api_url}/v1/search", files={"image": ("q.jpg", data)}, data={"k": 5},
                      timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["option"] == 1
    assert body["results"], body
    assert body["results"][0]["external_id"] == external_id  # the same photo ranks first
    q = body["query"]
    assert q["category"]["source"] in ("image", "detector", "detector+image")  # option 1: from the photo
    assert len(q["roi"]["box"]) == 4
    first = body["results"][0]
    assert {"score", "appearance_distance", "colour_distance", "matched_attributes", "title"} <= set(first)
    # The shipped features carry a re-ranker: the daemon's shortlist was re-ordered by the stored 4-bit vectors.
    assert body["index"]["reranked"] >= len(body["results"])
    assert all(0.0 <= r["rerank_distance"] <= 1.0 for r in body["results"])
    assert first["rerank_distance"] == min(r["rerank_distance"] for r in body["results"])


def test_every_posting_stores_its_rerank_vector(live_system, engine):
    from sqlalchemy import text

    from shared.vision.features import FeatureExtractor

    n_bytes = FeatureExtractor.load().reranker.n_bytes
    with engine.connect() as conn:
        lengths = conn.execute(text("SELECT length(p.rerank) FROM postings p JOIN index_generations g "
                                    "ON g.id = p.generation_id WHERE g.status = 'active'")).scalars().all()
    assert lengths and set(lengths) == {n_bytes}


def test_three_query_options(live_system):
    data, _ = _sample_photo(live_system)
    url = f"{live_system.api_url}/v1/search"
    r2 = requests.post(url, files={"image": ("q.jpg", data)}, data={"category": "tshirt", "k": 3}, timeout=30)
    assert r2.status_code == 200 and r2.json()["option"] == 2
    assert r2.json()["query"]["category"]["key"] == "tshirt"
    w, h = Image.open(io.BytesIO(data)).size
    r3 = requests.post(url, files={"image": ("q.jpg", data)}, data={"rect": f"0,0,{w // 2},{h // 2}"}, timeout=30)
    assert r3.status_code == 200 and r3.json()["option"] == 3
    assert r3.json()["query"]["roi"]["fallback"] == "shopper_rect"
    assert r3.json()["query"]["roi"]["box"] == [0.0, 0.0, float(w // 2), float(h // 2)]


def test_pagination_does_not_repeat_results(live_system):
    data, _ = _sample_photo(live_system)
    url = f"{live_system.api_url}/v1/search"
    p1 = requests.post(url, files={"image": ("q.jpg", data)}, data={"k": 5, "offset": 0}, timeout=30).json()
    p2 = requests.post(url, files={"image": ("q.jpg", data)}, data={"k": 5, "offset": 5}, timeout=30).json()
    ids1 = [r["listing_id"] for r in p1["results"]]
    ids2 = [r["listing_id"] for r in p2["results"]]
    assert ids1 and not set(ids1) & set(ids2)
    assert p1["next_offset"] == 5
    # Re-ranking reads the same shortlist whatever the page: two pages of 5 are the first 10 in one order.
    both = requests.post(url, files={"image": ("q.jpg", data)}, data={"k": 10}, timeout=30).json()
    assert [r["listing_id"] for r in both["results"]] == ids1 + ids2


@pytest.mark.parametrize("files,data,status,fragment", [
    ({"image": ("x.jpg", b"not an image at all")}, {}, 400, "image"),
    ({"image": ("x.jpg", b"")}, {}, 400, "empty"),
    ({"image": ("x.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 50)}, {}, 400, ""),
    ({}, {}, 400, "image"),
    ({"image": ("x.jpg", "JPEG")}, {"category": "spaceship"}, 400, "unknown category"),
    ({"image": ("x.jpg", "JPEG")}, {"k": "0"}, 400, "k must be between"),
    ({"image": ("x.jpg", "JPEG")}, {"k": "abc"}, 400, "k must be an integer"),
    ({"image": ("x.jpg", "JPEG")}, {"k": "1000"}, 400, "k must be between"),
    ({"image": ("x.jpg", "JPEG")}, {"offset": "-1"}, 400, "offset"),
    ({"image": ("x.jpg", "JPEG")}, {"rect": "0,0,5000,5000"}, 400, "outside"),
    ({"image": ("x.jpg", "JPEG")}, {"rect": "10,10,5,5"}, 400, "x1 > x0"),
    ({"image": ("x.jpg", "JPEG")}, {"rect": "a,b,c,d"}, 400, "four numbers"),
    ({}, {"image_url": "file:///etc/passwd"}, 400, ""),
    ({}, {"image_url": "http://169.254.169.254/latest/meta-data/"}, 400, ""),
])
def test_bad_search_input_is_a_clear_4xx(live_system, files, data, status, fragment):
    files = {k: (v[0], _jpeg() if v[1] == "JPEG" else v[1]) for k, v in files.items()}
    r = requests.post(f"{live_system.api_url}/v1/search", files=files or None, data=data, timeout=30)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] and fragment.lower() in body["message"].lower()


def test_oversized_upload_is_413(live_system):
    big = b"\xff\xd8\xff" + b"\x00" * (live_system.settings.max_image_bytes + 200_000)
    r = requests.post(f"{live_system.api_url}/v1/search", files={"image": ("big.jpg", big)}, timeout=60)
    assert r.status_code == 413


def test_health_ready_metrics_and_docs(live_system):
    api = live_system.api_url
    assert requests.get(f"{api}/healthz", timeout=5).json()["status"] == "ok"
    ready = requests.get(f"{api}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["checks"]["index"]["items"] > 0
    metrics = requests.get(f"{api}/metrics", timeout=5).text
    assert "lookalike_search_seconds" in metrics
    spec = requests.get(f"{api}/openapi.json", timeout=5).json()
    assert "/v1/search" in spec["paths"] and "/v1/listings" in spec["paths"]
    page = requests.get(f"{api}/docs", timeout=5)
    assert page.status_code == 200 and "<html" in page.text.lower()
    cats = requests.get(f"{api}/v1/categories", timeout=5).json()["categories"]
    assert len(cats) >= 19


def test_admin_requires_token(live_system):
    api = live_system.api_url
    assert requests.post(f"{api}/v1/admin/reindex", json={}, timeout=5).status_code == 401
    r = requests.post(f"{api}/v1/admin/reindex", json={"category": "nope"}, timeout=5,
                      headers={"Authorization": "Bearer test-token"})
    assert r.status_code == 400
