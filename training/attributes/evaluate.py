"""`lookalike evaluate attributes`: paper Table-2-style precision / recall / NLL of an attribute checkpoint, automatic
vs guided (true category forced), per-group accuracy, and one-thread latency of attributes + encoder features.

Definitions (also in the JSON under "definitions"):
- precision / recall: per image, the set of generated tokens (category token + attribute tokens) against the true
  set (true category + true attributes), averaged over images. The category token IS included (it is the first
  token of the paper's sequence; it also keeps the sets non-empty for images without attribute labels).
- attribute_precision_micro / attribute_recall_micro: attributes only (category excluded), micro-averaged.
- nll: mean per-token negative log-likelihood (natural log) of the true sequence after BOS (category, attributes,
  EOS) under teacher forcing, unmasked softmax, averaged over all tokens of the split.
- group accuracy: over images whose truth has a value in the group, the share whose predicted values in that group
  equal the true ones exactly. Colour also by family (the taxonomy's colour `family`: navy ~ blue, off-white ~
  white) and on images whose colour label is not disputed (shared.taxonomy.labels.LABEL_NOISE_RULE).
- unlabelled: images whose label names no attribute (Colorful Fashion street crops): what can be measured there is
  the category and how often attributes are generated at all (share with >= 1 attribute, with a colour, mean count);
  `precision_verifiable` is the automatic precision with those images' generated attributes left out (they can be
  neither confirmed nor refuted), beside the headline precision that counts them as wrong.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from shared.config import load_settings
from shared.taxonomy import load_taxonomy
from shared.vision.attributes import analyze_images, decode, manifest_rules, pad_sequences, prepare_batch, sequence_nll
from shared.vision.attributes import load_attribute_network
from training.attributes import data as D
from training.attributes.engine import SetMetrics

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike evaluate attributes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=SPLITS + ("all",), default="all", help="which split(s) to evaluate")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings.data_dir)")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (default: models/attributes)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (table goes to stderr)")
    p.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many images per split (0 = all)")
    p.add_argument("--datasets", default=None, metavar="NAMES",
                   help="comma-separated datasets to keep (e.g. colorful_fashion; default: all)")
    p.add_argument("--latency-images", type=int, default=30, help="images timed one by one with 1 thread (0 = skip)")
    p.add_argument("--threads", type=int, default=0, help="torch threads for the accuracy pass (0 = default)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    p.add_argument("--require", default=None, metavar="GROUPS",
                   help="comma-separated groups every sequence must name where they apply (e.g. colour; '' = none); "
                        "default: the checkpoint's architecture.require_groups")
    p.add_argument("--examples", type=int, default=0,
                   help="also predict this many Colorful Fashion crops of the last split (ids + tokens, for the card)")
    return p


@torch.inference_mode()
def evaluate_split(loaded, samples: list[D.Sample], *, beam: int, batch_size: int) -> dict[str, Any]:
    """Automatic and guided metrics plus teacher-forced NLL for one split."""
    net = loaded.net
    tax = load_taxonomy()
    arch = loaded.meta.get("architecture", {})
    rules = manifest_rules(tax, arch)
    dev = next(net.parameters()).device
    auto, guided, verifiable = SetMetrics(tax), SetMetrics(tax), SetMetrics(tax)
    unl = {"n": 0, "with_attributes": 0, "with_colour": 0, "attributes": 0, "category_correct": 0}
    by_dataset: dict[str, SetMetrics] = {}
    nll_sum, n_tok = 0.0, 0
    for lo in tqdm(range(0, len(samples), batch_size), desc="evaluate", leave=False, file=sys.stderr):
        chunk = samples[lo: lo + batch_size]
        x, colour = prepare_batch([D.load_image(s) for s in chunk], loaded.input_size,
                                  channels_last=getattr(net, "channels_last", False),
                                  colour=bool(getattr(net, "colour_bins", 0)))
        emb, maps = net.encode(x.to(dev))
        colour = None if colour is None else (colour[0].to(dev), colour[1].to(dev))
        ctx = net.context(emb, colour, maps.get(32))
        toks = pad_sequences([s.tokens for s in chunk]).to(dev)
        logits, _ = net.step(ctx, toks[:, :-1], net.initial_state(ctx))
        loss, k = sequence_nll(logits, toks[:, 1:])
        nll_sum += float(loss)
        n_tok += k
        cats = [s.category_id for s in chunk]
        for s, (c, _, pa) in zip(chunk, decode(net, ctx, rules, beam=beam)):
            auto.add(c, [a for a, _ in pa], s.category_id, s.attribute_ids, s.disputed_groups)
            verifiable.add(c, [a for a, _ in pa] if s.attribute_ids else [], s.category_id, s.attribute_ids,
                           s.disputed_groups)
            if not s.attribute_ids:
                unl["n"] += 1
                unl["with_attributes"] += int(bool(pa))
                unl["with_colour"] += int(any(tax.attributes[a].group == "colour" for a, _ in pa))
                unl["attributes"] += len(pa)
                unl["category_correct"] += int(c == s.category_id)
            by_dataset.setdefault(s.dataset, SetMetrics(tax)).add(c, [a for a, _ in pa], s.category_id,
                                                                  s.attribute_ids, s.disputed_groups)
        for s, (c, _, pa) in zip(chunk, decode(net, ctx, rules, beam=beam, categories=cats)):
            guided.add(c, [a for a, _ in pa], s.category_id, s.attribute_ids, s.disputed_groups)
    a, g = auto.summary(), guided.summary()
    k = max(unl["n"], 1)
    return {
        "n": a["n"], "precision": a["precision"], "recall": a["recall"], "nll": nll_sum / max(n_tok, 1),
        "precision_verifiable": verifiable.summary()["precision"],
        "unlabelled": {"n": unl["n"], "with_attributes": unl["with_attributes"] / k, "with_colour": unl["with_colour"] / k,
                       "mean_attributes": unl["attributes"] / k, "category_accuracy": unl["category_correct"] / k},
        "category_accuracy": a["category_accuracy"],
        "automatic": a, "guided": g,
        "guidance_delta": {k: g[k] - a[k] for k in ("precision", "recall", "attribute_precision_micro",
                                                    "attribute_recall_micro")},
        "by_dataset": {k: {kk: v.summary()[kk] for kk in ("n", "precision", "recall", "category_accuracy",
                                                           "attribute_precision_micro", "attribute_recall_micro",
                                                           "group_accuracy")}
                       for k, v in sorted(by_dataset.items())},
    }


def predict_examples(loaded, samples: list[D.Sample], n: int) -> list[dict[str, Any]]:
    """Automatic predictions for the first `n` Colorful Fashion crops (street photos: only the category is labelled)."""
    chosen = [s for s in samples if s.dataset == "colorful_fashion"][:n]
    tax = load_taxonomy()
    preds = analyze_images(loaded, [D.load_image(s) for s in chosen], strides=())[0]
    return [{"id": s.id, "true_category": tax.categories[s.category_id].key, "category": p.category_key,
             "category_prob": round(p.category_prob, 3),
             "attributes": [[a.key, round(a.prob, 3)] for a in p.attributes]} for s, p in zip(chosen, preds)]


def measure_latency(loaded, samples: list[D.Sample], *, n_images: int, beam: int) -> dict[str, Any]:
    """Per-image wall time of letterbox + encoder (embedding + stride 16/32 maps) + attribute decode, 1 thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        imgs = [D.load_image(s) for s in samples[:n_images]]
        for img in imgs[:3]:  # warm-up: first calls allocate
            analyze_images(loaded, [img], beam=beam)
        times = []
        for img in imgs:
            t = time.perf_counter()
            analyze_images(loaded, [img], beam=beam)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        torch.set_num_threads(before)
    times.sort()
    return {"threads": 1, "batch": 1, "beam": beam, "images": len(times), "input_size": loaded.input_size,
            "median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
            "mean_ms": statistics.fmean(times), "includes": "letterbox+normalise, encoder (embedding + stride 16/32 "
            "maps to numpy), constrained decode"}


def format_table(result: dict[str, Any]) -> str:
    """A readable Table-2-style text table."""
    splits = list(result["splits"])
    lines = [f"checkpoint {result['checkpoint']}  (encoder {result['encoder']}, beam {result['beam']})", ""]
    head = f"{'':34s}" + "".join(f"{s:>10s}" for s in splits)
    lines.append(head)

    def row(label: str, get) -> None:
        lines.append(f"{label:34s}" + "".join(f"{get(result['splits'][s]):10.3f}" for s in splits))

    row("precision (cat+attr, per image)", lambda r: r["precision"])
    row("recall (cat+attr, per image)", lambda r: r["recall"])
    row("NLL (per token)", lambda r: r["nll"])
    row("category accuracy (automatic)", lambda r: r["category_accuracy"])
    row("attr precision micro, automatic", lambda r: r["automatic"]["attribute_precision_micro"])
    row("attr recall micro, automatic", lambda r: r["automatic"]["attribute_recall_micro"])
    row("attr precision micro, guided", lambda r: r["guided"]["attribute_precision_micro"])
    row("attr recall micro, guided", lambda r: r["guided"]["attribute_recall_micro"])
    row("precision, guided", lambda r: r["guided"]["precision"])
    row("recall, guided", lambda r: r["guided"]["recall"])
    row("precision, verifiable tokens", lambda r: r["precision_verifiable"])
    row("images", lambda r: r["n"])
    row("unlabelled: share with attributes", lambda r: r["unlabelled"]["with_attributes"])
    row("unlabelled: share with a colour", lambda r: r["unlabelled"]["with_colour"])
    row("unlabelled: mean attributes", lambda r: r["unlabelled"]["mean_attributes"])
    nan = {"accuracy": float("nan"), "family_accuracy": float("nan"), "n": 0}

    def group(r: dict[str, Any], g: str, k: str = "accuracy") -> float:
        return r["automatic"]["group_accuracy"].get(g, nan).get(k, float("nan"))

    row("colour exact (automatic)", lambda r: group(r, "colour"))
    row("colour by family (automatic)", lambda r: group(r, "colour", "family_accuracy"))
    row("pattern exact (automatic)", lambda r: group(r, "pattern"))
    lines += ["", "group accuracy (automatic / guided), n = images whose truth has the group"]
    last = result["splits"][splits[-1]]
    lines.append(f"  split {splits[-1]}")
    for grp, v in last["automatic"]["group_accuracy"].items():
        gv = last["guided"]["group_accuracy"].get(grp, nan)
        extra = ""
        if grp == "colour":
            u = v["undisputed"]
            extra = (f"   family {v['family_accuracy']:.3f} / {gv['family_accuracy']:.3f}; undisputed labels "
                     f"(n={u['n']}): exact {u['accuracy']:.3f}, family {u['family_accuracy']:.3f}")
        lines.append(f"  {grp:18s} {v['accuracy']:.3f} / {gv['accuracy']:.3f}   n={v['n']}{extra}")
    lines += ["", f"  by dataset ({splits[-1]}): precision / recall / category accuracy; colour exact / family; pattern"]
    for ds, v in last["by_dataset"].items():
        ga = v["group_accuracy"]
        col = ga.get("colour")
        colour = f"{col['accuracy']:.3f} / {col['family_accuracy']:.3f}" if col else "-"
        pat = f"{ga['pattern']['accuracy']:.3f}" if "pattern" in ga else "-"
        lines.append(f"  {ds:18s} {v['precision']:.3f} / {v['recall']:.3f} / {v['category_accuracy']:.3f}; "
                     f"{colour}; {pat}   n={v['n']}")
    for ex in result.get("examples", []):
        attrs = ", ".join(f"{k} {p:.2f}" for k, p in ex["attributes"])
        lines.append(f"  example {ex['id']} (true {ex['true_category']}): {ex['category']} {ex['category_prob']:.2f}; {attrs}")
    lat = result.get("latency")
    if lat:
        lines += ["", f"latency, 1 thread, batch 1, {lat['input_size']} px: median {lat['median_ms']:.1f} ms, "
                      f"p90 {lat['p90_ms']:.1f} ms over {lat['images']} images (attributes + encoder features)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = args.data or load_settings().data_dir
    loaded = load_attribute_network(args.checkpoint, device=device)
    if args.require is not None:  # decode-rule override: the manifest's architecture.require_groups otherwise
        loaded.meta.setdefault("architecture", {})["require_groups"] = [g for g in args.require.split(",") if g]
    splits = SPLITS if args.split == "all" else (args.split,)
    result: dict[str, Any] = {"checkpoint": str(args.checkpoint or "models/attributes"),
                              "require_groups": list(loaded.meta.get("architecture", {}).get("require_groups", [])),
                              "encoder": loaded.meta["architecture"]["encoder"], "beam": args.beam,
                              "data": str(data_dir), "splits": {}}
    for split in splits:
        samples = D.load_samples(data_dir, [split])
        if args.datasets:
            samples = [s for s in samples if s.dataset in args.datasets.split(",")]
        if args.limit:
            samples = samples[: args.limit]
        if not samples:
            logger.warning("split %s has no images in %s", split, data_dir)
            continue
        t = time.time()
        result["splits"][split] = evaluate_split(loaded, samples, beam=args.beam, batch_size=args.batch_size)
        logger.info("split %s: %d images in %.0f s", split, len(samples), time.time() - t)
    if not result["splits"]:
        print("no images to evaluate", file=sys.stderr)
        return 1
    top = result["splits"].get("test") or next(iter(result["splits"].values()))
    result = {"precision": top["precision"], "recall": top["recall"], "nll": top["nll"],
              "category_accuracy": top["category_accuracy"], **result}
    if args.examples:
        result["examples"] = predict_examples(loaded, D.load_samples(data_dir, [splits[-1]]), args.examples)
    if args.latency_images and device == "cpu":
        lat_split = "test" if "test" in result["splits"] else splits[-1]
        result["latency"] = measure_latency(loaded, D.load_samples(data_dir, [lat_split]),
                                            n_images=args.latency_images, beam=args.beam)
    result["definitions"] = {
        "precision_recall": "per image, generated {category token} + attribute tokens vs the true set, averaged "
                            "over images; category token included",
        "attribute_micro": "attribute tokens only (category excluded), micro-averaged over the split",
        "nll": "mean per-token natural-log NLL of the true sequence after BOS (category, attributes, EOS), "
               "teacher forcing, unmasked softmax",
        "guided": "the true category token is forced, attributes decoded after it",
        "unlabelled": "images whose label names no attribute (street crops): share generating >= 1 attribute / a "
                      "colour, mean attributes generated; precision_verifiable leaves their attributes out",
        "top_level": "precision/recall/nll/category_accuracy of the test split when evaluated, else of the one split",
    }
    table = format_table(result)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
