"""Request parsing shared by the blueprints: fields from JSON or multipart, the image from upload or URL.

Every malformed value ends here as InvalidInput naming the field (a 400), never as a 5xx further down:
NUL bytes and lone surrogates (PostgreSQL and UTF-8 refuse them), deep JSON, non-scalar values, huge numbers.
"""
from __future__ import annotations

import json
import math
from typing import Any

from flask import Request

from shared.errors import InvalidInput
from shared.listings import check_text

# JSON bodies carry text fields only (images come as uploads or URLs): 10,000-character descriptions fit
# many times over, and parsing stays cheap whatever a client sends.
MAX_JSON_BYTES = 256 * 1024


class BodyTooLarge(InvalidInput):
    """A body over a size limit: the API answers 413 with the limit in the message."""

    code = "too_large"


def fields(req: Request) -> dict[str, Any]:
    """Form fields or a JSON object, whichever the client sent."""
    if req.is_json:
        raw = req.get_data(cache=True)
        if not raw.strip():
            return {}
        if len(raw) > MAX_JSON_BYTES:
            raise BodyTooLarge(f"the JSON body is {len(raw):,} bytes, more than the {MAX_JSON_BYTES:,} bytes limit "
                               "(send images as a multipart upload or an image_url)")
        try:
            body = json.loads(raw)
        except RecursionError:
            raise InvalidInput("the JSON body is nested too deeply") from None
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise InvalidInput(f"the body is not valid JSON ({_short(exc)})") from None
        if not isinstance(body, dict):
            raise InvalidInput("the JSON body must be an object")
        return body
    return {k: v for k, v in req.form.items()}


def uploaded_image(req: Request, name: str = "image") -> bytes | None:
    """The uploaded file's bytes, or None; an upload together with image_url is refused (which one was meant?)."""
    f = req.files.get(name)
    if f is None:
        return None
    data = f.read()
    if not data:
        raise InvalidInput("the uploaded image is empty (0 bytes)")
    if req.form.get("image_url"):
        raise InvalidInput("send either an image file or an image_url, not both")
    return data


def int_field(body: dict[str, Any], name: str, *, default: int, minimum: int, maximum: int) -> int:
    """An integer within bounds; absent, null or "" means the default."""
    raw = body.get(name, default)
    if raw is None or raw == "":
        return default
    try:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError
        value = int(raw)
        if isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError, OverflowError):  # int(inf) overflows; int("1"*5000) is a ValueError
        raise InvalidInput(f"{name} must be an integer, got {_short(raw)}") from None
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} must be between {minimum} and {maximum}, got {_short(value)}")
    return value


def bool_field(body: dict[str, Any], name: str, *, default: bool = False) -> bool:
    """true/false (JSON booleans, or the strings true/false, 1/0, yes/no); absent, null or "" means the default."""
    raw = body.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return raw.strip().lower() in ("true", "1", "yes")
    raise InvalidInput(f"{name} must be true or false, got {_short(raw)}")


def str_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A text field: absent or "" is None (or 'required'); otherwise clean text."""
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    check_text(name, value)
    return value


def _short(value: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters, so an error never echoes a megabyte back."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    text = repr(value) if not isinstance(value, BaseException) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."
