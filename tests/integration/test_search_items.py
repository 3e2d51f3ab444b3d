"""Shop the look through the API: every item of a photo, the item searched, one consistent category story,
searching any item again (item index, option 3 + category, expand=all) and exact multi-category merging."""
from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import requests
from PIL import Image

from shared.config import REPO_ROOT
from shared.index.client import IndexClient
from shared.taxonomy import load_taxonomy

pytestmark = pytest.mark.integration
TAX = load_taxonomy()


def outfit_photo() -> bytes:
    """A photo of several items composed from sample product photos (CC0 clothing-dataset photos, so no unlicensed
    street photo is needed): a T-shirt, trousers and shoes side by side on one white canvas. (Stacked as an outfit,
    the shipped detector sees one long garment at 256 px; side by side it finds trousers and the shoes.)"""
    with open(REPO_ROOT / "sample" / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["external_id"].startswith("clothing_")]
    first = {t: next(r["image"] for r in rows if r["title"] == t) for t in ("T-shirt", "Pants", "Shoes")}
    layout = {"T-shirt": (0, 0, 200, 300), "Pants": (200, 0, 400, 300), "Shoes": (400, 60, 600, 240)}
    canvas = Image.new("RGB", (600, 300), (255, 255, 255))
    for title, (x0, y0, x1, y1) in layout.items():
        with Image.open(REPO_ROOT / "sample" / first[title]) as im:
            im = im.convert("RGB")
            scale = min((x1 - x0) / im.width, (y1 - y0) / im.height)
            canvas.paste(im.resize((round(im.width * scale), round(im.height * scale))), (x0, y0))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def iou(a, b) -> float:
    from shared.vision.items import box_iou

    return float(box_iou(np.array([a]), np.array([b]))[0, 0])


@pytest.fixture(scope="module")
def photo() -> bytes:
    return outfit_photo()


def _post(live_system, data: bytes, **fields):
    return requests.post(f"{live_system.api_url}/v1/search", files={"image": ("q.jpg", data)},
                         data={"k": 5, **fields}, timeout=120)


def test_option1_lists_every_item_and_searches_the_first(live_system, photo):
    r = _post(live_system, photo)
    assert r.status_code == 200, r.text
    body = r.json()
    items, q = body["items"], body["query"]
    assert len(items) >= 2, items  # a top, trousers and shoes were pasted
    assert [it["index"] for it in items] == list(range(len(items)))
    assert sum(it["probability"] for it in items) == pytest.approx(1, abs=0.01)
    assert [it["chosen"] for it in items] == [True] + [False] * (len(items) - 1) and q["item"] == 0
    assert iou(q["roi"]["box"], items[0]["box"]) >= 0.5  # the item, boxed as ingestion boxes its category
    # One consistent story: the category is the item's class, or a garment of the same top/bottom group.
    item_cat, cat = TAX.category(items[0]["category"]), TAX.category(q["category"]["key"])
    assert q["category"]["source"] in ("detector", "detector+image")
    assert cat.key in items[0]["classes"] or (cat.group == item_cat.group and cat.group in ("top", "bottom"))
    assert q["category"]["key"] == q["category"]["searched"][0] and len(q["category"]["searched"]) <= 3
    assert 0 < q["category"]["confidence"] <= 1
    assert body["results"]


def test_each_item_is_searchable_again_and_expand_all_agrees(live_system, photo):
    base = _post(live_system, photo, expand="all").json()
    items = base["items"]
    assert all("results" in it and "query" in it for it in items)
    assert [x["listing_id"] for x in items[0]["results"]] == [x["listing_id"] for x in base["results"]]
    last = items[-1]
    by_index = _post(live_system, photo, item=last["index"]).json()
    assert by_index["query"]["item"] == last["index"] and by_index["items"][last["index"]]["chosen"]
    assert iou(by_index["query"]["roi"]["box"], last["box"]) >= 0.5
    assert by_index["query"]["category"] == last["query"]  # the same analysis as in expand=all
    assert [x["listing_id"] for x in by_index["results"]] == [x["listing_id"] for x in last["results"]]
    # The stateless way: the item's rectangle and category as option 3.
    opt3 = _post(live_system, photo, **{k: v for k, v in last["search"].items() if k != "item"}).json()
    assert opt3["option"] == 3 and opt3["query"]["category"]["key"] == last["category"]
    assert opt3["query"]["item"] == last["index"] and opt3["items"][last["index"]]["chosen"]
    # Option 2 keeps its meaning and lists the items too.
    opt2 = _post(live_system, photo, category=last["category"]).json()
    assert opt2["option"] == 2 and len(opt2["items"]) == len(items)


def test_item_refusals_are_clear_400s(live_system, photo):
    r = _post(live_system, photo, item=7)
    assert r.status_code == 400 and "item 7" in r.json()["message"]
    r = _post(live_system, photo, item=0, category="tshirt")
    assert r.status_code == 400 and "option 1" in r.json()["message"]
    r = _post(live_system, photo, expand="some")
    assert r.status_code == 400 and "expand" in r.json()["message"]


def test_multi_category_merge_is_exact(live_system):
    """Merging every category's scan gives exactly the daemon's own all-category ranking (scores and id ties)."""
    client = IndexClient(live_system.index_url)
    rng = np.random.default_rng(0)
    colour = rng.random(52).astype(np.float32)
    colour /= colour.sum()
    for _ in range(3):
        code = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
        whole = client.search(code=code, colour=colour, category_id=None, attribute_ids=[], k=30, offset=5)
        merged = client.search_categories(code=code, colour=colour, category_ids=[c.id for c in TAX.categories],
                                          attribute_ids=[], k=30, offset=5)
        assert [h.listing_id for h in merged.hits] == [h.listing_id for h in whole.hits]
        assert [h.score for h in merged.hits] == [h.score for h in whole.hits]
