"""POST /v1/search: a photo (upload or URL) in, similar listings out.

Query options: 1) automatic category (nothing else given); 2) `category`: the shopper's category guides
attributes and the ROI; 3) `rect` = "x0,y0,x1,y1" in image pixels: the shopper's rectangle replaces the
detector (a category may be given with it).

Every response lists the photo's `items` (one per distinct item, most likely first, each with the `rect` and
`category` that search it as option 3). Option 1 searches the first item, or `item=<index>` (same photo, same
detections, so the indexes are stable); `expand=all` adds every item's own results. When the region's category is
not certain, the few likely categories are searched and merged exactly (`query.category.searched`).
"""
from __future__ import annotations

import time

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from api.resources import resources
from api.admission import admitted
from api.forms import bool_field, fields, int_field, str_field, uploaded_image
from api.refine import add_why, palette_search, parse_refine, response_fields, search_refined
from api.rerank import RERANK_DEPTH, rerank_reply
from api.metrics import SEARCH_LATENCY, SEARCHES
from shared.db.models import Listing
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.fetch import fetch_image_bytes
from shared.imaging import decode_image, in_source_pixels, source_size, to_source_box, to_work_box
from shared.index.shards import allow_partial
from shared.pipeline import Analysis, analyze
from shared.taxonomy import load_taxonomy

bp = Blueprint("search", __name__, url_prefix="/v1")
MAX_K = 100
MAX_OFFSET = 1000
# Appearance distance (share of code bits) under which a listing of any category counts as the same photo: exact
# copies measure 0-0.08 on the sample catalogue, the nearest OTHER listing 0.18 or more (measured on every 6th
# sample listing while choosing it).
NEAR_DUPLICATE = 0.1
MAX_ITEMS = 8  # shared.vision.items.ItemRanker.max_items: an item index above it cannot exist


def parse_rect(raw: object, width: int, height: int) -> tuple[float, float, float, float] | None:
    """'x0,y0,x1,y1' (or a list of 4 numbers) in pixels of the uploaded image; must lie inside it."""
    if raw is None or raw == "":
        return None
    parts = raw.split(",") if isinstance(raw, str) else raw
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise InvalidInput("rect must be four numbers 'x0,y0,x1,y1' in image pixels") from None
    if not (x1 > x0 and y1 > y0):
        raise InvalidInput("rect must have x1 > x0 and y1 > y0")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InvalidInput(f"rect {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {width}x{height} image")
    if (x1 - x0) < 4 or (y1 - y0) < 4:
        raise InvalidInput("rect is smaller than 4x4 pixels")
    return x0, y0, x1, y1


@bp.post("/search")
@admitted
def search():
    t0 = time.perf_counter()
    res = resources()
    settings = res.settings
    body = fields(request)
    # Several index shards: with partial=true a shard that is down is skipped (index.shards names who answered).
    allow_partial(bool_field({**request.args, **body}, "partial"))
    data = uploaded_image(request)
    url = str_field(body, "image_url")
    refine = parse_refine(body, load_taxonomy())  # edit / palette / facets (api/refine.py)
    if data is None and url is None and refine.palette:  # "navy and white shirts": no photo, colour only
        return jsonify(palette_search(res, body, load_taxonomy(), refine, results_fn=_results, max_k=MAX_K,
                                      max_offset=MAX_OFFSET))
    if data is None and url is None:
        raise InvalidInput("send an image file (field 'image') or an image_url")
    if data is None:
        data = fetch_image_bytes(url, timeout_s=settings.fetch_timeout_s, max_bytes=settings.max_image_bytes,
                                 allow_private=settings.fetch_allow_private).data
    image = decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                         max_side=settings.decode_max_side, max_aspect=settings.max_image_aspect)
    category = str_field(body, "category")
    tax = load_taxonomy()
    if category is not None:
        try:
            tax.category(category)
        except KeyError as exc:
            raise InvalidInput(str(exc.args[0])) from None
    rect = parse_rect(body.get("rect"), *source_size(image))  # client pixels; the image may be decoded smaller
    k = int_field(body, "k", default=20, minimum=1, maximum=MAX_K)
    offset = int_field(body, "offset", default=0, minimum=0, maximum=MAX_OFFSET)
    option = 3 if rect is not None else 2 if category is not None else 1
    item = None if body.get("item") in (None, "") else int_field(body, "item", default=0, minimum=0,
                                                                  maximum=MAX_ITEMS - 1)
    if item is not None and option != 1:
        raise InvalidInput("item picks one of the photo's items for option 1: send it without category or rect")
    expand = str_field(body, "expand")
    if expand not in (None, "all"):
        raise InvalidInput("expand must be 'all' (every item's results) or absent")

    try:
        work = analyze(res.models, image, category_key=category, rect=to_work_box(image, rect), source="shopper",
                       item=item)
    except IndexError as exc:
        raise InvalidInput(str(exc)) from None
    analysis = in_source_pixels(work, image)
    reply = (search_refined(res, analysis, refine, tax, k=k, offset=offset, plain=_search) if refine.active
             else _search(res, analysis, k=k, offset=offset))
    results = _results(res, reply, tax)
    add_why(results, reply, tax, [a.attribute_id for a in analysis.attributes])
    items = _items_json(work, image, tax)
    if expand == "all":  # every other item's own search, reusing this photo's detections
        for i, entry in enumerate(items):
            if i == work.item_index and option == 1:
                entry["query"], entry["results"] = analysis.as_json(tax)["category"], results
                continue
            sub = analyze(res.models, image, source="shopper", item=i, detections=work.detections)
            entry["query"] = sub.as_json(tax)["category"]
            entry["results"] = _results(res, _search(res, sub, k=k, offset=offset), tax)
    elapsed = (time.perf_counter() - t0) * 1000
    SEARCHES.labels(option=str(option)).inc()
    SEARCH_LATENCY.labels(option=str(option)).observe(elapsed / 1000)
    return jsonify({
        "option": option,
        "query": analysis.as_json(tax),
        "items": items,
        "results": results, "k": k, "offset": offset, "next_offset": offset + len(reply.hits),
        "index": {"generation": reply.generation, "model_version": reply.model_version, "items": reply.n_items,
                  "scanned": reply.scanned, "reranked": len(reply.rerank),
                  "search_ms": round(reply.elapsed_ms, 3), **({"shards": reply.shards} if reply.shards else {})},
        "timings_ms": {**{k2: round(v, 1) for k2, v in analysis.timings_ms.items()}, "total": round(elapsed, 1)},
        **response_fields(refine, reply, tax),
    })


def _search(res, analysis: Analysis, *, k: int, offset: int):
    """The index's answer for one analysed region: its category, or the few likely ones merged exactly."""
    cats = [c for c, _ in analysis.searched] or [analysis.category_id]
    # Option 1 (and 3 without a category) also finds a listing's own photo filed under another category.
    near = NEAR_DUPLICATE if analysis.category_source not in ("shopper", "seller", "text") else 0.0
    reranker = res.models.features.reranker
    rerank = reranker is not None and analysis.rerank is not None
    # Re-ranking reads the daemon's first RERANK_DEPTH hits whatever the page, so every page comes from one order.
    depth = max(offset + k, RERANK_DEPTH) if rerank else k
    reply = res.index.search_categories(code=analysis.code, colour=analysis.colour, category_ids=cats,
                                        attribute_ids=[a.attribute_id for a in analysis.attributes], k=depth,
                                        offset=0 if rerank else offset, near_duplicate=near,
                                        probes=analysis.duplicate_probes)
    if not rerank:
        return reply
    return rerank_reply(res.engine, reranker, analysis.rerank, reply, offset=offset, k=k, near_duplicate=near,
                        probes=analysis.duplicate_probe_rerank)


def _items_json(work: Analysis, image, tax) -> list[dict]:
    """The photo's items in client pixels, each with the option-3 fields that search it again."""
    out = []
    for i, it in enumerate(work.items):
        box = [round(v, 1) for v in to_source_box(image, it.xyxy)]
        key = tax.category(it.category_id).key
        out.append({"index": i, "category": key, "name": tax.category(it.category_id).name, "box": box,
                    "score": round(it.score, 4), "probability": round(it.probability, 4),
                    "classes": {tax.category(c).key: round(v, 4) for c, v in sorted(it.class_scores.items(),
                                                                                   key=lambda kv: -kv[1])},
                    "chosen": i == work.item_index,
                    "search": {"item": i, "rect": ",".join(f"{v:g}" for v in box), "category": key}})
    return out


def _results(res, reply, tax) -> list[dict]:
    ids = [h.listing_id for h in reply.hits]
    with session_scope(res.engine) as s:
        rows = {r.id: r for r in s.execute(select(Listing.id, Listing.title, Listing.seller_id, Listing.external_id)
                                          .where(Listing.id.in_(ids)))} if ids else {}
    results = []
    for h in reply.hits:
        row = rows.get(h.listing_id)
        if row is None:  # deleted between the index answer and now
            continue
        results.append({
            "listing_id": h.listing_id, "title": row.title, "seller_id": row.seller_id,
            "external_id": row.external_id, "image": f"/v1/listings/{h.listing_id}/image",
            "score": round(h.score, 6), "appearance_distance": round(h.appearance_distance, 6),
            "colour_distance": round(h.colour_distance, 6),
            **({"rerank_distance": round(reply.rerank[h.listing_id], 6)} if h.listing_id in reply.rerank else {}),
            "matched_attributes": [tax.attribute(a).key for a in h.matched_attribute_ids],
        })
    return results
