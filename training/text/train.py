"""`lookalike train text`: fit the title -> category model on the train split's titles and ship it.

Steps: hash character n-grams of the (normalised) train titles (cached under var/text/), fit TF-IDF, fit a
multinomial logistic regression for each C of a small grid (each fit cached, so `--resume` skips finished ones),
keep the C with the lowest validation log-loss, round to fp16 and check that the numpy predictor reproduces
scikit-learn on the test titles, choose the unknown thresholds on val (+ generated garbage), evaluate on test,
and write models/text_category/ (model.safetensors, manifest.json, MODEL_CARD.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from shared.config import REPO_ROOT, load_settings
from shared.taxonomy import load_taxonomy
from shared.taxonomy.labels import load_labeled
from shared.text.categorize import N_FEATURES, Thresholds
from training.text import engine
from training.provenance import data_dir_label

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lookalike train text", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--out", type=Path, default=None, help="model folder (default: <models_dir>/text_category)")
    p.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "var" / "text",
                   help="hashed features and per-C fits (default var/text)")
    p.add_argument("--C", default="3,10,30", help="comma-separated inverse regularisation strengths to try")
    p.add_argument("--wrong-cost", type=float, default=3.0,
                   help="cost of a wrong category relative to a right one when choosing thresholds")
    p.add_argument("--synonym-examples", type=int, default=5,
                   help="synthetic '<brand> <gender> <colour> <synonym>' titles per taxonomy synonym (0 = none)")
    p.add_argument("--confidence-floor", type=float, default=0.5,
                   help="lowest allowed min_confidence whatever val says (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="BLAS/OpenMP threads (0 = library default)")
    p.add_argument("--resume", action="store_true", help="reuse cached features and finished fits")
    return p.parse_args(argv)


def _counts(vec, texts: list[str], path: Path, resume: bool) -> sp.csr_matrix:
    # The hashed counts never change for a given manifest, so they are cached (npz, no pickle).
    if resume and path.exists():
        return sp.load_npz(path).tocsr()
    m = vec.transform(texts).tocsr()
    path.parent.mkdir(parents=True, exist_ok=True)
    sp.save_npz(path, m)
    return m


def write_model_card(out: Path, manifest: dict) -> None:
    """MODEL_CARD.md: data and licences, command, time, measured figures."""
    m = manifest["metrics"]
    t = m["test"]
    mm = m["title_names_other_item"]
    th = manifest["thresholds"]
    per_cat = "\n".join(f"| {k} | {v['support']} | {v['f1']:.3f} |" for k, v in t["per_category"].items())
    confused = "\n".join(f"- {c['true']} -> {c['predicted']}: {c['count']}" for c in t["confused_pairs"]) or "- none"
    errors = "\n".join(f"- {e['title']!r}: label {e['true']}, text says {e['predicted'] or 'unknown'}"
                       for e in t["errors"]) or "- none"
    text = f"""# text_category: listing title -> taxonomy category

Character 2-5-gram (`char_wb`) TF-IDF over 2^20 hashed columns (sublinear tf, smooth idf, l2) and a multinomial
logistic regression (C={manifest['training']['C']}) over the {len(manifest['category_keys'])} taxonomy categories
(taxonomy {manifest['taxonomy_version']}). Stored without pickle: the {manifest['n_seen_buckets']} hash columns
seen in training, their idf and coefficients (fp16 safetensors) + `manifest.json`. Inference is
`shared.text.categorize.TextCategorizer` (pure numpy; scikit-learn is not needed to predict).

## Data
- Trained on the **train split titles of `myntra_small`** (Myntra `productDisplayName`, {manifest['training']['n_train']}
  titles; Kaggle "Fashion Product Images (Small)", listing reported as MIT, unverified). Only Myntra rows have titles.
  Water Bottle rows are dropped by the taxonomy mapping. Plus {manifest['training']['n_synthetic']} synthetic titles
  "<brand> <gender> <colour> <synonym>" for every category synonym of the taxonomy (brands = first words of train
  titles), so item words the catalogue never uses (hoodie, blazer, cardigan, tote, ...) carry some signal. Data hash (sha256 of manifest.csv): `{manifest['data_hash']}`.
- Thresholds chosen on the val split ({manifest['training']['n_val']} titles) plus generated garbage
  (letter-shuffled titles, random-letter words).
- Evaluated on the test split ({t['n']} titles). The "title names another item" set uses **Colorful Fashion** test
  photos (no licence: training/evaluation only, never redistributed) with held-out Myntra test titles.

## Decision rule ("unknown" = category None, the photo decides)
Empty text, no letters, > {th['max_non_latin_fraction']:.0%} non-Latin letters, fewer than
{th['min_seen_fraction']:.0%} of the text's 4-5-character n-grams seen in training, or top probability below
{th['min_confidence']:.2f}. Titles are cut to 256 characters (descriptions 512), so long input costs no more than a title.
Description text is read only when the title gives no category.

## Command
`{manifest['command']}` ({manifest['training']['wall_s']:.0f} s on the 2-core CPU box, threads={manifest['training']['threads'] or 'default'})

Re-evaluate: `lookalike evaluate text --split test` (`python -m training.text.evaluate --split test --json`).

## Measured (test split, {t['n']} titles)
| metric | value |
|---|---|
| accuracy (unknown counts as wrong) | {t['accuracy']:.4f} |
| macro-F1 | {t['macro_f1']:.4f} |
| unknown rate | {t['unknown_rate']:.4f} |
| accuracy on answered titles | {t['coverage_accuracy']:.4f} |
| argmax accuracy (no unknown) | {t['raw_accuracy']:.4f} |
| ECE of top probability | {t['ece']:.4f} |
| latency per title, 1 thread, wall p50 / p99 (shared box, load {t['load_average_1m']}) | {t['latency_ms_p50']:.3f} / {t['latency_ms_p99']:.3f} ms |
| same calls, thread CPU time p50 / p99 | {t['cpu_ms_p50']:.3f} / {t['cpu_ms_p99']:.3f} ms |
| numpy vs scikit-learn on test: argmax mismatches / max abs logit diff | {m['parity_test']['argmax_mismatches']} / {m['parity_test']['max_abs_logit_diff']:.2e} |
| garbage / non-Latin probes answered unknown | {m['probes']['unknown_rate']:.2f} of {m['probes']['n']} |

Title names a non-dominant item of a Colorful Fashion test photo ({mm['n']} cases from {mm['n_images']} photos):
text accuracy {mm['accuracy']:.4f} (unknown {mm['unknown_rate']:.4f}); the photo's dominant category would be right in
{mm['photo_dominant_accuracy']:.0%} of them by construction.

Per category (test):

| category | support | F1 |
|---|---|---|
{per_cat}

Most confused (true -> predicted):
{confused}

Test titles the model gets wrong or leaves unknown, up to 25 (label = the catalogue's articleType mapped to the taxonomy;
several are catalogue-label disagreements with the title rather than model errors):
{errors}

## Limits
- Learnt from one catalogue's English titles: brands and phrasing of other shops are less familiar (they fall to
  "unknown" more often rather than to a wrong category, by design). Titles mostly in a non-Latin script are always
  unknown; Latin-script titles in other languages usually are (few familiar n-grams or low confidence), not always.
- Test accuracy is high because catalogue titles nearly always name the item type; it says little about shops whose
  titles do not. The threshold search saw only this catalogue's val titles and generated garbage.
- Titles that name several items ("shirt with tie") get the item the n-grams weigh most, not necessarily the main one.
"""
    (out / "MODEL_CARD.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    t_start = time.time()
    settings = load_settings()
    data_dir = args.data or settings.data_dir
    out = args.out or settings.models_dir / "text_category"
    tax = load_taxonomy()
    Cs = [float(c) for c in args.C.split(",") if c.strip()]
    limits = threadpool_limits(args.threads) if args.threads > 0 else None
    try:
        examples, n_untitled = engine.load_titled(data_dir, ("train", "val", "test"))
        split = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test")}
        if not split["train"] or not split["val"]:
            logger.error("need titled rows in train and val splits of %s (found %d / %d; %d labelled rows have no title)",
                         data_dir, len(split["train"]), len(split["val"]), n_untitled)
            return 2
        synthetic = engine.synonym_examples(tax, split["train"], per_synonym=args.synonym_examples, seed=args.seed)
        split["train"] = split["train"] + synthetic
        dhash = engine.data_hash(data_dir)
        cache = args.cache_dir / dhash[:16] / f"syn{args.synonym_examples}_seed{args.seed}"
        vec = engine.make_vectorizer(N_FEATURES)
        counts = {s: _counts(vec, [e.text for e in split[s]], cache / f"counts_{s}.npz", args.resume)
                  for s in ("train", "val", "test")}
        tfidf, seen = engine.fit_tfidf(counts["train"])
        x_tr = tfidf.transform(counts["train"].copy())[:, seen].tocsr()
        x_va = tfidf.transform(counts["val"].copy())[:, seen].tocsr()
        y_tr = np.array([e.category_id for e in split["train"]])
        y_va = np.array([e.category_id for e in split["val"]])
        fits = {}
        bar = tqdm(Cs, desc="fit C grid", unit="fit", file=sys.stderr, dynamic_ncols=True)
        for C in bar:
            path = cache / f"fit_C{C:g}_seed{args.seed}.npz"
            if args.resume and path.exists():
                z = np.load(path, allow_pickle=False)
                clf = LogisticRegression(C=C)
                clf.coef_, clf.intercept_, clf.classes_ = z["coef"], z["intercept"], z["classes"]
                clf.n_features_in_ = x_tr.shape[1]
            else:
                clf = engine.fit_classifier(x_tr, y_tr, C=C, seed=args.seed)
                np.savez(path, coef=clf.coef_, intercept=clf.intercept_, classes=clf.classes_)
            p_va = clf.predict_proba(x_va)
            fits[C] = (clf, float(log_loss(y_va, p_va, labels=clf.classes_)),
                       float((clf.classes_[p_va.argmax(1)] == y_va).mean()))
            bar.set_postfix(C=C, val_nll=round(fits[C][1], 4), val_acc=round(fits[C][2], 4))
        bar.close()
        best_C = min(fits, key=lambda c: (fits[c][1], c))
        logger.info("C grid (val log-loss, val acc): %s; chose C=%g",
                    {c: (round(v[1], 4), round(v[2], 4)) for c, v in fits.items()}, best_C)
        model = engine.SklearnText(vec, tfidf, fits[best_C][0], seen, tuple(int(c) for c in fits[best_C][0].classes_))
        engine.round_to_fp16(model)
        n_docs = len(split["train"])
        cat = engine.to_categorizer(model, n_docs=n_docs, thresholds=Thresholds(0.0, 0.0), taxonomy=tax)
        par = engine.parity(model, cat, [e.text for e in split["test"]])
        logger.info("numpy vs scikit-learn on %d test titles: %s", par["n"], par)
        if par["argmax_mismatches"] or par["max_abs_logit_diff"] > 1e-3:
            logger.error("the numpy predictor does not reproduce scikit-learn: %s", par)
            return 1
        val_scored = engine.score_texts(cat, [e.text for e in split["val"]])
        neg_scored = engine.score_texts(cat, engine.make_negatives([e.text for e in split["val"]], seed=args.seed))
        thresholds, th_info = engine.choose_thresholds(val_scored, y_va.tolist(), neg_scored,
                                                       wrong_cost=args.wrong_cost,
                                                       confidence_floor=args.confidence_floor)
        logger.info("thresholds %s (%s)", thresholds, th_info)
        cat.thresholds = thresholds
        train_s = time.time() - t_start
        from training.text import evaluate as ev

        test_metrics = ev.evaluate_examples(cat, split["test"], tax)
        items_test = load_labeled(data_dir, splits=("test",))
        mismatch = ev.mismatch_metrics(cat, items_test, split["test"], tax)
        manifest = {
            "name": "text_category", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data_hash": dhash, "data_dir": data_dir_label(data_dir),
            "command": "lookalike train text " + " ".join(sys.argv[1:] if argv is None else argv),
            "n_seen_buckets": int(seen.size),
            "training": {"C": best_C, "synonym_examples_per_synonym": args.synonym_examples, "C_grid": {f"{c:g}": {"val_log_loss": v[1], "val_accuracy": v[2]}
                                                 for c, v in fits.items()},
                         "n_train": len(split["train"]) - len(synthetic), "n_synthetic": len(synthetic),
                         "n_val": len(split["val"]), "n_test": len(split["test"]),
                         "seed": args.seed, "threads": args.threads, "wall_s": round(time.time() - t_start, 1),
                         "fit_and_export_s": round(train_s, 1),
                         "sklearn": __import__("sklearn").__version__, "threshold_search": th_info},
            "metrics": {"test": test_metrics, "title_names_other_item": mismatch, "parity_test": par,
                        "probes": engine.probe_unknowns(cat)},
        }
        cat.meta = {}
        cat.save(out, extra_meta=manifest)
        with open(out / "manifest.json", encoding="utf-8") as fh:
            manifest = json.load(fh)
        write_model_card(out, manifest)
        size = sum(f.stat().st_size for f in out.iterdir())
        logger.info("wrote %s (%.2f MB): test accuracy %.4f macro-F1 %.4f unknown %.4f; mismatch set accuracy %s",
                    out, size / 1e6, test_metrics["accuracy"], test_metrics["macro_f1"], test_metrics["unknown_rate"],
                    mismatch["accuracy"])
        return 0
    finally:
        if limits is not None:
            limits.restore_original_limits()


if __name__ == "__main__":
    raise SystemExit(main())
