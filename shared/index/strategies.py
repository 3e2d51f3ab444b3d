"""Which rows a search compares: the whole category range (exact, the default) or a posting strategy.

"category" scans every row of the query's category; "union" rows having any of the query's attributes; "vote" rows
having at least min_votes of them; "intersection" rows having all of them. Scanning the category range is exact and
the fastest (figures in bench/README.md, "Posting strategies"): the scan reads 32 contiguous bytes per item at memory
speed, while a posting strategy first builds its candidate set (a bincount over the query's posting lists, ~10 entries
per item) and then gathers rows, which costs more than it saves; popular attributes are on most items of a category,
so unions and low vote thresholds prune almost nothing, and the intersection prunes everything. The posting
strategies stay available (falling back to the category scan below DEFAULT_MIN_CANDIDATES) for callers that want
attribute-filtered results; the postings also answer which query attributes each hit has.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

from shared.index.segment import Segment

__all__ = ["Strategy", "STRATEGIES", "DEFAULT_MIN_CANDIDATES", "strategy_rows"]

Strategy = Literal["category", "union", "vote", "intersection"]
STRATEGIES = ("category", "union", "vote", "intersection")
# Posting strategies fall back to the category scan when their candidate set is smaller than this: a tiny candidate
# set means the attributes were too specific to fill a page of good results.
DEFAULT_MIN_CANDIDATES = 1_000


def strategy_rows(
    seg: Segment, c: int, lo: int, hi: int, q_attrs: tuple[int, ...], strategy: str, min_votes: int
) -> np.ndarray:
    """Candidate rows (ascending) of a posting strategy within rows [lo, hi) of category index c (-1: all)."""
    lists = [seg.posting(a, c) for a in dict.fromkeys(q_attrs)]
    lists = [x for x in lists if x.shape[0]]
    if not lists:
        return np.empty(0, dtype=np.int32)
    if strategy == "union" and len(lists) == 1:
        return lists[0]
    votes = np.bincount(np.concatenate(lists) - lo, minlength=hi - lo)
    if strategy == "union":
        need = 1
    elif strategy == "vote":
        need = max(1, min(int(min_votes), len(q_attrs)))
    else:  # intersection: every query attribute, including ones no item in the category has
        need = len(dict.fromkeys(q_attrs))
    return (np.flatnonzero(votes >= need) + lo).astype(np.int32)
