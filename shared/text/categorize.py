"""Listing text -> taxonomy category: hashed character n-grams, TF-IDF and a linear softmax, in plain numpy.

The model is trained by `training/text/train.py` with scikit-learn (HashingVectorizer(analyzer="char_wb",
ngram_range=(2, 5), n_features=2**20, alternate_sign=False) -> TfidfTransformer(sublinear_tf=True) ->
LogisticRegression) and shipped without pickle: only the buckets seen in training, their idf and their
coefficients are stored (safetensors, fp16) next to a JSON manifest. This module re-implements the predict path
(hash -> tf-idf -> linear -> softmax) so serving needs no scikit-learn object graph; the parity with
scikit-learn is checked by the trainer and by tests/unit/test_categorize.py.

Pure, CPU-only, no DB. A title the model cannot read (empty, no letters, mostly non-Latin script, mostly
character n-grams never seen in training, or a low top probability) gives `category_id=None` with a reason,
so callers fall back to the photo instead of trusting a confident wrong guess.
"""
from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from shared.taxonomy import Taxonomy, load_taxonomy

FORMAT_VERSION = "text-category-v1"
NGRAM_RANGE = (2, 5)
N_FEATURES = 2**20  # large enough that the ~20k training n-grams rarely collide, so "seen" is almost exact
MAX_TITLE_CHARS = 256  # Myntra titles are < 100 chars; longer input is truncated so cost stays bounded
MAX_DESCRIPTION_CHARS = 512
OOV_NGRAM_LENGTHS = (4, 5)  # 2-3-grams occur in any Latin text; 4-5-grams tell familiar words from noise
MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"


def _murmurhash3_32_py(key: str, seed: int = 0) -> int:
    """Signed 32-bit MurmurHash3 (x86_32) of the UTF-8 bytes: the same value as sklearn.utils.murmurhash3_32."""
    data = key.encode("utf-8")
    n = len(data)
    h = seed & 0xFFFFFFFF
    c1, c2 = 0xCC9E2D51, 0x1B873593
    n_blocks = n // 4
    for i in range(n_blocks):
        k = int.from_bytes(data[4 * i: 4 * i + 4], "little")
        k = (k * c1) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        k = (k * c2) & 0xFFFFFFFF
        h ^= k
        h = ((h << 13) | (h >> 19)) & 0xFFFFFFFF
        h = (h * 5 + 0xE6546B64) & 0xFFFFFFFF
    tail = data[4 * n_blocks:]
    k = 0
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if len(tail) >= 1:
        k ^= tail[0]
        k = (k * c1) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        k = (k * c2) & 0xFFFFFFFF
        h ^= k
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h - (1 << 32) if h & 0x80000000 else h


def _pick_hash() -> Callable[[str], int]:
    # scikit-learn's C implementation is ~20x faster than the pure-Python one; both give identical values.
    try:
        from sklearn.utils import murmurhash3_32
    except ImportError:  # pragma: no cover - sklearn is a dependency; the fallback keeps serving independent of it
        return _murmurhash3_32_py
    return murmurhash3_32


_hash = _pick_hash()


def normalize_text(text: str, max_chars: int = MAX_TITLE_CHARS) -> tuple[str, bool]:
    """NFKC, lower case, whitespace collapsed, cut to `max_chars` at a word boundary; returns (text, truncated).

    Training applies exactly this before the vectorizer, so train and serve see the same strings.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    # Cut before NFKC so a megabyte of input costs no more than a title (NFKC can expand, hence the slack).
    head = text[: max_chars * 4 + 16]
    s = " ".join(unicodedata.normalize("NFKC", head).lower().split())
    truncated = len(text) > len(head) or len(s) > max_chars
    if len(s) > max_chars:
        cut = s.rfind(" ", 0, max_chars + 1)
        s = s[: cut if cut > max_chars // 2 else max_chars].rstrip()
    return s, truncated


def char_wb_ngrams(text: str, ngram_range: tuple[int, int] = NGRAM_RANGE) -> list[str]:
    """Character n-grams inside space-padded words, exactly as scikit-learn's analyzer="char_wb" makes them."""
    min_n, max_n = ngram_range
    out: list[str] = []
    for w in text.split():
        w = " " + w + " "
        w_len = len(w)
        for n in range(min_n, max_n + 1):
            if w_len <= n:  # a short word is counted once, whole
                out.append(w)
                break
            out.extend(w[i: i + n] for i in range(w_len - n + 1))
    return out


def hash_buckets(ngrams: Sequence[str], n_features: int = N_FEATURES) -> np.ndarray:
    """HashingVectorizer's column for each n-gram: abs(murmurhash3_32(ngram, seed=0)) % n_features.

    Returns int64 (len(ngrams),).
    """
    # abs(-2**31) % n_features is what sklearn defines for the one overflowing hash; Python ints agree.
    return np.fromiter((abs(_hash(g)) % n_features for g in ngrams), dtype=np.int64, count=len(ngrams))


def non_latin_fraction(text: str) -> tuple[float, int]:
    """(share of letters that are not Latin script, number of letters)."""
    n_letters = 0
    n_other = 0
    for c in text:
        if c.isalpha():
            n_letters += 1
            if not c.isascii() and not unicodedata.name(c, "").startswith("LATIN"):
                n_other += 1
    return (n_other / n_letters if n_letters else 0.0), n_letters


@dataclass(frozen=True)
class TextCategory:
    """What the text says the listing is; category None means explicitly "unknown" (see `reason`)."""

    category_id: int | None
    category_key: str | None
    confidence: float  # top softmax probability (0.0 when the text was not scored)
    source: str = "text"
    reason: str = ""


@dataclass(frozen=True)
class TextScores:
    """Raw model output for one text: probabilities over `TextCategorizer.category_ids` and the OOV statistic."""

    probs: np.ndarray  # float32 (n_classes,)
    seen_fraction: float  # share of the text's 4-5-character n-grams whose bucket was seen in training
    n_ngrams: int


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds, chosen on the validation split by the trainer."""

    min_confidence: float
    min_seen_fraction: float
    max_non_latin_fraction: float = 0.5


class TextCategorizer:
    """The shipped text model: sparse hashed TF-IDF features -> linear softmax over taxonomy categories.

    buckets: int64 (F,) sorted hash columns seen in training; idf: float32 (F,); coef: float32 (F, C) (one row per
    seen bucket, so a lookup gathers contiguous rows); intercept: float32 (C,); idf_unseen: the idf scikit-learn
    gives a column never seen in training (it still counts in the l2 norm).
    """

    def __init__(self, *, buckets: np.ndarray, idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 idf_unseen: float, category_ids: Sequence[int], thresholds: Thresholds,
                 n_features: int = N_FEATURES, ngram_range: tuple[int, int] = NGRAM_RANGE,
                 taxonomy: Taxonomy | None = None, meta: dict | None = None) -> None:
        buckets = np.asarray(buckets, dtype=np.int64)
        if buckets.ndim != 1 or buckets.size == 0 or not np.all(np.diff(buckets) > 0):
            raise ValueError("buckets must be a non-empty, strictly increasing 1-d array")
        n_cls = len(category_ids)
        coef = np.ascontiguousarray(coef, dtype=np.float32)
        if coef.shape != (buckets.size, n_cls):
            raise ValueError(f"coef must be float32 ({buckets.size}, {n_cls}), got {coef.shape}")
        self.buckets = buckets
        self.idf = np.ascontiguousarray(idf, dtype=np.float32)
        self.coef = coef
        self.intercept = np.ascontiguousarray(intercept, dtype=np.float32)
        if self.idf.shape != buckets.shape or self.intercept.shape != (n_cls,):
            raise ValueError(f"idf must be ({buckets.size},) and intercept ({n_cls},), "
                             f"got {self.idf.shape} and {self.intercept.shape}")
        self.idf_unseen = float(idf_unseen)
        self.category_ids = tuple(int(c) for c in category_ids)
        self.thresholds = thresholds
        self.n_features = int(n_features)
        self.ngram_range = (int(ngram_range[0]), int(ngram_range[1]))
        self.taxonomy = taxonomy or load_taxonomy()
        self.category_keys = tuple(self.taxonomy.category(c).key for c in self.category_ids)
        self.meta = dict(meta or {})

    # ----------------------------------------------------------------------------------------- persistence
    @classmethod
    def load(cls, path: str | Path | None = None) -> "TextCategorizer":
        """Load a model folder (default: models/text_category/ under the configured models_dir).

        Raises FileNotFoundError when the folder has no model, ValueError for another format, KeyError when a
        category key of the model is not in the current taxonomy.
        """
        if path is None:
            from shared.config import load_settings

            path = load_settings().models_dir / "text_category"
        from shared.checkpoints import read_manifest

        path = Path(path)
        try:
            meta = read_manifest(path, kind="text")  # explicit version, same taxonomy (ValueError otherwise)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no text category model at {path} ({MANIFEST_FILE} missing); "
                                    "train one with `lookalike train text`") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path / MANIFEST_FILE}: format {meta.get('format')!r}, expected {FORMAT_VERSION!r}")
        from safetensors.numpy import load_file

        t = load_file(str(path / MODEL_FILE))
        tax = load_taxonomy()
        # Category ids are stable across taxonomy versions (append-only), but check the keys still agree.
        ids = [tax.category(k).id for k in meta["category_keys"]]
        th = meta["thresholds"]
        return cls(buckets=t["buckets"].astype(np.int64), idf=t["idf"], coef=t["coef"], intercept=t["intercept"],
                   idf_unseen=float(meta["idf_unseen"]), category_ids=ids,
                   thresholds=Thresholds(min_confidence=float(th["min_confidence"]),
                                         min_seen_fraction=float(th["min_seen_fraction"]),
                                         max_non_latin_fraction=float(th["max_non_latin_fraction"])),
                   n_features=int(meta["n_features"]), ngram_range=tuple(meta["ngram_range"]),  # type: ignore[arg-type]
                   taxonomy=tax, meta=meta)

    def save(self, path: str | Path, *, extra_meta: dict | None = None) -> Path:
        """Write model.safetensors (fp16 weights, int32 buckets) and manifest.json into `path`."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.n_features > np.iinfo(np.int32).max:
            raise ValueError("n_features does not fit int32")
        save_file({"buckets": self.buckets.astype(np.int32), "idf": self.idf.astype(np.float16),
                   # (F, C): one row per seen bucket, so a prediction gathers a few contiguous rows.
                   "coef": np.ascontiguousarray(self.coef.astype(np.float16)),
                   "intercept": self.intercept.astype(np.float16)}, str(path / MODEL_FILE))
        os.chmod(path / MODEL_FILE, 0o644)  # safetensors writes 0600; the model is shipped, not secret
        meta = dict(self.meta)
        meta.update(extra_meta or {})
        # Every checkpoint names its version (shared.checkpoints): a new training is a new version.
        meta.setdefault("version", "text-" + str(meta.get("created", "unnamed")).replace(":", ""))
        meta.update({
            "format": FORMAT_VERSION, "taxonomy_version": self.taxonomy.version,
            "category_keys": list(self.category_keys), "n_features": self.n_features,
            "ngram_range": list(self.ngram_range), "analyzer": "char_wb", "hash": "murmurhash3_32 seed 0, abs % n",
            "tf": "1 + log(count) (sublinear)", "norm": "l2", "idf_unseen": self.idf_unseen,
            "preprocessing": {"normalize": "NFKC, lower, collapse whitespace",
                              "max_title_chars": MAX_TITLE_CHARS, "max_description_chars": MAX_DESCRIPTION_CHARS},
            "thresholds": {"min_confidence": self.thresholds.min_confidence,
                           "min_seen_fraction": self.thresholds.min_seen_fraction,
                           "max_non_latin_fraction": self.thresholds.max_non_latin_fraction,
                           "oov_ngram_lengths": list(OOV_NGRAM_LENGTHS)},
        })
        with open(path / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1, sort_keys=True)
            fh.write("\n")
        return path

    # ------------------------------------------------------------------------------------------- predict
    def _features(self, text: str) -> tuple[np.ndarray, np.ndarray, float, int]:
        """(rows into coef of the seen buckets, their tf-idf values after l2 norm over ALL buckets, seen fraction, n)."""
        grams = char_wb_ngrams(text, self.ngram_range)
        if not grams:
            return np.empty(0, np.int64), np.empty(0, np.float32), 0.0, 0
        buckets = hash_buckets(grams, self.n_features)
        rows = np.searchsorted(self.buckets, buckets)
        rows_c = np.minimum(rows, self.buckets.size - 1)
        seen = self.buckets[rows_c] == buckets
        long = np.fromiter((len(g) in OOV_NGRAM_LENGTHS for g in grams), dtype=bool, count=len(grams))
        seen_fraction = float(seen[long].mean()) if long.any() else float(seen.mean())
        ub, first, counts = np.unique(buckets, return_index=True, return_counts=True)
        tf = 1.0 + np.log(counts.astype(np.float64))
        ub_seen = seen[first]
        idf = np.where(ub_seen, self.idf[rows_c[first]].astype(np.float64), self.idf_unseen)
        x = tf * idf
        norm = math.sqrt(float(x @ x))
        x = x / norm if norm > 0 else x
        return rows_c[first][ub_seen], x[ub_seen].astype(np.float32), seen_fraction, len(grams)

    def logits(self, text: str) -> np.ndarray:
        """Decision values for already-normalised text: float32 (n_classes,) = tfidf(text) @ coef + intercept."""
        rows, x, _, _ = self._features(text)
        return x @ self.coef[rows] + self.intercept if rows.size else self.intercept.copy()

    def scores(self, text: str) -> TextScores:
        """Softmax probabilities and the seen-n-gram fraction for already-normalised text."""
        rows, x, seen_fraction, n = self._features(text)
        z = (x @ self.coef[rows] + self.intercept) if rows.size else self.intercept.astype(np.float32)
        z = z - z.max()
        p = np.exp(z)
        p /= p.sum()
        return TextScores(probs=p.astype(np.float32), seen_fraction=seen_fraction, n_ngrams=n)

    def probabilities(self, title: str) -> np.ndarray:
        """float32 (n_taxonomy_categories,) indexed by category id (a soft prior for fusion with the photo)."""
        text, _ = normalize_text(title, MAX_TITLE_CHARS)
        out = np.zeros(len(self.taxonomy.categories), dtype=np.float32)
        out[list(self.category_ids)] = self.scores(text).probs
        return out

    def _decide(self, raw: str, max_chars: int, what: str) -> TextCategory:
        text, truncated = normalize_text(raw, max_chars)
        note = f" ({what} truncated to {max_chars} chars)" if truncated else ""
        if not text:
            return TextCategory(None, None, 0.0, reason=f"empty {what}")
        frac, n_letters = non_latin_fraction(text)
        if n_letters == 0:
            return TextCategory(None, None, 0.0, reason=f"no letters in the {what}{note}")
        if frac > self.thresholds.max_non_latin_fraction:
            return TextCategory(None, None, 0.0, reason=f"{what} is mostly non-Latin script ({frac:.0%} of letters); "
                                                        f"the model was trained on English titles only{note}")
        s = self.scores(text)
        k = int(np.argmax(s.probs))
        conf = float(s.probs[k])
        guess = self.category_keys[k]
        if s.seen_fraction < self.thresholds.min_seen_fraction:
            return TextCategory(None, None, conf, reason=(
                f"unfamiliar {what}: {s.seen_fraction:.0%} of its 4-5-character n-grams were seen in training "
                f"(< {self.thresholds.min_seen_fraction:.0%}); best guess {guess} at {conf:.2f}{note}"))
        if conf < self.thresholds.min_confidence:
            return TextCategory(None, None, conf, reason=(
                f"low confidence: {conf:.2f} < {self.thresholds.min_confidence:.2f}; best guess {guess}{note}"))
        return TextCategory(self.category_ids[k], guess, conf,
                            reason=f"{what} character n-grams -> {guess} (p={conf:.2f}){note}")

    def categorize(self, title: str, description: str = "") -> TextCategory:
        """Category of a listing from its title (the description is only a fallback when the title says nothing).

        Trained on titles only, so a description (a different register) is read only when the title is unknown,
        under the same thresholds.
        """
        result = self._decide(title or "", MAX_TITLE_CHARS, "title")
        if result.category_id is None and description and description.strip():
            from_desc = self._decide(description, MAX_DESCRIPTION_CHARS, "description")
            if from_desc.category_id is not None:
                return TextCategory(from_desc.category_id, from_desc.category_key, from_desc.confidence,
                                    reason=f"{result.reason}; {from_desc.reason}")
            return TextCategory(None, None, max(result.confidence, from_desc.confidence),
                                reason=f"{result.reason}; {from_desc.reason}")
        return result
