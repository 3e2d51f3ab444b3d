"""The `edit`, `palette` and `facets` fields of POST /v1/search: parsing with clear 400s, and their response parts.

edit     attributes to require / exclude and an optional target colour. JSON object
         {"require": ["sleeve.sleeveless"], "exclude": ["pattern.striped"], "colour": "navy" | "#1f2a52"} or the
         short form "sleeve.sleeveless,-pattern.striped,navy" (`-key` excludes; `navy` / `colour.navy` / `#rrggbb`
         is the target colour). A taxonomy colour is a colour change: it requires that colour attribute (exact) and
         ranks by the distance to the colour's histogram; `#rrggbb` only ranks (no attribute to require).
palette  one to three colours with weights: [{"colour": "navy", "weight": 0.7}, {"colour": "white", "weight": 0.3}]
         or "navy:0.7,white:0.3"; with a photo it replaces the photo's colour term, without one it ranks a
         category's listings by colour alone (then `category` is required).
facets   N (1..1000): category, colour and attribute counts over the N most similar listings (exact, in the daemon).
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from shared.colours import COLOUR_GROUP, SWATCHES, NamedColour, palette_histogram, parse_colour
from shared.errors import InvalidInput
from shared.index.refine import MAX_FACET_DEPTH
from shared.taxonomy import Taxonomy

__all__ = ["RefineRequest", "parse_refine", "TARGET_COLOUR_WEIGHT", "search_refined", "add_why", "response_fields",
           "palette_search"]

# Weight of the colour term for a free #rrggbb or a palette with a photo: nothing filters by it, so it must move the
# ranking visibly. A taxonomy colour keeps the daemon's tuned weight: its attribute already guarantees the colour, and
# on the val split a larger weight only pushed the top 10 further from the photo (`lookalike evaluate edits`).
TARGET_COLOUR_WEIGHT = 0.3
MAX_PALETTE = 3
_SPLIT = re.compile(r"[,\s]+")


@dataclass(frozen=True)
class RefineRequest:
    """A parsed refinement. require / exclude: attribute ids; colour: the edit's target colour; palette: (colour,
    weight) pairs; target: the histogram that replaces the photo's colour (float32 (n_bins,)) or None."""

    require: tuple[int, ...] = ()
    exclude: tuple[int, ...] = ()
    colour: NamedColour | None = None
    palette: tuple[tuple[NamedColour, float], ...] = ()
    facets: int = 0
    target: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def active(self) -> bool:
        return self.filters or bool(self.facets)

    @property
    def filters(self) -> bool:
        """Whether the ranking itself changes (attributes required / excluded, or a target colour)."""
        return bool(self.require or self.exclude or self.target is not None)

    def check_applicable(self, tax: Taxonomy, category_id: int) -> None:
        """400 naming every required / excluded attribute that does not apply to the search's category."""
        bad = [tax.attribute(a).key for a in self.require + self.exclude if not tax.applies(a, category_id)]
        if bad:
            raise InvalidInput(f"attribute(s) {', '.join(bad)} do not apply to category "
                               f"{tax.category(category_id).key}")

    def daemon_fields(self, *, photo: bool = True) -> dict[str, Any]:
        """The daemon's refinement fields (index_daemon/server.py)."""
        out: dict[str, Any] = {"require": list(self.require), "exclude": list(self.exclude), "facets": self.facets}
        if self.target is not None:
            out["target_colour"] = [float(x) for x in self.target]
            named = self.colour is not None and self.colour.attribute_id is not None
            if not photo:
                out["colour_weight"] = 1.0
            elif not named:
                out["colour_weight"] = TARGET_COLOUR_WEIGHT
        if not photo:
            out["appearance"] = False
        return out

    def summary(self, tax: Taxonomy, reply: Any) -> dict[str, Any]:
        """The response's `refine` object: what was applied and how many listings satisfied it."""
        colour = None
        if self.colour is not None:
            colour = {"key": self.colour.key, "hex": self.colour.hex}
        palette = [{"key": c.key, "hex": c.hex, "weight": round(w, 4)} for c, w in self.palette]
        return {"require": [tax.attribute(a).key for a in self.require],
                "exclude": [tax.attribute(a).key for a in self.exclude],
                "colour": colour, "palette": palette, "matched": reply.matched, "weights": reply.weights}

    def facets_json(self, tax: Taxonomy, reply: Any) -> dict[str, Any] | None:
        """Facets with taxonomy keys and names; colours are the colour group's attributes, split out for swatches."""
        f = reply.facets
        if not f:
            return None
        attrs, colours = [], []
        for a, n in f["attributes"]:
            at = tax.attribute(int(a))
            row = {"key": at.key, "name": at.name, "group": at.group, "count": int(n)}
            (colours if at.group == COLOUR_GROUP else attrs).append(row)
        by_count = lambda r: (-r["count"], r["key"])  # noqa: E731
        return {"n": f["n"],
                "categories": sorted(({"key": tax.category(int(c)).key, "name": tax.category(int(c)).name,
                                       "count": int(n)} for c, n in f["categories"]), key=by_count),
                "colours": sorted(colours, key=by_count), "attributes": sorted(attrs, key=by_count)}


def why(tax: Taxonomy, hit: Any, terms: tuple[float, float] | None, weights: dict[str, float] | None,
        query_attribute_ids: list[int]) -> dict[str, Any]:
    """One result's exact score decomposition (appearance_term + colour_term == score) and the query attributes
    it shares and lacks."""
    shared_ids = set(hit.matched_attribute_ids)
    out: dict[str, Any] = {
        "score": hit.score,
        "shares": [tax.attribute(a).key for a in query_attribute_ids if a in shared_ids],
        "lacks": [tax.attribute(a).key for a in query_attribute_ids if a not in shared_ids],
    }
    if terms is not None and weights is not None:
        colour_distance = hit.colour_distance
        out["appearance"] = {"distance": hit.appearance_distance, "weight": weights["appearance"],
                             "term": terms[0]}
        out["colour"] = {"distance": None if colour_distance != colour_distance else colour_distance,  # NaN
                         "weight": weights["colour"], "term": terms[1]}
    return out


def _attribute_or_unknown(tax: Taxonomy, key: str, unknown: list[str]) -> int | None:
    try:
        return tax.attribute(key).id
    except KeyError:
        unknown.append(key)
        return None


def _load(raw: Any, name: str) -> Any:
    """Multipart sends strings: a JSON object / array inside one is decoded; other strings stay (short form)."""
    if isinstance(raw, str) and raw.strip()[:1] in ("{", "["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{name} is not valid JSON: {exc.msg}") from None
    return raw


def _parse_edit(raw: Any, tax: Taxonomy) -> tuple[list[int], list[int], NamedColour | None]:
    raw = _load(raw, "edit")
    colour_token: str | None = None
    if isinstance(raw, str):
        require_keys, exclude_keys = [], []
        for tok in (t for t in _SPLIT.split(raw.strip()) if t):
            if tok.startswith("-"):
                exclude_keys.append(tok[1:])
            elif tok.startswith("#") or "." not in tok or tok.startswith(COLOUR_GROUP + "."):
                if colour_token is not None:
                    raise InvalidInput(f"edit names two target colours: {colour_token!r} and {tok!r}")
                colour_token = tok
            else:
                require_keys.append(tok.lstrip("+"))
    elif isinstance(raw, dict):
        extra = set(raw) - {"require", "exclude", "colour"}
        if extra:
            raise InvalidInput(f"edit has unknown field(s) {', '.join(sorted(extra))}; use require, exclude, colour")
        require_keys, exclude_keys = raw.get("require") or [], raw.get("exclude") or []
        if not (isinstance(require_keys, list) and isinstance(exclude_keys, list)
                and all(isinstance(k, str) for k in require_keys + exclude_keys)):
            raise InvalidInput("edit.require and edit.exclude must be lists of attribute keys")
        colour_token = raw.get("colour")
        if colour_token is not None and not isinstance(colour_token, str):
            raise InvalidInput("edit.colour must be a string: a taxonomy colour or #rrggbb")
    else:
        raise InvalidInput("edit must be an object {require, exclude, colour} or a string like "
                           "'sleeve.sleeveless,-pattern.striped,navy'")
    unknown: list[str] = []
    require = [a for k in require_keys if (a := _attribute_or_unknown(tax, k, unknown)) is not None]
    exclude = [a for k in exclude_keys if (a := _attribute_or_unknown(tax, k, unknown)) is not None]
    if unknown:
        raise InvalidInput(_unknown_message(tax, unknown))
    colour = None
    if colour_token is not None:
        try:
            colour = parse_colour(colour_token, tax)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    # A named required colour is a colour change too (and a named target colour requires its attribute).
    named = [a for a in require if tax.attribute(a).group == COLOUR_GROUP]
    if colour is None and len(named) == 1 and tax.attribute(named[0]).key.split(".", 1)[1] in SWATCHES:
        colour = parse_colour(tax.attribute(named[0]).key, tax)
    if colour is not None and colour.attribute_id is not None and colour.attribute_id not in require:
        require.append(colour.attribute_id)
    both = sorted(set(require) & set(exclude))
    if both:
        raise InvalidInput(f"attribute(s) {', '.join(tax.attribute(a).key for a in both)} are both required and "
                           "excluded")
    return list(dict.fromkeys(require)), list(dict.fromkeys(exclude)), colour


def _unknown_message(tax: Taxonomy, unknown: list[str]) -> str:
    """Name the unknown keys; for a known group list its values, otherwise list the groups."""
    hints = []
    for key in unknown:
        group = key.split(".", 1)[0]
        if group in tax.attribute_groups:
            values = [a.key for a in tax.attributes if a.group == group]
            hints.append(f"{group}: {', '.join(values)}")
    hint = "; ".join(hints) if hints else f"keys are '<group>.<value>', groups: {', '.join(tax.attribute_groups)}"
    return f"unknown attribute(s) {', '.join(repr(k) for k in unknown)} ({hint})"


def _parse_palette(raw: Any, tax: Taxonomy) -> list[tuple[NamedColour, float]]:
    raw = _load(raw, "palette")
    entries: list[tuple[Any, Any]] = []
    if isinstance(raw, str):
        for tok in (t for t in _SPLIT.split(raw.strip()) if t):
            name, _, weight = tok.partition(":")
            entries.append((name, weight or 1.0))
    elif isinstance(raw, list):
        for e in raw:
            if not isinstance(e, dict) or "colour" not in e:
                raise InvalidInput("palette entries must be objects {colour, weight}")
            entries.append((e["colour"], e.get("weight", 1.0)))
    else:
        raise InvalidInput("palette must be a list [{colour, weight}] or a string like 'navy:0.7,white:0.3'")
    if not 1 <= len(entries) <= MAX_PALETTE:
        raise InvalidInput(f"palette needs 1 to {MAX_PALETTE} colours, got {len(entries)}")
    out = []
    for name, weight in entries:
        try:
            colour = parse_colour(str(name), tax)
            w = float(weight)
        except ValueError as exc:
            raise InvalidInput(f"palette: {exc}") from None
        if not (w > 0 and np.isfinite(w)):
            raise InvalidInput(f"palette weights must be positive numbers, got {weight!r}")
        out.append((colour, w))
    total = sum(w for _, w in out)
    return [(c, w / total) for c, w in out]


def parse_refine(body: dict[str, Any], tax: Taxonomy) -> RefineRequest:
    """The edit / palette / facets fields of a search request (absent fields: no refinement)."""
    edit_raw, palette_raw, facets_raw = body.get("edit"), body.get("palette"), body.get("facets")
    require: list[int] = []
    exclude: list[int] = []
    colour = None
    if edit_raw not in (None, "", {}):
        require, exclude, colour = _parse_edit(edit_raw, tax)
    palette: list[tuple[NamedColour, float]] = []
    if palette_raw not in (None, "", []):
        palette = _parse_palette(palette_raw, tax)
        if colour is not None:
            raise InvalidInput("give either edit.colour or palette, not both")
    facets = 0
    if facets_raw not in (None, ""):
        try:
            facets = int(facets_raw)
            if isinstance(facets_raw, float) and facets_raw != facets:
                raise ValueError
        except (TypeError, ValueError):
            raise InvalidInput(f"facets must be an integer, got {facets_raw!r}") from None
        if not 0 <= facets <= MAX_FACET_DEPTH:
            raise InvalidInput(f"facets must be between 0 and {MAX_FACET_DEPTH}, got {facets}")
    target = None
    if colour is not None:
        target = palette_histogram([colour.hex], [1.0])
    elif palette:
        target = palette_histogram([c.hex for c, _ in palette], [w for _, w in palette])
    return RefineRequest(require=tuple(require), exclude=tuple(exclude), colour=colour, palette=tuple(palette),
                         facets=facets, target=target)


# ---------------------------------------------------------------------------------------------------------------------
# Wiring for api/search.py: the edited index call, the palette-only search, and the response parts.


def search_refined(res: Any, analysis: Any, refine: RefineRequest, tax: Taxonomy, *, k: int, offset: int,
                   plain: Callable[..., Any]) -> Any:
    """The daemon's answer for a refined search. An edit refines within the query's own category (the one its
    attributes were validated against): one exact scan, even where a plain search merges a few categories. Facets
    alone leave the results to `plain(res, analysis, k=, offset=)` and count over the query's category."""
    refine.check_applicable(tax, analysis.category_id)
    fields = refine.daemon_fields()
    q = dict(code=analysis.code, colour=analysis.colour, category_id=analysis.category_id,
             attribute_ids=[a.attribute_id for a in analysis.attributes])
    if refine.filters:
        return res.index.search(**q, k=k, offset=offset, refine=fields)
    reply = plain(res, analysis, k=k, offset=offset)
    counted = res.index.search(**q, k=1, offset=0, refine=fields)
    return dataclasses.replace(reply, facets=counted.facets, matched=counted.matched,
                               weights=reply.weights or counted.weights)


def add_why(results: list[dict[str, Any]], reply: Any, tax: Taxonomy, query_attribute_ids: list[int]) -> None:
    """Give every result its `why` (score decomposition and the query attributes it shares and lacks), in place."""
    hits = {h.listing_id: h for h in reply.hits}
    for r in results:
        h = hits.get(r["listing_id"])
        if h is not None:
            r["why"] = why(tax, h, reply.terms.get(h.listing_id), reply.weights, query_attribute_ids)


def response_fields(refine: RefineRequest, reply: Any, tax: Taxonomy) -> dict[str, Any]:
    """`refine` (what was applied, how many listings matched) and `facets`, for a refined search; {} otherwise."""
    if not refine.active:
        return {}
    out: dict[str, Any] = {"refine": refine.summary(tax, reply)}
    facets = refine.facets_json(tax, reply)
    if facets is not None:
        out["facets"] = facets
    return out


def palette_search(res: Any, body: dict[str, Any], tax: Taxonomy, refine: RefineRequest, *,
                   results_fn: Callable[[Any, Any, Taxonomy], list[dict[str, Any]]], max_k: int,
                   max_offset: int) -> dict[str, Any]:
    """A palette without a photo: a category's listings ranked by colour alone (plus any edit's constraint)."""
    from api.forms import int_field, str_field

    key = str_field(body, "category")
    if key is None:
        raise InvalidInput("a palette search without a photo needs a category")
    try:
        category = tax.category(key)
    except KeyError as exc:
        raise InvalidInput(str(exc.args[0])) from None
    k = int_field(body, "k", default=20, minimum=1, maximum=max_k)
    offset = int_field(body, "offset", default=0, minimum=0, maximum=max_offset)
    refine.check_applicable(tax, category.id)
    reply = res.index.search(code=None, colour=None, category_id=category.id, attribute_ids=[], k=k, offset=offset,
                             refine=refine.daemon_fields(photo=False))
    # No photo, no appearance: NaN distances (the page shows n/a), the colour term is the whole score.
    reply = dataclasses.replace(reply, hits=[dataclasses.replace(h, appearance_distance=float("nan"))
                                             for h in reply.hits])
    results = results_fn(res, reply, tax)
    add_why(results, reply, tax, [])
    return {
        "option": "palette",
        "query": {"category": {"key": category.key, "name": category.name, "source": "shopper"}, "attributes": []},
        "results": results, "k": k, "offset": offset, "next_offset": offset + len(reply.hits),
        "index": {"generation": reply.generation, "items": reply.n_items, "scanned": reply.scanned,
                  "search_ms": round(reply.elapsed_ms, 3), **({"shards": reply.shards} if reply.shards else {})},
        **response_fields(refine, reply, tax),
    }


# OpenAPI fragments (api/openapi.py merges them into the /v1/search request and SearchResponse).
OPENAPI_REQUEST_FIELDS: dict[str, Any] = {
    "edit": {"description": "Require / exclude attributes and change the colour; results stay ranked by the photo's "
                            "appearance, restricted exactly to listings with every required attribute and none of "
                            "the excluded. An object {require: [keys], exclude: [keys], colour: 'navy' | "
                            "'colour.navy' | '#rrggbb'} (in multipart: its JSON text) or the short form "
                            "'sleeve.sleeveless,-pattern.striped,navy'. A taxonomy colour requires that colour "
                            "attribute and ranks by the distance to the colour; #rrggbb only ranks. Unknown or "
                            "inapplicable keys: 400 naming them.",
             "oneOf": [{"type": "string"}, {"type": "object", "properties": {
                 "require": {"type": "array", "items": {"type": "string"}},
                 "exclude": {"type": "array", "items": {"type": "string"}},
                 "colour": {"type": "string"}}}]},
    "palette": {"description": "1-3 colours with weights, replacing the photo's colour term: "
                               "[{colour: 'navy', weight: 0.7}, {colour: '#ffffff', weight: 0.3}] or "
                               "'navy:0.7,white:0.3'. Without a photo it ranks a category's listings by colour alone "
                               "(category required; option 'palette').",
                "oneOf": [{"type": "string"}, {"type": "array", "maxItems": MAX_PALETTE, "items": {
                    "type": "object", "properties": {"colour": {"type": "string"}, "weight": {"type": "number"}}}}]},
    "facets": {"type": "integer", "minimum": 0, "maximum": MAX_FACET_DEPTH, "default": 0,
               "description": "count categories, colours and attributes over the N most similar listings "
                              "(exact, after the edit)"},
}
OPENAPI_RESULT_FIELDS: dict[str, Any] = {
    "why": {"type": "object", "description": "exact score decomposition: appearance.term + colour.term == score "
                                             "(term = weight x distance), and the query attributes the result "
                                             "shares and lacks",
            "properties": {"score": {"type": "number"},
                           "appearance": {"type": "object", "properties": {
                               "distance": {"type": ["number", "null"]}, "weight": {"type": "number"},
                               "term": {"type": "number"}}},
                           "colour": {"type": "object", "properties": {
                               "distance": {"type": ["number", "null"]}, "weight": {"type": "number"},
                               "term": {"type": "number"}}},
                           "shares": {"type": "array", "items": {"type": "string"}},
                           "lacks": {"type": "array", "items": {"type": "string"}}}},
}
OPENAPI_RESPONSE_FIELDS: dict[str, Any] = {
    "refine": {"type": "object", "description": "present when edit, palette or facets was sent",
               "properties": {"require": {"type": "array", "items": {"type": "string"}},
                              "exclude": {"type": "array", "items": {"type": "string"}},
                              "colour": {"type": ["object", "null"]}, "palette": {"type": "array"},
                              "matched": {"type": "integer", "description": "listings of the category that "
                                                                            "satisfy the edit"},
                              "weights": {"type": "object"}}},
    "facets": {"type": "object", "description": "present when facets=N was sent: counts over the N best",
               "properties": {"n": {"type": "integer"},
                              **{g: {"type": "array", "items": {"type": "object", "properties": {
                                  "key": {"type": "string"}, "name": {"type": "string"},
                                  "count": {"type": "integer"}}}} for g in ("categories", "colours", "attributes")}}},
}
