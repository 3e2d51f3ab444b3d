"""The public Flask API: listings intake, search, admin, health/metrics, docs and the storefront page."""
from __future__ import annotations

import threading
from typing import Any

from flask import Flask, current_app

from shared.config import Settings, load_settings
from shared.db.session import make_engine
from shared.index.client import IndexClient


class Resources:
    """Per-app singletons, kept in app.extensions["lookalike"]. Networks load on first use (under a lock)
    so that /healthz answers while they load."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings)
        self.index = IndexClient(settings.resolved_index_url)
        self._models: Any = None
        self._lock = threading.Lock()

    @property
    def models(self):
        if self._models is None:
            with self._lock:
                if self._models is None:
                    from shared.pipeline import Models

                    self._models = Models.load(self.settings)
        return self._models


def resources() -> Resources:
    return current_app.extensions["lookalike"]


def create_app(settings: Settings | None = None, *, preload_models: bool = False) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    # Flask's own body cap: a bit above the image cap so multipart overhead fits.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_image_bytes + 64 * 1024
    app.json.sort_keys = False
    res = Resources(settings)
    app.extensions["lookalike"] = res

    from workers.celery_app import configure

    configure(settings)

    from api import admin, listings, meta, search
    from api.errors import register_error_handlers

    register_error_handlers(app)
    meta.init_app(app)
    app.register_blueprint(listings.bp)
    app.register_blueprint(search.bp)
    app.register_blueprint(admin.bp)
    if preload_models:
        _ = res.models
    return app
