"""The daemon's internal HTTP endpoint (loopback): /search, /readyz, /healthz, /metrics."""
from __future__ import annotations

import time

import numpy as np
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest

from index_daemon.holder import SnapshotHolder


def create_daemon_app(holder: SnapshotHolder, *, colour_weight: float) -> Flask:
    app = Flask("index_daemon")
    registry = CollectorRegistry()
    latency = Histogram("lookalike_index_search_seconds", "Index search time", registry=registry,
                        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1))
    items = Gauge("lookalike_index_items", "Items in the current snapshot", registry=registry)
    lag = Gauge("lookalike_index_last_seq", "Last change sequence applied", registry=registry)

    def bad(message: str):
        return jsonify({"error": "invalid_input", "message": message}), 400

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz():
        st = holder.state
        body = {"status": st.status, "generation": st.generation, "model_version": st.model_version,
                "items": st.items, "index_bytes": st.index_bytes, "last_seq": st.last_seq, "load_seconds": st.load_seconds, "error": st.error}
        return jsonify(body), 200 if st.status == "ready" else 503

    @app.get("/metrics")
    def metrics():
        items.set(holder.state.items)
        lag.set(holder.state.last_seq)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.post("/search")
    def search():
        snap = holder.current()  # one reference for the whole request: a swap cannot change it mid-way
        if snap is None or holder.state.status != "ready":
            return jsonify({"error": "unavailable", "message": "the index is loading"}), 503
        body = request.get_json(silent=True) or {}
        try:
            code = np.frombuffer(bytearray.fromhex(body["code"]), dtype=np.uint8)  # writable: see loader.py
            colour = np.asarray(body["colour"], dtype=np.float32)
            k, offset = int(body.get("k", 20)), int(body.get("offset", 0))
            category = body.get("category_id")
            attrs = [int(a) for a in body.get("attribute_ids", [])]
        except (KeyError, ValueError, TypeError) as exc:
            return bad(f"malformed search request: {exc}")
        if not (1 <= k <= 1000 and 0 <= offset <= 10_000):
            return bad("k must be 1..1000 and offset 0..10000")
        t0 = time.perf_counter()
        if snap.n_items == 0:  # nothing indexed yet (its code width is not even known)
            return jsonify({"hits": [], "generation": snap.generation, "n_items": 0, "scanned": 0,
                            "elapsed_ms": 0.0})
        try:
            result = snap.search(code=code, colour=colour, category_id=None if category is None else int(category),
                                 attribute_ids=attrs, k=k, offset=offset, colour_weight=colour_weight)
        except (ValueError, TypeError) as exc:
            return bad(str(exc))
        elapsed = time.perf_counter() - t0
        latency.observe(elapsed)
        return jsonify({"hits": [{"listing_id": h.listing_id, "score": h.score,
                                  "appearance_distance": h.appearance_distance, "colour_distance": h.colour_distance,
                                  "matched_attribute_ids": list(h.matched_attribute_ids)}
                                 for h in result.hits],
                        "generation": snap.generation, "n_items": snap.n_items, "scanned": int(result.scanned),
                        "elapsed_ms": elapsed * 1000})

    return app
