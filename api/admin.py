"""Admin endpoints (bearer-token protected): reindex, job progress and seller-intent conflicts."""
from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request

from api.resources import resources
from api.forms import fields, int_field, str_field
from shared.db import queries
from shared.db.models import AdminJob, Listing, ListingCategory
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.taxonomy import load_taxonomy
from workers.publish import BROKER_ERRORS, REINDEX

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


@bp.before_request
def _require_token():
    token = resources().settings.admin_token
    if not token:
        return jsonify({"error": "forbidden", "message": "admin endpoints are disabled: set LOOKALIKE_ADMIN_TOKEN"}), 403
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return jsonify({"error": "unauthorized", "message": "missing or wrong bearer token"}), 401
    return None


@bp.post("/reindex")
def reindex():
    """Body: {} for all listings, {"category": "tshirt"}, or {"older_than": "<model version>"}."""
    body = fields(request) if request.content_length else {}
    params = {}
    category = str_field(body, "category")
    if category:
        try:
            load_taxonomy().category(category)
        except KeyError as exc:
            raise InvalidInput(str(exc.args[0])) from None
        params["category"] = category
    older = str_field(body, "older_than")
    if older:
        params["older_than"] = older
    res = resources()
    with session_scope(res.engine) as s:
        admin = AdminJob(kind="reindex", params=params, status="running")
        s.add(admin)
        s.flush()
        admin_id = admin.id
    try:
        res.jobs.send(REINDEX, (admin_id,))
    except BROKER_ERRORS as exc:
        with session_scope(res.engine) as s:
            admin = s.get(AdminJob, admin_id)
            admin.status, admin.error = "failed", f"broker unavailable: {exc}"
        return jsonify({"error": "unavailable", "message": "the broker is unavailable; try again"}), 503
    return jsonify({"job_id": admin_id, "status": "running", "params": params,
                    "progress": f"/v1/admin/jobs/{admin_id}"}), 202


@bp.get("/jobs/<int:job_id>")
def job(job_id: int):
    res = resources()
    with session_scope(res.engine) as s:
        admin = s.get(AdminJob, job_id)
        if admin is None:
            return jsonify({"error": "not_found", "message": f"admin job {job_id} does not exist"}), 404
        progress = queries.admin_job_progress(session=s, admin_job=admin)
        return jsonify({"job_id": admin.id, "kind": admin.kind, "params": admin.params, "status": admin.status,
                        "generation_id": admin.generation_id, "error": admin.error, "progress": progress,
                        "created_at": admin.created_at.isoformat(),
                        "finished_at": admin.finished_at.isoformat() if admin.finished_at else None})


@bp.get("/conflicts")
def conflicts():
    """Live listings whose photo's main item disagrees with the seller's category, newest first.
    Query: limit (1..500, default 100), offset."""
    from sqlalchemy import select

    limit = int_field(request.args, "limit", default=100, minimum=1, maximum=500)
    offset = int_field(request.args, "offset", default=0, minimum=0, maximum=1_000_000)
    tax = load_taxonomy()
    res = resources()
    with session_scope(res.engine) as s:
        rows = s.execute(
            select(Listing.id, Listing.seller_id, Listing.external_id, Listing.title, ListingCategory.conflict)
            .join(ListingCategory, ListingCategory.listing_id == Listing.id)
            .where(ListingCategory.category_conflict.is_(True), ListingCategory.taxonomy_version == tax.version,
                   Listing.deleted_at.is_(None))
            .order_by(Listing.id.desc()).limit(limit).offset(offset)).all()
    return jsonify({"conflicts": [{"listing_id": r.id, "seller_id": r.seller_id, "external_id": r.external_id,
                                   "title": r.title, "listing": f"/v1/listings/{r.id}", **(r.conflict or {})}
                                  for r in rows], "limit": limit, "offset": offset})
