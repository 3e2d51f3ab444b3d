"""What a search returns: `SearchResult` (columns) and `Hit` (one result, the JSON form)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Hit", "SearchResult"]


@dataclass(frozen=True)
class Hit:
    """One result. appearance_distance = hamming / n_bits, colour_distance in [0, 1] (NaN: no query colour)."""

    listing_id: int
    score: float
    appearance_distance: float
    colour_distance: float
    matched_attribute_ids: tuple[int, ...]


@dataclass(frozen=True)
class SearchResult:
    """Hits [offset, offset + k) of the full ranking, as columns, plus what the search cost.

    listing_ids: int64 (m,); scores, appearance, colour: float64 (m,); hamming: int32 (m,);
    matched: bool (m, len(query_attribute_ids)). scanned: rows whose code was compared (all segments);
    candidates: rows eligible under the strategy; strategy: the strategy actually used ("category" after a fallback).
    """

    listing_ids: np.ndarray
    scores: np.ndarray
    hamming: np.ndarray
    appearance: np.ndarray
    colour: np.ndarray
    matched: np.ndarray
    query_attribute_ids: tuple[int, ...]
    scanned: int
    candidates: int
    strategy: str
    generation: int

    def __len__(self) -> int:
        return int(self.listing_ids.shape[0])

    @property
    def hits(self) -> list[Hit]:
        """The hits as objects (for JSON); the arrays are the cheap form."""
        q = self.query_attribute_ids
        return [
            Hit(int(self.listing_ids[i]), float(self.scores[i]), float(self.appearance[i]), float(self.colour[i]),
                tuple(a for a, m in zip(q, self.matched[i]) if m))
            for i in range(len(self))
        ]
