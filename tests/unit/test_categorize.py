"""Text -> category: the shipped model on real and hostile titles, the numpy predictor against scikit-learn,
hashing / n-gram parity, persistence, and the evaluation's handling of data without titles."""
from __future__ import annotations

import csv
import json
import random
import string
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.utils import murmurhash3_32

from shared.config import REPO_ROOT
from shared.taxonomy import load_taxonomy
from shared.text.categorize import (MAX_TITLE_CHARS, TextCategorizer, TextCategory, Thresholds, _murmurhash3_32_py,
                                    char_wb_ngrams, hash_buckets, normalize_text)
from training.text import engine
from training.text import evaluate as text_eval

TAX = load_taxonomy()
SHIPPED = REPO_ROOT / "models" / "text_category"


@pytest.fixture(scope="module")
def shipped() -> TextCategorizer:
    return TextCategorizer.load()


# ------------------------------------------------------------------------------------------- shipped model
def test_shipped_files_are_small_and_described() -> None:
    files = {p.name: p.stat().st_size for p in SHIPPED.iterdir()}
    assert {"model.safetensors", "manifest.json", "MODEL_CARD.md"} <= set(files)
    assert sum(files.values()) < 5_000_000
    meta = json.loads((SHIPPED / "manifest.json").read_text(encoding="utf-8"))
    assert meta["taxonomy_version"] == TAX.version
    for key in ("data_hash", "command", "preprocessing", "metrics", "created", "thresholds"):
        assert key in meta, key
    assert meta["metrics"]["parity_test"]["argmax_mismatches"] == 0
    card = (SHIPPED / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Colorful Fashion" in card and "licence" in card.lower()


@pytest.mark.parametrize("title, key", [
    ("Nike Men Black Striped Polo T-shirt", "tshirt"),
    ("Puma Men Ferrari Black Fleece Jacket", "jacket"),
    ("Lucera Women Silver Ring", "jewellery"),
    ("Tortoise Men Brown Leather Laptop Bag", "bag"),
    ("Forever New Women Printed Black Dress", "dress"),
    ("Park Avenue Men Blue Tie", "accessory"),
    ("Folklore Women Maroon Kurta", "kurta"),
    ("Highlander Men High Original Blue Jeans", "jeans"),
    ("Enroute Men Leather Black Sandals", "footwear"),
    ("Bwitch Red Nightdress", "innerwear"),
    ("Casio Youth Series Unisex Digital Watch", "watch"),
    ("Ray-Ban aviator sunglasses", "eyewear"),
    ("wool beanie hat", "headwear"),
])
def test_real_titles(shipped: TextCategorizer, title: str, key: str) -> None:
    r = shipped.categorize(title)
    assert isinstance(r, TextCategory) and r.source == "text"
    assert r.category_key == key, r
    assert r.category_id == TAX.category(key).id
    assert r.confidence >= shipped.thresholds.min_confidence and r.reason


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("   \t\n  ", "empty"),
    ("!!! ??? ... ###", "no letters"),
    ("🔥🔥🔥 💯 ✨✨ 👗", "no letters"),
    ("12345 67890", "no letters"),
    ("qzxv kwpl mrtg bvcz", ""),
    ("asdkjh qweoiu zmxncb plokij", ""),
    ("나이키 남성 블랙 스트라이프 폴로 티셔츠", "non-Latin"),
    ("नाइकी पुरुषों की काली धारीदार पोलो टी-शर्ट", "non-Latin"),
    ("Мужская черная полосатая футболка поло Nike", "non-Latin"),
    ("ナイキ メンズ ブラック ポロシャツ", "non-Latin"),
])
def test_unknown_inputs(shipped: TextCategorizer, text: str, why: str) -> None:
    r = shipped.categorize(text)
    assert r.category_id is None and r.category_key is None, r
    assert why in r.reason and r.reason


def test_random_letters_are_unknown(shipped: TextCategorizer) -> None:
    rng = random.Random(7)
    answered = []
    for _ in range(200):
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
                 for _ in range(rng.randint(2, 6))]
        r = shipped.categorize(" ".join(words))
        if r.category_id is not None:
            answered.append((" ".join(words), r.category_key, r.confidence))
    assert len(answered) <= 2, answered


def test_very_long_text_is_truncated(shipped: TextCategorizer) -> None:
    junk = "zq" * 500_000
    r = shipped.categorize(junk)
    assert r.category_id is None and "truncated" in r.reason
    text, truncated = normalize_text("Nike Men Black Running Shoes " * 10_000)
    full = "nike men black running shoes " * 20
    assert truncated and len(text) <= MAX_TITLE_CHARS and full.startswith(text + " ")  # cut at a word boundary
    # A long but real title still works from its (kept) beginning.
    r = shipped.categorize("Nike Men Black Running Shoes " * 10_000)
    assert r.category_key == "footwear" and "truncated" in r.reason


def test_description_is_a_fallback_only(shipped: TextCategorizer) -> None:
    r = shipped.categorize("", "Men black leather formal shoes with laces")
    assert r.category_key == "footwear" and "description" in r.reason
    # A readable title wins over the description.
    assert shipped.categorize("Lucera Women Silver Ring", "matching black leather shoes").category_key == "jewellery"
    assert shipped.categorize("", "").category_id is None


def test_probabilities_cover_the_taxonomy(shipped: TextCategorizer) -> None:
    p = shipped.probabilities("Nike Men Black Striped Polo T-shirt")
    assert p.dtype == np.float32 and p.shape == (len(TAX.categories),)
    assert abs(float(p.sum()) - 1.0) < 1e-5 and int(p.argmax()) == TAX.category("tshirt").id


# ----------------------------------------------------------------------------- numpy path vs scikit-learn
def test_murmurhash_fallback_matches_sklearn() -> None:
    rng = random.Random(0)
    keys = ["", "a", "ab", "abc", "abcd", " t-sh", "ü", "운동화", "\U0001F600x"]
    keys += ["".join(chr(rng.randint(32, 3000)) for _ in range(rng.randint(0, 9))) for _ in range(500)]
    for k in keys:
        assert _murmurhash3_32_py(k) == murmurhash3_32(k), k


def test_char_wb_ngrams_match_sklearn() -> None:
    an = CountVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=False).build_analyzer()
    for s in ["nike men black t-shirt", "a b  cd", "x", "", "ab abc abcd abcde abcdef", "é ü 운동화"]:
        assert char_wb_ngrams(s) == an(s), s


def test_hash_buckets_match_hashing_vectorizer() -> None:
    vec = engine.make_vectorizer(2**12)
    text = "nike men black striped polo t-shirt"
    cols = set(vec.transform([text]).indices.tolist())
    assert cols == set(hash_buckets(char_wb_ngrams(text), 2**12).tolist())


TRAIN = [("puma men black running shoes", 12), ("adidas women white sneakers", 12), ("bata men brown sandals", 12),
         ("nike men red t-shirt", 0), ("roadster women blue tshirt", 0), ("puma men grey polo tshirt", 0),
         ("lucera women silver ring", 14), ("estelle women gold necklace", 14), ("toniq women black bangles", 14),
         ("fossil men black watch", 15), ("titan women silver watch", 15), ("casio digital watch", 15)]
HELD_OUT = ["reebok men black shoes", "zzzz qqqq", "silver watch", "red tshirt with print", "", "ring ring ring"]


@pytest.mark.parametrize("n_features", [2**8, 2**14])  # 2**8 forces hash collisions (summed counts)
def test_numpy_predict_matches_sklearn(n_features: int, tmp_path: Path) -> None:
    texts = [normalize_text(t)[0] for t, _ in TRAIN]
    model = engine.fit_sklearn(texts, [c for _, c in TRAIN], C=10.0, n_features=n_features)
    engine.round_to_fp16(model)
    cat = engine.to_categorizer(model, n_docs=len(texts), thresholds=Thresholds(0.5, 0.3))
    probe = texts + [normalize_text(t)[0] for t in HELD_OUT]
    ref = model.decision_function(probe)
    ours = np.stack([cat.logits(t) for t in probe])
    assert ours.shape == ref.shape == (len(probe), 4)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert (ours.argmax(1) == ref.argmax(1)).all()
    p_ref = model.clf.predict_proba(model.features(probe))
    p_ours = np.stack([cat.scores(t).probs for t in probe])
    np.testing.assert_allclose(p_ours, p_ref, atol=1e-5)
    assert engine.parity(model, cat, probe)["argmax_mismatches"] == 0
    # Save / load round trip gives the same numbers.
    cat.save(tmp_path / "m")
    again = TextCategorizer.load(tmp_path / "m")
    np.testing.assert_allclose(np.stack([again.logits(t) for t in probe]), ours, atol=1e-6)
    assert again.category_ids == cat.category_ids and again.thresholds == cat.thresholds


def test_binary_model_is_expanded_to_two_logits() -> None:
    texts = [normalize_text(t)[0] for t, c in TRAIN if c in (12, 15)]
    labels = [c for _, c in TRAIN if c in (12, 15)]
    model = engine.fit_sklearn(texts, labels, C=10.0, n_features=2**12)
    cat = engine.to_categorizer(model, n_docs=len(texts), thresholds=Thresholds(0.5, 0.3))
    assert engine.parity(model, cat, texts + ["black watch", "shoes"]) ["argmax_mismatches"] == 0


def test_threshold_search_rejects_garbage() -> None:
    val = [engine.ScoredText(1, 0.9, 0.9, True)] * 50 + [engine.ScoredText(2, 0.45, 0.8, True)] * 5
    labels = [1] * 50 + [3] * 5  # the low-confidence ones are wrong
    neg = [engine.ScoredText(4, 0.6, 0.1, True)] * 100
    th, info = engine.choose_thresholds(val, labels, neg, wrong_cost=3.0)
    assert th.min_confidence > 0.45 and th.min_seen_fraction > 0.1
    assert info["negatives_accepted_rate"] == 0.0 and info["val_unknown_rate"] == pytest.approx(5 / 55)


def test_negatives_keep_word_lengths() -> None:
    neg = engine.make_negatives(["nike men shoes"], seed=1)
    assert len(neg) == 2 and all([len(w) for w in n.split()] == [4, 3, 5] for n in neg)


# ----------------------------------------------------------------------------------------- evaluation
def test_evaluate_reports_rows_without_titles(shipped: TextCategorizer, tmp_path: Path) -> None:
    cols = ["id", "dataset", "file", "category", "split", "title", "gender", "baseColour", "season", "usage", "kids",
            "box_classes", "n_boxes", "width", "height"]
    rows = [
        dict(id="cfd_1", dataset="colorful_fashion", file="a.jpg", category="shirt", split="test", title="",
             gender="", baseColour="", season="", usage="", kids="", box_classes="shirt;shoe", n_boxes="2",
             width="100", height="200"),
        dict(id="clothing_1", dataset="clothing_dataset", file="b.jpg", category="Shoes", split="test", title="",
             gender="", baseColour="", season="", usage="", kids="False", box_classes="", n_boxes="0",
             width="100", height="100"),
    ]
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    with open(tmp_path / "boxes.csv", "w", newline="", encoding="utf-8") as fh:
        fh.write("id,file,split,box_idx,class,xmin,ymin,xmax,ymax\n"
                 "cfd_1,a.jpg,test,0,shirt,10,10,90,120\ncfd_1,a.jpg,test,1,shoe,20,170,40,190\n")
    res = text_eval.evaluate(shipped, tmp_path, "test", TAX)
    assert res["n_titled"] == 0 and res["n_untitled"] == 2 and "no row" in res["note"]
    assert res["accuracy"] is None and res["title_names_other_item"]["n"] == 0
    assert res["title_names_other_item"]["skipped_no_title_of_category"] == 1
    json.dumps(res)  # JSON-able

    # Now add titled rows: only they are scored, and the street photo gets a title naming its shoe.
    rows.append(dict(id="myntra_1", dataset="myntra_small", file="c.jpg", category="Casual Shoes", split="test",
                     title="Vans Men Black Shoes", gender="Men", baseColour="Black", season="Summer", usage="Casual",
                     kids="", box_classes="", n_boxes="0", width="60", height="80"))
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    res = text_eval.evaluate(shipped, tmp_path, "test", TAX)
    assert res["n_titled"] == 1 and res["accuracy"] == 1.0 and res["macro_f1"] == 1.0
    mm = res["title_names_other_item"]
    assert mm["n"] == 1 and mm["accuracy"] == 1.0 and mm["photo_dominant_accuracy"] == 0.0
    assert mm["examples"][0] == {"image_id": "cfd_1", "dominant": "shirt", "named": "footwear",
                                 "title": "Vans Men Black Shoes"}


def test_evaluate_main_prints_one_json_object(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cols = ["id", "dataset", "file", "category", "split", "title", "gender", "baseColour", "season", "usage",
            "width", "height"]
    with open(tmp_path / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerow(dict(id="myntra_2", dataset="myntra_small", file="d.jpg", category="Watches", split="test",
                        title="Titan Women Silver Watch", gender="Women", baseColour="Silver", season="Winter",
                        usage="Casual", width="60", height="80"))
    assert text_eval.main(["--data", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    res = json.loads(out)
    for key in ("accuracy", "macro_f1", "unknown_rate", "coverage_accuracy", "latency_ms_p50", "latency_ms_p99"):
        assert key in res
    assert res["accuracy"] == 1.0


def test_shipped_model_matches_sklearn_on_the_test_split(shipped: TextCategorizer) -> None:
    """Rebuild scikit-learn's pipeline from the shipped arrays and compare on every test-split title."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    from shared.config import load_settings

    data = Path(load_settings().data_dir)
    if not (data / "manifest.csv").exists():
        pytest.skip(f"no shared data at {data}")
    examples, _ = engine.load_titled(data, ("test",))
    assert len(examples) > 500
    texts = [e.text for e in examples]
    vec = engine.make_vectorizer(shipped.n_features)
    tfidf = TfidfTransformer(sublinear_tf=True, smooth_idf=True, norm="l2")
    idf = np.full(shipped.n_features, shipped.idf_unseen, dtype=np.float64)
    idf[shipped.buckets] = shipped.idf
    tfidf.idf_ = idf
    tfidf.n_features_in_ = shipped.n_features
    clf = LogisticRegression()
    clf.coef_ = shipped.coef.T.astype(np.float64)
    clf.intercept_ = shipped.intercept.astype(np.float64)
    clf.classes_ = np.array(shipped.category_ids)
    clf.n_features_in_ = shipped.buckets.size
    model = engine.SklearnText(vec, tfidf, clf, shipped.buckets, shipped.category_ids)
    par = engine.parity(model, shipped, texts)
    assert par["argmax_mismatches"] == 0 and par["max_abs_logit_diff"] < 1e-3, par
    ref = clf.classes_[model.decision_function(texts).argmax(1)]
    ours = np.array([shipped.category_ids[int(shipped.scores(t).probs.argmax())] for t in texts])
    assert (ref == ours).all()


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lookalike train text"):
        TextCategorizer.load(tmp_path)
