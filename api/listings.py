"""Listing intake: POST /v1/listings (create/update), DELETE /v1/listings/<id>, GET for status and photo."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select

from api.resources import resources
from api.admission import admitted
from api.forms import fields, str_field, uploaded_image
from shared.db import queries
from shared.db.models import Image, Listing, ListingAttribute, ListingCategory, Posting, Roi
from shared.db.session import session_scope
from shared.fetch import check_url
from shared.listings import ListingInput, accept_listing_retrying
from shared.taxonomy import load_taxonomy
from workers.publish import enqueue_jobs

bp = Blueprint("listings", __name__, url_prefix="/v1/listings")


@bp.post("")
@admitted
def create_or_update():
    res = resources()
    body = fields(request)
    data = ListingInput(seller_id=str_field(body, "seller_id", required=True),
                        external_id=str_field(body, "external_id", required=True),
                        title=str_field(body, "title") or "", description=str_field(body, "description") or "",
                        category=str_field(body, "category"), image_url=str_field(body, "image_url"))
    image = uploaded_image(request)
    if image is None and data.image_url is not None:
        # An HTTP client can be told now (400) that an internal or malformed URL will never be fetched; upstream
        # events have no one to answer, so theirs fail on the listing instead (workers.events).
        check_url(data.image_url, allow_private=res.settings.fetch_allow_private,
                  timeout_s=min(res.settings.fetch_timeout_s, 3.0))
    result = accept_listing_retrying(engine=res.engine, settings=res.settings, data=data, image_bytes=image)
    listing_id, version, job_id, created = result.listing_id, result.version, result.job_id, result.created
    # Committed first, sent second: if the broker is down the job waits in Postgres for the reconciler.
    queued = bool(job_id) and enqueue_jobs(res.jobs, [job_id], engine=res.engine) == 1
    payload = {"listing_id": listing_id, "version": version, "job_id": job_id, "created": created,
               "queued": queued, "status": "pending" if job_id else "unchanged"}
    if job_id and not queued:
        payload["message"] = "accepted; the broker is unavailable, the listing is queued as soon as it is back"
    return jsonify(payload), 202 if job_id else 200


@bp.delete("/<int:listing_id>")
def delete(listing_id: int):
    res = resources()
    with session_scope(res.engine) as s:
        listing = s.execute(select(Listing).where(Listing.id == listing_id).with_for_update()).scalar_one_or_none()
        if listing is None:
            return jsonify({"error": "not_found", "message": f"listing {listing_id} does not exist"}), 404
        if listing.deleted_at is not None:
            return jsonify({"listing_id": listing_id, "status": "deleted", "job_id": None}), 200
        job_id = queries.delete_listing(session=s, listing=listing).id
    queued = enqueue_jobs(res.jobs, [job_id], engine=res.engine) == 1
    return jsonify({"listing_id": listing_id, "status": "deleted", "job_id": job_id, "queued": queued}), 202


@bp.get("/<int:listing_id>")
def show(listing_id: int):
    """The listing with what the pipeline derived (category, attributes, ROI)."""
    res = resources()
    tax = load_taxonomy()
    with session_scope(res.engine) as s:
        listing = s.get(Listing, listing_id)
        if listing is None:
            return jsonify({"error": "not_found", "message": f"listing {listing_id} does not exist"}), 404
        cat = s.execute(select(ListingCategory).where(ListingCategory.listing_id == listing_id,
                                                      ListingCategory.taxonomy_version == tax.version)
                        ).scalar_one_or_none()
        attrs = s.execute(select(ListingAttribute).where(ListingAttribute.listing_id == listing_id)
                          .order_by(ListingAttribute.attribute_id)).scalars().all()
        rois = s.execute(select(Roi).where(Roi.listing_id == listing_id, Roi.chosen.is_(True))).scalars().all()
        indexed = s.execute(select(Posting.generation_id).where(Posting.listing_id == listing_id)).scalars().all()
        return jsonify({
            "listing_id": listing.id, "seller_id": listing.seller_id, "external_id": listing.external_id,
            "title": listing.title, "description": listing.description, "status": listing.status,
            "status_message": listing.status_message, "version": listing.version,
            "image": f"/v1/listings/{listing.id}/image" if listing.image_sha256 else None,
            "category": None if cat is None else {"key": tax.category(cat.category_id).key, "source": cat.source,
                                                  "confidence": cat.confidence},
            # The seller's category vs the photo's main item (shared.conflicts); indexed under the seller's.
            "category_conflict": None if cat is None or not cat.category_conflict else cat.conflict,
            "attributes": [{"key": tax.attribute(a.attribute_id).key, "probability": a.probability,
                            "model_version": a.attribute_net_version} for a in attrs],
            "roi": [{"box": [r.x0, r.y0, r.x1, r.y1], "fallback": r.fallback, "score": r.score} for r in rois],
            "indexed_generations": sorted(indexed),
        })


@bp.get("/<int:listing_id>/image")
def image(listing_id: int):
    res = resources()
    with session_scope(res.engine) as s:
        row = s.execute(select(Image.data, Image.content_type).join(Listing, Listing.image_sha256 == Image.sha256)
                        .where(Listing.id == listing_id, Listing.deleted_at.is_(None))).one_or_none()
    if row is None:
        # Missing, deleted (its photo is no longer published) or not fetched yet: nothing to serve.
        return jsonify({"error": "not_found", "message": f"listing {listing_id} has no image to serve "
                                                         "(it does not exist, was deleted, or its photo is not "
                                                         "stored yet)"}), 404
    return Response(row.data, mimetype=row.content_type, headers={"Cache-Control": "public, max-age=3600"})
