"""Listing intake shared by the HTTP API and the upstream event consumer: validate, store the photo,
write the listing and its job in one transaction. Nothing is sent to the broker here."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import queries
from shared.errors import InvalidInput
from shared.imaging import decode_image, image_sha256, sniff_content_type
from shared.taxonomy import load_taxonomy

MAX_TEXT = {"seller_id": 200, "external_id": 200, "title": 500, "description": 10_000}


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
    if data.category is not None:
        try:
            load_taxonomy().category(data.category)
        except KeyError as exc:
            raise InvalidInput(str(exc.args[0])) from None
    if data.image_url is not None:
        parts = urlsplit(data.image_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("image_url must be an http(s) URL")
    return data


def accept_listing(*, session: Session, settings: Settings, data: ListingInput,
                   image_bytes: bytes | None = None) -> queries.UpsertResult:
    """Create or update a listing from validated input; an uploaded photo is decoded (ImageError on bad
    bytes) and stored in Postgres before the listing row points at it."""
    validate(data)
    if image_bytes is None and data.image_url is None:
        raise InvalidInput("send an image file or an image_url")
    sha = None
    if image_bytes is not None:
        img = decode_image(image_bytes, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        sha = image_sha256(image_bytes)
        content_type = sniff_content_type(image_bytes)
        queries.store_image(session=session, sha256=sha, data=image_bytes, content_type=content_type,
                            width=img.width, height=img.height)
    return queries.upsert_listing(session=session, seller_id=data.seller_id.strip(),
                                  external_id=data.external_id.strip(), title=data.title.strip(),
                                  description=data.description.strip(), seller_category=data.category,
                                  image_url=None if image_bytes is not None else data.image_url,
                                  image_sha256=sha)
