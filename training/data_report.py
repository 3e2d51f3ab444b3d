"""`lookalike data report`: how well a data folder covers the taxonomy, and which labels were dropped and why.

Sections: images per category (per dataset and split), attributes per image (mean / median / distribution),
attribute frequencies, attributes with no training signal, categories without training images (must be none:
the command exits 1 if any), source labels that are dropped (by the mapping, or because an attribute does not
apply to the image's category) and source labels that the mapping does not know (must be none: exit 1).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from shared.config import load_settings
from shared.taxonomy import Taxonomy, load_source_labels, load_taxonomy
from shared.taxonomy.labels import LabeledImage, attributes_from_text, label_row, load_boxes, strip_brand_prefix
from training.provenance import data_dir_label

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MYNTRA_COLUMNS = ("gender", "baseColour", "season", "usage")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lookalike data report", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    return p.parse_args(argv)


def _read_rows(data_dir: Path) -> list[dict[str, str]]:
    with open(data_dir / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _unmapped(rows: list[dict[str, str]], data_dir: Path, maps: dict) -> dict[str, dict[str, int]]:
    """Source values the mapping does not name at all (neither mapped nor explicitly dropped)."""
    out: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        ds = r["dataset"]
        if ds == "myntra_small":
            m = maps["myntra_small"]
            if r["category"] not in m["articleType"]:
                out["myntra_small.articleType"][r["category"]] += 1
            for col in MYNTRA_COLUMNS:
                if (r.get(col) or "") not in m[col]:
                    out[f"myntra_small.{col}"][r.get(col) or ""] += 1
        elif ds == "clothing_dataset":
            if r["category"] not in maps["clothing_dataset"]["label"]:
                out["clothing_dataset.label"][r["category"]] += 1
        elif ds == "colorful_fashion":
            if r["category"] not in maps["colorful_fashion"]["class"]:
                out["colorful_fashion.class"][r["category"]] += 1
        else:
            out["dataset"][ds] += 1
    path = data_dir / "boxes.csv"
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            for b in csv.DictReader(fh):
                if b["class"] not in maps["colorful_fashion"]["class"]:
                    out["colorful_fashion.box_class"][b["class"]] += 1
    return {k: dict(v) for k, v in out.items()}


def _dropped(rows: list[dict[str, str]], items: dict[str, LabeledImage], maps: dict, tax: Taxonomy) -> dict:
    """Labels present in the sources that do not reach the training targets, with the reason."""
    images: Counter = Counter()
    values: Counter = Counter()
    not_applicable: Counter = Counter()
    brand: Counter = Counter()
    m = maps.get("myntra_small", {})
    reasons = dict(m.get("dropped_articleTypes", {}))
    value_reasons = m.get("dropped_values", {})
    for r in rows:
        it = items.get(r["id"])
        if it is None:
            continue
        if it.category_id is None:
            images[(r["dataset"], r["category"])] += 1
            continue
        if r["dataset"] == "myntra_small":
            for col in MYNTRA_COLUMNS:
                v = r.get(col) or ""
                if v in m[col] and m[col][v] is None:
                    values[(col, v)] += 1
            # Everything the title and the columns name, before the brand and applies_to filters.
            title = it.title
            stripped = strip_brand_prefix(title, m.get("title_brand_prefixes", ()))
            from_columns = {tax.attribute(m[col][r.get(col) or ""]).id for col in MYNTRA_COLUMNS
                            if m[col].get(r.get(col) or "") is not None}
            kept = set(attributes_from_text(stripped, None, tax)) | from_columns
            for a in set(attributes_from_text(title, None, tax)) - kept:
                brand[(tax.attributes[a].key, title[: len(title) - len(stripped)].strip())] += 1
            for a in kept - set(it.attribute_ids):
                not_applicable[(tax.attributes[a].key, tax.categories[it.category_id].key)] += 1
        elif r["dataset"] == "clothing_dataset":
            cm = maps["clothing_dataset"]
            raw = {tax.attribute(k).id for k in cm["label_attributes"].get(r["category"], [])}
            for a in raw - set(it.attribute_ids):
                not_applicable[(tax.attributes[a].key, tax.categories[it.category_id].key)] += 1
    return {
        "images": [{"dataset": d, "label": lab, "count": c, "reason": reasons.get(lab, "mapped to null")}
                   for (d, lab), c in sorted(images.items())],
        "attribute_values": [{"column": col, "value": v, "count": c,
                              "reason": value_reasons.get(col, {}).get(v, "mapped to null")}
                             for (col, v), c in sorted(values.items())],
        "brand_words": {
            "total": int(sum(brand.values())),
            "reason": "the word is part of a brand name at the start of the title (title_brand_prefixes)",
            "top": [{"attribute": a, "brand": b, "count": n}
                    for (a, b), n in sorted(brand.items(), key=lambda kv: (-kv[1], kv[0]))[:20]],
        },
        "not_applicable_to_category": {
            "total": int(sum(not_applicable.values())),
            "reason": "attribute named by the title/columns does not apply to the image's category (applies_to)",
            "top": [{"attribute": a, "category": c, "count": n}
                    for (a, c), n in sorted(not_applicable.items(), key=lambda kv: (-kv[1], kv[0]))[:20]],
        },
    }


def build_report(data_dir: Path) -> dict:
    """The whole report as one JSON-able dict."""
    tax = load_taxonomy()
    maps = load_source_labels()
    rows = _read_rows(data_dir)
    unmapped = _unmapped(rows, data_dir, maps)
    boxes = load_boxes(data_dir, tax) if not unmapped.get("colorful_fashion.box_class") else {}
    items: dict[str, LabeledImage] = {}
    label_errors: Counter = Counter()
    for r in rows:
        try:
            items[r["id"]] = label_row(r, data_dir, boxes.get(r["id"], ()), tax)
        except (KeyError, ValueError) as exc:  # an unmapped label: reported below, the row is skipped
            label_errors[f"{r['dataset']}: {exc}"] += 1
    labelled = [it for it in items.values() if it.category_id is not None]
    datasets = sorted({it.dataset for it in items.values()})

    per_cat: dict[str, dict] = {}
    for c in tax.categories:
        entry: dict = {"group": c.group, "total": 0, "by_split": {s: 0 for s in SPLITS}, "by_dataset": {}}
        per_cat[c.key] = entry
    for it in labelled:
        e = per_cat[tax.categories[it.category_id].key]
        e["total"] += 1
        e["by_split"][it.split] = e["by_split"].get(it.split, 0) + 1
        d = e["by_dataset"].setdefault(it.dataset, {s: 0 for s in SPLITS})
        d[it.split] = d.get(it.split, 0) + 1
    no_train = [k for k, v in per_cat.items() if v["by_split"].get("train", 0) == 0]

    n_attrs = np.array([len(it.attribute_ids) for it in labelled], dtype=np.int64)
    per_ds_attrs = {}
    for ds in datasets:
        a = np.array([len(it.attribute_ids) for it in labelled if it.dataset == ds], dtype=np.int64)
        per_ds_attrs[ds] = {"mean": float(a.mean()) if a.size else 0.0, "median": float(np.median(a)) if a.size else 0.0}
    freq_all: Counter = Counter()
    freq_train: Counter = Counter()
    for it in labelled:
        freq_all.update(it.attribute_ids)
        if it.split == "train":
            freq_train.update(it.attribute_ids)
    attr_freq = [{"attribute": a.key, "train": int(freq_train.get(a.id, 0)), "all": int(freq_all.get(a.id, 0))}
                 for a in tax.attributes]
    attr_freq.sort(key=lambda r: (-r["train"], r["attribute"]))
    zero_train = [a.key for a in tax.attributes if freq_train.get(a.id, 0) == 0]
    zero_all = [a.key for a in tax.attributes if freq_all.get(a.id, 0) == 0]

    n_boxes = sum(len(it.boxes) for it in items.values())
    box_cats = Counter(tax.categories[b.category_id].key for it in items.values() for b in it.boxes)
    multi = sum(1 for it in labelled if len({b.category_id for b in it.boxes}) >= 2)
    return {
        "data_dir": data_dir_label(data_dir),
        "taxonomy_version": tax.version,
        "n_categories": len(tax.categories),
        "n_attributes": len(tax.attributes),
        "n_rows": len(rows),
        "n_labelled": len(labelled),
        "images": {ds: {s: sum(1 for it in labelled if it.dataset == ds and it.split == s) for s in SPLITS}
                   for ds in datasets},
        "categories": per_cat,
        "categories_without_training_images": no_train,
        "attributes_per_image": {
            "mean": float(n_attrs.mean()) if n_attrs.size else 0.0,
            "median": float(np.median(n_attrs)) if n_attrs.size else 0.0,
            "distribution": {str(k): int(v) for k, v in sorted(Counter(n_attrs.tolist()).items())},
            "by_dataset": per_ds_attrs,
        },
        "attribute_frequencies": attr_freq,
        "attributes_without_training_images": zero_train,
        "attributes_without_any_images": zero_all,
        "boxes": {"n": n_boxes, "by_category": dict(sorted(box_cats.items())),
                  "images_with_boxes_of_2plus_categories": multi},
        "titles": {"n_with_title": sum(1 for it in labelled if it.title.strip()),
                   "n_without_title": sum(1 for it in labelled if not it.title.strip())},
        "dropped": _dropped(rows, items, maps, tax),
        "unmapped_source_labels": unmapped,
        "label_errors": dict(label_errors),
    }


def print_report(rep: dict) -> None:
    """Readable tables on stdout."""
    w = sys.stdout.write
    w(f"data report for {rep['data_dir']} (taxonomy {rep['taxonomy_version']}: {rep['n_categories']} categories, "
      f"{rep['n_attributes']} attributes)\n")
    w(f"{rep['n_rows']} rows, {rep['n_labelled']} labelled\n\n")
    w("images per dataset and split\n")
    for ds, s in rep["images"].items():
        w(f"  {ds:<18} " + "  ".join(f"{k} {v:>5}" for k, v in s.items()) + "\n")
    datasets = list(rep["images"])
    w("\nimages per category (train/val/test per dataset)\n")
    w(f"  {'category':<11} {'group':<7} {'total':>6}  " + "  ".join(f"{d[:14]:>16}" for d in datasets) + "\n")
    for key, e in rep["categories"].items():
        cells = []
        for d in datasets:
            s = e["by_dataset"].get(d)
            cells.append(f"{'/'.join(str(s[x]) for x in SPLITS) if s else '-':>16}")
        w(f"  {key:<11} {e['group']:<7} {e['total']:>6}  " + "  ".join(cells) + "\n")
    w(f"\ncategories without training images: {', '.join(rep['categories_without_training_images']) or 'none'}\n")
    ap = rep["attributes_per_image"]
    w(f"\nattributes per image: mean {ap['mean']:.2f}, median {ap['median']:.1f}; distribution "
      + ", ".join(f"{k}: {v}" for k, v in ap["distribution"].items()) + "\n")
    for ds, v in ap["by_dataset"].items():
        w(f"  {ds:<18} mean {v['mean']:.2f} median {v['median']:.1f}\n")
    w("\nattribute frequencies (train / all images)\n")
    for i in range(0, len(rep["attribute_frequencies"]), 3):
        w("  " + "   ".join(f"{r['attribute']:<28}{r['train']:>5}/{r['all']:<5}"
                            for r in rep["attribute_frequencies"][i:i + 3]) + "\n")
    w(f"\nattributes with no training images ({len(rep['attributes_without_training_images'])}): "
      f"{', '.join(rep['attributes_without_training_images']) or 'none'}\n")
    w(f"attributes with no image at all ({len(rep['attributes_without_any_images'])}): "
      f"{', '.join(rep['attributes_without_any_images']) or 'none'}\n")
    b = rep["boxes"]
    w(f"\nboxes: {b['n']} ({', '.join(f'{k} {v}' for k, v in b['by_category'].items())}); "
      f"{b['images_with_boxes_of_2plus_categories']} images have boxes of >= 2 categories\n")
    w(f"titles: {rep['titles']['n_with_title']} labelled images with a title, {rep['titles']['n_without_title']} without\n")
    d = rep["dropped"]
    w("\ndropped labels\n")
    for r in d["images"]:
        w(f"  image  {r['dataset']}/{r['label']}: {r['count']} ({r['reason']})\n")
    for r in d["attribute_values"]:
        w(f"  value  {r['column']}={r['value']!r}: {r['count']} ({r['reason']})\n")
    bw = d["brand_words"]
    w(f"  {bw['total']} attribute labels dropped because {bw['reason']}: "
      + ", ".join(f"{r['attribute']} ({r['brand']}) {r['count']}" for r in bw["top"][:8]) + "\n")
    na = d["not_applicable_to_category"]
    w(f"  {na['total']} attribute labels dropped because {na['reason']}; most frequent:\n")
    for r in na["top"][:10]:
        w(f"    {r['attribute']} on {r['category']}: {r['count']}\n")
    w(f"\nunmapped source labels: {json.dumps(rep['unmapped_source_labels']) if rep['unmapped_source_labels'] else 'none'}\n")
    if rep["label_errors"]:
        w(f"label errors: {json.dumps(rep['label_errors'])}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    data_dir = Path(args.data or load_settings().data_dir)
    if not (data_dir / "manifest.csv").exists():
        logger.error("%s has no manifest.csv", data_dir)
        return 2
    rep = build_report(data_dir)
    if args.json:
        sys.stdout.write(json.dumps(rep) + "\n")
    else:
        print_report(rep)
    bad = False
    if rep["categories_without_training_images"]:
        logger.error("categories without training images: %s", ", ".join(rep["categories_without_training_images"]))
        bad = True
    if rep["unmapped_source_labels"] or rep["label_errors"]:
        logger.error("source labels the mapping does not know: %s", rep["unmapped_source_labels"])
        bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
