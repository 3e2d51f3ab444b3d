"""The fashion taxonomy: categories, attributes, which attributes apply where, and the token vocabulary.

The data lives in `taxonomy.json` (versioned); `source_labels.json` maps every label of the datasets in
../shared/data onto it. Nothing else in the code base hard-codes a category or attribute name or id.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

TAXONOMY_FILE = Path(__file__).with_name("taxonomy.json")
SOURCE_LABELS_FILE = Path(__file__).with_name("source_labels.json")

# Special tokens of the attribute-sequence vocabulary (fixed ids 0..2).
PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3


@dataclass(frozen=True)
class Category:
    id: int
    key: str
    name: str
    group: str  # great-category: top / bottom / others
    synonyms: tuple[str, ...]


@dataclass(frozen=True)
class Attribute:
    id: int
    key: str  # "<group>.<value>", e.g. "sleeve.long"
    group: str
    name: str
    synonyms: tuple[str, ...]
    applies_to: frozenset[int]  # category ids


@dataclass(frozen=True)
class Taxonomy:
    """Loaded taxonomy plus the token vocabulary used by the attribute generator.

    Tokens: 0 PAD, 1 BOS, 2 EOS, then one token per category (3 .. 3+C-1), then one per attribute.
    """

    version: str
    categories: tuple[Category, ...]
    attributes: tuple[Attribute, ...]
    attribute_groups: tuple[str, ...]
    _cat_by_key: dict[str, Category] = field(repr=False, compare=False, default_factory=dict)
    _attr_by_key: dict[str, Attribute] = field(repr=False, compare=False, default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return N_SPECIAL + len(self.categories) + len(self.attributes)

    def category_token(self, category_id: int) -> int:
        return N_SPECIAL + category_id

    def attribute_token(self, attribute_id: int) -> int:
        return N_SPECIAL + len(self.categories) + attribute_id

    def token_kind(self, token: int) -> tuple[str, int]:
        """('special'|'category'|'attribute', id within its kind)."""
        if token < N_SPECIAL:
            return "special", token
        if token < N_SPECIAL + len(self.categories):
            return "category", token - N_SPECIAL
        return "attribute", token - N_SPECIAL - len(self.categories)

    def category(self, key_or_id: str | int) -> Category:
        """Look a category up by key or id; KeyError names what is known."""
        if isinstance(key_or_id, int):
            if 0 <= key_or_id < len(self.categories):
                return self.categories[key_or_id]
        elif key_or_id in self._cat_by_key:
            return self._cat_by_key[key_or_id]
        raise KeyError(f"unknown category {key_or_id!r}; known: {', '.join(c.key for c in self.categories)}")

    def attribute(self, key_or_id: str | int) -> Attribute:
        if isinstance(key_or_id, int):
            if 0 <= key_or_id < len(self.attributes):
                return self.attributes[key_or_id]
        elif key_or_id in self._attr_by_key:
            return self._attr_by_key[key_or_id]
        raise KeyError(f"unknown attribute {key_or_id!r}")

    def applies(self, attribute_id: int, category_id: int) -> bool:
        return category_id in self.attributes[attribute_id].applies_to

    def attributes_for(self, category_id: int) -> list[Attribute]:
        return [a for a in self.attributes if category_id in a.applies_to]

    def canonical_order(self, attribute_ids: list[int] | set[int]) -> list[int]:
        """Attributes in the order the generator emits them: by group order, then id."""
        group_rank = {g: i for i, g in enumerate(self.attribute_groups)}
        return sorted(set(attribute_ids), key=lambda a: (group_rank[self.attributes[a].group], a))

    def sequence(self, category_id: int, attribute_ids: list[int] | set[int]) -> list[int]:
        """Token sequence BOS, category, attributes (canonical order, applicable only), EOS."""
        attrs = [a for a in self.canonical_order(attribute_ids) if self.applies(a, category_id)]
        return [BOS, self.category_token(category_id)] + [self.attribute_token(a) for a in attrs] + [EOS]


def _parse(raw: dict) -> Taxonomy:
    cats = tuple(
        Category(id=c["id"], key=c["key"], name=c["name"]["en"], group=c["group"], synonyms=tuple(c["synonyms"]["en"]))
        for c in raw["categories"]
    )
    by_key = {c.key: c for c in cats}
    assert [c.id for c in cats] == list(range(len(cats))), "category ids must be 0..C-1 in order"
    attrs = []
    for a in raw["attributes"]:
        applies = frozenset(by_key[k].id for k in a["applies_to"])
        attrs.append(Attribute(id=a["id"], key=a["key"], group=a["group"], name=a["name"]["en"],
                               synonyms=tuple(a["synonyms"]["en"]), applies_to=applies))
    assert [a.id for a in attrs] == list(range(len(attrs))), "attribute ids must be 0..A-1 in order"
    return Taxonomy(version=raw["version"], categories=cats, attributes=tuple(attrs),
                    attribute_groups=tuple(raw["attribute_groups"]), _cat_by_key=by_key,
                    _attr_by_key={a.key: a for a in attrs})


@lru_cache(maxsize=4)
def load_taxonomy(path: str | None = None) -> Taxonomy:
    """Load the taxonomy (default: the shipped taxonomy.json). Cached: it is immutable."""
    with open(path or TAXONOMY_FILE, encoding="utf-8") as fh:
        return _parse(json.load(fh))


@lru_cache(maxsize=1)
def load_source_labels() -> dict:
    """The mapping from every source label in ../shared/data to taxonomy keys (see source_labels.json)."""
    with open(SOURCE_LABELS_FILE, encoding="utf-8") as fh:
        return json.load(fh)
