"""Seller-intent conflicts: the seller's category (chosen, or read from the title) against the photo's main item.

The paper's Figure 1 case: a title says "bag" and the photo is a whole outfit. The listing stays indexed under the
seller's category (the seller knows what is for sale); the conflict is recorded so the marketplace can review it.
"""
from __future__ import annotations

from typing import Any, Sequence

from shared.taxonomy import Taxonomy
from shared.vision.items import Item

# Top/bottom subtypes look alike in a photo (the detector cannot tell a t-shirt from a shirt), so within these
# groups the seller's category agrees with any item of the same group.
SAME_LOOK_GROUPS = ("top", "bottom")
# Another item can carry the seller's category too (a jacket over a dress is a fine dress listing) when the photo is
# plausibly about it: the item ranker gives it some probability and its box is not much smaller than the photo's
# largest item (the Figure-1 bag is small). Chosen on the val split of the constructed cases
# (`lookalike evaluate conflicts --split val --sweep`): a stable region, precision 0.92-0.94 at recall 0.82-0.85.
MIN_OTHER_PROBABILITY = 0.05
MIN_AREA_RATIO = 0.5


def agrees(tax: Taxonomy, category_id: int, item: Item) -> bool:
    """Does a category describe this item: one of its detector classes, or a same-look group mate of its class?"""
    if category_id in item.class_scores or category_id == item.category_id:
        return True
    group = tax.category(item.category_id).group
    return group in SAME_LOOK_GROUPS and tax.category(category_id).group == group


def _area(item: Item) -> float:
    x0, y0, x1, y1 = item.xyxy
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


def category_conflict(tax: Taxonomy, *, category_id: int, source: str, confidence: float, items: Sequence[Item],
                      min_area_ratio: float = MIN_AREA_RATIO,
                      min_probability: float = MIN_OTHER_PROBABILITY) -> dict[str, Any] | None:
    """The conflict record when the seller's category describes neither the photo's main item (items[0], most likely
    first) nor another item the photo may be about (see MIN_AREA_RATIO), else None. A photo without any detected item
    is no evidence."""
    if not items:
        return None
    main = items[0]
    largest = max(_area(it) for it in items)
    subjects = [main] + [it for it in items[1:] if it.probability >= min_probability
                         and _area(it) >= min_area_ratio * largest]
    if any(agrees(tax, category_id, it) for it in subjects):
        return None
    return {"seller": {"category": tax.category(category_id).key, "source": source,
                       "confidence": round(float(confidence), 4)},
            "photo": {"category": tax.category(main.category_id).key, "confidence": round(float(main.probability), 4),
                      "detector_score": round(float(main.score), 4)},
            "also_in_photo": any(agrees(tax, category_id, it) for it in items[1:])}
