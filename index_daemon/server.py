"""The daemon's internal HTTP endpoint (loopback): /search, /readyz, /healthz, /metrics."""
from __future__ import annotations

import os
import time

import numpy as np
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, Histogram, generate_latest

from index_daemon.holder import SnapshotHolder
from shared.index.refine import MAX_FACET_DEPTH, Refinement, refined_search


# Served when a generation records no ranking parameters (made before the version contract): the colour weight the
# shipped features carried then. Every generation made since records its own (index_generations.params).
LEGACY_COLOUR_WEIGHT = 0.1
# A scan of a large range (>= 250k rows per thread: the whole index, or a category of millions) is split across the
# machine's cores, so one search gets all of them; smaller scans stay on one thread (shared.codes.hamming._split).
SEARCH_THREADS = max(1, os.cpu_count() or 1)


def create_daemon_app(holder: SnapshotHolder, *, colour_weight: float = LEGACY_COLOUR_WEIGHT) -> Flask:
    """`colour_weight`: only for generations without recorded parameters (see LEGACY_COLOUR_WEIGHT)."""
    app = Flask("index_daemon")
    default_colour_weight = colour_weight
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
                "items": st.items, "index_bytes": st.index_bytes, "last_seq": st.last_seq, "load_seconds": st.load_seconds, "error": st.error,
                "networks": st.networks, "params": st.params, "previous_generation": st.previous_generation,
                "previous_model_version": st.previous_model_version, "shard": st.extra.get("shard")}
        return jsonify(body), 200 if st.status == "ready" else 503

    @app.get("/metrics")
    def metrics():
        items.set(holder.state.items)
        lag.set(holder.state.last_seq)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.post("/search")
    def search():
        if holder.current() is None or holder.state.status != "ready":
            return jsonify({"error": "unavailable", "message": "the index is loading"}), 503
        body = request.get_json(silent=True) or {}
        # The version contract: codes of one set of networks are only compared with postings of the same set.
        query_version = body.get("model_version")
        served = holder.pick(None if query_version is None else str(query_version))
        if served is None:
            return jsonify({"error": "version_mismatch",
                            "message": f"the query was encoded by networks {query_version!r} but the index serves "
                                       f"{holder.state.model_version!r}; the API and the index are switching models",
                            "query_model_version": query_version, "index_model_version": holder.state.model_version,
                            "generation": holder.state.generation}), 409
        snap = served.snapshot  # one reference for the whole request: a swap cannot change it mid-way
        colour_weight = float(served.params.get("colour_weight", default_colour_weight))
        try:
            appearance = bool(body.get("appearance", True))
            code = (np.frombuffer(bytearray.fromhex(body["code"]), dtype=np.uint8)  # writable: see loader.py
                    if appearance else None)
            colour = None if body.get("colour") is None else np.asarray(body["colour"], dtype=np.float32)
            k, offset = int(body.get("k", 20)), int(body.get("offset", 0))
            category = body.get("category_id")
            attrs = [int(a) for a in body.get("attribute_ids", [])]
            target = body.get("target_colour")
            weight = body.get("colour_weight")
            refinement = Refinement(
                require=tuple(int(a) for a in body.get("require", [])),
                exclude=tuple(int(a) for a in body.get("exclude", [])),
                target_colour=None if target is None else np.asarray(target, dtype=np.float32),
                colour_weight=None if weight is None else float(weight),
                appearance=appearance, facets=int(body.get("facets", 0)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            return bad(f"malformed search request: {exc}")
        if not (1 <= k <= MAX_FACET_DEPTH and 0 <= offset <= 10_000):
            return bad("k must be 1..1000 and offset 0..10000")
        t0 = time.perf_counter()
        if snap.n_items == 0:  # nothing indexed yet (its code width is not even known)
            return jsonify({"hits": [], "generation": served.generation, "model_version": served.model_version,
                            "n_items": 0, "scanned": 0, "matched": 0, "elapsed_ms": 0.0})
        try:
            out = refined_search(snap, code=code, colour=colour,
                                 category_id=None if category is None else int(category), attribute_ids=attrs, k=k,
                                 offset=offset, colour_weight=colour_weight, refinement=refinement,
                                 threads=SEARCH_THREADS)
        except (ValueError, TypeError) as exc:
            return bad(str(exc))
        elapsed = time.perf_counter() - t0
        latency.observe(elapsed)
        result = out.result
        reply = {"hits": [{"listing_id": h.listing_id, "score": h.score,
                           "appearance_distance": h.appearance_distance if appearance else None,
                           "colour_distance": h.colour_distance,
                           "matched_attribute_ids": list(h.matched_attribute_ids),
                           "appearance_term": float(a), "colour_term": float(c)}
                          for h, a, c in zip(result.hits, out.appearance_terms, out.colour_terms)],
                 "generation": served.generation, "model_version": served.model_version,
                 "current": served.current, "n_items": snap.n_items, "scanned": int(result.scanned),
                 "matched": out.matched,
                 "weights": {"appearance": out.appearance_weight, "colour": out.colour_weight},
                 "elapsed_ms": elapsed * 1000}
        if out.facets is not None:
            reply["facets"] = {"n": out.facets.n,
                               "categories": [[c, n] for c, n in sorted(out.facets.categories.items())],
                               "attributes": [[a, n] for a, n in sorted(out.facets.attributes.items())]}
        return jsonify(reply)

    return app
