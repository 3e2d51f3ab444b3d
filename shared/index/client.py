"""IndexClient: how the API asks the index daemon (HTTP on loopback, JSON)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import requests

from shared.errors import Unavailable
from shared.index.postings import Hit  # the daemon's hits, rebuilt from JSON on this side


@dataclass(frozen=True)
class SearchReply:
    hits: list[Hit]
    generation: int
    n_items: int
    scanned: int
    elapsed_ms: float


class IndexClient:
    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
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

    def search(self, *, code: bytes, colour: np.ndarray, category_id: int | None, attribute_ids: list[int],
               k: int, offset: int) -> SearchReply:
        payload = {"code": code.hex(), "colour": [float(x) for x in colour], "category_id": category_id,
                   "attribute_ids": list(attribute_ids), "k": k, "offset": offset}
        try:
            r = self._http.post(f"{self.base_url}/search", json=payload, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise Unavailable("the index daemon is not reachable") from exc
        if r.status_code == 503:
            raise Unavailable("the index daemon is loading; try again shortly")
        if r.status_code != 200:
            raise Unavailable(f"the index daemon answered {r.status_code}: {r.text[:200]}")
        body = r.json()
        hits = [Hit(h["listing_id"], h["score"], h["appearance_distance"], h["colour_distance"],
                    tuple(h["matched_attribute_ids"])) for h in body["hits"]]
        return SearchReply(hits=hits, generation=body["generation"], n_items=body["n_items"],
                           scanned=body["scanned"], elapsed_ms=body["elapsed_ms"])
