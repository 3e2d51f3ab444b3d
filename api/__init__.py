"""The public Flask API: listings intake, search, admin, health/metrics, docs and the storefront page."""
from __future__ import annotations

from flask import Flask

from api import admin, listings, meta, search
from api.errors import register_error_handlers
from api.resources import Resources
from shared.config import Settings, load_settings


def create_app(settings: Settings | None = None, *, preload_models: bool = False) -> Flask:
    settings = settings or load_settings()
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    # Flask's own body cap: a bit above the image cap so multipart overhead fits.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_image_bytes + 64 * 1024
    app.json.sort_keys = False
    res = Resources(settings)
    app.extensions["lookalike"] = res

    register_error_handlers(app)
    meta.init_app(app)
    app.register_blueprint(listings.bp)
    app.register_blueprint(search.bp)
    app.register_blueprint(admin.bp)
    if preload_models:
        _ = res.models
    return app
