"""Seller-intent conflicts: the seller's category against the photo's main item."""
from __future__ import annotations

from shared.conflicts import category_conflict
from shared.taxonomy import load_taxonomy
from shared.vision.items import Item

TAX = load_taxonomy()


def _item(key: str, probability: float, score: float = 0.9, also: tuple[str, ...] = (), side: float = 10) -> Item:
    cid = TAX.category(key).id
    return Item(xyxy=(0, 0, side, side), category_id=cid, score=score,
                class_scores={cid: score, **{TAX.category(k).id: 0.4 for k in also}}, probability=probability)


def _conflict(seller: str, items: list[Item]):
    return category_conflict(TAX, category_id=TAX.category(seller).id, source="text", confidence=0.97, items=items)


def test_bag_title_on_an_outfit_photo_is_flagged_with_both_sides() -> None:
    c = _conflict("bag", [_item("dress", 0.8), _item("bag", 0.2, side=3)])  # the bag is small
    assert c is not None
    assert c["seller"] == {"category": "bag", "source": "text", "confidence": 0.97}
    assert c["photo"]["category"] == "dress" and c["photo"]["confidence"] == 0.8
    assert c["also_in_photo"] is True


def test_agreement_is_not_flagged() -> None:
    assert _conflict("dress", [_item("dress", 0.9)]) is None
    assert _conflict("shirt", [_item("jacket", 0.9, also=("shirt",))]) is None  # a merged class of the item
    assert _conflict("tshirt", [_item("shirt", 0.9)]) is None  # same-look group: top subtypes
    assert _conflict("jeans", [_item("trousers", 0.9)]) is None  # bottom subtypes


def test_a_large_likely_second_item_may_carry_the_sellers_category() -> None:
    assert _conflict("dress", [_item("jacket", 0.6), _item("dress", 0.3, side=9)]) is None
    assert _conflict("dress", [_item("jacket", 0.6), _item("dress", 0.01, side=9)]) is not None  # not likely
    assert _conflict("dress", [_item("jacket", 0.6), _item("dress", 0.3, side=5)]) is not None  # a quarter the area


def test_no_evidence_is_not_flagged() -> None:
    assert _conflict("bag", []) is None
    assert _conflict("footwear", [_item("trousers", 0.9)]) is not None
