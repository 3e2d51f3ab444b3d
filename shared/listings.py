"""Listing intake shared by the HTTP API and the upstream event consumer: validate, store the photo,
write the listing and its job in one transaction. Nothing is sent to the broker here."""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import queries
from shared.db.session import session_scope
from shared.errors import InvalidInput, Unavailable
from shared.imaging import decode_image, image_sha256, sniff_content_type, source_size
from shared.taxonomy import load_taxonomy

logger = logging.getLogger(__name__)
MAX_TEXT = {"seller_id": 200, "external_id": 200, "title": 500, "description": 10_000}
# SQLSTATEs that mean "run the same transaction again": serialization_failure, deadlock_detected.
RETRY_SQLSTATES = ("40001", "40P01")
WRITE_ATTEMPTS = 4


@dataclass(frozen=True)
class ListingInput:
    seller_id: str
    external_id: str
    title: str = ""
    description: str = ""
    category: str | None = None  # a taxonomy category key the seller chose
    image_url: str | None = None


def validate(data: ListingInput) -> ListingInput:
    """Check fields; raise InvalidInput naming the field."""
    for name, limit in MAX_TEXT.items():
        value = getattr(data, name)
        if not isinstance(value, str):
            raise InvalidInput(f"{name} must be a string")
        if name in ("seller_id", "external_id") and not value.strip():
            raise InvalidInput(f"{name} is required")
        if len(value) > limit:
            raise InvalidInput(f"{name} is longer than {limit} characters")
        check_text(name, value)
    if data.category is not None:
        try:
            load_taxonomy().category(data.category)
        except KeyError as exc:
            raise InvalidInput(str(exc.args[0])) from None
    if data.image_url is not None:
        parts = urlsplit(data.image_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("image_url must be an http(s) URL")
        check_text("image_url", data.image_url)
    return data


def check_text(name: str, value: str) -> None:
    """PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate: refuse both by name."""
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{name} is not valid Unicode text (it contains a lone surrogate)") from None


def accept_listing(*, session: Session, settings: Settings, data: ListingInput,
                   image_bytes: bytes | None = None) -> queries.UpsertResult:
    """Create or update a listing from validated input; an uploaded photo is decoded (ImageError on bad
    bytes) and stored in Postgres before the listing row points at it."""
    validate(data)
    if image_bytes is None and data.image_url is None:
        raise InvalidInput("send an image file or an image_url")
    if image_bytes is not None and data.image_url is not None:
        raise InvalidInput("send either an image file or an image_url, not both")
    sha = None
    if image_bytes is not None:
        img = decode_image(image_bytes, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                           max_side=settings.decode_max_side, max_aspect=settings.max_image_aspect)
        width, height = source_size(img)
        sha = image_sha256(image_bytes)
        content_type = sniff_content_type(image_bytes)
        queries.store_image(session=session, sha256=sha, data=image_bytes, content_type=content_type,
                            width=width, height=height)
    return queries.upsert_listing(session=session, seller_id=data.seller_id.strip(),
                                  external_id=data.external_id.strip(), title=data.title.strip(),
                                  description=data.description.strip(), seller_category=data.category,
                                  image_url=None if image_bytes is not None else data.image_url,
                                  image_sha256=sha)


@dataclass(frozen=True)
class Accepted:
    """What the API reports about an accepted listing (plain values: the session is closed by then)."""

    listing_id: int
    version: int
    job_id: int | None
    created: bool


def accept_listing_retrying(*, engine: Engine, settings: Settings, data: ListingInput,
                            image_bytes: bytes | None = None) -> Accepted:
    """accept_listing in its own transaction, run again on a deadlock or serialization failure (concurrent
    writers of one listing or one photo); Unavailable (503) only when it keeps happening."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with session_scope(engine) as s:
                result = accept_listing(session=s, settings=settings, data=data, image_bytes=image_bytes)
                return Accepted(listing_id=result.listing.id, version=result.listing.version,
                                job_id=result.job.id if result.job else None, created=result.created)
        except DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) not in RETRY_SQLSTATES:
                raise
            logger.info("listing write conflict (attempt %d): %s", attempt, exc.orig)
            time.sleep(random.uniform(0.01, 0.05) * attempt)  # jitter: let the other writer finish first
    raise Unavailable("the listing is being written by concurrent requests; try again")
