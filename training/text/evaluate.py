"""`lookalike evaluate text`: accuracy, macro-F1, unknown rate and latency of the title -> category model.

Definitions:
- Every labelled row of the split with a non-empty title is one listing; its truth is the catalogue label mapped
  to the taxonomy. Rows without a title (in the shared data: Colorful Fashion, clothing dataset) are counted and
  reported, not scored.
- accuracy: "unknown" counts as wrong. coverage_accuracy: accuracy over the titles that got a category.
  raw_accuracy: argmax of the probabilities, thresholds ignored. macro_f1: mean F1 over the true categories.
- latency: wall time of `TextCategorizer.categorize(title)` per title, one thread, after a warm-up; cpu_ms_*: the
  same calls' thread CPU time (what the code costs when the shared box is not preempting it).
- title_names_other_item: Colorful Fashion photos of the split with boxes of >= 2 categories; per non-dominant
  category, a seller title of that category (a held-out Myntra title of the same split, picked by sha1). The
  right answer is the named category; the photo's dominant (largest-box) category is wrong by construction.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from shared.config import load_settings
from shared.taxonomy import Taxonomy, load_taxonomy
from shared.taxonomy.labels import LabeledImage, load_labeled
from shared.text.categorize import TextCategorizer
from training.text import engine
from training.provenance import data_dir_label

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lookalike evaluate text", description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test", help="train / val / test (default test)")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--checkpoint", type=Path, default=None, help="model folder (default models/text_category/)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    return p.parse_args(argv)


def evaluate_examples(cat: TextCategorizer, examples: Sequence[engine.TitledExample], tax: Taxonomy) -> dict:
    """Classification metrics, calibration and single-thread latency over titled examples."""
    with threadpool_limits(1):
        for ex in examples[:20]:  # warm-up (first calls pay for imports and page faults)
            cat.categorize(ex.title)
        preds, ms, cpu = engine.predict_ids(cat, [ex.title for ex in examples], cpu_times=True)
    y = [ex.category_id for ex in examples]
    res = engine.classification_metrics(y, preds, tax)
    res["errors"] = [{"id": ex.id, "title": ex.title, "true": tax.category(ex.category_id).key,
                      "predicted": None if p == engine.UNKNOWN else tax.category(p).key}
                     for ex, p in zip(examples, preds) if p != ex.category_id][:25]
    scored = engine.score_texts(cat, [ex.text for ex in examples])
    conf = np.array([s.confidence for s in scored])
    right = np.array([s.pred == t for s, t in zip(scored, y)])
    res["raw_accuracy"] = float(right.mean()) if right.size else None
    res["ece"] = engine.expected_calibration_error(conf, right) if right.size else None
    res["latency_ms_p50"] = float(np.percentile(ms, 50)) if ms else None
    res["latency_ms_p99"] = float(np.percentile(ms, 99)) if ms else None
    res["latency_ms_max"] = float(np.max(ms)) if ms else None
    # Wall time includes preemption by other processes on a shared box; thread CPU time does not.
    res["cpu_ms_p50"] = float(np.percentile(cpu, 50)) if cpu else None
    res["cpu_ms_p99"] = float(np.percentile(cpu, 99)) if cpu else None
    res["load_average_1m"] = round(os.getloadavg()[0], 2)
    return res


def mismatch_metrics(cat: TextCategorizer, items: Sequence[LabeledImage], title_pool: Sequence[engine.TitledExample],
                     tax: Taxonomy) -> dict:
    """The "title names a different item than the photo's dominant one" set, built and scored."""
    cases, info = engine.build_mismatch_set(items, title_pool)
    res = engine.evaluate_mismatch(cat, cases, tax)
    res.update(info)
    res["examples"] = [{"image_id": c.image_id, "dominant": tax.category(c.dominant_category_id).key,
                        "named": tax.category(c.named_category_id).key, "title": c.title} for c in cases[:5]]
    return res


def evaluate(cat: TextCategorizer, data_dir: Path, split: str, tax: Taxonomy) -> dict:
    """Everything `lookalike evaluate text` reports, as one JSON-able dict."""
    items = load_labeled(data_dir, splits=(split,))
    examples = engine.titled_examples(items)
    res: dict = {"split": split, "data_dir": data_dir_label(data_dir), "n_rows": len(items), "n_titled": len(examples),
                 "n_untitled": len(items) - len(examples)}
    if not examples:
        res["note"] = (f"no row of split {split!r} in {data_dir} has a title: text metrics need titles "
                       "(only rows with titles are scored)")
    elif res["n_untitled"]:
        res["note"] = f"{res['n_untitled']} labelled rows have no title and are not scored"
    m = evaluate_examples(cat, examples, tax)
    res.update({k: m[k] for k in ("accuracy", "macro_f1", "unknown_rate", "coverage_accuracy")})
    res.update({k: m.get(k) for k in ("latency_ms_p50", "latency_ms_p99", "latency_ms_max", "cpu_ms_p50", "cpu_ms_p99",
                                      "load_average_1m", "raw_accuracy", "ece")})
    res["per_category"] = m["per_category"]
    res["confused_pairs"] = m["confused_pairs"]
    res["errors"] = m["errors"]
    res["title_names_other_item"] = mismatch_metrics(cat, items, examples, tax)
    res["probes"] = engine.probe_unknowns(cat)
    return res


def _fmt(v: object) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def print_table(res: dict) -> None:
    """Readable report on stdout."""
    w = sys.stdout.write
    w(f"text category, split {res['split']} ({res['data_dir']}): {res['n_titled']} titled rows, "
      f"{res['n_untitled']} without a title\n")
    if res.get("note"):
        w(f"note: {res['note']}\n")
    for k in ("accuracy", "macro_f1", "unknown_rate", "coverage_accuracy", "raw_accuracy", "ece",
              "latency_ms_p50", "latency_ms_p99", "cpu_ms_p50", "cpu_ms_p99", "load_average_1m"):
        w(f"  {k:<20} {_fmt(res.get(k))}\n")
    if res["per_category"]:
        w("\n  category        support     F1\n")
        for k, v in res["per_category"].items():
            w(f"  {k:<14} {v['support']:>8} {v['f1']:>7.3f}\n")
    if res["confused_pairs"]:
        w("\n  most confused (true -> predicted)\n")
        for c in res["confused_pairs"]:
            w(f"  {c['true']:>12} -> {c['predicted']:<12} {c['count']}\n")
    if res.get("errors"):
        w("\n  wrong or unknown (up to 25)\n")
        for e in res["errors"]:
            w(f"  {e['true']:>12} -> {e['predicted'] or 'unknown':<12} {e['title']}\n")
    mm = res["title_names_other_item"]
    w(f"\n  title names another item than the photo's dominant one: {mm['n']} cases from {mm['n_images']} photos\n")
    for k in ("accuracy", "unknown_rate", "coverage_accuracy", "photo_dominant_accuracy", "predicted_dominant_rate"):
        w(f"    {k:<24} {_fmt(mm.get(k))}\n")
    pr = res["probes"]
    w(f"\n  garbage / non-Latin probes answered unknown: {pr['unknown_rate']:.2f} of {pr['n']}\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    data_dir = args.data or load_settings().data_dir
    try:
        cat = TextCategorizer.load(args.checkpoint)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        logger.error("%s", exc)
        return 2
    if not (Path(data_dir) / "manifest.csv").exists():
        logger.error("%s has no manifest.csv", data_dir)
        return 2
    res = evaluate(cat, Path(data_dir), args.split, load_taxonomy())
    if res.get("note"):
        logger.warning("%s", res["note"])
    if args.json:
        sys.stdout.write(json.dumps(res) + "\n")
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
