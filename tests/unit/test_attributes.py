"""AttributeNet and its decoding: vocabulary masks, guided generation, batching, the train/evaluate entry points on a
tiny data folder, and the shipped checkpoint on real test images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.config import REPO_ROOT
from shared.taxonomy import BOS, EOS, N_SPECIAL, PAD, load_taxonomy
from shared.vision.attributes import (AttributeNet, AttributePrediction, DecodeRules, analyze_images,
                                      build_attribute_net, decode, encode_images, pad_sequences,
                                      recognize_attributes, sequence_nll)
from shared.vision.attributes import LoadedNetwork, load_attribute_network
from training.attributes.engine import SetMetrics

SHIPPED = REPO_ROOT / "models" / "attributes"
TAX = load_taxonomy()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The dev box is shared by concurrent trainings: oversubscribed intra-op threads make tiny nets 5x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_loaded() -> LoadedNetwork:
    torch.manual_seed(0)
    net = build_attribute_net(encoder="resception_small", embed_dim=16, hidden=32, layers=2).eval()
    return LoadedNetwork(net=net, meta={}, taxonomy_version=TAX.version, input_size=64)


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8)) for i in range(n)]


def _check_valid(pred: AttributePrediction) -> None:
    rules = DecodeRules(TAX)
    assert 0 <= pred.category_id < len(TAX.categories)
    assert pred.category_key == TAX.categories[pred.category_id].key
    ids = [a.attribute_id for a in pred.attributes]
    assert len(ids) == len(set(ids))
    assert ids == TAX.canonical_order(ids)
    counts: dict[str, int] = {}
    for a in pred.attributes:
        attr = TAX.attributes[a.attribute_id]
        assert TAX.applies(a.attribute_id, pred.category_id), (attr.key, pred.category_key)
        assert a.key == attr.key
        assert 0.0 < a.prob <= 1.0
        counts[attr.group] = counts.get(attr.group, 0) + 1
    for g, c in counts.items():
        assert c <= int(rules.max_count[TAX.attribute_groups.index(g)])
    assert 0.0 < pred.category_prob <= 1.0


def test_rules_mask_first_step_to_categories_and_later_to_applicable_attributes() -> None:
    rules = DecodeRules(TAX)
    neg = torch.tensor([-1])
    m0 = rules.allowed(neg, neg, neg, torch.tensor([0]))[0]
    assert m0[N_SPECIAL:N_SPECIAL + len(TAX.categories)].all()
    assert m0.sum() == len(TAX.categories)
    cat = TAX.category("footwear").id
    m1 = rules.allowed(torch.tensor([cat]), neg, neg, torch.tensor([0]))[0]
    assert m1[EOS] and not m1[BOS] and not m1[PAD] and not m1[N_SPECIAL:N_SPECIAL + len(TAX.categories)].any()
    allowed_attrs = {i for i in range(len(TAX.attributes)) if m1[rules.attr0 + i]}
    assert allowed_attrs == {a.id for a in TAX.attributes_for(cat)}
    # after one gender value, no second gender; after a colour, a second colour is still allowed
    gender = TAX.attribute("gender.women").id
    st = rules.advance(torch.tensor([rules.attr0 + gender]), torch.tensor([cat]), neg, neg, torch.tensor([0]))
    m2 = rules.allowed(*st)[0]
    assert not any(m2[rules.attr0 + a.id] for a in TAX.attributes if a.group == "gender")
    colour = [a for a in TAX.attributes_for(cat) if a.group == "colour"]
    st = rules.advance(torch.tensor([rules.attr0 + colour[0].id]), *st)
    m3 = rules.allowed(*st)[0]
    assert m3[rules.attr0 + colour[1].id] and not m3[rules.attr0 + colour[0].id]
    st = rules.advance(torch.tensor([rules.attr0 + colour[1].id]), *st)
    m4 = rules.allowed(*st)[0]
    assert not any(m4[rules.attr0 + a.id] for a in colour)


class _Rigged(torch.nn.Module):
    """A stand-in decoder whose logits favour one fixed order of tokens, to test the masks against its wishes."""

    def __init__(self, prefs: torch.Tensor) -> None:
        super().__init__()
        self.prefs = prefs

    def initial_state(self, ctx: torch.Tensor):
        return torch.zeros(1, ctx.shape[0], 1), torch.zeros(1, ctx.shape[0], 1)

    def step(self, ctx, tokens, state):
        return self.prefs.expand(ctx.shape[0], 1, -1).clone(), state


def test_decode_masks_what_the_network_wants_but_is_illegal() -> None:
    prefs = torch.zeros(1, 1, TAX.n_tokens)
    prefs[..., EOS] = -5.0
    top = TAX.category("tshirt").id
    prefs[..., N_SPECIAL + top] = 3.0
    for a in TAX.attributes:  # every attribute is loved, including ones that never apply to t-shirts
        prefs[..., N_SPECIAL + len(TAX.categories) + a.id] = 2.0 + 0.001 * a.id
    rules = DecodeRules(TAX)
    for beam in (1, 3):
        (c, cp, attrs), = decode(_Rigged(prefs), torch.zeros(1, 4), rules, beam=beam)
        assert c == top
        ids = [a for a, _ in attrs]
        assert ids and all(TAX.applies(a, top) for a in ids)
        assert ids == TAX.canonical_order(ids)
    # guided: the forced category wins even though the network prefers another
    (c, cp, attrs), = decode(_Rigged(prefs), torch.zeros(1, 4), rules, categories=[TAX.category("bag").id])
    assert c == TAX.category("bag").id
    assert cp < 0.2  # the model's own (low) probability of the forced category is reported
    assert all(TAX.applies(a, c) for a, _ in attrs)


@pytest.mark.parametrize("beam", [1, 3])
def test_recognize_attributes_valid_batched_and_deterministic(tiny_loaded: LoadedNetwork, beam: int) -> None:
    imgs = _images(4)
    preds = recognize_attributes(tiny_loaded, imgs, beam=beam, batch_size=3)
    assert len(preds) == 4
    for p in preds:
        _check_valid(p)
        assert not p.guided
    again = recognize_attributes(tiny_loaded, imgs[1:2], beam=beam)
    assert again[0].category_id == preds[1].category_id
    assert [a.attribute_id for a in again[0].attributes] == [a.attribute_id for a in preds[1].attributes]


def test_guided_generation_forces_category(tiny_loaded: LoadedNetwork) -> None:
    imgs = _images(3)
    cat = TAX.category("dress").id
    preds = recognize_attributes(tiny_loaded, imgs, category_id=cat, beam=2)
    assert all(p.category_id == cat and p.guided for p in preds)
    for p in preds:
        _check_valid(p)
    mixed = recognize_attributes(tiny_loaded, imgs, category_id=[None, cat, None])
    assert [p.guided for p in mixed] == [False, True, False]
    assert mixed[1].category_id == cat
    with pytest.raises(ValueError):
        recognize_attributes(tiny_loaded, imgs, category_id=len(TAX.categories))


def test_encode_matches_the_analysis_pass(tiny_loaded: LoadedNetwork) -> None:
    imgs = _images(3)
    enc = encode_images(tiny_loaded, imgs)
    preds, enc2 = analyze_images(tiny_loaded, imgs)
    d = tiny_loaded.net.encoder.embedding_dim
    assert enc.embedding.shape == (3, d) and enc.embedding.dtype == np.float32
    assert sorted(enc.maps) == [16, 32]
    assert enc.maps[16].shape == (3, tiny_loaded.net.encoder.map_channels[16], 4, 4)
    assert enc.maps[32].shape[2:] == (2, 2)
    np.testing.assert_allclose(enc.embedding, enc2.embedding, rtol=1e-5, atol=1e-5)
    # the embedding is the pooled stride-32 map of the same pass
    np.testing.assert_allclose(enc.embedding, enc.maps[32].mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    assert len(preds) == 3
    assert all(m.flags["C_CONTIGUOUS"] and m.dtype == np.float32 for m in enc.maps.values())
    empty = encode_images(tiny_loaded, [])
    assert empty.embedding.shape == (0, d)


def test_teacher_forcing_loss_drops_when_overfitting_one_batch() -> None:
    torch.manual_seed(0)
    net = build_attribute_net(encoder="resception_small", embed_dim=16, hidden=32, dropout=0.0)
    seqs = [TAX.sequence(TAX.category("shirt").id, [TAX.attribute("colour.blue").id]),
            TAX.sequence(TAX.category("bag").id, [])]
    toks = pad_sequences(seqs)
    assert toks[1, -1] == PAD and toks[0, 0] == BOS
    x = torch.randn(2, 3, 32, 32)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, k = sequence_nll(net(x, toks[:, :-1]), toks[:, 1:])
        assert k == len(seqs[0]) - 1 + len(seqs[1]) - 1
        opt.zero_grad()
        (loss / k).backward()
        opt.step()
        losses.append(loss.item() / k)
    assert losses[-1] < 0.5 * losses[0]


def test_set_metrics_hand_example() -> None:
    m = SetMetrics(TAX)
    shirt, blue, red, men = (TAX.category("shirt").id, TAX.attribute("colour.blue").id,
                             TAX.attribute("colour.red").id, TAX.attribute("gender.men").id)
    m.add(shirt, [blue, men], shirt, [blue])        # P 2/3, R 2/2
    m.add(TAX.category("bag").id, [], shirt, [red])  # P 0/1, R 0/2
    s = m.summary()
    assert s["precision"] == pytest.approx((2 / 3 + 0) / 2)
    assert s["recall"] == pytest.approx((1 + 0) / 2)
    assert s["category_accuracy"] == 0.5
    assert s["attribute_precision_micro"] == pytest.approx(1 / 2)
    assert s["attribute_recall_micro"] == pytest.approx(1 / 2)
    assert s["group_accuracy"]["colour"] == {"accuracy": 0.5, "n": 2, "family_accuracy": 0.5,
                                             "undisputed": {"n": 2, "accuracy": 0.5, "family_accuracy": 0.5}}


def test_set_metrics_colour_family_and_disputed_labels() -> None:
    m = SetMetrics(TAX)
    shirt = TAX.category("shirt").id
    blue, navy, white, off_white = (TAX.attribute(k).id for k in ("colour.blue", "colour.navy", "colour.white",
                                                                   "colour.off_white"))
    m.add(shirt, [navy], shirt, [blue])                              # wrong shade, right family
    m.add(shirt, [off_white], shirt, [white], disputed=("colour",))  # same, but the label is disputed
    m.add(shirt, [blue], shirt, [white])                             # wrong family
    c = m.summary()["group_accuracy"]["colour"]
    assert c["accuracy"] == 0.0 and c["family_accuracy"] == pytest.approx(2 / 3) and c["n"] == 3
    assert c["undisputed"] == {"n": 2, "accuracy": 0.0, "family_accuracy": 0.5}


def test_images_without_attribute_labels_are_not_taught_to_stop() -> None:
    from training.attributes.data import Sample

    shirt, blue = TAX.category("shirt").id, TAX.attribute("colour.blue").id
    street = tuple(TAX.sequence(shirt, []))  # BOS, shirt, EOS: a Colorful Fashion crop names only its category
    s = Sample("cf", "colorful_fashion", "train", Path("x.jpg"), (0, 0, 1, 1), shirt, (), street)
    assert s.targets(TAX) == (BOS, TAX.category_token(shirt), PAD)  # the category is scored, the stop is not
    product = tuple(TAX.sequence(shirt, [blue]))
    p = Sample("m", "myntra_small", "train", Path("y.jpg"), None, shirt, (blue,), product)
    assert p.targets(TAX) == product and product[-1] == EOS


def test_colour_features_follow_the_pixels() -> None:
    from shared.vision import presets
    from shared.vision.attributes import COLOUR_BINS, colour_features

    def bins_of(rgb: tuple[int, int, int]) -> np.ndarray:
        # a coloured item in the left half of a white product photo, letterboxed as the encoder sees it
        img = Image.new("RGB", (60, 80), (255, 255, 255))
        img.paste(Image.new("RGB", (24, 60), rgb), (6, 10))
        px = presets.to_uint8_tensor(presets.letterbox(img, 160))[None]
        glob, cells = colour_features(px)
        assert glob.shape == (1, COLOUR_BINS) and cells.shape == (1, COLOUR_BINS, 10, 10)
        assert glob.sum() == pytest.approx(1.0) and np.allclose(cells.sum(1), 1.0)
        return glob[0], cells[0]

    red, red_cells = bins_of((200, 20, 20))
    blue, _ = bins_of((40, 60, 220))
    navy, _ = bins_of((20, 25, 90))
    # the white background is masked out of the foreground histogram: one dominant bin per colour, all different
    assert red.max() > 0.8 and blue.max() > 0.8 and navy.max() > 0.8
    assert len({int(red.argmax()), int(blue.argmax()), int(navy.argmax())}) == 3
    # cells see the item on the left and the white background on the right
    assert red_cells[red.argmax(), 5, 3] > 0.9 and red_cells[red.argmax(), 5, 8] == 0.0


def test_colour_branch_feeds_the_context_and_survives_a_checkpoint(tmp_path: Path) -> None:
    from shared.vision.attributes import COLOUR_BINS, prepare_batch
    from training.attributes.engine import export_checkpoint

    torch.manual_seed(0)
    net = build_attribute_net(encoder="resception_small", embed_dim=16, hidden=32, colour_bins=COLOUR_BINS).eval()
    imgs = [Image.new("RGB", (40, 50), c) for c in ((200, 20, 20), (20, 20, 200))]
    x, colour = prepare_batch(imgs, 64, colour=True)
    with torch.no_grad():
        emb, maps = net.encode(x)
        ctx = net.context(emb, colour, maps[32])
        assert not torch.allclose(ctx, net.img_proj(emb))  # the histograms change the context
        with pytest.raises(ValueError):
            net.context(emb)
    export_checkpoint(net, tmp_path / "ck", {
        "version": "test-colour", "taxonomy_version": TAX.version, "preprocessing": {"input_size": 64},
        "architecture": {"encoder": "resception_small", "embed_dim": 16, "hidden": 32, "layers": 2,
                         "colour_bins": COLOUR_BINS}})
    loaded = load_attribute_network(tmp_path / "ck")
    assert loaded.net.colour_bins == COLOUR_BINS
    for p in recognize_attributes(loaded, imgs):
        _check_valid(p)


def _tiny_data(root: Path) -> Path:
    """A data folder laid out like ../shared/data with 9 synthetic images, every split represented."""
    (root / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(1)
    kinds = [("myntra_small", "Tshirts", "Men", "Blue"), ("myntra_small", "Handbags", "Women", "Black"),
             ("clothing_dataset", "T-Shirt", "", "")]
    for i in range(9):
        ds, cat, gender, colour = kinds[i % 3]
        f = f"images/{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(root / f)
        rows.append({"id": f"x_{i}", "dataset": ds, "file": f, "category": cat, "split": ("train", "val", "test")[i // 3],
                     "title": "", "gender": gender, "baseColour": colour, "season": "Summer" if ds != "clothing_dataset" else "",
                     "usage": "Casual" if ds != "clothing_dataset" else "", "kids": "False", "width": 40, "height": 50})
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_train_resume_and_evaluate_entry_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.attributes import evaluate, train

    data = _tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--data", str(data), "--encoder", "resception_small", "--input-size", "48", "--freeze-stride", "0",
              "--hidden", "16", "--embed-dim", "8", "--batch-size", "4", "--threads", "1", "--run-dir", str(run),
              "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert train.main(common + ["--epochs", "1"]) == 0
    assert (run / "best" / "model.safetensors").exists() and (run / "last.pt").exists()
    assert train.main(common + ["--epochs", "2", "--resume", "--promote", str(tmp_path / "ship")]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    manifest = json.loads((tmp_path / "ship" / "manifest.json").read_text())
    assert manifest["taxonomy_version"] == TAX.version and manifest["preprocessing"]["input_size"] == 48
    capsys.readouterr()
    assert evaluate.main(["--data", str(data), "--checkpoint", str(tmp_path / "ship"), "--split", "test", "--json",
                          "--latency-images", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    res = json.loads(out[0])
    for key in ("precision", "recall", "nll"):
        assert isinstance(res[key], float)
    assert list(res["splits"]) == ["test"] and res["splits"]["test"]["n"] == 3
    assert res["splits"]["test"]["guided"]["category_accuracy"] == 1.0
    assert res["latency"]["threads"] == 1


# ---------------------------------------------------------------- the shipped checkpoint (never skipped)

@pytest.fixture(scope="module")
def shipped() -> LoadedNetwork:
    return load_attribute_network(SHIPPED)


def test_shipped_checkpoint_files() -> None:
    assert (SHIPPED / "MODEL_CARD.md").exists()
    size = (SHIPPED / "model.safetensors").stat().st_size
    assert size <= 25 * 1024 * 1024
    from safetensors import safe_open

    with safe_open(str(SHIPPED / "model.safetensors"), "pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes


def test_shipped_checkpoint_recognizes_real_test_images(shipped: LoadedNetwork, data_dir: Path) -> None:
    """Labelled test photos of ../shared/data (skipped, with the reason, where the folder is absent)."""
    from training.attributes.data import load_image, load_samples

    samples = [s for s in load_samples(data_dir, ["test"]) if s.dataset == "myntra_small"][:40]
    preds = recognize_attributes(shipped, [load_image(s) for s in samples])
    for p in preds:
        _check_valid(p)
    acc = np.mean([p.category_id == s.category_id for p, s in zip(preds, samples)])
    assert acc >= 0.7, acc
    guided = recognize_attributes(shipped, [load_image(s) for s in samples[:8]], category_id=samples[0].category_id)
    assert all(p.guided and p.category_id == samples[0].category_id for p in guided)
    # the shipped CPU network runs channels_last; what it hands the appearance feature is plain C-order numpy
    enc = encode_images(shipped, [load_image(s) for s in samples[:2]])
    size = shipped.input_size
    assert enc.embedding.shape == (2, shipped.net.encoder.embedding_dim)
    for stride, m in enc.maps.items():
        assert m.shape == (2, shipped.net.encoder.map_channels[stride], size // stride, size // stride)
        assert m.flags["C_CONTIGUOUS"] and m.dtype == np.float32


def test_required_group_is_named_before_the_sequence_ends() -> None:
    rules = DecodeRules(TAX, None, ("colour",))
    neg = torch.tensor([-1])
    shirt = torch.tensor([TAX.category("shirt").id])
    m = rules.allowed(shirt, neg, neg, torch.tensor([0]))[0]
    groups = {TAX.attributes[i].group for i in range(rules.n_attr) if m[rules.attr0 + i]}
    assert not m[EOS] and groups == {"gender", "colour"}  # no EOS, nothing ranked after colour, until a colour
    blue = TAX.attribute("colour.blue").id
    after = rules.allowed(*rules.advance(torch.tensor([rules.attr0 + blue]), shirt, neg, neg, torch.tensor([0])))[0]
    assert after[EOS] and after[rules.attr0 + TAX.attribute("pattern.striped").id]
    # greedy decoding of a network that wants to stop at once still names a colour
    torch.manual_seed(0)
    net = build_attribute_net(encoder="resception_small", embed_dim=16, hidden=32).eval()
    with torch.no_grad():
        net.out[1].bias[EOS] = 50.0
        ctx = torch.randn(3, 16)
        free = decode(net, ctx, DecodeRules(TAX), categories=[shirt.item()] * 3)
        forced = decode(net, ctx, rules, categories=[shirt.item()] * 3)
    assert all(attrs == [] for _, _, attrs in free)
    for _, _, attrs in forced:  # a gender may come first (it ranks before colour); the sequence ends at the colour
        assert [TAX.attributes[a].group for a, _ in attrs][-1:] == ["colour"], attrs
