"""JSON errors: AppError subclasses and HTTP errors become {error, message}; bad input is never a 5xx."""
from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from api.forms import BodyTooLarge
from shared.errors import AppError, ConfigError, ImageError, InvalidInput, TransientError

logger = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, *, retry_after_s: int = 2):
    resp = jsonify({"error": code, "message": message})
    resp.status_code = status
    if status == 503:
        resp.headers["Retry-After"] = str(retry_after_s)
    return resp


def _fmt_mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}".rstrip("0").rstrip(".") + " MB"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput):
        # A body or an image over a byte cap is "too large" (413); every other bad input is a 400.
        text = str(exc)
        too_large = isinstance(exc, BodyTooLarge) or (
            isinstance(exc, ImageError) and text.startswith("image file is") and "limit" in text)
        return error_response(413 if too_large else 400, exc.code, text)

    @app.errorhandler(TransientError)
    def _transient(exc: TransientError):
        return error_response(503, exc.code, str(exc), retry_after_s=getattr(exc, "retry_after_s", 2))

    @app.errorhandler(ConfigError)
    def _config(exc: ConfigError):
        return error_response(500, exc.code, str(exc))

    @app.errorhandler(AppError)
    def _app_error(exc: AppError):
        return error_response(400, exc.code, str(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
        image_limit = current_app.extensions["lookalike"].settings.max_image_bytes
        return error_response(413, "too_large", f"the request body is larger than the {_fmt_mb(limit)} limit "
                              f"(an image file may be up to {_fmt_mb(image_limit)})")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        from sqlalchemy.exc import DataError, IntegrityError, OperationalError

        # Last line of defence: input that slipped past validation is still the client's problem (4xx);
        # the log keeps the traceback so the validation gap gets fixed.
        if isinstance(exc, (DataError, UnicodeError, RecursionError)):
            logger.warning("input refused late (validation gap): %r", exc)
            return error_response(400, "invalid_input", "a value in the request could not be processed")
        if isinstance(exc, IntegrityError):
            logger.warning("conflicting write: %s", exc)
            return error_response(409, "conflict", "a concurrent request changed the same item; send it again")
        if isinstance(exc, OperationalError):
            logger.warning("database unavailable: %s", exc)
            return error_response(503, "unavailable", "the database is unavailable; try again shortly")
        logger.exception("unhandled error")
        return error_response(500, "internal", "internal error")
