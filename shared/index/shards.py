"""Sharded index: which daemon owns a listing, and the API's scatter-gather client that merges shards exactly.

A shard i of N owns the listings with listing_id % N == i. Every shard daemon follows the same change sequence and
keeps only its own listings, so any shard is rebuilt from Postgres alone. A listing's score does not depend on which
daemon holds it, so the global ranking is the merge of each shard's top (offset + k) by (score, listing id): the
order one daemon ranks by (shared.index.snapshot.IndexSnapshot.search, ties broken by listing id).
"""
from __future__ import annotations

import contextvars
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from shared.errors import Unavailable, VersionMismatch
from shared.index.client import IndexClient, SearchReply
from shared.index.results import Hit

MAX_PAGE = 1000  # the most hits one daemon call returns (index_daemon/server.py)


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: owns the listings with listing_id % count == index."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'i/N', as Settings.index_shard holds it (validated there)."""
        i, n = text.split("/")
        return cls(int(i), int(n))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, listing_id: int) -> bool:
        return int(listing_id) % self.count == self.index

    def owned(self, listing_ids: Sequence[int]) -> list[int]:
        return [i for i in listing_ids if int(i) % self.count == self.index]

    def condition(self) -> str:
        """The SQL condition (with a leading AND) selecting this shard's listings; integers only, so safe to inline,
        and mod() keeps it free of a literal % (pyformat)."""
        return f" AND mod(listing_id, {self.count}) = {self.index}"

    def bulk_sql(self, sql: str) -> str:
        """The bulk-load query (shared.index.load.BULK_LOAD_SQL) restricted to this shard's listings."""
        anchor = "listing_id > %(after)s"
        if anchor not in sql:
            raise ValueError("the bulk-load query has no keyset condition to restrict")
        return sql.replace(anchor, anchor + self.condition(), 1)


# Whether the current request accepts results from only the shards that answered (`partial=true`).
_PARTIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("lookalike_partial_results", default=False)


def allow_partial(allowed: bool) -> None:
    """For the rest of this request (this thread's context), whether a sharded search skips shards that are down
    instead of raising Unavailable. The API sets it at the start of every search request."""
    _PARTIAL.set(bool(allowed))


def merge_hits(parts: Sequence[Sequence[Hit]], offset: int, k: int) -> list[Hit]:
    """Hits [offset, offset + k) of the union of each shard's top (offset + k), by (score, listing id)."""
    hits = [h for part in parts for h in part]
    hits.sort(key=lambda h: (h.score, h.listing_id))
    return hits[offset:offset + k]


def merge_facets(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum facet counts of disjoint sets of listings (the daemon's JSON form)."""
    n = 0
    cats: dict[int, int] = {}
    attrs: dict[int, int] = {}
    for f in parts:
        n += int(f["n"])
        for c, cnt in f["categories"]:
            cats[int(c)] = cats.get(int(c), 0) + int(cnt)
        for a, cnt in f["attributes"]:
            attrs[int(a)] = attrs.get(int(a), 0) + int(cnt)
    return {"n": n, "categories": [[c, v] for c, v in sorted(cats.items())],
            "attributes": [[a, v] for a, v in sorted(attrs.items())]}


class ShardedIndexClient:
    """IndexClient's interface over N shard daemons: scatter every search, merge the exact top-k.

    With one URL every call goes straight to that daemon (nothing changes). With several, a shard that is down or
    loading raises Unavailable (the API answers 503 with Retry-After) unless `allow_partial(True)` was called;
    then the reply's `shards` says which answered. Shards on different generations raise Unavailable too.
    """

    def __init__(self, urls: Sequence[str], *, timeout_s: float = 5.0, model_version: str | None = None) -> None:
        if not urls:
            raise ValueError("at least one index URL is needed")
        self.clients = [IndexClient(u, timeout_s=timeout_s, model_version=model_version) for u in urls]
        self._pool = ThreadPoolExecutor(max_workers=min(64, 8 * len(urls)), thread_name_prefix="shards") \
            if len(urls) > 1 else None

    @property
    def base_url(self) -> str:
        return ",".join(c.base_url for c in self.clients)

    @property
    def model_version(self) -> str | None:
        return self.clients[0].model_version

    @model_version.setter
    def model_version(self, value: str | None) -> None:
        for c in self.clients:
            c.model_version = value

    # -- readiness ---------------------------------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """The daemon's readiness document (one shard), or every shard's; Unavailable naming the shards not ready."""
        if len(self.clients) == 1:
            return self.clients[0].ready()
        docs: list[dict[str, Any]] = []
        down = []
        for i, out in enumerate(self._scatter(lambda c: c.ready())):
            if isinstance(out, Unavailable):
                down.append(f"shard {i}/{len(self.clients)}: {out}")
                docs.append({"status": "unavailable", "message": str(out)})
            else:
                docs.append(out)
        if down:
            raise Unavailable("; ".join(down))
        return {"status": "ready", "shards": docs, "items": sum(int(d.get("items", 0)) for d in docs)}

    # -- search ------------------------------------------------------------------------------------------------------

    def search(self, *, code: bytes | None, colour: np.ndarray | None, category_id: int | None,
               attribute_ids: list[int], k: int, offset: int, refine: dict[str, Any] | None = None,
               model_version: str | None = None) -> SearchReply:
        """IndexClient.search over every shard. Facets over the N best are exact: the global N best are each
        shard's n_i best, so after merging the hits each shard counts its own n_i and the counts add up."""
        if len(self.clients) == 1:
            return self.clients[0].search(code=code, colour=colour, category_id=category_id,
                                          attribute_ids=attribute_ids, k=k, offset=offset, refine=refine,
                                          model_version=model_version)
        refine = dict(refine or {})
        n_facets = int(refine.pop("facets", 0) or 0)
        depth = offset + k
        fetch = max(depth, n_facets)
        q = dict(code=code, colour=colour, category_id=category_id, attribute_ids=attribute_ids,
                 model_version=model_version)

        def top(c: IndexClient) -> list[SearchReply]:
            return _pages(lambda kk, off: c.search(**q, k=kk, offset=off, refine=refine or None), fetch)

        parts = self._gather(top)
        merged = self._merge([p for p in parts if p is not None], offset=offset, k=k)
        if n_facets:
            # Which of the global n_facets best each shard holds: its own best n_i, counted by the shard itself.
            best = merge_hits([r.hits for p in parts if p is not None for r in p], 0, n_facets)
            owners = {h.listing_id: i for i, p in enumerate(parts) if p is not None for r in p for h in r.hits}
            n_of = [0] * len(parts)
            for h in best:
                n_of[owners[h.listing_id]] += 1

            def count(i: int) -> dict[str, Any] | None:
                if n_of[i] == 0:
                    return None
                r = self.clients[i].search(**q, k=1, offset=0, refine={**refine, "facets": n_of[i]})
                if (r.generation, r.model_version) != (merged.generation, merged.model_version):
                    raise Unavailable("the index shards are switching generations; try again shortly")
                return r.facets

            counted = list(self._pool.map(count, range(len(parts))))
            merged = dataclasses.replace(merged, facets=merge_facets([f for f in counted if f is not None]))
        return dataclasses.replace(merged, shards=self._shards_doc(parts))

    def search_categories(self, *, code: bytes, colour: np.ndarray, category_ids: list[int],
                          attribute_ids: list[int], k: int, offset: int,
                          refine: dict[str, Any] | None = None, model_version: str | None = None,
                          **extra: Any) -> SearchReply:
        """IndexClient.search_categories over every shard: each shard's top (offset + k) over the categories, merged
        by (score, listing id). `extra` (IndexClient's near-duplicate options) goes to every shard as it is: whether
        a listing qualifies, and its score, depend on that listing alone, so the merge stays exact. A refined search
        scans the first category only (as on one daemon)."""
        if len(self.clients) == 1:
            return self.clients[0].search_categories(code=code, colour=colour, category_ids=category_ids,
                                                     attribute_ids=attribute_ids, k=k, offset=offset, refine=refine,
                                                     model_version=model_version, **extra)
        if refine or (len(category_ids) == 1 and not extra.get("near_duplicate")):
            return self.search(code=code, colour=colour, category_id=category_ids[0], attribute_ids=attribute_ids,
                               k=k, offset=offset, refine=refine, model_version=model_version)

        def top(c: IndexClient) -> list[SearchReply]:
            return [c.search_categories(code=code, colour=colour, category_ids=category_ids,
                                        attribute_ids=attribute_ids, k=offset + k, offset=0,
                                        model_version=model_version, **extra)]

        parts = self._gather(top)
        merged = self._merge([p for p in parts if p is not None], offset=offset, k=k)
        return dataclasses.replace(merged, shards=self._shards_doc(parts))

    # -- scatter / gather --------------------------------------------------------------------------------------------

    def _scatter(self, fn: Callable[[IndexClient], Any]) -> list[Any]:
        """fn on every shard in parallel; an Unavailable (not a version mismatch) is returned in place of a result."""
        def call(c: IndexClient) -> Any:
            try:
                return fn(c)
            except VersionMismatch:
                raise
            except Unavailable as exc:
                return exc

        return list(self._pool.map(call, self.clients))

    def _gather(self, fn: Callable[[IndexClient], list[SearchReply]]) -> list[list[SearchReply] | None]:
        """Every shard's replies (None for a shard that is down, when partial results are allowed), from one
        generation: shards caught mid-switch are asked again, then refused."""
        n = len(self.clients)
        for _ in range(3):
            outs = self._scatter(fn)
            down = [i for i, o in enumerate(outs) if isinstance(o, Unavailable)]
            if down and not _PARTIAL.get():
                raise Unavailable("index shard " + ", ".join(f"{i}/{n} ({outs[i]})" for i in down) +
                                  " did not answer; try again shortly (or allow partial results)")
            if len(down) == n:
                raise Unavailable(f"no index shard answered ({outs[0]}); try again shortly")
            parts = [None if isinstance(o, Unavailable) else o for o in outs]
            if len({(r.generation, r.model_version) for p in parts if p is not None for r in p}) == 1:
                return parts
        raise Unavailable("the index shards are switching generations; try again shortly")

    def _merge(self, parts: list[list[SearchReply]], *, offset: int, k: int) -> SearchReply:
        replies = [r for p in parts for r in p]
        first = [p[0] for p in parts]  # each shard's first page carries its counts
        hits = merge_hits([r.hits for r in replies], offset, k)
        keep = {h.listing_id for h in hits}
        matched = None if any(r.matched is None for r in first) else sum(int(r.matched) for r in first)
        return SearchReply(hits=hits, generation=replies[0].generation, n_items=sum(r.n_items for r in first),
                           scanned=sum(r.scanned for r in replies),
                           elapsed_ms=max(sum(r.elapsed_ms for r in p) for p in parts), matched=matched,
                           weights=next((r.weights for r in first if r.weights), None),  # an empty shard has none
                           terms={lid: t for r in replies for lid, t in r.terms.items() if lid in keep},
                           model_version=replies[0].model_version)

    def _shards_doc(self, parts: list[Any]) -> dict[str, Any]:
        answered = [i for i, p in enumerate(parts) if p is not None]
        missing = [i for i, p in enumerate(parts) if p is None]
        return {"count": len(parts), "answered": answered, "missing": missing, "partial": bool(missing)}


def _pages(call: Callable[[int, int], SearchReply], depth: int) -> list[SearchReply]:
    """A shard's top `depth` hits in pages of at most MAX_PAGE (the first page carries the counts)."""
    out: list[SearchReply] = []
    got = 0
    while True:
        want = min(MAX_PAGE, depth - got)
        r = call(want, got)
        out.append(r)
        got += len(r.hits)
        if len(r.hits) < want or got >= depth:
            return out


def index_client(urls: Sequence[str]) -> IndexClient | ShardedIndexClient:
    """The API's index client: a plain IndexClient for one daemon, the scatter-gather client for several."""
    return IndexClient(urls[0]) if len(urls) == 1 else ShardedIndexClient(urls)
