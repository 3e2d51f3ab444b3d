"""Labels for a folder laid out like ../shared/data: every image's taxonomy category, attributes and boxes.

Sources (see ../shared/data/README.md): Myntra catalogue columns and titles, the clothing dataset's labels,
and Colorful Fashion boxes. `source_labels.json` holds the label maps; attributes are also read from titles
by synonym matching, restricted to the attributes that apply to the image's category.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from shared.taxonomy import Taxonomy, load_source_labels, load_taxonomy


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    category_id: int
    xyxy: tuple[float, float, float, float]  # pixels of the staged image, x right, y down
    source_class: str


@dataclass(frozen=True)
class LabeledImage:
    id: str
    dataset: str
    path: Path
    split: str
    category_id: int | None  # None: the source label is explicitly dropped
    attribute_ids: tuple[int, ...]
    title: str
    width: int
    height: int
    source_label: str
    boxes: tuple[Box, ...] = field(default=())
    base_colour: str = ""
    # Groups whose sources disagree (see LABEL_NOISE_RULE): training does not score the model on them.
    disputed_groups: tuple[str, ...] = ()


# Myntra's baseColour column and the seller's title disagree on ~2.9% of titled train products (2.3% across colour
# families, e.g. column Purple for "Quechua Red Sipper", Blue for "Reebok Track Pants Jet Black"). Neither source is
# reliably right, so both colours stay in the label (the set a product page would show), the image is marked
# colour-disputed, and training ignores the colour tokens of disputed images: the model is not pushed towards either.
LABEL_NOISE_RULE = ("colour disputed when the title names a colour and the baseColour column's colour is not among "
                    "them; label keeps both; training masks the colour targets of disputed images")


@lru_cache(maxsize=1)
def _colour_families() -> dict[str, str]:
    import json

    from shared.taxonomy import TAXONOMY_FILE

    with open(TAXONOMY_FILE, encoding="utf-8") as fh:
        raw = json.load(fh)
    return {a["key"]: a.get("family", a["key"].split(".", 1)[1]) for a in raw["attributes"] if a["group"] == "colour"}


def colour_family(key: str) -> str:
    """The taxonomy's colour family of a colour attribute key (colour.navy -> blue, colour.off_white -> white)."""
    return _colour_families()[key]


@lru_cache(maxsize=8)
def _synonym_patterns(version: str) -> list[tuple[int, re.Pattern[str]]]:
    tax = load_taxonomy()
    out = []
    for a in tax.attributes:
        words = sorted(a.synonyms, key=len, reverse=True)
        pat = r"(?<![a-z0-9])(?:" + "|".join(re.escape(w.lower()) for w in words) + r")(?![a-z0-9])"
        out.append((a.id, re.compile(pat)))
    return out


def attributes_from_text(text: str, category_id: int | None, tax: Taxonomy | None = None) -> set[int]:
    """Attribute ids whose synonyms occur in `text` and that apply to `category_id` (all, if None).

    Within one attribute group the longest match wins where matches overlap, so "navy blue" is colour.navy only
    (not also colour.blue) and "off white" is colour.off_white only (not also colour.white).
    """
    tax = tax or load_taxonomy()
    low = text.lower()
    spans: dict[str, list[tuple[int, int, int]]] = {}
    for attr_id, pat in _synonym_patterns(tax.version):
        if category_id is not None and not tax.applies(attr_id, category_id):
            continue
        group = tax.attributes[attr_id].group
        for m in pat.finditer(low):
            spans.setdefault(group, []).append((m.start(), m.end(), attr_id))
    found = set()
    for matches in spans.values():
        taken: list[tuple[int, int]] = []
        for start, end, attr_id in sorted(matches, key=lambda t: (t[0] - t[1], t[0], t[2])):
            if all(end <= s or start >= e for s, e in taken):
                taken.append((start, end))
                found.add(attr_id)
    return found


def strip_brand_prefix(title: str, prefixes: list[str] | tuple[str, ...]) -> str:
    """`title` without a leading brand name from `prefixes` (case-insensitive, whole words only)."""
    low = title.lower()
    for p in sorted(prefixes, key=len, reverse=True):
        n = len(p)
        if low.startswith(p.lower()) and (len(low) == n or not low[n].isalnum()):
            return title[n:].lstrip()
    return title


def _source_target(table: dict[str, str | None], label: str, what: str) -> str | None:
    """A source label's taxonomy key; a label missing from source_labels.json is dropped like a null one, with a
    warning once (a data folder newer than the map must not end in a KeyError)."""
    if label in table:
        return table[label]
    if (what, label) not in _WARNED:
        _WARNED.add((what, label))
        logger.warning("unknown %s %r: not in shared/taxonomy/source_labels.json; its images are dropped", what, label)
    return None


_WARNED: set[tuple[str, str]] = set()


def _attr_id(tax: Taxonomy, key: str | None) -> int | None:
    return None if key is None else tax.attribute(key).id


def label_row(row: dict[str, str], data_dir: Path, boxes: tuple[Box, ...] = (), tax: Taxonomy | None = None) -> LabeledImage:
    """Map one manifest row onto the taxonomy."""
    tax = tax or load_taxonomy()
    maps = load_source_labels()
    dataset = row["dataset"]
    attrs: set[int] = set()
    disputed: tuple[str, ...] = ()
    if dataset == "myntra_small":
        m = maps["myntra_small"]
        key = _source_target(m["articleType"], row["category"], "myntra_small articleType")
        cat = None if key is None else tax.category(key).id
        for col in ("gender", "baseColour", "season", "usage"):
            a = _attr_id(tax, m[col].get(row.get(col, "") or "", None))
            if a is not None:
                attrs.add(a)
        # Brand names such as "Red Rose" or "U.S. Polo Assn." are not attributes of the item.
        title = strip_brand_prefix(row.get("title", "") or "", m.get("title_brand_prefixes", ()))
        from_title = attributes_from_text(title, cat, tax)
        column = _attr_id(tax, m["baseColour"].get(row.get("baseColour", "") or "", None))
        title_colours = {a for a in from_title if tax.attributes[a].group == "colour"}
        if column is not None and title_colours and column not in title_colours:
            disputed = ("colour",)
        attrs |= from_title
    elif dataset == "clothing_dataset":
        m = maps["clothing_dataset"]
        key = _source_target(m["label"], row["category"], "clothing_dataset label")
        cat = None if key is None else tax.category(key).id
        attrs |= {tax.attribute(k).id for k in m["label_attributes"].get(row["category"], [])}
        if row.get("kids", "").strip().lower() == "true":
            attrs.add(tax.attribute(m["kids_attribute"]).id)
    elif dataset == "colorful_fashion":
        key = _source_target(maps["colorful_fashion"]["class"], row["category"], "colorful_fashion class")
        cat = None if key is None else tax.category(key).id
    else:
        raise ValueError(f"unknown dataset {dataset!r} in manifest row {row.get('id')}")
    if cat is not None:
        attrs = {a for a in attrs if tax.applies(a, cat)}
    # Colours named by the title are kept next to the column's one: the column holds a single colour, so a
    # "Black and Silver Bracelet" would otherwise lose its second colour.
    return LabeledImage(
        id=row["id"], dataset=dataset, path=data_dir / row["file"], split=row["split"], category_id=cat,
        attribute_ids=tuple(tax.canonical_order(attrs)), title=row.get("title", "") or "",
        width=int(row["width"]), height=int(row["height"]), source_label=row["category"], boxes=boxes,
        base_colour=row.get("baseColour", "") or "", disputed_groups=disputed,
    )


def load_boxes(data_dir: Path, tax: Taxonomy | None = None) -> dict[str, tuple[Box, ...]]:
    """boxes.csv grouped by image id, classes mapped to taxonomy categories."""
    tax = tax or load_taxonomy()
    cfd = load_source_labels()["colorful_fashion"]["class"]
    out: dict[str, list[Box]] = {}
    path = Path(data_dir) / "boxes.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            box = Box(tax.category(cfd[r["class"]]).id,
                      (float(r["xmin"]), float(r["ymin"]), float(r["xmax"]), float(r["ymax"])), r["class"])
            out.setdefault(r["id"], []).append(box)
    return {k: tuple(v) for k, v in out.items()}


def load_labeled(data_dir: str | Path, *, splits: tuple[str, ...] | None = None,
                 keep_dropped: bool = False) -> list[LabeledImage]:
    """Every labelled image of a data folder (optionally only some splits), in manifest order."""
    data_dir = Path(data_dir)
    tax = load_taxonomy()
    boxes = load_boxes(data_dir, tax)
    out = []
    with open(data_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if splits is not None and row["split"] not in splits:
                continue
            item = label_row(row, data_dir, boxes.get(row["id"], ()), tax)
            if item.category_id is None and not keep_dropped:
                continue
            out.append(item)
    return out
