"""Health, readiness, metrics, the OpenAPI document, the docs page, the taxonomy and the storefront page."""
from __future__ import annotations

from flask import Flask, Response, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.resources import resources
from api.metrics import REQUESTS
from api.openapi import openapi_document
from shared.errors import Unavailable
from shared.supervision import read_report
from shared.taxonomy import load_taxonomy


def init_app(app: Flask) -> None:
    @app.after_request
    def _count(resp):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(request.method, endpoint, str(resp.status_code)).inc()
        return resp

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        res = resources()
        checks: dict[str, object] = {}
        ok = True
        try:
            with res.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks["database"], ok = f"unavailable: {exc.__class__.__name__}", False
        try:
            checks["index"] = res.index.ready()
        except Unavailable as exc:
            checks["index"], ok = str(exc), False
        # What `lookalike up` restarted (children and embedded servers); informational, not a readiness check.
        supervisor = read_report(res.settings.var_dir)
        body = {"status": "ready" if ok else "not_ready", "checks": checks,
                "supervisor": supervisor["watched"] if supervisor else None}
        return jsonify(body), 200 if ok else 503

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document())

    @app.get("/docs")
    def docs():
        return send_from_directory(app.static_folder, "docs.html")

    @app.get("/v1/categories")
    def categories():
        tax = load_taxonomy()
        return jsonify({"taxonomy_version": tax.version,
                        "categories": [{"key": c.key, "name": c.name, "group": c.group} for c in tax.categories]})

    @app.get("/")
    def storefront():
        return send_from_directory(app.static_folder, "index.html")
