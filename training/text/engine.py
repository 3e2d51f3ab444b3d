"""Text category model: data selection, scikit-learn fitting, export to the numpy predictor, thresholds, metrics.

`train.py` and `evaluate.py` orchestrate; everything they compute lives here so tests can call it on tiny data.
"""
from __future__ import annotations

import hashlib
import random
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from shared.taxonomy import Taxonomy
from shared.taxonomy.labels import LabeledImage, load_labeled
from shared.text.categorize import (MAX_TITLE_CHARS, N_FEATURES, NGRAM_RANGE, TextCategorizer, Thresholds,
                                    normalize_text)

UNKNOWN = -1  # label used for "unknown" in metrics


@dataclass(frozen=True)
class TitledExample:
    """One listing title with its taxonomy category (from the catalogue label)."""

    id: str
    text: str  # normalize_text(title)
    title: str  # as given
    category_id: int
    split: str


def data_hash(data_dir: str | Path) -> str:
    """sha256 of manifest.csv (titles, labels and splits all live there)."""
    h = hashlib.sha256()
    with open(Path(data_dir) / "manifest.csv", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def titled_examples(items: Iterable[LabeledImage]) -> list[TitledExample]:
    """Labelled images that carry a non-empty title (in the shared data: Myntra only)."""
    out = []
    for it in items:
        if it.category_id is None or not it.title.strip():
            continue
        out.append(TitledExample(it.id, normalize_text(it.title, MAX_TITLE_CHARS)[0], it.title, it.category_id,
                                 it.split))
    return out


def load_titled(data_dir: str | Path, splits: Sequence[str]) -> tuple[list[TitledExample], int]:
    """(examples with titles in `splits`, number of labelled rows in those splits without a title)."""
    items = load_labeled(data_dir, splits=tuple(splits))
    ex = titled_examples(items)
    return ex, len(items) - len(ex)


# ----------------------------------------------------------------------------------------------- fitting
def make_vectorizer(n_features: int = N_FEATURES) -> HashingVectorizer:
    """The scikit-learn twin of shared.text.categorize's feature path (texts are normalised before it)."""
    return HashingVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, n_features=n_features,
                             alternate_sign=False, norm=None, lowercase=True, dtype=np.float64)


@dataclass
class SklearnText:
    """The fitted scikit-learn pipeline, restricted to the columns seen in training."""

    vectorizer: HashingVectorizer
    tfidf: TfidfTransformer
    clf: LogisticRegression
    seen: np.ndarray  # int64 (F,) sorted hash columns with df > 0 in training
    category_ids: tuple[int, ...]

    def features(self, texts: Sequence[str], counts: sp.csr_matrix | None = None) -> sp.csr_matrix:
        """tf-idf rows, l2-normalised over ALL columns (unseen ones included), then restricted to `seen`."""
        h = self.vectorizer.transform(texts) if counts is None else counts
        return self.tfidf.transform(h.copy())[:, self.seen].tocsr()

    def decision_function(self, texts: Sequence[str], counts: sp.csr_matrix | None = None) -> np.ndarray:
        """float64 (n, C) logits."""
        return self.clf.decision_function(self.features(texts, counts))


def fit_tfidf(counts: sp.csr_matrix) -> tuple[TfidfTransformer, np.ndarray]:
    """Sublinear-tf, smooth idf, l2; returns the transformer and the seen columns."""
    tfidf = TfidfTransformer(sublinear_tf=True, smooth_idf=True, norm="l2").fit(counts)
    seen = np.flatnonzero(np.asarray((counts > 0).sum(axis=0)).ravel()).astype(np.int64)
    return tfidf, seen


def fit_classifier(x: sp.csr_matrix, y: np.ndarray, *, C: float, seed: int = 0,
                   max_iter: int = 3000) -> LogisticRegression:
    """Multinomial logistic regression (lbfgs): probabilities come from the log-loss it minimises."""
    return LogisticRegression(C=C, max_iter=max_iter, tol=1e-6, random_state=seed).fit(x, y)


def fit_sklearn(texts: Sequence[str], labels: Sequence[int], *, C: float = 10.0, seed: int = 0,
                n_features: int = N_FEATURES) -> SklearnText:
    """Fit the whole pipeline on normalised texts (used by tests; train.py runs the same steps with caching)."""
    vec = make_vectorizer(n_features)
    counts = vec.transform(texts)
    tfidf, seen = fit_tfidf(counts)
    x = tfidf.transform(counts.copy())[:, seen]
    clf = fit_classifier(x, np.asarray(labels), C=C, seed=seed)
    return SklearnText(vec, tfidf, clf, seen, tuple(int(c) for c in clf.classes_))


def round_to_fp16(model: SklearnText) -> None:
    """Round idf, coef and intercept to fp16 IN PLACE, so the scikit-learn pipeline IS the shipped model."""
    idf = model.tfidf.idf_.astype(np.float16).astype(np.float64)
    model.tfidf.idf_ = idf
    model.clf.coef_ = model.clf.coef_.astype(np.float16).astype(np.float64)
    model.clf.intercept_ = model.clf.intercept_.astype(np.float16).astype(np.float64)


def idf_unseen(model: SklearnText, n_docs: int) -> float:
    """The idf scikit-learn assigns a column with df = 0 (smooth idf: ln((1+n)/1) + 1)."""
    return float(np.log(1.0 + n_docs) + 1.0)


def to_categorizer(model: SklearnText, *, n_docs: int, thresholds: Thresholds, taxonomy: Taxonomy | None = None,
                   meta: dict | None = None) -> TextCategorizer:
    """The numpy predictor for a (fp16-rounded) scikit-learn pipeline."""
    full_idf = model.tfidf.idf_
    mask = np.ones(full_idf.size, dtype=bool)
    mask[model.seen] = False
    unseen = float(full_idf[mask][0]) if mask.any() else idf_unseen(model, n_docs)
    # Every unseen column must carry the one constant the predictor assumes, or the l2 norms would differ.
    assert np.all(full_idf[mask] == unseen), "unseen columns do not share one idf"
    coef = model.clf.coef_
    intercept = model.clf.intercept_
    if coef.shape[0] == 1:  # binary LogisticRegression keeps one row; expand to two softmax logits
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    return TextCategorizer(buckets=model.seen, idf=full_idf[model.seen], coef=coef.T, intercept=intercept,
                           idf_unseen=unseen, category_ids=model.category_ids, thresholds=thresholds,
                           n_features=model.vectorizer.n_features, taxonomy=taxonomy, meta=meta)


def parity(model: SklearnText, cat: TextCategorizer, texts: Sequence[str]) -> dict:
    """Compare scikit-learn's logits with the numpy predictor's on `texts`: argmax agreement and max |diff|."""
    if not texts:
        return {"n": 0, "argmax_mismatches": 0, "max_abs_logit_diff": 0.0}
    ref = model.decision_function(texts)
    if ref.ndim == 1:
        ref = np.stack([np.zeros_like(ref), ref], axis=1)
    ours = np.stack([cat.logits(t) for t in texts])
    return {"n": len(texts), "argmax_mismatches": int((ref.argmax(1) != ours.argmax(1)).sum()),
            "max_abs_logit_diff": float(np.abs(ref - ours).max())}


def synonym_examples(tax: Taxonomy, train: Sequence[TitledExample], *, per_synonym: int,
                     seed: int = 0) -> list[TitledExample]:
    """Synthetic seller titles "<brand> <gender> <colour> <category synonym>" for every taxonomy synonym.

    The catalogue never says some common item words (hoodie, blazer, cardigan, sneakers, tote, beanie, ...); these
    examples give each taxonomy synonym a little training signal. Brands are first words of real train titles.
    """
    if per_synonym <= 0 or not train:
        return []
    rng = random.Random(seed)
    genders = ["men", "women", "unisex", "boys", "girls", ""]
    colours = [w for a in tax.attributes if a.group == "colour" for w in a.synonyms] + [""]
    out = []
    for c in tax.categories:
        for syn in c.synonyms:
            for k in range(per_synonym):
                brand = rng.choice(train).title.split()[0]
                words = [brand, rng.choice(genders), rng.choice(colours), syn]
                title = " ".join(w for w in words if w)
                out.append(TitledExample(f"syn:{c.key}:{syn}:{k}", normalize_text(title)[0], title, c.id, "train"))
    return out


# -------------------------------------------------------------------------------------------- thresholds
def make_negatives(texts: Sequence[str], *, seed: int = 0) -> list[str]:
    """Text that must come out "unknown": each title's letters shuffled, and random-letter words of title length."""
    rng = random.Random(seed)
    out = []
    for t in texts:
        chars = [c for c in t if c != " "]
        rng.shuffle(chars)
        it = iter(chars)
        out.append("".join(" " if c == " " else next(it) for c in t))
        out.append(" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(len(w))) for w in t.split()))
    return out


@dataclass(frozen=True)
class ScoredText:
    """The predictor's raw view of one text: argmax category id, its probability, seen fraction, script gate."""

    pred: int
    confidence: float
    seen_fraction: float
    latin_ok: bool


def score_texts(cat: TextCategorizer, texts: Sequence[str]) -> list[ScoredText]:
    """Raw scores of normalised texts (thresholds not applied)."""
    from shared.text.categorize import non_latin_fraction

    out = []
    for t in texts:
        frac, n_letters = non_latin_fraction(t)
        s = cat.scores(t)
        k = int(np.argmax(s.probs))
        out.append(ScoredText(cat.category_ids[k], float(s.probs[k]), s.seen_fraction,
                              n_letters > 0 and frac <= cat.thresholds.max_non_latin_fraction))
    return out


def choose_thresholds(val: Sequence[ScoredText], val_labels: Sequence[int], negatives: Sequence[ScoredText], *,
                      wrong_cost: float = 3.0, confidence_floor: float = 0.5) -> tuple[Thresholds, dict]:
    """Grid-search (min_seen_fraction, min_confidence) on val titles plus generated garbage.

    Utility = right answers - wrong_cost * (wrong answers + accepted garbage, garbage weighted to val's size);
    "unknown" scores 0, because the photo model then decides. Among equal utilities the lowest confidence wins
    (most coverage for real titles from other shops, which look less like Myntra's than our val split does),
    except that the seen-fraction threshold is put in the middle of its optimal plateau. The confidence is never
    below `confidence_floor` (0.5: the answer must be likelier than all other categories together), because our
    val titles are far easier than other shops' titles, so val alone would allow near-coin-flip answers.
    """
    conf = np.array([s.confidence for s in val])
    seen = np.array([s.seen_fraction for s in val])
    ok = np.array([s.latin_ok for s in val])
    right = np.array([s.pred == y for s, y in zip(val, val_labels)])
    nconf = np.array([s.confidence for s in negatives])
    nseen = np.array([s.seen_fraction for s in negatives])
    nok = np.array([s.latin_ok for s in negatives])
    w_neg = len(val) / max(1, len(negatives))
    grid = []
    for ts in np.round(np.arange(0.30, 0.701, 0.05), 2):
        for tc in np.round(np.arange(0.20, 0.901, 0.05), 2):
            acc = ok & (seen >= ts) & (conf >= tc)
            nacc = nok & (nseen >= ts) & (nconf >= tc)
            u = float((acc & right).sum() - wrong_cost * (acc & ~right).sum() - wrong_cost * w_neg * nacc.sum())
            grid.append((float(ts), float(tc), u))
    u = max(g[2] for g in grid)
    optimal = [g for g in grid if g[2] >= u - 1e-9]
    # The seen-fraction optimum is a plateau between garbage and real titles: take its middle for margin on both
    # sides. For confidence take the lowest optimal value: coverage for real titles of other shops.
    ts_opt = sorted({g[0] for g in optimal})
    ts = ts_opt[(len(ts_opt) - 1) // 2]
    tc = max(confidence_floor, min(g[1] for g in optimal if g[0] == ts))
    best = (ts, tc, u)
    ts, tc, _ = best
    acc = ok & (seen >= ts) & (conf >= tc)
    nacc = nok & (nseen >= ts) & (nconf >= tc)
    u = float((acc & right).sum() - wrong_cost * (acc & ~right).sum() - wrong_cost * w_neg * nacc.sum())
    info = {"wrong_cost": wrong_cost, "confidence_floor": confidence_floor, "utility": u, "val_n": len(val), "val_unknown_rate": float(1 - acc.mean()),
            "val_coverage_accuracy": float(right[acc].mean()) if acc.any() else None,
            "negatives_n": len(negatives), "negatives_accepted_rate": float(nacc.mean()) if len(negatives) else 0.0}
    return Thresholds(min_confidence=tc, min_seen_fraction=ts), info


# ------------------------------------------------------------------------------------------------ metrics
def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], tax: Taxonomy) -> dict:
    """Accuracy (unknown = wrong), macro-F1 over the true categories, unknown rate, coverage accuracy, per-category
    F1 and the most confused (true -> predicted) pairs."""
    yt = np.asarray(y_true, dtype=np.int64)
    yp = np.asarray(y_pred, dtype=np.int64)
    n = yt.size
    if n == 0:
        return {"n": 0, "accuracy": None, "macro_f1": None, "unknown_rate": None, "coverage_accuracy": None,
                "per_category": {}, "confused_pairs": []}
    labels = sorted(set(yt.tolist()))
    f1 = f1_score(yt, yp, labels=labels, average=None, zero_division=0)
    known = yp != UNKNOWN
    pairs: dict[tuple[int, int], int] = {}
    for a, b in zip(yt.tolist(), yp.tolist()):
        if a != b:
            pairs[(a, b)] = pairs.get((a, b), 0) + 1
    key = (lambda c: "unknown" if c == UNKNOWN else tax.category(c).key)
    confused = [{"true": key(a), "predicted": key(b), "count": c}
                for (a, b), c in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]
    return {
        "n": int(n),
        "accuracy": float((yt == yp).mean()),
        "macro_f1": float(np.mean(f1)),
        "unknown_rate": float(1 - known.mean()),
        "coverage_accuracy": float((yt[known] == yp[known]).mean()) if known.any() else None,
        "per_category": {key(c): {"f1": float(f), "support": int((yt == c).sum())} for c, f in zip(labels, f1)},
        "confused_pairs": confused,
    }


def expected_calibration_error(conf: np.ndarray, right: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the top probability over equal-width bins."""
    if conf.size == 0:
        return 0.0
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - right[m].mean())
    return float(ece)


def predict_ids(cat: TextCategorizer, titles: Sequence[str], *, cpu_times: bool = False):
    """categorize() each title: (category id or UNKNOWN, per-title wall ms[, per-title thread CPU ms])."""
    preds, ms, cpu = [], [], []
    for t in titles:
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        r = cat.categorize(t)
        ms.append((time.perf_counter_ns() - t0) / 1e6)
        cpu.append((time.thread_time_ns() - c0) / 1e6)
        preds.append(UNKNOWN if r.category_id is None else r.category_id)
    return (preds, ms, cpu) if cpu_times else (preds, ms)


# --------------------------------------------------------------------------- "title names another item" set
@dataclass(frozen=True)
class MismatchCase:
    """A street photo whose seller title names one of its non-dominant items."""

    image_id: str
    dominant_category_id: int
    named_category_id: int  # the right answer
    title: str
    title_source_id: str


def _pick(key: str, n: int) -> int:
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % n


def build_mismatch_set(items: Sequence[LabeledImage], title_pool: Sequence[TitledExample]) -> tuple[list[MismatchCase], dict]:
    """Photos with boxes of >= 2 categories: one case per non-dominant category, titled with a held-out title of
    that category (deterministic pick by sha1 of image id + category). The photo's dominant category (largest box,
    the manifest label) is by construction the wrong answer."""
    by_cat: dict[int, list[TitledExample]] = {}
    for ex in title_pool:
        by_cat.setdefault(ex.category_id, []).append(ex)
    cases, skipped = [], 0
    n_images = 0
    for it in items:
        if it.category_id is None or not it.boxes:
            continue
        cats = sorted({b.category_id for b in it.boxes} - {it.category_id})
        if not cats:
            continue
        n_images += 1
        for c in cats:
            pool = by_cat.get(c, [])
            if not pool:
                skipped += 1
                continue
            ex = pool[_pick(f"{it.id}:{c}", len(pool))]
            cases.append(MismatchCase(it.id, it.category_id, c, ex.title, ex.id))
    return cases, {"n_images": n_images, "skipped_no_title_of_category": skipped}


def evaluate_mismatch(cat: TextCategorizer, cases: Sequence[MismatchCase], tax: Taxonomy) -> dict:
    """Accuracy of the text model when the title names a non-dominant item of the photo."""
    if not cases:
        return {"n": 0, "accuracy": None, "unknown_rate": None, "coverage_accuracy": None,
                "photo_dominant_accuracy": None, "predicted_dominant_rate": None, "by_named_category": {}}
    preds, _ = predict_ids(cat, [c.title for c in cases])
    yt = np.array([c.named_category_id for c in cases])
    yp = np.array(preds)
    dom = np.array([c.dominant_category_id for c in cases])
    known = yp != UNKNOWN
    by_cat = {}
    for c in sorted(set(yt.tolist())):
        m = yt == c
        by_cat[tax.category(c).key] = {"n": int(m.sum()), "accuracy": float((yp[m] == c).mean())}
    return {"n": len(cases), "accuracy": float((yp == yt).mean()), "unknown_rate": float(1 - known.mean()),
            "coverage_accuracy": float((yp[known] == yt[known]).mean()) if known.any() else None,
            "photo_dominant_accuracy": float((dom == yt).mean()),
            "predicted_dominant_rate": float((yp == dom).mean()), "by_named_category": by_cat}


# ---------------------------------------------------------------------------------------- unknown probes
GARBAGE_PROBES: tuple[str, ...] = (
    "", "   \t\n ", "!!!???...", "🔥🔥🔥 💯 ✨✨", "#### ---- ////", "12345 67890", "qzxv kwpl mrtg", "asdkjh qweoiu zmxncb",
    "xkcd plmn wqrt bvcz", "lorem ipsum dolor sit amet",
    "나이키 남성 블랙 스트라이프 폴로 티셔츠", "नाइकी पुरुषों की काली धारीदार पोलो टी-शर्ट",
    "Мужская черная полосатая футболка поло Nike", "ナイキ メンズ ブラック ポロシャツ", "耐克男士黑色条纹Polo衫",
    "zq" * 50_000,
)


def probe_unknowns(cat: TextCategorizer) -> dict:
    """How many of the fixed garbage / non-Latin probes come out unknown (they all should)."""
    res = [cat.categorize(t) for t in GARBAGE_PROBES]
    return {"n": len(res), "unknown_rate": float(np.mean([r.category_id is None for r in res])),
            "accepted": [{"text": t[:60], "category": r.category_key, "confidence": round(r.confidence, 3)}
                         for t, r in zip(GARBAGE_PROBES, res) if r.category_id is not None]}

