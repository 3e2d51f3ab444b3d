"""Labels: attributes read from real titles, the applies_to filter, overlapping colour names, brand prefixes,
and manifest rows of each dataset mapped onto the taxonomy."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from shared.config import load_settings
from shared.taxonomy import PAD, load_source_labels, load_taxonomy
from shared.taxonomy.labels import (attributes_from_text, colour_family, label_row, load_labeled,
                                    strip_brand_prefix)

TAX = load_taxonomy()
DATA = Path(load_settings().data_dir)
needs_data = pytest.mark.skipif(not (DATA / "manifest.csv").exists(), reason=f"no shared data at {DATA}")


def keys(ids: set[int] | tuple[int, ...]) -> set[str]:
    return {TAX.attributes[i].key for i in ids}


def cat(key: str) -> int:
    return TAX.category(key).id


def _rows(**match: str) -> list[dict[str, str]]:
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if all(r[k] == v for k, v in match.items())]


def test_polo_tshirt_title() -> None:
    got = keys(attributes_from_text("Nike Men Black Striped Polo T-shirt", cat("tshirt")))
    assert got == {"gender.men", "colour.black", "pattern.striped", "neckline.polo"}


def test_inapplicable_attributes_are_not_emitted() -> None:
    title = "Nike Men Black Striped Polo T-shirt"
    on_watch = keys(attributes_from_text(title, cat("watch")))
    assert "neckline.polo" not in on_watch and "pattern.striped" not in on_watch
    assert {"gender.men", "colour.black"} <= on_watch
    ring = "Lucera Women Silver Ring"
    assert keys(attributes_from_text(ring, cat("jewellery"))) == {"gender.women", "colour.silver",
                                                                   "jewellery_style.ring"}
    assert "jewellery_style.ring" not in keys(attributes_from_text(ring, cat("shirt")))
    # Without a category every matching attribute is returned.
    assert "neckline.polo" in keys(attributes_from_text(title, None))


def test_real_titles() -> None:
    assert keys(attributes_from_text("Puma Men Ferrari Black Fleece Jacket", cat("jacket"))) == {
        "gender.men", "colour.black", "material.wool"}
    assert keys(attributes_from_text("Tortoise Men Brown Leather Laptop Bag", cat("bag"))) == {
        "gender.men", "colour.brown", "material.leather", "bag_style.laptop"}
    assert keys(attributes_from_text("Gini and Jony Boys Printed Green T-shirt", cat("tshirt"))) == {
        "gender.boys", "colour.green", "pattern.printed"}
    # "women" must not also match "men"
    assert "gender.men" not in keys(attributes_from_text("Femella Women Peach Dress", cat("dress")))


def test_longest_colour_name_wins_within_its_group() -> None:
    assert keys(attributes_from_text("Domyos Navy Blue Bag", cat("bag"))) == {"colour.navy"}
    assert keys(attributes_from_text("Aurelia Women Off White Kurti", cat("kurta"))) == {
        "gender.women", "colour.off_white"}
    # Separate words of two colours are both kept.
    assert keys(attributes_from_text("Lucera Women Black and Silver Bracelet", cat("jewellery"))) == {
        "gender.women", "colour.black", "colour.silver", "jewellery_style.bangle"}
    # Overlap is resolved per group only: "sports shoes" is a sneaker AND sports usage.
    got = keys(attributes_from_text("ADIDAS Men Sports Shoes", cat("footwear")))
    assert {"footwear_style.sneaker", "usage.sports"} <= got
    # "faux leather" is synthetic, not leather
    assert keys(attributes_from_text("Faux Leather Bag", cat("bag"))) == {"material.synthetic"}


def test_brand_prefix_is_stripped() -> None:
    prefixes = load_source_labels()["myntra_small"]["title_brand_prefixes"]
    assert strip_brand_prefix("Red Rose Women White Nightdress", prefixes) == "Women White Nightdress"
    assert strip_brand_prefix("U.S. Polo Assn. Men Red Flip Flops", prefixes) == "Men Red Flip Flops"
    assert strip_brand_prefix("Redwood Men Shirt", ["Red"]) == "Redwood Men Shirt"  # whole words only
    assert strip_brand_prefix("Nike Men Red Shirt", prefixes) == "Nike Men Red Shirt"


@needs_data
def test_myntra_row() -> None:
    (row,) = _rows(id="myntra_1528")  # Puma Men Ferrari Black Fleece Jacket; Men, Black, Fall, Sports
    it = label_row(row, DATA)
    assert it.category_id == cat("jacket") and it.dataset == "myntra_small"
    assert keys(it.attribute_ids) == {"gender.men", "colour.black", "season.fall", "usage.sports", "material.wool"}
    assert list(it.attribute_ids) == TAX.canonical_order(it.attribute_ids)
    assert it.title == "Puma Men Ferrari Black Fleece Jacket" and it.base_colour == "Black"
    assert it.path == DATA / "images/myntra/1528.jpg" and (it.width, it.height) == (60, 80)


@needs_data
def test_brand_words_are_not_attributes_on_real_rows() -> None:
    rows = [r for r in _rows(dataset="myntra_small") if r["title"].startswith("Red Rose")]
    assert rows
    for r in rows:
        it = label_row(r, DATA)
        got = keys(it.attribute_ids)
        if r["baseColour"] not in ("Red", "Pink", "Rust", "Magenta", "Rose") and "red" not in r["title"][8:].lower():
            assert "colour.red" not in got, r["title"]


@needs_data
def test_clothing_and_colorful_fashion_rows() -> None:
    polo = _rows(dataset="clothing_dataset", category="Polo")[0]
    it = label_row(polo, DATA)
    assert it.category_id == cat("tshirt") and "neckline.polo" in keys(it.attribute_ids)
    kid = next(r for r in _rows(dataset="clothing_dataset") if r["kids"] == "True")
    assert "age.kids" in keys(label_row(kid, DATA).attribute_ids)
    items = {i.id: i for i in load_labeled(DATA, splits=("test",)) if i.dataset == "colorful_fashion"}
    assert items
    for it in items.values():
        assert it.boxes and it.attribute_ids == () and it.title == ""
        largest = max(it.boxes, key=lambda b: (b.xyxy[2] - b.xyxy[0]) * (b.xyxy[3] - b.xyxy[1]))
        assert it.category_id == largest.category_id, it.id
        for b in it.boxes:
            x0, y0, x1, y1 = b.xyxy
            assert 0 <= x0 < x1 <= it.width + 0.5 and 0 <= y0 < y1 <= it.height + 0.5


@needs_data
def test_splits_filter_and_dropped_rows() -> None:
    val = load_labeled(DATA, splits=("val",))
    assert val and all(i.split == "val" for i in val)
    assert all(i.category_id is not None for i in val)
    everything = load_labeled(DATA, keep_dropped=True)
    dropped = [i for i in everything if i.category_id is None]
    assert dropped and {i.source_label for i in dropped} == {"Water Bottle"}


def test_unknown_dataset_is_rejected() -> None:
    row = {"id": "x_1", "dataset": "mystery", "file": "a.jpg", "split": "train", "category": "Tshirts",
           "width": "1", "height": "1"}
    with pytest.raises(ValueError, match="unknown dataset"):
        label_row(row, DATA)


def _myntra(title: str, colour: str, category: str = "Tshirts") -> dict[str, str]:
    return {"id": "myntra_0", "dataset": "myntra_small", "file": "images/myntra/0.jpg", "category": category,
            "split": "train", "title": title, "gender": "Men", "baseColour": colour, "season": "Summer",
            "usage": "Casual", "width": "60", "height": "80"}


def test_colour_disputed_when_title_and_column_disagree() -> None:
    # The README's own example: column Blue, title "Jet Black"; both colours stay, the image is marked disputed.
    it = label_row(_myntra("Reebok Track Pants Jet Black", "Blue", "Track Pants"), DATA)
    assert {"colour.blue", "colour.black"} <= keys(it.attribute_ids) and it.disputed_groups == ("colour",)
    agree = label_row(_myntra("Nike Men Black and Silver T-shirt", "Black"), DATA)
    assert {"colour.black", "colour.silver"} <= keys(agree.attribute_ids) and agree.disputed_groups == ()
    silent = label_row(_myntra("Nike Men T-shirt", "Navy Blue"), DATA)
    assert "colour.navy" in keys(silent.attribute_ids) and silent.disputed_groups == ()


def test_disputed_colour_targets_are_not_scored() -> None:
    from training.attributes.data import Sample

    it = label_row(_myntra("Reebok Men Jet Black T-shirt", "Blue"), DATA)
    seq = tuple(TAX.sequence(it.category_id, it.attribute_ids))
    s = Sample(it.id, it.dataset, it.split, it.path, None, it.category_id, it.attribute_ids, seq, it.disputed_groups)
    colour_toks = {TAX.attribute_token(TAX.attribute(k).id) for k in ("colour.blue", "colour.black")}
    assert colour_toks <= set(seq)
    tg = s.targets(TAX)
    assert len(tg) == len(seq) and tg[:2] == seq[:2] and tg[-1] == seq[-1]
    # only the disputed colours become PAD (ignored by the loss); category, gender, season, usage, EOS are scored
    assert [(t, q) for t, q in zip(tg, seq) if t != q] == [(PAD, q) for q in seq if q in colour_toks]


def test_colour_families_merge_shades() -> None:
    assert colour_family("colour.navy") == colour_family("colour.blue") == "blue"
    assert colour_family("colour.off_white") == colour_family("colour.white") == "white"
    assert colour_family("colour.maroon") == "red" and colour_family("colour.black") == "black"
    assert colour_family("colour.black") != colour_family("colour.grey")
