"""JSON errors: AppError subclasses and HTTP errors become {error, message}; bad input is never a 5xx."""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from shared.errors import AppError, ConfigError, ImageError, InvalidInput, TransientError

logger = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str):
    resp = jsonify({"error": code, "message": message})
    resp.status_code = status
    if status == 503:
        resp.headers["Retry-After"] = "2"
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(InvalidInput)
    def _invalid(exc: InvalidInput):
        # An image over the byte cap is "too large" (413); every other bad input is a 400.
        too_large = isinstance(exc, ImageError) and "larger than" in str(exc)
        return error_response(413 if too_large else 400, exc.code, str(exc))

    @app.errorhandler(TransientError)
    def _transient(exc: TransientError):
        return error_response(503, exc.code, str(exc))

    @app.errorhandler(ConfigError)
    def _config(exc: ConfigError):
        return error_response(500, exc.code, str(exc))

    @app.errorhandler(AppError)
    def _app_error(exc: AppError):
        return error_response(400, exc.code, str(exc))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        from sqlalchemy.exc import OperationalError

        if isinstance(exc, OperationalError):
            logger.warning("database unavailable: %s", exc)
            return error_response(503, "unavailable", "the database is unavailable; try again shortly")
        logger.exception("unhandled error")
        return error_response(500, "internal", "internal error")
