"""Choose an attribute checkpoint's decoding options on val (never on test): per-group limits, a required colour, and
a minimum step probability below which a generated attribute is not reported.

The encoder runs once per image; each option set only re-decodes (probability thresholds only re-filter). The option
set with the highest min(precision on verifiable tokens, recall) wins (the targets ask for both; attributes generated
for images whose label names none, e.g. street crops, can be neither confirmed nor refuted, so they do not steer the
choice); ties go to colour exact accuracy.
`--write` stores the winner in the checkpoint's manifest (architecture.max_per_group / require_groups /
min_attribute_prob), which serving and `lookalike evaluate attributes` read.

    python -m training.attributes.tune --checkpoint CK --split val --threads 1 [--write] [--json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from shared.config import load_settings
from shared.taxonomy import load_taxonomy
from shared.vision.attributes import MAX_PER_GROUP, decode, decode_rules, load_attribute_network, prepare_batch
from training.attributes import data as D
from training.attributes.engine import SetMetrics

logger = logging.getLogger(__name__)
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


@torch.inference_mode()
def contexts(loaded, samples: list[D.Sample], batch_size: int = 64) -> torch.Tensor:
    """The LSTM conditioning vector of every sample (one encoder pass each)."""
    net = loaded.net
    out = []
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo: lo + batch_size]
        x, colour = prepare_batch([D.load_image(s) for s in chunk], loaded.input_size,
                                  channels_last=getattr(net, "channels_last", False),
                                  colour=bool(getattr(net, "colour_bins", 0)))
        emb, maps = net.encode(x)
        out.append(net.context(emb, colour, maps.get(32)))
    return torch.cat(out)


def score(samples: list[D.Sample], decoded: list, tax, min_prob: float) -> dict[str, Any]:
    m, ver = SetMetrics(tax), SetMetrics(tax)
    unl, unl_attr = 0, 0
    for s, (c, _, pa) in zip(samples, decoded):
        attrs = [a for a, p in pa if p >= min_prob]
        m.add(c, attrs, s.category_id, s.attribute_ids, s.disputed_groups)
        ver.add(c, attrs if s.attribute_ids else [], s.category_id, s.attribute_ids, s.disputed_groups)
        if not s.attribute_ids:
            unl += 1
            unl_attr += int(bool(attrs))
    r = m.summary()
    ga = r["group_accuracy"]
    return {"precision": r["precision"], "recall": r["recall"], "precision_verifiable": ver.summary()["precision"],
            "colour": ga.get("colour", {}).get("accuracy"), "colour_family": ga.get("colour", {}).get("family_accuracy"),
            "pattern": ga.get("pattern", {}).get("accuracy"),
            "unlabelled_with_attributes": unl_attr / max(unl, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.attributes.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--split", default="val", choices=("train", "val"), help="never test")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--write", action="store_true", help="store the winning options in the checkpoint's manifest")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    tax = load_taxonomy()
    loaded = load_attribute_network(args.checkpoint)
    samples = D.load_samples(args.data or load_settings().data_dir, [args.split])
    if args.limit:
        samples = samples[: args.limit]
    ctx = contexts(loaded, samples)
    rows = []
    for colour_max, other_max, require in itertools.product((1, 2), (1, 2), ((), ("colour",))):
        limits = dict(MAX_PER_GROUP, colour=colour_max, pattern=other_max, material=other_max)
        rules = decode_rules(tax, limits, require)
        decoded = []
        for lo in range(0, len(samples), 256):
            decoded += decode(loaded.net, ctx[lo: lo + 256], rules)
        for t in THRESHOLDS:
            rows.append({"max_per_group": limits, "require_groups": list(require), "min_attribute_prob": t,
                         **score(samples, decoded, tax, t)})
    best = max(rows, key=lambda r: (round(min(r["precision_verifiable"], r["recall"]), 4), r["colour"] or 0.0))
    for r in rows:
        lim = r["max_per_group"]
        print(f"colour<={lim['colour']} pattern/material<={lim['pattern']} require={','.join(r['require_groups']) or '-':6s}"
              f" min_p={r['min_attribute_prob']:.1f}: P {r['precision']:.3f} (verifiable {r['precision_verifiable']:.3f}) "
              f"R {r['recall']:.3f} colour "
              f"{r['colour'] or 0:.3f}/{r['colour_family'] or 0:.3f} pattern {r['pattern'] or 0:.3f} street crops with "
              f"attributes {r['unlabelled_with_attributes']:.3f}{'  <- best' if r is best else ''}", file=sys.stderr)
    if args.write:
        mpath = args.checkpoint / "manifest.json"
        meta = json.loads(mpath.read_text(encoding="utf-8"))
        meta["architecture"].update(max_per_group=best["max_per_group"], require_groups=best["require_groups"],
                                    min_attribute_prob=best["min_attribute_prob"])
        meta["decoding_chosen_on"] = (f"{args.split} split, {len(samples)} images: highest min(verifiable precision, recall) "
                                      f"(python -m training.attributes.tune)")
        mpath.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps({"split": args.split, "n": len(samples), "best": best, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
