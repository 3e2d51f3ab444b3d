"""The storefront page and the docs page in headless Chromium, against the live system (real worker, index daemon
and API processes): upload, the three search options, "Load more", a corrupt file, drop and paste, the API docs.

Screenshots of the results and error states go to var/storefront/ (git-ignored) for a human look at the layout."""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from shared.config import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.browser]

# A T-shirt from the part of the sample catalogue that live_system indexes (rows[::4]).
TSHIRT = REPO_ROOT / "sample" / "images" / "clothing_04520051-6197-4561-a721-8e73c0d4116a.jpg"
CATEGORY = "tshirt"  # what the shopper picks for option 2
SHOTS = REPO_ROOT / "var" / "storefront"
SEARCH_TIMEOUT_MS = 120_000  # the first search may wait for the API to load its networks on a busy CPU
UI_TIMEOUT_MS = 15_000


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.errors = []  # uncaught exceptions in the page: any of them fails the test
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()


# Hands the page a file the way a shopper's drag-and-drop or clipboard paste does (synthetic events carrying a
# DataTransfer: what the page's handlers read). Playwright's mouse cannot drag files in from outside the page.
_GIVE_FILE_JS = """async ([b64, name, how]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
  const init = { bubbles: true, cancelable: true };
  if (how === "drop") {
    const zone = document.querySelector("[data-testid='dropzone']");
    for (const type of ["dragenter", "dragover", "drop"]) {
      zone.dispatchEvent(new DragEvent(type, { ...init, dataTransfer: dt }));
    }
  } else {
    document.dispatchEvent(new ClipboardEvent("paste", { ...init, clipboardData: dt }));
  }
}"""


def _give_file(page, path: Path, how: str) -> None:
    page.evaluate(_GIVE_FILE_JS, [base64.b64encode(path.read_bytes()).decode(), path.name, how])


def _is_search(response) -> bool:
    return response.url.endswith("/v1/search") and response.request.method == "POST"


def _search(page) -> tuple[Any, dict]:
    """Press Search and return (the HTTP response, its JSON body) once the page has rendered it."""
    with page.expect_response(_is_search, timeout=SEARCH_TIMEOUT_MS) as info:
        page.get_by_test_id("search-button").click()
    response = info.value
    body = response.json()
    # The page has finished with the answer when it leaves the loading state.
    page.wait_for_function("document.getElementById('app').dataset.state !== 'loading'")
    return response, body


def _card_ids(page) -> list[int]:
    return [int(v) for v in page.get_by_test_id("result-card").evaluate_all("els => els.map(e => e.dataset.listingId)")]


def _expect_results_match(page, body: dict) -> None:
    from playwright.sync_api import expect

    assert body["results"], f"no results for option {body['option']}: {body}"
    cards = page.get_by_test_id("result-card")
    expect(cards).to_have_count(len(body["results"]))
    assert _card_ids(page) == [r["listing_id"] for r in body["results"]]
    first = cards.first
    expect(first.locator(".card-title")).to_have_text(body["results"][0]["title"])
    expect(first.get_by_test_id("result-score")).to_contain_text("match")
    expect(first.locator("img")).to_have_attribute("src", body["results"][0]["image"])
    # The listing photo really loads from the API (decoded, not a broken-image icon).
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.locator("img").element_handle())


def _box_inside(inner: dict, outer: dict, slack: float = 1.5) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


def test_storefront_searches_by_photo_category_and_rectangle(live_system, page):
    from playwright.sync_api import expect

    base = live_system.api_url
    # Page size for this run: one less than the chosen-category matches, so "Load more" has a second page.
    probe = requests.post(f"{base}/v1/search", files={"image": ("q.jpg", TSHIRT.read_bytes())},
                          data={"category": CATEGORY, "k": 100}, timeout=120)
    assert probe.status_code == 200, probe.text
    n_matches = len(probe.json()["results"])
    assert n_matches >= 2, f"the sample index has {n_matches} {CATEGORY} listings; Load more needs 2"
    page_k = min(6, n_matches - 1)

    page.goto(f"{base}/?k={page_k}")
    expect(page.get_by_test_id("category-select").locator(f"option[value='{CATEGORY}']")).to_have_count(1)
    expect(page.get_by_test_id("search-button")).to_be_disabled()

    # 1. Upload a photo: it is drawn on the canvas at its aspect ratio.
    page.get_by_test_id("file-input").set_input_files(str(TSHIRT))
    canvas = page.get_by_test_id("photo-canvas")
    expect(canvas).to_be_visible()
    expect(page.get_by_test_id("search-button")).to_be_enabled()
    with Image.open(TSHIRT) as im:
        width, height = im.size
    cbox = canvas.bounding_box()
    assert abs(cbox["width"] / cbox["height"] - width / height) < 0.02, (cbox, width, height)

    # 2. Automatic category: a grid of cards, the predicted category and attributes, the predicted ROI on the photo.
    response, body = _search(page)
    assert response.status == 200, body
    assert body["option"] == 1  # the API saw neither a category nor a rectangle
    assert (body["k"], body["offset"]) == (page_k, 0)
    _expect_results_match(page, body)
    q = body["query"]
    expect(page.get_by_test_id("query-category")).to_have_text(q["category"]["name"])
    expect(page.get_by_test_id("query-category-source")).to_have_attribute("data-source", q["category"]["source"])
    expect(page.get_by_test_id("query-attributes").locator("li.attribute")).to_have_count(len(q["attributes"]))
    roi = page.get_by_test_id("roi-box")
    expect(roi).to_be_visible()
    expect(roi).to_have_attribute("data-fallback", q["roi"]["fallback"])
    assert [float(v) for v in roi.get_attribute("data-box").split(",")] == q["roi"]["box"]
    assert _box_inside(roi.bounding_box(), canvas.bounding_box())
    expect(page.get_by_test_id("shopper-rect")).to_be_hidden()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "automatic.png"))

    # 3. Chosen category: the query runs as that category; "Load more" fetches the next page with next_offset.
    page.get_by_test_id("category-select").select_option(CATEGORY)
    response, body = _search(page)
    assert response.status == 200, body
    assert body["option"] == 2
    assert body["query"]["category"]["key"] == CATEGORY
    assert body["query"]["category"]["source"] == "shopper"
    _expect_results_match(page, body)
    expect(page.get_by_test_id("query-category")).to_have_attribute("data-key", CATEGORY)
    expect(page.get_by_test_id("query-category-source")).to_have_attribute("data-source", "shopper")
    first_page = _card_ids(page)
    load_more = page.get_by_test_id("load-more")
    expect(load_more).to_be_visible()
    with page.expect_response(_is_search, timeout=SEARCH_TIMEOUT_MS) as info:
        load_more.click()
    more = info.value.json()
    assert more["offset"] == body["next_offset"] and more["query"]["category"]["key"] == CATEGORY
    expect(page.get_by_test_id("result-card")).to_have_count(len(first_page) + len(more["results"]))
    assert _card_ids(page) == first_page + [r["listing_id"] for r in more["results"]]
    assert len(set(_card_ids(page))) == len(_card_ids(page)), "Load more repeated a listing"

    # 4. A rectangle drawn with the mouse: sent in ORIGINAL photo pixels, searched as option 3 (shopper_rect).
    page.evaluate("window.scrollTo(0, 0)")  # "Load more" scrolled the page: the mouse works in viewport pixels
    canvas.scroll_into_view_if_needed()
    cbox = canvas.bounding_box()
    fx0, fy0, fx1, fy1 = 0.15, 0.2, 0.85, 0.75  # fractions of the photo
    page.mouse.move(cbox["x"] + fx0 * cbox["width"], cbox["y"] + fy0 * cbox["height"])
    page.mouse.down()
    page.mouse.move(cbox["x"] + 0.5 * cbox["width"], cbox["y"] + 0.5 * cbox["height"], steps=4)
    page.mouse.move(cbox["x"] + fx1 * cbox["width"], cbox["y"] + fy1 * cbox["height"], steps=4)
    page.mouse.up()
    expect(page.get_by_test_id("shopper-rect")).to_be_visible()
    expect(page.get_by_test_id("clear-rect")).to_be_enabled()
    response, body = _search(page)
    assert response.status == 200, body
    assert body["option"] == 3
    assert body["query"]["roi"]["fallback"] == "shopper_rect"
    # The box the API searched is the mouse rectangle scaled from screen to photo pixels (rounded outwards).
    sent = [float(v) for v in page.get_by_test_id("stage").get_attribute("data-rect").split(",")]
    expected = [fx0 * width, fy0 * height, fx1 * width, fy1 * height]
    assert all(abs(a - b) <= 2.0 for a, b in zip(sent, expected)), (sent, expected)
    assert body["query"]["roi"]["box"] == pytest.approx(sent, abs=0.11)
    assert body["query"]["category"]["key"] == CATEGORY  # the chosen category still applies
    _expect_results_match(page, body)
    expect(page.get_by_test_id("roi-box")).to_have_attribute("data-fallback", "shopper_rect")
    expect(page.get_by_test_id("query-roi")).to_have_attribute("data-fallback", "shopper_rect")
    expect(page.get_by_test_id("query-option")).to_have_attribute("data-option", "3")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "results.png"))

    # The clear button removes the rectangle (the next search would be option 2 again).
    page.get_by_test_id("clear-rect").click()
    expect(page.get_by_test_id("shopper-rect")).to_be_hidden()

    # 5. A corrupt file: the API's message is shown, the old results are gone, and the page keeps working.
    page.get_by_test_id("file-input").set_input_files(
        {"name": "holiday.jpg", "mimeType": "image/jpeg", "buffer": b"this is not an image, just some text\n" * 20})
    expect(page.get_by_test_id("no-preview")).to_be_visible()
    response, body = _search(page)
    assert response.status == 400, body
    error = page.get_by_test_id("error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(body["message"], ignore_case=True)  # the API's own words, capitalised
    expect(page.get_by_test_id("result-card")).to_have_count(0)
    expect(page.get_by_test_id("search-button")).to_be_enabled()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "error.png"))
    assert page.errors == [], page.errors

    # 6. The page recovers: a photo dropped on it (then one pasted) replaces the broken file and clears the error.
    _give_file(page, TSHIRT, "drop")
    expect(canvas).to_be_visible()
    expect(page.get_by_test_id("no-preview")).to_be_hidden()
    expect(error).to_be_hidden()
    _give_file(page, TSHIRT, "paste")
    expect(page.locator("#app")).to_have_attribute("data-photo", "loaded")
    expect(page.get_by_test_id("search-button")).to_be_enabled()

    # 7. The docs page renders the OpenAPI document, /v1/search included.
    page.goto(f"{base}/docs")
    search_doc = page.locator("[data-testid='endpoint'][data-path='/v1/search'][data-method='post']")
    expect(search_doc).to_be_visible()
    expect(search_doc).to_contain_text("Search by photo")
    expect(search_doc).to_contain_text("rect")
    expect(search_doc).to_contain_text("multipart/form-data")
    page.screenshot(path=str(SHOTS / "docs.png"), full_page=True)
    assert page.errors == [], page.errors


GARMENT_GROUPS = ("top", "bottom")
GARMENTS = {"tshirt", "shirt", "top", "sweater", "jacket", "kurta", "jeans", "trousers", "shorts", "skirt", "dress"}


def _street_photo(tmp_path: Path) -> Path:
    """A Colorful Fashion test photo with several items, read from the data folder at run time (its images have
    no licence and are never committed); without the data folder, a photo composed from sample photos."""
    import csv

    from shared.config import load_settings

    data = Path(load_settings().data_dir)
    if (data / "manifest.csv").exists():
        with open(data / "manifest.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if (row["dataset"] == "colorful_fashion" and row["split"] == "test" and row["category"] == "dress"
                        and int(row["n_boxes"] or 0) >= 4):
                    return data / row["file"]
    from tests.integration.test_search_items import outfit_photo

    path = tmp_path / "outfit.jpg"
    path.write_bytes(outfit_photo())
    return path


def test_storefront_shows_every_item_and_searches_the_one_clicked(live_system, page, tmp_path):
    from playwright.sync_api import expect

    from shared.taxonomy import load_taxonomy

    tax = load_taxonomy()
    photo = _street_photo(tmp_path)
    page.goto(f"{live_system.api_url}/")
    page.get_by_test_id("file-input").set_input_files(str(photo))
    expect(page.get_by_test_id("photo-canvas")).to_be_visible()
    _, body = _search(page)
    assert body["option"] == 1 and len(body["items"]) >= 2, body["items"]

    # Every item is drawn as a labelled outline inside the photo; the searched one (the first) is a garment.
    boxes = page.get_by_test_id("item-box")
    expect(boxes).to_have_count(len(body["items"]))
    canvas = page.get_by_test_id("photo-canvas").bounding_box()
    for i, it in enumerate(body["items"]):
        box = boxes.nth(i)
        assert [float(v) for v in box.get_attribute("data-box").split(",")] == it["box"]
        expect(box.get_by_test_id("item-tag")).to_contain_text(it["name"])
        assert _box_inside(box.bounding_box(), canvas)
    first = body["items"][0]
    assert first["chosen"] and first["category"] in GARMENTS, first  # not the shoes or the bag
    expect(boxes.nth(0)).to_have_class("overlay item-box chosen")
    expect(boxes.nth(0).get_by_test_id("item-tag")).to_have_attribute("aria-pressed", "true")
    before_cards = _card_ids(page)
    before_roi = page.get_by_test_id("query-roi").text_content()
    page.screenshot(path=str(SHOTS / "items.png"))

    # Another item, reached with the keyboard (Tab onto its tag, Enter): searched as option 1 with `item`.
    other = body["items"][1]
    tag = boxes.nth(1).get_by_test_id("item-tag")
    tag.focus()
    with page.expect_response(_is_search, timeout=SEARCH_TIMEOUT_MS) as info:
        page.keyboard.press("Enter")
    picked = info.value.json()
    page.wait_for_function("document.getElementById('app').dataset.state !== 'loading'")
    assert picked["query"]["item"] == 1 and picked["items"][1]["chosen"]
    from shared.vision.items import box_iou

    assert box_iou([picked["query"]["roi"]["box"]], [other["box"]])[0, 0] >= 0.5  # that item's region
    _expect_results_match(page, picked)
    expect(page.get_by_test_id("item-box").nth(1)).to_have_class("overlay item-box chosen")
    # The "what we saw" panel follows the item: its region, and a category that agrees with the item's box.
    expect(page.get_by_test_id("query-roi")).not_to_have_text(before_roi)
    expect(page.get_by_test_id("query-category")).to_have_attribute("data-key", picked["query"]["category"]["key"])
    cat, item_cat = tax.category(picked["query"]["category"]["key"]), tax.category(other["category"])
    assert cat.key in other["classes"] or (cat.group == item_cat.group and cat.group in GARMENT_GROUPS)
    expect(page.get_by_test_id("query-searched")).to_have_attribute(
        "data-categories", ",".join(picked["query"]["category"]["searched"]))
    assert _card_ids(page) != before_cards or picked["query"]["category"] != body["query"]["category"]

    # A mouse click on the first item's tag goes back to it.
    with page.expect_response(_is_search, timeout=SEARCH_TIMEOUT_MS) as info:
        page.get_by_test_id("item-box").nth(0).get_by_test_id("item-tag").click()
    assert info.value.json()["query"]["item"] == 0
    page.wait_for_function("document.getElementById('app').dataset.state !== 'loading'")
    expect(page.get_by_test_id("item-box").nth(0)).to_have_class("overlay item-box chosen")
    assert page.errors == [], page.errors
