"""Upstream marketplace events, published straight to our broker with kombu or Celery.

Message schema (JSON), sent as the single argument of the Celery task named `listing.event` on the queue
`lookalike` (for example `celery_app.send_task("listing.event", args=[event], queue="lookalike")`):

    {
      "type": "listing.created" | "listing.updated" | "listing.deleted",
      "seller_id": "s-42",              # required
      "external_id": "sku-1001",        # required; unique per seller
      "title": "Men Black Polo T-shirt",# created/updated
      "description": "...",             # optional
      "category": "tshirt",             # optional taxonomy key chosen by the seller
      "image_url": "https://..."        # created/updated: the photo, fetched by the worker
    }

Events are idempotent: re-sending the same event changes nothing; `created` and `updated` are treated
alike (an upsert keyed by seller_id + external_id), so out-of-order delivery converges on the last content.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from shared.config import Settings
from shared.db import queries
from shared.db.models import Listing
from shared.db.session import session_scope
from shared.errors import InvalidInput
from shared.listings import ListingInput, accept_listing

EVENT_TYPES = ("listing.created", "listing.updated", "listing.deleted")


def apply_event(event: dict[str, Any], *, engine: Engine, settings: Settings) -> int | None:
    """Write the event to Postgres; return the job id to enqueue, or None when nothing changed.
    A malformed event raises InvalidInput (logged and dropped by the task: retrying cannot fix it)."""
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        raise InvalidInput(f"event type must be one of {', '.join(EVENT_TYPES)}")
    seller_id, external_id = event.get("seller_id"), event.get("external_id")
    if not isinstance(seller_id, str) or not isinstance(external_id, str):
        raise InvalidInput("seller_id and external_id are required strings")
    with session_scope(engine) as s:
        if event["type"] == "listing.deleted":
            listing = s.execute(select(Listing).where(Listing.seller_id == seller_id,
                                                      Listing.external_id == external_id)
                                .with_for_update()).scalar_one_or_none()
            if listing is None or listing.deleted_at is not None:
                return None
            return queries.delete_listing(session=s, listing=listing).id
        data = ListingInput(seller_id=seller_id, external_id=external_id, title=event.get("title") or "",
                            description=event.get("description") or "", category=event.get("category"),
                            image_url=event.get("image_url"))
        result = accept_listing(session=s, settings=settings, data=data)
        return result.job.id if result.job is not None else None
