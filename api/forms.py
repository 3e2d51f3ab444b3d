"""Request parsing shared by the blueprints: fields from JSON or multipart, the image from upload or URL."""
from __future__ import annotations

from typing import Any

from flask import Request

from shared.errors import InvalidInput


def fields(req: Request) -> dict[str, Any]:
    """Form fields or a JSON object, whichever the client sent."""
    if req.is_json:
        body = req.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidInput("the JSON body must be an object")
        return body
    return {k: v for k, v in req.form.items()}


def uploaded_image(req: Request, name: str = "image") -> bytes | None:
    f = req.files.get(name)
    if f is None:
        return None
    data = f.read()
    if not data:
        raise InvalidInput("the uploaded image is empty (0 bytes)")
    return data


def int_field(body: dict[str, Any], name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = body.get(name, default)
    try:
        value = int(raw)
        if isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise InvalidInput(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def str_field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise InvalidInput(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string")
    return value
