"""IndexClient: how the API asks the index daemon (HTTP on loopback, JSON)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import requests

from shared.errors import Unavailable, VersionMismatch
from shared.index.results import Hit  # the daemon's hits, rebuilt from JSON on this side


@dataclass(frozen=True)
class SearchReply:
    hits: list[Hit]
    generation: int
    n_items: int
    scanned: int
    elapsed_ms: float
    # Refinements (shared.index.refine): listings satisfying the edit, score weights, listing id -> (appearance
    # term, colour term) summing to that hit's score, and facets {"n", "categories": [[id, n]], "attributes": ...}.
    matched: int | None = None
    weights: dict[str, float] | None = None
    terms: dict[int, tuple[float, float]] = field(default_factory=dict)
    facets: dict[str, Any] | None = None
    model_version: str | None = None  # the generation's networks (the version contract)
    shards: dict[str, Any] | None = None  # several shards: which answered (shared.index.shards)
    # listing id -> re-rank distance for the shortlist the API re-ordered (api/rerank.py); empty when not re-ranked
    rerank: dict[int, float] = field(default_factory=dict)


class IndexClient:
    def __init__(self, base_url: str, *, timeout_s: float = 5.0, model_version: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # The networks this process encodes queries with (set once they are loaded): sent with every search.
        self.model_version = model_version
        self._http = requests.Session()

    def ready(self) -> dict[str, Any]:
        """The daemon's readiness document; raises Unavailable when it is down."""
        try:
            r = self._http.get(f"{self.base_url}/readyz", timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise Unavailable("the index daemon is not reachable") from exc
        body = r.json()
        if r.status_code != 200:
            raise Unavailable(f"the index daemon is {body.get('status', 'not ready')}")
        return body

    def search(self, *, code: bytes | None, colour: np.ndarray | None, category_id: int | None,
               attribute_ids: list[int], k: int, offset: int, refine: dict[str, Any] | None = None,
               model_version: str | None = None) -> SearchReply:
        """refine: the daemon's edit fields (api.refine.RefineRequest.daemon_fields): require, exclude,
        target_colour, colour_weight, appearance, facets. model_version: the networks that encoded the query; the
        daemon refuses (VersionMismatch) when it serves no generation of them."""
        payload = {"model_version": model_version or self.model_version, "code": None if code is None else code.hex(),
                   "colour": None if colour is None else [float(x) for x in colour], "category_id": category_id,
                   "attribute_ids": list(attribute_ids), "k": k, "offset": offset, **(refine or {})}
        try:
            r = self._http.post(f"{self.base_url}/search", json=payload, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise Unavailable("the index daemon is not reachable") from exc
        if r.status_code == 503:
            raise Unavailable("the index daemon is loading; try again shortly")
        if r.status_code == 409:
            raise VersionMismatch(r.json().get("message", "the index serves another model version"))
        if r.status_code != 200:
            raise Unavailable(f"the index daemon answered {r.status_code}: {r.text[:200]}")
        body = r.json()
        hits = [Hit(h["listing_id"], h["score"], h["appearance_distance"], h["colour_distance"],
                    tuple(h["matched_attribute_ids"])) for h in body["hits"]]
        return SearchReply(hits=hits, generation=body["generation"], n_items=body["n_items"],
                           scanned=body["scanned"], elapsed_ms=body["elapsed_ms"], matched=body.get("matched"),
                           weights=body.get("weights"),
                           terms={h["listing_id"]: (h["appearance_term"], h["colour_term"]) for h in body["hits"]
                                  if "appearance_term" in h},
                           facets=body.get("facets"), model_version=body.get("model_version"))

    def search_categories(self, *, code: bytes, colour: np.ndarray, category_ids: list[int],
                          attribute_ids: list[int], k: int, offset: int,
                          refine: dict[str, Any] | None = None, model_version: str | None = None,
                          near_duplicate: float = 0.0,
                          probes: list[tuple[bytes, np.ndarray]] | None = None) -> SearchReply:
        """Hits [offset, offset + k) of several categories ranked together. Exact: a listing's score does not depend
        on the category scanned, so each category's top (offset + k) is fetched and merged by (score, listing id),
        the daemon's own order. near_duplicate > 0 also merges in listings of ANY category whose appearance distance
        is at most that (a near-identical photo is the same product whatever category its listing was filed under);
        `probes` (code, colour) look for such near-duplicates with other boxes of the same photo, ranked by their
        own distance.
        A refined search (edits, facets) scans the first category only: its counts and required attributes are per
        category."""
        if refine or (len(category_ids) == 1 and near_duplicate <= 0):
            return self.search(code=code, colour=colour, category_id=category_ids[0], attribute_ids=attribute_ids,
                               k=k, offset=offset, refine=refine, model_version=model_version)
        depth = offset + k
        for _ in range(3):  # a generation swap between the per-category calls: ask again, never mix generations
            hits, replies = self._merge_parts(code=code, colour=colour, category_ids=category_ids,
                                              attribute_ids=attribute_ids, depth=depth, model_version=model_version,
                                              near_duplicate=near_duplicate, probes=probes or [])
            if len({(r.generation, r.model_version) for r in replies}) == 1:
                break
        else:
            raise Unavailable("the index switched generations during the search; try again")
        return SearchReply(hits=hits[offset:depth], generation=replies[0].generation,
                           n_items=replies[-1].n_items, scanned=sum(r.scanned for r in replies),
                           elapsed_ms=sum(r.elapsed_ms for r in replies), weights=replies[-1].weights,
                           terms={lid: t for r in replies for lid, t in r.terms.items()},
                           model_version=replies[-1].model_version)

    def _merge_parts(self, *, code: bytes, colour: np.ndarray, category_ids: list[int], attribute_ids: list[int],
                     depth: int, model_version: str | None, near_duplicate: float = 0.0,
                     probes: list[tuple[bytes, np.ndarray]] = ()) -> tuple[list[Hit], list[SearchReply]]:
        """Every category's top `depth` hits merged by (score, listing id), with the replies they came from."""
        hits: list[Hit] = []
        replies = []
        for pcode, pcolour in ([(code, colour)] + list(probes)) if near_duplicate > 0 else []:
            # every category at once, kept only where near-identical
            r = self.search(code=pcode, colour=pcolour, category_id=None, attribute_ids=attribute_ids,
                            k=min(1000, depth), offset=0, model_version=model_version)
            replies.append(r)
            hits += [h for h in r.hits if h.appearance_distance <= near_duplicate]
        for c in dict.fromkeys(category_ids):  # unique, order kept
            got = 0
            while got < depth:  # the daemon answers at most 1000 hits per call
                r = self.search(code=code, colour=colour, category_id=c, attribute_ids=attribute_ids,
                                k=min(1000, depth - got), offset=got, model_version=model_version)
                replies.append(r)
                hits += r.hits
                got += len(r.hits)
                if len(r.hits) < min(1000, depth - got + len(r.hits)):
                    break
        best: dict[int, Hit] = {}
        for h in hits:  # a near-duplicate may be in a searched category too: keep its best score
            if h.listing_id not in best or h.score < best[h.listing_id].score:
                best[h.listing_id] = h
        hits = list(best.values())
        hits.sort(key=lambda h: (h.score, h.listing_id))
        return hits, replies

