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
# The photo must be this sure that it is about its main item (the item ranker's softmax probability) before a
# disagreement is flagged. Chosen on the val split of the constructed cases (`lookalike evaluate conflicts`).
MIN_MAIN_PROBABILITY = 0.5


def agrees(tax: Taxonomy, category_id: int, item: Item) -> bool:
    """Does a category describe this item: one of its detector classes, or a same-look group mate of its class?"""
    if category_id in item.class_scores or category_id == item.category_id:
        return True
    group = tax.category(item.category_id).group
    return group in SAME_LOOK_GROUPS and tax.category(category_id).group == group


def category_conflict(tax: Taxonomy, *, category_id: int, source: str, confidence: float, items: Sequence[Item],
                      min_probability: float = MIN_MAIN_PROBABILITY) -> dict[str, Any] | None:
    """The conflict record when the seller's category disagrees with the photo's main item (items[0], most likely
    first), else None. No detected item, or a main item the photo is not sure about, is no evidence."""
    if not items:
        return None
    main = items[0]
    if main.probability < min_probability or agrees(tax, category_id, main):
        return None
    return {"seller": {"category": tax.category(category_id).key, "source": source,
                       "confidence": round(float(confidence), 4)},
            "photo": {"category": tax.category(main.category_id).key, "confidence": round(float(main.probability), 4),
                      "detector_score": round(float(main.score), 4)},
            "also_in_photo": any(agrees(tax, category_id, it) for it in items[1:])}
