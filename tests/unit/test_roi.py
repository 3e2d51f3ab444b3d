"""Guided ROI detection: network build, guided filtering and fallbacks, product boxes, AP maths,
checkpoint round trip, the train/evaluate entry points on a tiny data folder, and the shipped checkpoint."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.config import REPO_ROOT, load_settings
from shared.taxonomy import load_taxonomy
from shared.vision import roi
from training.detector import data as ddata
from training.detector import engine

TAX = load_taxonomy()
CAT = {c.key: c.id for c in TAX.categories}
DATA_DIR = Path(load_settings().data_dir)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The dev machine is shared by training runs: a second intra-op thread only adds contention here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def random_loaded(one_thread) -> roi.LoadedDetector:
    torch.manual_seed(0)
    # A low box threshold so random weights still return boxes to check; few proposals keep it fast.
    net = roi.build_roi_detector(box_score_thresh=0.0, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=10,
                                 box_detections_per_img=10).eval()
    return roi.LoadedDetector(net=net, meta={}, taxonomy=TAX)


def _product_image(w: int = 120, h: int = 160, box=(30, 40, 90, 140), colour=(20, 40, 160)) -> Image.Image:
    arr = np.full((h, w, 3), 250, dtype=np.uint8)
    arr[box[1]:box[3], box[0]:box[2]] = colour
    return Image.fromarray(arr)


# ------------------------------------------------------------------------------------------- network


def test_builder_shapes_and_size(random_loaded: roi.LoadedDetector) -> None:
    net = random_loaded.net
    assert net.roi_heads.box_predictor.cls_score.out_features == 20
    assert net.transform.max_size == roi.SERVING_SIZE
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params * 2 < 25e6, "fp16 weights must stay under 25 MB"
    # The transform normalises [0, 1] inputs exactly like the backbone's (x - 127) / 128.
    x = torch.full((3, 32, 32), 200 / 255.0)
    assert torch.allclose(net.transform.normalize(x), torch.full_like(x, (200 - 127) / 128), atol=1e-6)


def test_detect_rois_random_net_boxes_in_image(random_loaded: roi.LoadedDetector) -> None:
    img = _product_image(w=150, h=210)
    res = roi.detect_rois(random_loaded, img, score_threshold=0.0)
    assert isinstance(res, roi.RoiResult) and res.boxes
    scores = [r.score for r in res.boxes]
    assert scores == sorted(scores, reverse=True)
    for r in res.boxes:
        x0, y0, x1, y1 = r.xyxy
        assert 0 <= x0 <= x1 <= 150 and 0 <= y0 <= y1 <= 210  # mapped back to the input's pixels
        assert 0 <= r.category_id < 19
    assert res.chosen == res.boxes[0] and res.fallback == "none"


def test_detect_rois_is_deterministic_and_batch_matches(random_loaded: roi.LoadedDetector) -> None:
    a, b = _product_image(200, 200), _product_image(200, 200, box=(10, 10, 120, 90), colour=(200, 30, 30))
    single = [roi.detect_rois(random_loaded, im, score_threshold=0.0) for im in (a, b)]
    batch = roi.detect_rois_batch(random_loaded, [a, b], category_ids=[None, None], score_threshold=0.0)
    assert roi.detect_rois(random_loaded, a, score_threshold=0.0) == single[0]
    for s, bt in zip(single, batch):
        assert np.allclose(s.chosen.xyxy, bt.chosen.xyxy, atol=1e-2)
        assert s.chosen.category_id == bt.chosen.category_id
    assert roi.detect_rois_batch(random_loaded, []) == []
    with pytest.raises(ValueError):
        roi.detect_rois_batch(random_loaded, [a], category_ids=[1, 2])


# --------------------------------------------------------------------------------------- guided mode


def _r(cat: str, score: float, x0: float = 0) -> roi.Roi:
    return roi.Roi(xyxy=(x0, 0.0, x0 + 10, 10.0), category_id=CAT[cat], score=score)


def test_compatible_is_same_great_category_group() -> None:
    tshirt = CAT["tshirt"]
    comp = roi.compatible_categories(TAX, tshirt)
    assert tshirt not in comp
    assert comp == {c.id for c in TAX.categories if c.group == "top" and c.id != tshirt}
    assert CAT["jeans"] not in comp and CAT["footwear"] not in comp


def test_choose_roi_guided_and_fallbacks() -> None:
    rois = [_r("footwear", 0.9), _r("shirt", 0.8, 5), _r("tshirt", 0.4, 7), _r("tshirt", 0.6, 3)]
    plain = roi.choose_roi(rois, width=50, height=60, category_id=None)
    assert plain.fallback == "none" and plain.chosen.category_id == CAT["footwear"] and len(plain.boxes) == 4
    own = roi.choose_roi(rois, width=50, height=60, category_id=CAT["tshirt"])
    assert own.fallback == "none" and own.chosen.score == 0.6
    assert {r.category_id for r in own.boxes} == {CAT["tshirt"]}
    near = roi.choose_roi(rois[:2], width=50, height=60, category_id=CAT["tshirt"])
    assert near.fallback == "compatible_category" and near.chosen.category_id == CAT["shirt"]
    whole = roi.choose_roi(rois[:1], width=50, height=60, category_id=CAT["jeans"])
    assert whole.fallback == "whole_image" and whole.chosen.xyxy == (0.0, 0.0, 50.0, 60.0)
    assert whole.chosen.category_id == CAT["jeans"] and whole.boxes == []
    empty = roi.choose_roi([], width=50, height=60, category_id=None)
    assert empty.fallback == "whole_image"
    with pytest.raises(KeyError):
        roi.choose_roi(rois, width=50, height=60, category_id=99)


# ----------------------------------------------------------------------------------- product boxes


def test_product_box_finds_item_on_white() -> None:
    box, source = ddata.product_box(np.asarray(_product_image()))
    assert source == "foreground"
    assert np.allclose(box, (30, 40, 90, 140), atol=2)


def test_product_box_falls_back_to_whole_image() -> None:
    flat = np.full((80, 60, 3), 240, dtype=np.uint8)
    assert ddata.product_box(flat) == ((0.0, 0.0, 60.0, 80.0), "whole_image")
    noisy = np.random.default_rng(0).integers(0, 256, (80, 60, 3), dtype=np.uint8)
    assert ddata.product_box(noisy)[1] == "whole_image"  # textured border: no background colour
    with pytest.raises(TypeError):
        ddata.product_box(flat.astype(np.float32))


# ------------------------------------------------------------------------------------------ AP maths


def test_average_precision_cases() -> None:
    gt = {0: np.array([[0, 0, 10, 10]], dtype=np.float32), 1: np.array([[0, 0, 10, 10]], dtype=np.float32)}
    good = np.array([0, 0, 10, 10], dtype=np.float32)
    bad = np.array([50, 50, 60, 60], dtype=np.float32)
    assert engine.average_precision([(0, 0.9, good), (1, 0.8, good)], gt, 0.5) == pytest.approx(1.0)
    # A false positive ranked first: precision 1/2 then 2/3, made monotone (VOC) -> 2/3 at both recall steps.
    ap = engine.average_precision([(0, 0.95, bad), (0, 0.9, good), (1, 0.8, good)], gt, 0.5)
    assert ap == pytest.approx(2 / 3)
    # Ranked last, the false positive costs nothing.
    assert engine.average_precision([(0, 0.9, good), (1, 0.8, good), (0, 0.1, bad)], gt, 0.5) == pytest.approx(1.0)
    # A duplicate of a matched box is a false positive, not a second hit.
    assert engine.average_precision([(0, 0.9, good), (0, 0.85, good)], gt, 0.5) == pytest.approx(0.5)
    shifted = np.array([0, 0, 10, 13], dtype=np.float32)  # IoU 10/13 = 0.77
    assert engine.average_precision([(0, 0.9, shifted)], {0: gt[0]}, 0.7) == pytest.approx(1.0)
    assert engine.average_precision([(0, 0.9, shifted)], {0: gt[0]}, 0.8) == 0.0
    assert np.isnan(engine.average_precision([], {}, 0.5))


def _sample(i: int, boxes, labels, guided: int) -> ddata.DetectionSample:
    return ddata.DetectionSample(id=f"s{i}", dataset="x", path=Path("."), split="test", width=100, height=100,
                                 boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
                                 labels=np.array(labels, dtype=np.int64), guided_category=guided,
                                 box_source="annotated")


def test_guided_rejects_other_class_false_positives() -> None:
    shirt, tshirt = CAT["shirt"], CAT["tshirt"]
    box = [10, 10, 60, 60]
    samples = [_sample(0, [box], [shirt], shirt), _sample(1, [box], [tshirt], tshirt)]
    # Image 0 (a shirt listing) also gets a confident wrong 'tshirt' box on the same item.
    dets = [engine.Detections(np.array([box, box], np.float32), np.array([tshirt, shirt]), np.array([0.95, 0.9], np.float32)),
            engine.Detections(np.array([box], np.float32), np.array([tshirt]), np.array([0.8], np.float32))]
    res = engine.table3(samples, dets, num_categories=len(TAX.categories))
    assert res["guided"]["0.5"] == pytest.approx(1.0)
    assert res["non_guided"]["0.5"] < 1.0
    assert set(res["guided"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"}


# ---------------------------------------------------------------------------- checkpoint round trip


def test_export_and_load_detector_round_trip(tmp_path: Path, random_loaded: roi.LoadedDetector) -> None:
    from training.detector.train import export

    export(random_loaded.net, tmp_path, {"taxonomy_version": TAX.version, "num_classes": 20,
                                         "preprocessing": {"max_size": roi.SERVING_SIZE}})
    loaded = roi.load_detector(tmp_path, device="cpu")
    assert not loaded.net.training
    for (k, a), b in zip(random_loaded.net.state_dict().items(), loaded.net.state_dict().values()):
        if a.is_floating_point():
            assert torch.allclose(a, b, atol=2e-3, rtol=2e-3), k
    bad = json.loads((tmp_path / "manifest.json").read_text())
    bad["taxonomy_version"] = "0.0"
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError):
        roi.load_detector(tmp_path)
    with pytest.raises(FileNotFoundError):
        roi.load_detector(tmp_path / "missing")


# ------------------------------------------------------------------ entry points on a tiny data folder


def _tiny_data(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows, boxes = [], []
    specs = [("myntra_1", "myntra_small", "Tshirts", (10, 15, 50, 70)),
             ("myntra_2", "myntra_small", "Jeans", (20, 5, 40, 75)),
             ("cfd_1", "colorful_fashion", "jacket", None)]
    for ident, dataset, cat, box in specs:
        img = _product_image(60, 80, box or (5, 5, 55, 40), (30, 60, 200))
        img.save(root / "images" / f"{ident}.jpg")
        rows.append({"id": ident, "dataset": dataset, "file": f"images/{ident}.jpg", "category": cat, "split": "train",
                     "title": "", "gender": "Men", "baseColour": "Blue", "season": "", "usage": "", "kids": "",
                     "width": 60, "height": 80})
    boxes.append({"id": "cfd_1", "class": "jacket", "xmin": 5, "ymin": 5, "xmax": 55, "ymax": 40})
    boxes.append({"id": "cfd_1", "class": "shoe", "xmin": 10, "ymin": 60, "xmax": 25, "ymax": 75})
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(root / "boxes.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(boxes[0]))
        w.writeheader()
        w.writerows(boxes)
    return root


def test_train_resume_and_evaluate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.detector import evaluate, train

    data = _tiny_data(tmp_path / "data")
    out = tmp_path / "run"
    common = ["--data", str(data), "--out", str(out), "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"),
              "--no-val", "--time-budget", "0", "--ckpt-every", "1"]
    assert train.main(common + ["--max-steps", "1"]) == 0
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 1
    assert train.main(common + ["--max-steps", "2", "--resume"]) == 0
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 2
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["taxonomy_version"] == TAX.version and manifest["n_train_images"] == 3
    capsys.readouterr()
    rc = evaluate.main(["--data", str(data), "--split", "train", "--checkpoint", str(out / "export"), "--json",
                        "--latency-images", "1", "--latency-threads", "1", "--record"])
    assert rc == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert len(stdout) == 1
    res = json.loads(stdout[0])
    assert set(res["guided"]) == {"0.5", "0.6", "0.7", "0.8", "0.9"} and set(res["non_guided"]) == set(res["guided"])
    assert {"per_class", "latency_ms", "all_boxes_gt"} <= set(res)
    assert res["latency_ms"]["threads_1"]["p50"] > 0
    assert res["per_class"]["footwear"]["n_gt_all"] == 1 and res["per_class"]["footwear"]["n_gt_listing"] == 0
    recorded = json.loads((out / "export" / "manifest.json").read_text())["metrics"]["train"]
    assert recorded["guided"] == res["guided"]
    # A fine-tune continuation from that checkpoint with scale / colour jitter and street photos repeated.
    ft = tmp_path / "ft"
    assert train.main(common[:2] + ["--out", str(ft)] + common[4:] + [
        "--max-steps", "1", "--init-from", str(out / "export"), "--train-sizes", "64,96", "--colour-jitter", "0.3",
        "--street-repeat", "2"]) == 0
    assert "--init-from" in json.loads((ft / "export" / "manifest.json").read_text())["command"]
    capsys.readouterr()
    assert evaluate.main(["--data", str(data), "--split", "train", "--checkpoint", str(ft / "export"), "--json",
                          "--latency-images", "0", "--size", "96", "--datasets", "colorful_fashion"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["size"] == 96 and res["datasets"] == {"colorful_fashion": 1}


def test_scale_jitter_restores_serving_size_and_street_repeat() -> None:
    net = roi.build_roi_detector(rpn_pre_nms_top_n_train=20, rpn_post_nms_top_n_train=10, box_batch_size_per_image=8)
    roi.freeze_backbone_bn_and_stem(net)
    net.train()
    s = ddata.DetectionSample(id="a", dataset="colorful_fashion", path=Path("a"), split="train", width=40, height=60,
                              boxes=np.array([[5, 5, 30, 50]], np.float32), labels=np.array([CAT["dress"]]),
                              guided_category=CAT["dress"], box_source="annotated")
    p = ddata.DetectionSample(**{**s.__dict__, "id": "b", "dataset": "myntra_small"})
    pixels = [torch.randint(0, 255, (3, 60, 40), dtype=torch.uint8)] * 2
    seen = []
    opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=1e-4)
    import random
    engine.train_steps(net, opt, [s, p], pixels, [[0], [1]], device=torch.device("cpu"), rng=random.Random(0),
                       on_step=lambda losses: seen.append(losses["loss"]) or True, sizes=(64, 96), colour=0.3)
    assert len(seen) == 2 and net.transform.max_size == roi.SERVING_SIZE
    batches = engine.epoch_batches([s, p], 1, seed=0, epoch=0, repeat={"colorful_fashion": 3})
    assert sorted(i for b in batches for i in b) == [0, 0, 0, 1]
    img = torch.rand(3, 8, 8)
    out = engine.colour_jitter(img, random.Random(1), 0.3)
    assert out.shape == img.shape and 0 <= out.min() and out.max() <= 1


# ------------------------------------------------------------------------------- shipped checkpoint


def test_shipped_checkpoint_finds_products() -> None:
    ckpt = REPO_ROOT / "models" / "detector"
    assert (ckpt / "detector.safetensors").stat().st_size < 25e6
    loaded = roi.load_detector(ckpt, device="cpu")
    assert loaded.meta["metrics"]["test"]["guided"]["0.5"] >= 0.7
    assert (ckpt / "MODEL_CARD.md").exists()
    if not DATA_DIR.exists():  # the data folder is not part of the repo: check the synthetic product only
        res = roi.detect_rois(loaded, _product_image(), category_id=CAT["tshirt"], score_threshold=0.05)
        assert res.fallback in roi.FALLBACKS
        return
    items = [it for it in ddata.select_items(DATA_DIR, splits=("test",)) if it.dataset == "myntra_small"][:8]
    hits = 0
    for it in items:
        sample, = ddata.build_samples([it])[0]
        res = roi.detect_rois(loaded, ddata.image_of(sample), category_id=sample.guided_category)
        hits += int(engine.box_iou(np.array([res.chosen.xyxy]), sample.boxes).max() >= 0.5)
    assert hits >= 6, f"only {hits}/8 product boxes found"


# ------------------------------------------------------------------------------- items and the item ranker


def _box(box, cat, score) -> roi.Roi:
    return roi.Roi(xyxy=tuple(float(v) for v in box), category_id=CAT[cat], score=score)


def test_merge_items_joins_cross_class_duplicates_only() -> None:
    from shared.vision.items import merge_items

    rois = [_box((10, 10, 110, 210), "shirt", 0.9), _box((12, 11, 111, 205), "jacket", 0.6),  # one top, two classes
            _box((30, 260, 60, 290), "footwear", 0.95), _box((70, 260, 100, 290), "footwear", 0.2),
            _box((0, 0, 5, 5), "bag", 0.02)]  # too weak to be an item of its own
    items = merge_items(rois, merge_iou=0.6, min_score=0.1)
    assert [TAX.category(i.category_id).key for i in items] == ["footwear", "shirt", "footwear"]
    top = items[1]
    assert top.class_scores == {CAT["shirt"]: 0.9, CAT["jacket"]: 0.6} and top.xyxy == (10, 10, 110, 210)
    assert len(merge_items(rois, merge_iou=0.99, min_score=0.1)) == 4  # no merge: the jacket stays its own item
    assert merge_items([], merge_iou=0.5, min_score=0.1) == []


def test_ranker_prefers_the_garment_and_probabilities_sum_to_one() -> None:
    from shared.vision.items import area_score_ranker, item_features

    rois = [_box((40, 20, 200, 300), "dress", 0.8), _box((60, 320, 90, 345), "footwear", 0.97),
            _box((150, 150, 190, 200), "bag", 0.9)]
    ranker = area_score_ranker(min_score=0.3)
    items = ranker.rank(rois, 256, 360)
    assert TAX.category(items[0].category_id).key == "dress"
    assert abs(sum(i.probability for i in items) - 1) < 1e-9 and items[0].probability > 0.5
    assert [i.probability for i in items] == sorted((i.probability for i in items), reverse=True)
    f = item_features(items, 256, 360)
    assert f.shape[0] == 3 and np.isfinite(f).all()
    assert ranker.rank([], 256, 360) == []
    weak = ranker.rank(rois + [_box((200, 10, 240, 40), "eyewear", 0.1)], 256, 360)
    assert len(weak) == 3  # a weak detection takes part in the choice but is not listed (show_score 0.3)


def test_ranker_json_round_trip_and_shipped_ranker(tmp_path: Path) -> None:
    from shared.vision.items import DEFAULT_RANKER, ItemRanker, area_score_ranker, load_ranker

    r = area_score_ranker(merge_iou=0.7, min_score=0.05)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(r.to_json()))
    back = load_ranker(path)
    assert np.allclose(back.weights, r.weights) and back.merge_iou == 0.7 and back.min_score == 0.05
    with pytest.raises(ValueError, match="weights"):
        ItemRanker.from_json({**r.to_json(), "weights": [1.0, 2.0]})
    assert load_ranker(tmp_path / "absent.json").version == "area-score"  # the documented fallback rule
    shipped = load_ranker(DEFAULT_RANKER)
    if DEFAULT_RANKER.exists():
        test = shipped.meta["metrics"]["test"]["option1_pick_hit50"]
        assert test["ranker"]["colorful_fashion"] > test["highest_score"]["colorful_fashion"]


def test_item_category_never_contradicts_the_box() -> None:
    from shared.pipeline import item_category
    from shared.vision.items import Item

    shoe = Item(xyxy=(0, 0, 10, 10), category_id=CAT["footwear"], score=0.95, class_scores={CAT["footwear"]: 0.95})
    cat, source, conf, searched = item_category(TAX, shoe, CAT["shirt"], 0.9)  # the crop reads "shirt": refused
    assert (cat, source, conf) == (CAT["footwear"], "detector", 0.95) and searched == [(CAT["footwear"], 0.95)]
    top = Item(xyxy=(0, 0, 10, 10), category_id=CAT["shirt"], score=0.7,
               class_scores={CAT["shirt"]: 0.7, CAT["jacket"]: 0.4})
    cat, source, conf, searched = item_category(TAX, top, CAT["tshirt"], 0.6)  # same group: the crop decides
    assert (cat, source) == (CAT["tshirt"], "detector+image") and conf == pytest.approx(0.6)
    assert [c for c, _ in searched] == [CAT["tshirt"], CAT["shirt"], CAT["jacket"]]  # uncertain: likely ones too
    cat, source, conf, searched = item_category(TAX, top, CAT["shirt"], 0.9)  # both agree: confident, one category
    assert cat == CAT["shirt"] and conf > 0.9 and len(searched) == 1
    cat, source, conf, searched = item_category(TAX, None, CAT["bag"], 0.5)  # no detection: the image decides
    assert (cat, source, searched) == (CAT["bag"], "image", [(CAT["bag"], 0.5)])


def test_ranker_fit_shrinks_to_the_area_score_rule_and_folds_are_stable() -> None:
    from shared.vision.items import area_score_ranker
    from training.detector import ranker

    rng = np.random.default_rng(0)
    feats, pos, ids = [], [], []
    for k in range(40):  # the positive is the largest item in 3 of 4 photos, else the highest-scoring one
        n = 3
        boxes = [(0, 0, 20 + 10 * j + rng.integers(0, 5), 30) for j in range(n)]
        scores = rng.uniform(0.3, 0.99, n)
        its = [ranker.vitems.Item(xyxy=tuple(map(float, b)), category_id=CAT["shirt"], score=float(sc))
               for b, sc in zip(boxes, scores)]
        feats.append(ranker.vitems.item_features(its, 100, 100))
        p = np.zeros(n, bool)
        p[n - 1 if k % 4 else int(np.argmax(scores))] = True
        pos.append(p)
        ids.append(f"cfd_{k}")
    photos = ranker.Photos(feats, pos, ["colorful_fashion"] * 40, ids)
    prior = area_score_ranker()
    w, mean, std = ranker.fit(photos, l2=1e6, mask=ranker.feature_mask("size"), prior=True)
    # A huge penalty gives back the prior rule: the same first item in every photo.
    assert (ranker.first_item_hits(photos, w, mean, std) == ranker.first_item_hits(photos, prior.weights, prior.mean,
                                                                                      prior.std)).all()
    assert not ranker.feature_mask("size")[ranker.vitems.FEATURES_NUMERIC.index("score")]
    assert ranker.feature_mask("all").all() and not ranker.feature_mask("prior").any()
    assert [ranker.fold_of(i, 5) for i in ids] == [ranker.fold_of(i, 5) for i in ids]
    cfg = ranker.Config(0.8, 0.1, "size", 0.1)
    hits = ranker.cross_validate(cfg, ranker.Photos([], [], [], []), photos, folds=4)
    assert hits.shape == (40,) and hits.mean() >= 0.5


def test_option1_metrics_on_hand_made_photos() -> None:
    from shared.vision.items import Item
    from training.detector import ranker

    def sample(boxes, labels, cat):
        return ddata.DetectionSample(id="x", dataset="colorful_fashion", path=Path("x"), split="test", width=100,
                                     height=100, boxes=np.array(boxes, np.float32), labels=np.array(labels),
                                     guided_category=cat, box_source="annotated")

    s1 = sample([(0, 0, 50, 80), (10, 85, 20, 95)], [CAT["dress"], CAT["footwear"]], CAT["dress"])
    s2 = sample([(0, 0, 50, 50)], [CAT["jacket"]], CAT["jacket"])
    good = [Item(xyxy=(0, 0, 50, 78), category_id=CAT["dress"], score=0.9),
            Item(xyxy=(10, 85, 20, 95), category_id=CAT["bag"], score=0.9)]  # right box, wrong class: no recall
    bad = [Item(xyxy=(60, 60, 90, 90), category_id=CAT["jacket"], score=0.9)]
    assert ranker.pick_hit50([s1, s2], [good, bad]) == {"colorful_fashion": 0.5, "overall": 0.5}
    assert ranker.item_recall50([s1, s2], [good, bad])["overall"] == 0.3333  # rounded to 4 places
