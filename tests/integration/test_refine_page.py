"""Refinements end to end on the live system (real worker, index daemon and API processes): `edit` (require,
exclude, colour), `palette` without a photo, `facets`, `why`, their 400s and OpenAPI entries, and the storefront's
chips / swatches / facets in headless Chromium. Every "carries the attribute" check reads the postings table."""
from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import text

from shared.colours import SWATCHES
from shared.config import REPO_ROOT
from shared.taxonomy import load_taxonomy

pytestmark = [pytest.mark.integration]

TAX = load_taxonomy()
TSHIRT = REPO_ROOT / "sample" / "images" / "clothing_04520051-6197-4561-a721-8e73c0d4116a.jpg"
CATEGORY = "tshirt"
TIMEOUT_S = 120  # the first search may wait for the API to load its networks on a busy CPU


def _search(api: str, *, image: bool = True, **data) -> requests.Response:
    files = {"image": ("q.jpg", TSHIRT.read_bytes())} if image else None
    return requests.post(f"{api}/v1/search", files=files, data=data, timeout=TIMEOUT_S)


def _postings(engine, listing_ids=None) -> dict[int, tuple[int, set[int]]]:
    """listing id -> (category id, attribute ids) in the active generation."""
    sql = ("SELECT p.listing_id, p.category_id, p.attribute_ids FROM postings p JOIN index_generations g "
           "ON g.id = p.generation_id WHERE g.status = 'active'")
    with engine.connect() as c:
        rows = c.execute(text(sql)).all()
    out = {int(r[0]): (int(r[1]), set(r[2] or ())) for r in rows}
    return out if listing_ids is None else {i: out[i] for i in listing_ids}


def _ids(body: dict) -> list[int]:
    return [r["listing_id"] for r in body["results"]]


def _pick(facet_rows: list[dict], n: int, *, group: str | None = None) -> str | None:
    """A facet on some but not all of the n best (so requiring it changes the results), rarest first."""
    rows = [r for r in facet_rows if 0 < r["count"] < n and (group is None or r["key"].startswith(group + "."))]
    return min(rows, key=lambda r: (r["count"], r["key"]))["key"] if rows else None


def test_edit_facets_and_why_through_the_api(live_system, engine):
    api = live_system.api_url
    cat = TAX.category(CATEGORY).id
    r = _search(api, category=CATEGORY, k=100, facets=1000)
    assert r.status_code == 200, r.text
    body = r.json()
    postings = _postings(engine)
    in_cat = {i for i, (c, _) in postings.items() if c == cat}
    # Earlier tests may have added listings to this category: the page holds its best 100, all from the category.
    assert body["refine"]["matched"] == len(in_cat) and set(_ids(body)) <= in_cat
    assert len(_ids(body)) == min(100, len(in_cat))
    f = body["facets"]
    assert f["n"] == len(in_cat) and f["categories"][0]["key"] == CATEGORY
    for row in f["attributes"] + f["colours"]:  # exact counts over the best n
        a = TAX.attribute(row["key"]).id
        assert row["count"] == sum(a in postings[i][1] for i in in_cat), row
    # Every result's score splits exactly into its two terms.
    for res in body["results"]:
        w = res["why"]
        assert w["appearance"]["term"] + w["colour"]["term"] == w["score"]
        assert round(w["score"], 6) == res["score"]
        q = [a["key"] for a in body["query"]["attributes"]]
        assert sorted(w["shares"] + w["lacks"]) == sorted(q) and set(w["shares"]) == set(res["matched_attributes"])

    key = _pick(f["attributes"], f["n"])
    assert key is not None, f"no attribute splits the {CATEGORY} listings: {f['attributes']}"
    a = TAX.attribute(key).id
    with_a = {i for i in in_cat if a in postings[i][1]}
    req = _search(api, category=CATEGORY, k=100, edit=json.dumps({"require": [key]})).json()
    assert req["refine"]["require"] == [key] and req["refine"]["matched"] == len(with_a)
    # Exactly the best listings with the attribute, in the unedited order (filtered).
    assert set(_ids(req)) <= with_a and len(_ids(req)) == min(100, len(with_a))
    kept = [i for i in _ids(body) if i in with_a]
    assert _ids(req)[:len(kept)] == kept
    exc = _search(api, category=CATEGORY, k=100, edit=f"-{key}").json()
    assert exc["refine"]["exclude"] == [key] and set(_ids(exc)) <= in_cat - with_a
    assert len(_ids(exc)) == min(100, len(in_cat - with_a))

    colour_key = _pick(f["colours"], f["n"], group="colour")
    if colour_key is not None and colour_key.split(".", 1)[1] in SWATCHES:
        c_id = TAX.attribute(colour_key).id
        col = _search(api, category=CATEGORY, k=100, edit=colour_key.split(".", 1)[1]).json()
        # A named colour keeps the daemon's tuned colour weight; only the histogram changes.
        assert col["refine"]["colour"]["key"] == colour_key and col["refine"]["weights"] == body["refine"]["weights"]
        coloured = {i for i in in_cat if c_id in postings[i][1]}
        assert set(_ids(col)) <= coloured and len(_ids(col)) == min(100, len(coloured))
        for res in col["results"]:
            assert res["why"]["appearance"]["term"] + res["why"]["colour"]["term"] == res["why"]["score"]


def test_refine_errors_name_the_keys(live_system):
    api = live_system.api_url
    r = _search(api, category=CATEGORY, edit="sleeve.sleevless")
    assert r.status_code == 400 and "'sleeve.sleevless'" in r.json()["message"], r.text
    r = _search(api, category=CATEGORY, edit="footwear_style.heels,-pattern.striped")
    assert r.status_code == 400 and "footwear_style.heels do not apply to category tshirt" in r.json()["message"]
    r = _search(api, image=False, palette="navy:1")
    assert r.status_code == 400 and "needs a category" in r.json()["message"]


def test_palette_without_a_photo_ranks_a_category_by_colour(live_system, engine):
    api = live_system.api_url
    r = _search(api, image=False, category=CATEGORY, palette="navy:0.7,white:0.3", k=50)
    assert r.status_code == 200, r.text
    body = r.json()
    cat = TAX.category(CATEGORY).id
    assert body["option"] == "palette" and body["refine"]["weights"] == {"appearance": 0.0, "colour": 1.0}
    assert [p["key"] for p in body["refine"]["palette"]] == ["colour.navy", "colour.white"]
    assert body["results"] and all(c == cat for c, _ in _postings(engine, _ids(body)).values())
    scores = [res["why"]["score"] for res in body["results"]]
    assert scores == sorted(scores) and all(res["why"]["colour"]["term"] == res["why"]["score"]
                                            for res in body["results"])


def test_openapi_describes_the_refinements(live_system):
    doc = requests.get(f"{live_system.api_url}/openapi.json", timeout=30).json()
    fields = doc["paths"]["/v1/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"edit", "palette", "facets"} <= set(fields["properties"])
    resp = doc["components"]["schemas"]["SearchResponse"]["properties"]
    assert {"refine", "facets"} <= set(resp) and "why" in resp["results"]["items"]["properties"]


def _is_search(response) -> bool:
    return response.url.endswith("/v1/search") and response.request.method == "POST"


def _click_and_wait(page, locator) -> dict:
    with page.expect_response(_is_search, timeout=TIMEOUT_S * 1000) as info:
        locator.click()
    assert info.value.status == 200, info.value.text()
    page.wait_for_function("document.getElementById('app').dataset.state !== 'loading'")
    return info.value.json()


def _card_ids(page) -> list[int]:
    return [int(v) for v in page.get_by_test_id("result-card").evaluate_all("els => els.map(e => e.dataset.listingId)")]


@pytest.mark.browser
def test_storefront_chips_swatches_facets_and_why(live_system, engine, browser):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{live_system.api_url}/?k=100")
        page.get_by_test_id("file-input").set_input_files(str(TSHIRT))
        page.get_by_test_id("category-select").select_option(CATEGORY)
        body = _click_and_wait(page, page.get_by_test_id("search-button"))
        expect(page.get_by_test_id("refine")).to_be_visible()
        expect(page.get_by_test_id("facets")).to_be_visible()
        expect(page.get_by_test_id("refine-chip")).to_have_count(len(body["query"]["attributes"]))
        before = _card_ids(page)
        assert before == _ids(body)

        # Toggle an attribute (a facet chip: on some of the results, not all): results change, all carry it.
        key = _pick(body["facets"]["attributes"], body["facets"]["n"])
        assert key is not None, body["facets"]
        chip = page.get_by_test_id("facets").locator(f"[data-testid='facet'][data-key='{key}']")
        edited = _click_and_wait(page, chip)
        assert edited["refine"]["require"] == [key]
        shown = _card_ids(page)
        assert shown and shown != before and shown == _ids(edited)
        a = TAX.attribute(key).id
        assert all(a in attrs for _, attrs in _postings(engine, shown).values())
        matched = str(edited["refine"]["matched"])
        expect(page.get_by_test_id("refine-matched")).to_have_attribute("data-matched", matched)
        expect(page.get_by_test_id("facets").locator(f"[data-key='{key}']")).to_have_attribute("data-mode", "require")

        # Pick a swatch (a colour some of those results have): the colour is required too, results carry both.
        colours = [r["key"].split(".", 1)[1] for r in edited["facets"]["colours"]
                   if r["key"].split(".", 1)[1] in SWATCHES]
        name = colours[0] if colours else "navy"
        recoloured = _click_and_wait(page, page.locator(f"[data-testid='swatch'][data-key='{name}']"))
        assert recoloured["refine"]["colour"]["key"] == f"colour.{name}"
        assert set(recoloured["refine"]["require"]) == {key, f"colour.{name}"}
        expect(page.locator(f"[data-testid='swatch'][data-key='{name}']")).to_have_attribute("aria-pressed", "true")
        shown = _card_ids(page)
        assert shown == _ids(recoloured) and (shown or not colours)
        need = {a, TAX.attribute(f"colour.{name}").id}
        assert all(need <= attrs for _, attrs in _postings(engine, shown).values())

        # "Why this result?" shows the decomposition the API sent.
        if shown:
            why = page.get_by_test_id("result-card").first.get_by_test_id("why")
            why.locator("summary").click()
            expect(why).to_contain_text("Appearance")
            w = recoloured["results"][0]["why"]
            card = page.get_by_test_id("result-card").first
            assert float(card.get_attribute("data-appearance-term")) == w["appearance"]["term"]
        (REPO_ROOT / "var" / "storefront").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(REPO_ROOT / "var" / "storefront" / "refine.png"), full_page=True)
        assert not errors, errors
    finally:
        context.close()
