"""`lookalike evaluate conflicts`: precision / recall of the seller-intent conflict flag on constructed cases.

Protocol (the paper's Figure 1 case, built from ../shared/data):
- photos: the Colorful Fashion street photos of `--split` (default test); the main item is the class of the
  photo's largest box (the dataset's own `category`);
- positives: each photo titled with a held-out Myntra title (a product of the same split, never train) naming an
  item that is not the main one: a category of another look than the main item's (not the same category, and not a
  top/bottom subtype of the same group: those the flag deliberately treats as agreeing). The photo's other boxed
  items are preferred; else a seeded pick among bag, footwear, eyewear, headwear, watch, trousers, skirt;
- negatives: the same photo titled with a held-out Myntra title of the main item's own category;
- flag: exactly the ingest path — the text model reads the title, the detector + item ranker rank the photo's
  items (shared.pipeline.analyze does the same), shared.conflicts.category_conflict decides. A title the text model
  cannot categorise gets no flag (the category would then come from the photo).
`--sweep` also reports the flag over min_area_ratio (shared.conflicts.MIN_AREA_RATIO: how large another item must be,
relative to the largest, to carry the seller's category; 1.01: the main item only); choose on val, report test once.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger(__name__)

SEED = "conflicts-v1"
FALLBACK_KEYS = ("bag", "footwear", "eyewear", "headwear", "watch", "trousers", "skirt")
SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.01)


def _pick(seq: list, key: str):
    """A deterministic choice (sha1 of a key), so the cases never depend on run order."""
    return seq[int(hashlib.sha1(f"{SEED}:{key}".encode()).hexdigest()[:8], 16) % len(seq)]


def build_cases(data_dir: Path, split: str) -> list[dict]:
    """[{photo, id, main, title, title_category, positive}] for one split."""
    from shared.conflicts import SAME_LOOK_GROUPS
    from shared.taxonomy import load_taxonomy
    from shared.taxonomy.labels import load_labeled

    tax = load_taxonomy()
    rows = load_labeled(data_dir, splits=(split,))
    titles: dict[int, list[str]] = defaultdict(list)
    for r in rows:
        if r.dataset == "myntra_small" and r.title and r.category_id is not None:
            titles[r.category_id].append(r.title)

    def same_look(a: int, b: int) -> bool:
        ga, gb = tax.category(a).group, tax.category(b).group
        return a == b or (ga == gb and ga in SAME_LOOK_GROUPS)

    cases = []
    for r in rows:
        if r.dataset != "colorful_fashion" or r.category_id is None:
            continue
        main = r.category_id
        others = sorted({b.category_id for b in r.boxes if not same_look(b.category_id, main) and titles[b.category_id]})
        if not others:
            others = [tax.category(k).id for k in FALLBACK_KEYS
                      if not same_look(tax.category(k).id, main) and titles[tax.category(k).id]]
        if titles[main]:
            cases.append({"id": r.id, "photo": str(r.path), "main": main, "positive": False,
                          "title_category": main, "title": _pick(titles[main], f"neg:{r.id}")})
        if others:
            other = _pick(others, f"cat:{r.id}")
            cases.append({"id": r.id, "photo": str(r.path), "main": main, "positive": True,
                          "title_category": other, "title": _pick(titles[other], f"pos:{r.id}")})
    return cases


def run(cases: list[dict], *, thresholds: tuple[float, ...]) -> tuple[dict[float, dict], list[dict]]:
    """Counts per threshold, and per-case outputs at the shipped threshold."""
    import torch

    from shared.conflicts import MIN_AREA_RATIO, category_conflict
    from shared.config import load_settings
    from shared.imaging import decode_image
    from shared.taxonomy import load_taxonomy
    from shared.text.categorize import TextCategorizer
    from shared.vision.items import load_ranker
    from shared.vision.roi import detect_all, load_detector

    settings = load_settings()
    tax = load_taxonomy()
    root = Path(settings.models_dir)
    text = TextCategorizer.load(root / "text_category")
    detector = load_detector(root / "detector", device="cpu")
    ranker = load_ranker(root / "ranker" / "ranker.json")
    items_of: dict[str, list] = {}
    counts = {t: {"tp": 0, "fp": 0, "fn": 0, "tn": 0} for t in thresholds}
    shown = []
    with torch.inference_mode():
        for case in cases:
            if case["photo"] not in items_of:
                image = decode_image(Path(case["photo"]).read_bytes(), max_bytes=settings.max_image_bytes,
                                     max_pixels=settings.max_image_pixels, max_side=settings.decode_max_side,
                                     max_aspect=settings.max_image_aspect)
                items_of[case["photo"]] = ranker.rank(detect_all(detector, image), image.width, image.height)
            items = items_of[case["photo"]]
            guess = text.categorize(case["title"], "")
            for t in thresholds:
                flag = guess.category_id is not None and category_conflict(
                    tax, category_id=guess.category_id, source="text", confidence=float(guess.confidence),
                    items=items, min_area_ratio=t) is not None
                key = ("tp" if flag else "fn") if case["positive"] else ("fp" if flag else "tn")
                counts[t][key] += 1
                if t == MIN_AREA_RATIO:
                    shown.append({**case, "flag": flag, "text_category": None if guess.category_id is None
                                  else tax.category(guess.category_id).key,
                                  "photo_main": tax.category(items[0].category_id).key if items else None})
    return counts, shown


def figures(c: dict) -> dict:
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    return {**c, "precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


def main(argv: list[str] | None = None) -> int:
    from shared.conflicts import MIN_AREA_RATIO
    from shared.config import load_settings

    p = argparse.ArgumentParser(prog="lookalike evaluate conflicts", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--split", default="test", choices=("val", "test"))
    p.add_argument("--sweep", action="store_true", help="also report other main-item probability thresholds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    cases = build_cases(args.data or load_settings().data_dir, args.split)
    thresholds = tuple(sorted(set(SWEEP if args.sweep else ()) | {MIN_AREA_RATIO}))
    counts, shown = run(cases, thresholds=thresholds)
    out = {"split": args.split, "n_cases": len(cases), "n_positive": sum(c["positive"] for c in cases),
           "n_photos": len({c["id"] for c in cases}), "threshold": MIN_AREA_RATIO,
           "flag": figures(counts[MIN_AREA_RATIO]),
           "sweep": {str(t): figures(counts[t]) for t in thresholds} if args.sweep else None,
           "missed": [{k: c[k] for k in ("id", "title", "text_category", "photo_main")} for c in shown
                      if c["positive"] and not c["flag"]][:10],
           "false_flags": [{k: c[k] for k in ("id", "title", "text_category", "photo_main")} for c in shown
                           if not c["positive"] and c["flag"]][:10],
           "seconds": round(time.perf_counter() - t0, 1),
           "command": "lookalike evaluate conflicts " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.json:
        print(json.dumps(out))
        return 0
    f = out["flag"]
    print(f"conflict flag on {out['n_cases']} constructed cases ({out['n_positive']} positive) from "
          f"{out['n_photos']} Colorful Fashion {args.split} photos, other items count from area ratio {out['threshold']}")
    print(f"{'threshold':>9} {'precision':>9} {'recall':>7} {'f1':>6} {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>4}")
    for t, g in (out["sweep"] or {str(out["threshold"]): f}).items():
        print(f"{t:>9} {g['precision']:>9.3f} {g['recall']:>7.3f} {g['f1']:>6.3f} {g['tp']:>4} {g['fp']:>4} "
              f"{g['fn']:>4} {g['tn']:>4}")
    for name in ("missed", "false_flags"):
        for c in out[name][:5]:
            print(f"  {name}: {c['id']} title={c['title']!r} text={c['text_category']} photo={c['photo_main']}")
    print(f"({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
