"""Taxonomy and source-label mapping: sizes, stable unique ids and keys, applies_to, token vocabulary, and that
every source label present in the shared data either maps onto the taxonomy or is explicitly dropped."""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from shared.config import load_settings
from shared.taxonomy import (BOS, EOS, N_SPECIAL, PAD, SOURCE_LABELS_FILE, TAXONOMY_FILE, load_source_labels,
                             load_taxonomy)
from shared.taxonomy.labels import load_labeled

TAX = load_taxonomy()
RAW = json.loads(TAXONOMY_FILE.read_text(encoding="utf-8"))
MAPS = load_source_labels()
DATA = Path(load_settings().data_dir)
needs_data = pytest.mark.skipif(not (DATA / "manifest.csv").exists(), reason=f"no shared data at {DATA}")

# Ids are stored in the DB and in checkpoints: these must never move (append-only taxonomy).
PINNED_CATEGORY_IDS = {"tshirt": 0, "shirt": 1, "top": 2, "jacket": 4, "jeans": 6, "trousers": 7, "dress": 10,
                       "innerwear": 11, "footwear": 12, "bag": 13, "eyewear": 16, "accessory": 18}
PINNED_ATTRIBUTE_IDS = {"gender.men": 0, "colour.black": 5, "pattern.striped": 25, "neckline.polo": 42,
                        "age.kids": 120}


def _manifest() -> list[dict[str, str]]:
    with open(DATA / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_sizes_match_the_paper() -> None:
    assert len(TAX.categories) >= 19
    assert len(TAX.attributes) >= 90
    assert set(RAW["great_categories"]) == {"top", "bottom", "others"}
    assert {c.group for c in TAX.categories} <= set(RAW["great_categories"])
    assert {c.group for c in TAX.categories} == {"top", "bottom", "others"}


def test_ids_are_dense_and_keys_unique() -> None:
    assert [c.id for c in TAX.categories] == list(range(len(TAX.categories)))
    assert [a.id for a in TAX.attributes] == list(range(len(TAX.attributes)))
    assert len({c.key for c in TAX.categories}) == len(TAX.categories)
    assert len({a.key for a in TAX.attributes}) == len(TAX.attributes)
    for c in TAX.categories:
        assert re.fullmatch(r"[a-z_]+", c.key), c.key
        assert TAX.category(c.key) is c and TAX.category(c.id) is c
    for a in TAX.attributes:
        group, _, value = a.key.partition(".")
        assert group == a.group and value, a.key
        assert a.group in TAX.attribute_groups
        assert a.synonyms, f"{a.key} has no synonyms: it could never be read from a title"
        assert TAX.attribute(a.key) is a and TAX.attribute(a.id) is a


def test_ids_are_stable() -> None:
    for key, cid in PINNED_CATEGORY_IDS.items():
        assert TAX.category(key).id == cid
    for key, aid in PINNED_ATTRIBUTE_IDS.items():
        assert TAX.attribute(key).id == aid


def test_applies_to_names_real_categories_without_duplicates() -> None:
    keys = {c["key"] for c in RAW["categories"]}
    for a in RAW["attributes"]:
        assert a["applies_to"], f"{a['key']} applies to nothing"
        unknown = set(a["applies_to"]) - keys
        assert not unknown, f"{a['key']} applies_to unknown categories {unknown}"
        assert len(a["applies_to"]) == len(set(a["applies_to"])), f"{a['key']} lists a category twice"
    # Every category can carry at least one attribute besides gender / colour.
    for c in TAX.categories:
        groups = {a.group for a in TAX.attributes_for(c.id)}
        assert groups - {"gender", "colour"}, c.key


def test_unknown_lookups_raise() -> None:
    with pytest.raises(KeyError):
        TAX.category("spaceship")
    with pytest.raises(KeyError):
        TAX.category(len(TAX.categories))
    with pytest.raises(KeyError):
        TAX.attribute("colour.octarine")


def test_token_vocabulary_round_trips() -> None:
    assert (PAD, BOS, EOS) == (0, 1, 2) and N_SPECIAL == 3
    assert TAX.n_tokens == 3 + len(TAX.categories) + len(TAX.attributes)
    for c in TAX.categories:
        assert TAX.token_kind(TAX.category_token(c.id)) == ("category", c.id)
    for a in TAX.attributes:
        assert TAX.token_kind(TAX.attribute_token(a.id)) == ("attribute", a.id)
    assert TAX.token_kind(EOS) == ("special", EOS)


def test_sequence_is_canonical_and_filters_inapplicable() -> None:
    tshirt = TAX.category("tshirt").id
    polo, men, black, ring = (TAX.attribute(k).id for k in ("neckline.polo", "gender.men", "colour.black",
                                                             "jewellery_style.ring"))
    seq = TAX.sequence(tshirt, [polo, black, men, ring, men])
    assert seq[0] == BOS and seq[-1] == EOS and seq[1] == TAX.category_token(tshirt)
    # group order gender < colour < neckline; the ring does not apply to a t-shirt; duplicates collapse
    assert seq[2:-1] == [TAX.attribute_token(men), TAX.attribute_token(black), TAX.attribute_token(polo)]


def test_mapping_targets_exist() -> None:
    cat_keys = {c.key for c in TAX.categories}
    attr_keys = {a.key for a in TAX.attributes}
    m = MAPS["myntra_small"]
    assert MAPS["taxonomy_version"] == TAX.version
    for label, key in m["articleType"].items():
        assert key is None or key in cat_keys, (label, key)
        if key is None:
            assert label in m["dropped_articleTypes"], f"articleType {label!r} dropped without a reason"
    for col in ("gender", "baseColour", "season", "usage"):
        for value, key in m[col].items():
            assert key is None or (key in attr_keys and key.startswith(
                {"gender": "gender.", "baseColour": "colour.", "season": "season.", "usage": "usage."}[col])), key
            if key is None:
                assert value in m["dropped_values"][col], f"{col}={value!r} dropped without a reason"
    for label, key in MAPS["clothing_dataset"]["label"].items():
        assert key in cat_keys, (label, key)
    for keys in MAPS["clothing_dataset"]["label_attributes"].values():
        assert set(keys) <= attr_keys
    assert MAPS["clothing_dataset"]["kids_attribute"] in attr_keys
    for cls, key in MAPS["colorful_fashion"]["class"].items():
        assert key in cat_keys, (cls, key)


@needs_data
def test_every_source_label_in_the_data_maps_or_is_dropped() -> None:
    m = MAPS["myntra_small"]
    seen: Counter = Counter()
    for r in _manifest():
        ds = r["dataset"]
        if ds == "myntra_small":
            assert r["category"] in m["articleType"], f"articleType {r['category']!r} is not mapped"
            for col in ("gender", "baseColour", "season", "usage"):
                v = r[col] or ""
                assert v in m[col], f"Myntra {col}={v!r} (row {r['id']}) is neither mapped nor dropped"
        elif ds == "clothing_dataset":
            assert r["category"] in MAPS["clothing_dataset"]["label"], r["category"]
            assert r["kids"] in ("True", "False"), r["kids"]
        elif ds == "colorful_fashion":
            assert r["category"] in MAPS["colorful_fashion"]["class"], r["category"]
            for cls in filter(None, r["box_classes"].split(";")):
                assert cls in MAPS["colorful_fashion"]["class"], cls
        else:
            pytest.fail(f"unknown dataset {ds!r}")
        seen[ds] += 1
    assert set(seen) == {"myntra_small", "clothing_dataset", "colorful_fashion"}
    with open(DATA / "boxes.csv", newline="", encoding="utf-8") as fh:
        classes = {b["class"] for b in csv.DictReader(fh)}
    assert classes and classes <= set(MAPS["colorful_fashion"]["class"])


@needs_data
def test_every_category_has_training_images() -> None:
    counts = Counter(it.category_id for it in load_labeled(DATA, splits=("train",)))
    missing = [c.key for c in TAX.categories if counts[c.id] == 0]
    assert not missing, f"categories without training images: {missing}"


def test_source_labels_file_is_the_loaded_one() -> None:
    assert json.loads(SOURCE_LABELS_FILE.read_text(encoding="utf-8")) == MAPS


def test_data_report_flags_unknown_labels_and_empty_categories(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from training import data_report

    cols = ["id", "dataset", "file", "category", "split", "title", "gender", "baseColour", "season", "usage",
            "kids", "width", "height"]
    rows = [
        dict(id="myntra_1", dataset="myntra_small", file="a.jpg", category="Tshirts", split="train",
             title="Red Rose Women Navy Blue T-shirt", gender="Women", baseColour="Navy Blue", season="Summer",
             usage="NA", kids="", width="60", height="80"),
        dict(id="myntra_2", dataset="myntra_small", file="b.jpg", category="Hoverboards", split="train", title="x",
             gender="Men", baseColour="Black", season="", usage="Casual", kids="", width="60", height="80"),
    ]
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    rep = data_report.build_report(tmp_path)
    assert rep["unmapped_source_labels"] == {"myntra_small.articleType": {"Hoverboards": 1}}
    assert "jeans" in rep["categories_without_training_images"]
    assert rep["categories"]["tshirt"]["by_split"]["train"] == 1
    assert {"column": "usage", "value": "NA", "count": 1,
            "reason": MAPS["myntra_small"]["dropped_values"]["usage"]["NA"]} in rep["dropped"]["attribute_values"]
    brand = {(r["attribute"], r["brand"]) for r in rep["dropped"]["brand_words"]["top"]}
    assert ("colour.red", "Red Rose") in brand
    freq = {r["attribute"]: r["train"] for r in rep["attribute_frequencies"]}
    assert freq["colour.navy"] == 1 and freq["colour.blue"] == 0 and freq["colour.red"] == 0
    assert data_report.main(["--data", str(tmp_path), "--json"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and json.loads(out)["n_rows"] == 2


@needs_data
def test_data_report_on_the_shared_data_is_clean() -> None:
    from training import data_report

    rep = data_report.build_report(DATA)
    assert rep["categories_without_training_images"] == []
    assert rep["unmapped_source_labels"] == {} and rep["label_errors"] == {}
    assert rep["n_categories"] >= 19 and rep["n_attributes"] >= 90


def test_every_colour_has_a_family_and_families_group_shades() -> None:
    colours = [a for a in RAW["attributes"] if a["group"] == "colour"]
    fams = {a["key"]: a.get("family") for a in colours}
    assert all(isinstance(f, str) and f for f in fams.values()), fams
    # every family is named after one of its own members, and only colours carry a family
    assert {f"colour.{f}" for f in fams.values()} <= set(fams)
    assert not [a["key"] for a in RAW["attributes"] if a["group"] != "colour" and "family" in a]
    assert fams["colour.navy"] == "blue" and fams["colour.off_white"] == "white"
    assert 8 <= len(set(fams.values())) < len(fams)
