"""The OpenAPI 3.1 document of the public API (served at /openapi.json, rendered at /docs)."""
from __future__ import annotations

from typing import Any

from api.refine import OPENAPI_REQUEST_FIELDS, OPENAPI_RESPONSE_FIELDS, OPENAPI_RESULT_FIELDS

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def openapi_document() -> dict[str, Any]:
    err = {"description": "bad input", "content": _json(ERROR)}
    unavailable = {"description": "a dependency is down or loading (Retry-After set)", "content": _json(ERROR)}
    search_fields = {
        "image": {"type": "string", "format": "binary", "description": "the photo (JPEG, PNG, WebP, GIF)"},
        "image_url": {"type": "string", "description": "or a public http(s) URL of the photo"},
        "category": {"type": "string", "description": "option 2: a category key from /v1/categories"},
        "rect": {"type": "string", "description": "option 3: 'x0,y0,x1,y1' in pixels of the photo"},
        "item": {"type": "integer", "minimum": 0, "maximum": 7,
                 "description": "option 1: search this item of the photo's `items` (default 0, the most likely)"},
        "expand": {"type": "string", "enum": ["all"],
                   "description": "'all': every item of `items` also carries its own `query` category and `results`"},
        "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        "offset": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0},
        "partial": {"type": "boolean", "default": False,
                    "description": "sharded index: answer from the shards that are up (index.shards lists which) instead of 503"},
        **OPENAPI_REQUEST_FIELDS,
    }
    listing_fields = {
        "seller_id": {"type": "string"}, "external_id": {"type": "string", "description": "unique per seller"},
        "title": {"type": "string"}, "description": {"type": "string"},
        "category": {"type": "string", "description": "optional category key chosen by the seller"},
        "image": {"type": "string", "format": "binary"}, "image_url": {"type": "string"},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Lookalike", "version": "0.1.0",
                 "description": "Visual search for fashion marketplaces: send a photo, get the listings that "
                                "look most alike."},
        "paths": {
            "/v1/search": {"post": {
                "summary": "Search by photo (options: automatic category, chosen category, drawn rectangle)",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": search_fields}},
                    "application/json": {"schema": {"type": "object", "properties": {
                        k: v for k, v in search_fields.items() if k != "image"}}}}},
                "responses": {"200": {"description": "results", "content": _json(
                    {"$ref": "#/components/schemas/SearchResponse"})}, "400": err, "413": err,
                    "503": unavailable}}},
            "/v1/listings": {"post": {
                "summary": "Create or update a listing (upsert by seller_id + external_id)",
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "properties": listing_fields}},
                    "application/json": {"schema": {"type": "object", "properties": {
                        k: v for k, v in listing_fields.items() if k != "image"}}}}},
                "responses": {"202": {"description": "accepted and queued"},
                              "200": {"description": "unchanged (same content re-posted)"}, "400": err, "413": err}}},
            "/v1/listings/{listing_id}": {
                "get": {"summary": "A listing with its derived category, attributes and ROI",
                        "parameters": [{"name": "listing_id", "in": "path", "required": True,
                                        "schema": {"type": "integer"}}],
                        "responses": {"200": {"description": "the listing"}, "404": err}},
                "delete": {"summary": "Delete a listing (it leaves search within seconds)",
                           "parameters": [{"name": "listing_id", "in": "path", "required": True,
                                           "schema": {"type": "integer"}}],
                           "responses": {"202": {"description": "deleted"}, "404": err}}},
            "/v1/listings/{listing_id}/image": {"get": {
                "summary": "The listing's stored photo",
                "parameters": [{"name": "listing_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "image bytes"}, "404": err}}},
            "/v1/categories": {"get": {"summary": "The taxonomy's categories",
                                       "responses": {"200": {"description": "categories"}}}},
            "/v1/admin/reindex": {"post": {
                "summary": "Reindex all listings, one category, or those not yet indexed under a model version",
                "security": [{"bearer": []}],
                "requestBody": {"content": _json({"type": "object", "properties": {
                    "category": {"type": "string"}, "older_than": {"type": "string"}}})},
                "responses": {"202": {"description": "queued"}, "401": err, "403": err, "503": unavailable}}},
            "/v1/admin/jobs/{job_id}": {"get": {
                "summary": "Progress of an admin job", "security": [{"bearer": []}],
                "parameters": [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "progress"}, "401": err, "404": err}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness (database and index daemon)",
                                "responses": {"200": {"description": "ready"}, "503": unavailable}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"},
                                                           "message": {"type": "string"}}},
                "SearchResponse": {"type": "object", "properties": {
                    "option": {"type": "integer"},
                    "query": {"type": "object", "description": "category {key, name, source (shopper | text | "
                              "image | detector | detector+image), confidence, searched: the category keys whose "
                              "listings were ranked together}, item (index of the searched item or null), "
                              "attributes with probabilities, roi {box, fallback}, detections"},
                    "items": {"type": "array", "description": "every distinct item in the photo (cross-class "
                              "duplicate boxes merged), most likely first", "items": {"type": "object", "properties": {
                        "index": {"type": "integer"}, "category": {"type": "string"}, "name": {"type": "string"},
                        "box": {"type": "array", "items": {"type": "number"}, "description": "x0, y0, x1, y1 px"},
                        "score": {"type": "number", "description": "detector score of the item's box"},
                        "classes": {"type": "object", "description": "category key -> best detector score of the "
                                    "boxes merged into this item (its class evidence)"},
                        "probability": {"type": "number", "description": "how likely the photo is about this "
                                                                         "item (sums to 1 over items)"},
                        "chosen": {"type": "boolean", "description": "this item's region was searched"},
                        "search": {"type": "object", "description": "fields that search this item again: `item` "
                                   "(option 1, same photo) or `rect` + `category` (option 3)"},
                        "query": {"type": "object", "description": "with expand=all: the item's category block"},
                        "results": {"type": "array", "description": "with expand=all: the item's results"}}}},
                    "results": {"type": "array", "items": {"type": "object", "properties": {
                        "listing_id": {"type": "integer"}, "title": {"type": "string"},
                        "image": {"type": "string"}, "score": {"type": "number"},
                        "appearance_distance": {"type": "number"}, "colour_distance": {"type": "number"},
                        "rerank_distance": {"type": "number", "description": "for the shortlist re-ordered by the "
                                            "re-ranking vector ((1 - cosine) / 2; index.reranked says how many)"},
                        "matched_attributes": {"type": "array", "items": {"type": "string"}},
                        **OPENAPI_RESULT_FIELDS}}},
                    "k": {"type": "integer"}, "offset": {"type": "integer"}, "next_offset": {"type": "integer"},
                    **OPENAPI_RESPONSE_FIELDS}},
            },
        },
    }
