"""Rebuild the sample catalogue shipped in this folder from ../shared/data (run once; the output is committed).

Only sources whose licence allows redistribution are used: the clothing dataset (CC0 1.0) and Myntra
catalogue items (MIT as listed on Kaggle). Colorful Fashion has no licence and is never copied.
Usage: python sample/build.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
PER_MYNTRA_TYPE = 3
PER_CLOTHING_LABEL = 8
# Clothing-dataset labels have no seller title; a plain title from the label stands in for one.
CLOTHING_TITLES = {"Blazer": "Blazer", "Body": "Bodysuit", "Dress": "Dress", "Hat": "Hat", "Hoodie": "Hoodie",
                   "Longsleeve": "Long sleeve T-shirt", "Outwear": "Outerwear jacket", "Pants": "Pants",
                   "Polo": "Polo T-shirt", "Shirt": "Shirt", "Shoes": "Shoes", "Shorts": "Shorts",
                   "Skirt": "Skirt", "T-Shirt": "T-shirt", "Top": "Top", "Undershirt": "Undershirt vest",
                   "Blouse": "Blouse"}


def _key(row: dict[str, str]) -> str:
    return hashlib.sha1(row["id"].encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data"))
    args = parser.parse_args()
    data = Path(args.data)
    rows = list(csv.DictReader(open(data / "manifest.csv", newline="", encoding="utf-8")))
    dropped = {k for k, v in json.loads((HERE.parent / "shared" / "taxonomy" / "source_labels.json").read_text())
               ["myntra_small"]["articleType"].items() if v is None}  # not fashion (e.g. water bottles)
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        if r["dataset"] in ("myntra_small", "clothing_dataset") and r["category"] not in dropped:
            groups[(r["dataset"], r["category"])].append(r)
    chosen = []
    for (dataset, _), items in sorted(groups.items()):
        items.sort(key=_key)
        chosen += items[: PER_MYNTRA_TYPE if dataset == "myntra_small" else PER_CLOTHING_LABEL]
    out_dir = HERE / "images"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    with open(HERE / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["external_id", "image", "title", "description", "source", "licence"])
        for r in chosen:
            name = f"{r['id']}.jpg"
            shutil.copyfile(data / r["file"], out_dir / name)  # bytes as staged: no re-encoding
            if r["dataset"] == "myntra_small":
                title, licence = r["title"], "MIT (Kaggle listing; Myntra catalogue photo)"
            else:
                title = ("Kids " if r["kids"] == "True" else "") + CLOTHING_TITLES[r["category"]]
                licence = "CC0 1.0"
            w.writerow([r["id"], f"images/{name}", title, "", f"{r['source_repo']}@{r['source_commit'][:10]}",
                        licence])
    total = sum(p.stat().st_size for p in out_dir.iterdir())
    print(f"{len(chosen)} images, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
