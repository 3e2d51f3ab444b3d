"""The shortlist's second look: the daemon's first RERANK_DEPTH hits re-ordered by the re-ranking vector.

The daemon ranks every listing by the 256-bit code (and colour). Its first RERANK_DEPTH hits are re-ordered here by
the cosine between the query's float projection and each listing's stored 4-bit copy (`shared.vision.rerank`,
`postings.rerank`), read from Postgres for those rows only. Hits after the shortlist keep the daemon's order, so
pages stay consistent: the shortlist is the same set whatever page is asked for.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from sqlalchemy import select

from shared.db.models import Posting
from shared.db.session import session_scope
from shared.index.client import SearchReply
from shared.vision.rerank import RERANK_DEPTH, Reranker, cosine_to

__all__ = ["RERANK_DEPTH", "rerank_reply"]


def rerank_reply(engine, reranker: Reranker, query: np.ndarray, reply: SearchReply, *, offset: int, k: int,
                 near_duplicate: float = 0.0, probes: Sequence[np.ndarray] = ()) -> SearchReply:
    """Hits [offset, offset + k) of `reply` (its hits start at rank 0) after re-ranking its first RERANK_DEPTH, with
    `rerank` = {listing id: re-rank distance in [0, 1]} for the re-ordered ones. A shortlist with a listing that has
    no stored vector (a generation built before the re-ranker, or a sharded reply of mixed age) keeps the daemon's
    order.

    `probes`: the projections of the photo's other boxes (the near-duplicate probes of option 1). A near-duplicate
    hit (appearance distance <= near_duplicate) may have been found through one of them, since its seller's
    category put its region elsewhere in the same photo: it takes its best distance over the query and the probes,
    so the listing whose own photo this is stays first."""
    head, tail = reply.hits[:RERANK_DEPTH], reply.hits[RERANK_DEPTH:]
    distances: dict[int, float] = {}
    if head:
        ids = [h.listing_id for h in head]
        with session_scope(engine) as s:
            stored = dict(s.execute(select(Posting.listing_id, Posting.rerank).where(
                Posting.generation_id == reply.generation, Posting.listing_id.in_(ids))).all())
        vectors = [stored.get(i) for i in ids]
        if all(v is not None and len(v) == reranker.n_bytes for v in vectors):
            packed = np.frombuffer(b"".join(vectors), np.uint8).reshape(len(ids), reranker.n_bytes)
            stored_vectors = reranker.unpack(packed)
            dist = (1.0 - cosine_to(query, stored_vectors)) / 2.0
            near = np.array([h.appearance_distance <= near_duplicate for h in head]) if near_duplicate > 0 else None
            if near is not None and near.any():
                for probe in probes:
                    dist[near] = np.minimum(dist[near], (1.0 - cosine_to(probe, stored_vectors[near])) / 2.0)
            # Ties keep the daemon's order (stable sort), so equal vectors never reshuffle between calls.
            order = np.argsort(dist, kind="stable")
            head = [head[i] for i in order]
            distances = {ids[i]: float(dist[i]) for i in order}
    return dataclasses.replace(reply, hits=(head + tail)[offset:offset + k], rerank=distances)
