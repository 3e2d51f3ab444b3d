"""The golden set: fixed sample-catalogue queries with their expected results, evaluated against any generation.

`sample/golden.json` (built by `lookalike models golden --build`, stored in the repo) lists query photos of the
shipped sample catalogue with their expected category (the data folder's label, mapped onto the taxonomy) and
relevant listings (the sample listings of that category). A generation is evaluated in-process on its own postings
(not through the daemon, which serves only the active one) with queries encoded by the networks of this process,
which must be the generation's (the version contract). Figures (higher is better):
- own_at_1: share of queries whose own listing (the same photo, indexed) is the first hit;
- category: share whose analysed category is the expected one;
- p_at_10: mean share of the first 10 other hits that are relevant (same category label).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select

from shared.config import REPO_ROOT

GOLDEN_FILE = REPO_ROOT / "sample" / "golden.json"
SAMPLE_SELLER = "sample"  # the seller id `lookalike up` and the tests index the sample catalogue under
FIGURES = ("own_at_1", "category", "p_at_10")
K = 10
EVERY = 16  # one query per 16 catalogue rows (a subset of the every-4th rows the tests index): 25 queries
MIN_QUERIES = 5  # fewer indexed queries than this: the generation does not hold the sample, no figures


def build(data_dir: Path, catalogue: Path = REPO_ROOT / "sample" / "catalog.csv") -> dict[str, Any]:
    """The golden set of the sample catalogue: expected categories from the data folder's labels."""
    from shared.taxonomy import load_taxonomy
    from shared.taxonomy.labels import load_labeled

    tax = load_taxonomy()
    labels = {r.id: r.category_id for r in load_labeled(data_dir) if r.category_id is not None}
    with open(catalogue, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["external_id"] in labels]
    by_cat: dict[int, list[str]] = {}
    for r in rows:
        by_cat.setdefault(labels[r["external_id"]], []).append(r["external_id"])
    queries = [{"external_id": r["external_id"], "image": r["image"], "category": tax.category(labels[r["external_id"]]).key,
                "relevant": sorted(set(by_cat[labels[r["external_id"]]]) - {r["external_id"]})}
               for r in rows[::EVERY]]
    return {"about": "lookalike golden set: sample-catalogue queries, expected category (data label) and relevant "
                     "listings (same label); built by `lookalike models golden --build`",
            "catalogue": "sample/catalog.csv", "seller_id": SAMPLE_SELLER, "k": K, "taxonomy_version": tax.version,
            "queries": queries}


def load_golden(path: Path = GOLDEN_FILE) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class GoldenResult:
    figures: dict[str, float]
    n_queries: int  # queries whose own listing is indexed in the generation
    details: list[dict[str, Any]]


def _snapshot(engine: Engine, generation_id: int):
    """The generation's postings as an in-memory snapshot (what the daemon would serve)."""
    from index_daemon.loader import _widths
    from shared.index.load import load_items
    from shared.index.snapshot import IndexSnapshot

    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        widths = _widths(cur, generation_id)
        items = None if widths is None else load_items(cur, generation_id=generation_id, n_bytes=widths[0],
                                                        n_bins=widths[1])
        raw.rollback()
    finally:
        raw.close()
    return None if items is None or len(items) == 0 else IndexSnapshot.from_items(items, generation=generation_id)


def evaluate(engine: Engine, models: Any, generation_id: int, *, golden: dict[str, Any] | None = None,
             colour_weight: float) -> GoldenResult:
    """The golden figures of one generation, its queries encoded by `models` (must be the generation's networks)."""
    from shared.config import load_settings
    from shared.db.models import Listing, Posting
    from shared.db.session import session_scope
    from shared.imaging import decode_image
    from shared.pipeline import analyze

    golden = golden or load_golden()
    settings = load_settings()
    snap = _snapshot(engine, generation_id)
    ext_ids = [q["external_id"] for q in golden["queries"]] + [e for q in golden["queries"] for e in q["relevant"]]
    with session_scope(engine) as s:
        ids = dict(s.execute(select(Listing.external_id, Listing.id).where(
            Listing.seller_id == golden["seller_id"], Listing.external_id.in_(set(ext_ids)),
            Listing.deleted_at.is_(None))).all())
        indexed = set(s.execute(select(Posting.listing_id).where(Posting.generation_id == generation_id,
                                                                 Posting.listing_id.in_(list(ids.values()))
                                                                 )).scalars()) if snap is not None else set()
    root = REPO_ROOT / Path(golden["catalogue"]).parent
    details = []
    for q in golden["queries"]:
        own = ids.get(q["external_id"])
        if own is None or own not in indexed:
            continue
        image = decode_image((root / q["image"]).read_bytes(), max_bytes=settings.max_image_bytes,
                             max_pixels=settings.max_image_pixels, max_side=settings.decode_max_side,
                             max_aspect=settings.max_image_aspect)  # as the API decodes a query
        a = analyze(models, image, source="shopper")
        code = np.frombuffer(a.code, dtype=np.uint8).copy()
        hits = []
        for cat in dict.fromkeys([c for c, _ in a.searched] or [a.category_id]):
            hits += snap.search(code=code, colour=a.colour, category_id=cat,
                                attribute_ids=[x.attribute_id for x in a.attributes], k=K + 1,
                                colour_weight=colour_weight).hits
        hits.sort(key=lambda h: (h.score, h.listing_id))
        ranked = [h.listing_id for h in hits]
        relevant = {ids[e] for e in q["relevant"] if e in ids}
        others = [i for i in ranked if i != own][:K]
        details.append({"external_id": q["external_id"], "own_at_1": float(bool(ranked) and ranked[0] == own),
                        "category": float(a.category_key == q["category"]),
                        "p_at_10": sum(i in relevant for i in others) / K})
    figures = {f: round(float(np.mean([d[f] for d in details])), 4) if details else 0.0 for f in FIGURES}
    return GoldenResult(figures=figures, n_queries=len(details), details=details)


def compare(candidate: dict[str, float], baseline: dict[str, float] | None, *, tolerance: float) -> dict[str, Any]:
    """The gate: every figure may drop by at most `tolerance` (absolute) from the baseline's."""
    if not baseline:
        return {"ok": False, "reason": "no baseline figures recorded for the active generation", "drops": {}}
    drops = {f: {"baseline": baseline[f], "candidate": candidate[f], "drop": round(baseline[f] - candidate[f], 4)}
             for f in FIGURES if f in baseline and candidate[f] < baseline[f] - tolerance}
    return {"ok": not drops, "reason": None if not drops else "figures dropped by more than the tolerance",
            "drops": drops}
