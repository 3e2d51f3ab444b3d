"""Every endpoint's error paths, in process: a clear 4xx with {error, message}, never a 5xx, and nothing written."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from sqlalchemy import func, select

from shared.db.models import Listing


def _png(width: int = 32, height: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _listing_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Listing)).scalar_one()


def _assert_client_error(resp, status: int | None = None, *, mentions: str | None = None) -> dict:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:500])
    if status is not None:
        assert resp.status_code == status, (resp.status_code, resp.get_json())
    body = resp.get_json()
    assert body and body.get("error") and body.get("message"), body
    if mentions:
        assert mentions.lower() in body["message"].lower(), body
    return body


def test_health_and_metadata_answer(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    cats = client.get("/v1/categories").get_json()
    assert len(cats["categories"]) == 19
    assert client.get("/openapi.json").get_json()["openapi"].startswith("3.")


def test_unknown_route_and_method_are_json_4xx(client):
    _assert_client_error(client.get("/v1/nothing-here"), 404)
    _assert_client_error(client.put("/v1/search"), 405)


SEARCH_CASES = [
    ({}, None, "image"),
    ({"image": (io.BytesIO(b"not an image at all"), "x.jpg")}, None, None),
    ({"image": (io.BytesIO(b""), "empty.png")}, None, None),
    ({"category": "spaceships"}, "png", "spaceships"),
    ({"rect": "1,2,3"}, "png", "rect"),
    ({"rect": "10,10,5,5"}, "png", "rect"),
    ({"rect": "0,0,999,999"}, "png", "outside"),
    ({"k": "0"}, "png", "k"),
    ({"k": "many"}, "png", "k"),
    ({"offset": "-1"}, "png", "offset"),
    ({"partial": "maybe"}, "png", "partial"),
]


@pytest.mark.parametrize("form,image,mentions", SEARCH_CASES)
def test_search_refuses_bad_input(client, form, image, mentions):
    data = dict(form)
    if image == "png":
        data["image"] = (io.BytesIO(_png()), "q.png")
    _assert_client_error(client.post("/v1/search", data=data, content_type="multipart/form-data"), mentions=mentions)


@pytest.mark.parametrize("size", [(10000, 1), (1, 10000)])
def test_search_refuses_extreme_aspect_ratios(client, size):
    data = {"image": (io.BytesIO(_png(*size)), "strip.png")}
    _assert_client_error(client.post("/v1/search", data=data, content_type="multipart/form-data"), 400)


LISTING_CASES = [
    ({}, "seller_id"),
    ({"seller_id": "s1"}, "external_id"),
    ({"seller_id": "s1", "external_id": "e\x00nul", "title": "t"}, None),
    ({"seller_id": "s1", "external_id": "e1", "title": "nul\x00title"}, None),
    ({"seller_id": "s1", "external_id": "e1", "title": "t", "category": "spaceships"}, "spaceships"),
    ({"seller_id": "s1", "external_id": "e1", "title": "t"}, "image"),
    ({"seller_id": "s1", "external_id": "e1", "title": "t", "image_url": "http://127.0.0.1/x.jpg"}, None),
    ({"seller_id": "s1", "external_id": "e1", "title": "t", "image_url": "ftp://example.org/x.jpg"}, None),
]


@pytest.mark.parametrize("body,mentions", LISTING_CASES)
def test_create_listing_refuses_bad_input_and_writes_nothing(client, engine, body, mentions):
    before = _listing_count(engine)
    _assert_client_error(client.post("/v1/listings", json=body), mentions=mentions)
    assert _listing_count(engine) == before


def test_create_listing_refuses_malformed_json(client, engine):
    before = _listing_count(engine)
    deep = "[" * 1000 + "]" * 1000
    for raw in (b"{not json", deep.encode(), b'{"seller_id": "s", "external_id": "e", "title": "\\ud800"}'):
        _assert_client_error(client.post("/v1/listings", data=raw, content_type="application/json"))
    assert _listing_count(engine) == before


def test_missing_listing_is_404_everywhere(client):
    for resp in (client.get("/v1/listings/987654321"), client.get("/v1/listings/987654321/image"),
                 client.delete("/v1/listings/987654321")):
        _assert_client_error(resp, 404)


def test_admin_needs_the_token(client, admin_headers):
    _assert_client_error(client.post("/v1/admin/reindex", json={}), 401)
    _assert_client_error(client.post("/v1/admin/reindex", json={}, headers={"Authorization": "Bearer wrong"}), 401)
    _assert_client_error(client.post("/v1/admin/reindex", json={"category": "spaceships"}, headers=admin_headers),
                         400, mentions="spaceships")
    _assert_client_error(client.get("/v1/admin/jobs/987654321", headers=admin_headers), 404)


def test_upload_over_the_byte_cap_is_413_naming_the_limit(client, settings):
    big = b"\xff\xd8" + b"0" * (settings.max_image_bytes + 128 * 1024)
    body = _assert_client_error(client.post("/v1/search", data={"image": (io.BytesIO(big), "big.jpg")},
                                            content_type="multipart/form-data"), 413)
    assert "MB" in body["message"]


def test_error_bodies_are_json_objects(client):
    resp = client.post("/v1/listings", data=json.dumps([1, 2, 3]), content_type="application/json")
    _assert_client_error(resp)
