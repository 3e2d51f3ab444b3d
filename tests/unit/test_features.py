"""Appearance codes and colour histograms (shared.vision.features) and the retrieval evaluation's metrics."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from shared.codes.binarize import binarize, n_bytes_for
from shared.codes.hamming import blended_scores
from shared.index.colours import COLOUR_L1_SCALE, colour_distances
from shared.vision import features as F
from shared.vision.features import (FEATURES_VERSION, N_COLOUR_BINS, FeatureExtractor, colour_histogram,
                                    dequantize_colours, extract_features, foreground_mask, quantize_colours)


def colour_distance(q: np.ndarray, hists: np.ndarray) -> np.ndarray:
    """The served colour distance of float histograms (quantised as the index stores them)."""
    return colour_distances(quantize_colours(q[None])[0], quantize_colours(hists))


class TinyEncoder(nn.Module):
    """A random-weight stand-in with the encoder interface: forward_maps -> {16: (n, 6, h/16, w/16), 32: (n, 10, ...)}.

    Its last convs have no activation, like EfficientNet's block outputs, so maps take both signs.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.s16 = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, 6, 4, stride=4))
        self.s32 = nn.Sequential(nn.ReLU(), nn.Conv2d(6, 10, 3, stride=2, padding=1))

    def forward_maps(self, x: torch.Tensor, *, upto: int = 32) -> dict[int, torch.Tensor]:
        m16 = self.s16(x)
        return {16: m16, 32: self.s32(m16)} if upto == 32 else {16: m16}


D_TINY = 16  # 6 + 10 channels, average pooling


def tiny_extractor(n_bits: int = 24, *, pooling: str = "avg") -> FeatureExtractor:
    """Random projection centred on the mean descriptor of a few photos (as the shipped one is on TRAIN)."""
    rng = np.random.default_rng(0)
    d = D_TINY * (2 if pooling == "avgmax" else 1)
    ex = FeatureExtractor(encoder=TinyEncoder().eval(), mean=np.zeros(d, np.float32),
                          projection=rng.standard_normal((d, n_bits)).astype(np.float32), input_size=64,
                          pooling=pooling, colour_weight=0.3)
    ex.mean = ex.describe([photo(100 + i) for i in range(8)]).mean(axis=0).astype(np.float32)
    return ex


def photo(seed: int, size: tuple[int, int] = (60, 80)) -> Image.Image:
    """A product-photo-like image: a random-texture item on a white background."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    arr[h // 5: 4 * h // 5, w // 5: 4 * w // 5] = rng.integers(0, 200, (4 * h // 5 - h // 5, 4 * w // 5 - w // 5, 3))
    return Image.fromarray(arr)


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def on_white(rgb: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (60, 80), (255, 255, 255))
    img.paste(Image.new("RGB", (30, 40), rgb), (15, 20))
    return img


# ------------------------------------------------------------------------------------------------ appearance codes


def test_shapes_and_dtypes() -> None:
    ex = tiny_extractor(24)
    out = extract_features(ex, [photo(1), photo(2), photo(3, (120, 90))], [None, (5, 5, 50, 70), None])
    assert out.feats.shape == (3, 24) and out.feats.dtype == np.float32
    assert out.codes.shape == (3, n_bytes_for(24)) == (3, 3) and out.codes.dtype == np.uint8
    assert out.colours.shape == (3, N_COLOUR_BINS) and out.colours.dtype == np.float32
    assert ex.n_bits == 24 and ex.n_bytes == 3


def test_empty_batch() -> None:
    out = extract_features(tiny_extractor(24), [], [])
    assert out.feats.shape == (0, 24) and out.codes.shape == (0, 3) and out.colours.shape == (0, N_COLOUR_BINS)


def test_deterministic_and_batch_independent() -> None:
    ex = tiny_extractor(32)
    imgs = [photo(i) for i in range(5)]
    a = extract_features(ex, imgs, None, batch_size=5)
    b = extract_features(ex, imgs, None, batch_size=5)
    c = extract_features(ex, imgs, None, batch_size=1)
    assert np.array_equal(a.codes, b.codes) and np.array_equal(a.feats, b.feats)
    np.testing.assert_allclose(a.feats, c.feats, atol=1e-4)
    # Different images give different codes (the features respond to content).
    assert len({bytes(row) for row in a.codes}) == 5


def test_codes_are_binarize_of_feats_msb_first() -> None:
    ex = tiny_extractor(12)  # not a multiple of 8: 2 bytes, the 4 unused low bits stay 0
    out = extract_features(ex, [photo(i) for i in range(6)])
    assert out.codes.shape == (6, 2)
    assert np.array_equal(out.codes, binarize(out.feats))
    # feature j -> bit 7 - j % 8 of byte j // 8
    for j in range(12):
        bit = (out.codes[:, j // 8] >> (7 - j % 8)) & 1
        assert np.array_equal(bit.astype(bool), out.feats[:, j] > 0)
    assert not (out.codes[:, 1] & 0x0F).any()


def test_ingestion_and_query_paths_agree() -> None:
    """Ingestion passes the listing photo + ROI; a crop-to-search query passes the crop itself: same code."""
    ex = tiny_extractor(32)
    img = photo(7, (120, 160))
    roi = (20.0, 30.0, 100.0, 140.0)
    ingest = extract_features(ex, [img], [roi])
    query = extract_features(ex, [img.crop((20, 30, 100, 140))], [None])
    assert np.array_equal(ingest.codes, query.codes)
    np.testing.assert_allclose(ingest.feats, query.feats, atol=1e-6)
    np.testing.assert_allclose(ingest.colours, query.colours, atol=1e-7)
    # And a different ROI of the same photo gives another code.
    other = extract_features(ex, [img], [(0.0, 0.0, 60.0, 60.0)])
    assert not np.array_equal(other.codes, ingest.codes)


def test_pooling_cells_cover_the_roi_only() -> None:
    """Letterbox padding and pixels outside the ROI are not pooled: only the cells whose centre is on the ROI."""
    padded = Image.new("RGB", (64, 128), (255, 255, 255))  # letterboxed to 128: pasted at x 32..96
    box = F._roi_in_letterbox(padded, (0, 32, 64, 96), 128)
    assert box == (32.0, 32.0, 96.0, 96.0)
    cells = F._content_cells([box], 128, 16)[0, 0]
    expected = torch.zeros(8, 8)
    expected[2:6, 2:6] = 1
    assert torch.equal(cells, expected)
    # A 60x80 product photo letterboxed to 224: stride-32 cells 1..5 of 7 columns (centres 48..176 within 28..196).
    cells = F._content_cells([F._roi_in_letterbox(photo(1), None, 224)], 224, 32)[0, 0]
    assert cells.sum(dim=0).nonzero().flatten().tolist() == [1, 2, 3, 4, 5] and cells[:, 0].sum() == 0
    # A sliver thinner than a cell still pools its nearest cell.
    assert F._content_cells([(40.0, 40.0, 41.0, 41.0)], 64, 32).sum() == 1
    ex = tiny_extractor(16)
    pooled = F.pooled_maps(ex.encoder, [padded, photo(2)], [(0, 32, 64, 96), None], input_size=128)
    assert pooled["avg16"].shape == (2, 6) and pooled["max32"].shape == (2, 10)
    assert np.isfinite(pooled["max32"]).all()


def test_avgmax_doubles_descriptor() -> None:
    ex = tiny_extractor(8, pooling="avgmax")
    d = ex.describe([photo(1)])
    assert d.shape == (1, 2 * D_TINY)
    # each of the four parts (avg16, max16, avg32, max32) is unit-norm
    parts = np.split(d[0], [6, 12, 22])
    for p in parts:
        assert abs(np.linalg.norm(p) - 1.0) < 1e-5


def test_projection_checks() -> None:
    with pytest.raises(TypeError):
        FeatureExtractor(encoder=TinyEncoder(), mean=np.zeros(16), projection=np.zeros((16, 8), np.float32))
    with pytest.raises(ValueError):
        FeatureExtractor(encoder=TinyEncoder(), mean=np.zeros(15, np.float32), projection=np.zeros((16, 8), np.float32))


def test_load_round_trip(tmp_path) -> None:
    from training.retrieval.tune import fit_projection, write_features_dir

    rng = np.random.default_rng(1)
    train = rng.standard_normal((200, D_TINY)).astype(np.float32)
    mean, proj = fit_projection(train, "itq", 8)
    meta = {"version": "tiny-v1", "file": "projection.safetensors", "encoder": {"source": "registry"},
            "input_size": 64, "layers": [16, 32], "pooling": "avg", "colour_weight": 0.25}
    write_features_dir(tmp_path, mean=mean, proj=proj, meta=meta)
    ex = FeatureExtractor.load(tmp_path, encoder=TinyEncoder())
    assert ex.version == "tiny-v1" and ex.n_bits == 8 and ex.colour_weight == 0.25
    np.testing.assert_array_equal(ex.projection, proj.astype(np.float16).astype(np.float32))
    assert extract_features(ex, [photo(2)]).codes.shape == (1, 1)


@pytest.mark.parametrize("kind", ["pca", "pcarot", "itq", "rand", "centre"])
def test_fit_projection_shapes_and_seed(kind: str) -> None:
    from training.retrieval.tune import fit_projection

    train = np.random.default_rng(2).standard_normal((300, 20)).astype(np.float32) + 3.0
    m1, p1 = fit_projection(train, kind, 8)
    m2, p2 = fit_projection(train, kind, 8)
    assert np.array_equal(p1, p2) and np.array_equal(m1, m2)
    assert p1.shape == ((20, 8) if kind != "centre" else (20, 20)) and p1.dtype == np.float32
    feats = (train - m1) @ p1
    # Centred projections give balanced bits: no bit is constant on the training set.
    assert ((feats > 0).mean(axis=0) > 0.05).all() and ((feats > 0).mean(axis=0) < 0.95).all()


def test_shipped_configuration_loads() -> None:
    """models/features/ is shipped with the repo: this test never skips."""
    ex = FeatureExtractor.load()
    assert ex.version == FEATURES_VERSION
    assert 256 <= ex.n_bits <= 1024 and ex.n_bits % 64 == 0
    assert 0.0 <= ex.colour_weight <= 1.0
    assert ex.mean.shape == (ex.projection.shape[0],)
    a = extract_features(ex, [photo(1, (120, 160))])
    b = extract_features(ex, [photo(1, (120, 160))])
    assert a.codes.shape == (1, ex.n_bytes) and np.array_equal(a.codes, b.codes)
    # Roughly balanced bits on a real photo-like input (the projection is centred on the train mean).
    assert 0.1 < np.unpackbits(a.codes).mean() < 0.9


# ------------------------------------------------------------------------------------------------ colour


def test_histogram_sums_to_one_and_responds_to_colour() -> None:
    red, blue = colour_histogram(solid((220, 20, 20))), colour_histogram(solid((20, 40, 220)))
    assert red.shape == (N_COLOUR_BINS,) and red.dtype == np.float32
    assert abs(red.sum() - 1.0) < 1e-6 and abs(blue.sum() - 1.0) < 1e-6
    assert np.argmax(red) != np.argmax(blue)
    assert np.argmax(red) // (F.N_SAT * F.N_VAL) == 0  # red is hue bin 0 (hue shifted by half a bin)
    assert np.argmax(blue) // (F.N_SAT * F.N_VAL) == 5  # 240 degrees
    assert colour_distance(red, blue[None, :])[0] == pytest.approx(1.0)
    assert colour_distance(red, red[None, :])[0] == pytest.approx(0.0)


def test_hue_wraps_around_red() -> None:
    """Reds on both sides of hue 0 (slightly orange, slightly magenta) land in the same hue bin."""
    a = colour_histogram(solid((220, 30, 20)))
    b = colour_histogram(solid((220, 20, 40)))
    assert np.argmax(a) == np.argmax(b)


def test_greys_go_to_achromatic_bins() -> None:
    white, black = colour_histogram(solid((250, 250, 250)), use_mask=False), colour_histogram(solid((5, 5, 5)))
    assert np.argmax(white) == N_COLOUR_BINS - 1 and np.argmax(black) == N_COLOUR_BINS - 4


def test_mask_excludes_white_background() -> None:
    img = on_white((200, 30, 30))
    masked = colour_histogram(img)
    unmasked = colour_histogram(img, use_mask=False)
    assert masked[N_COLOUR_BINS - 1] < 0.02  # almost no white left
    assert unmasked[N_COLOUR_BINS - 1] > 0.5  # the background dominates without the mask
    assert masked[np.argmax(masked)] > 0.95
    # The same item on white and on a plain blue backdrop: masked histograms agree, unmasked ones don't.
    on_blue = Image.new("RGB", (60, 80), (30, 60, 200))
    on_blue.paste(Image.new("RGB", (30, 40), (200, 30, 30)), (15, 20))
    assert colour_distance(masked, colour_histogram(on_blue)[None])[0] < 0.05
    assert colour_distance(unmasked, colour_histogram(on_blue, use_mask=False)[None])[0] > 0.5


def test_mask_keeps_everything_on_busy_border() -> None:
    rng = np.random.default_rng(0)
    street = rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)
    assert foreground_mask(street).all()
    # A white item filling a white frame would be masked away entirely: fall back to every pixel.
    assert foreground_mask(np.full((30, 30, 3), 255, np.uint8)).all()
    fg = foreground_mask(np.asarray(on_white((0, 200, 0))))
    assert fg.sum() == 30 * 40 and fg[20:60, 15:45].all()


def test_mask_keeps_white_inside_item() -> None:
    """A white logo enclosed by the item is foreground: only white connected to the border is background."""
    img = on_white((10, 10, 150))
    img.paste(Image.new("RGB", (10, 10), (255, 255, 255)), (25, 35))
    fg = foreground_mask(np.asarray(img))
    assert fg[35:45, 25:35].all() and not fg[0:10, 0:10].any()


def test_quantize_and_blended_score() -> None:
    h = colour_histogram(on_white((200, 30, 30)))[None]
    q = quantize_colours(h)
    assert q.dtype == np.uint8 and q.shape == (1, N_COLOUR_BINS)
    np.testing.assert_allclose(dequantize_colours(q), h, atol=0.5 / 255 + 1e-7)
    with pytest.raises(TypeError):
        quantize_colours(h.astype(np.float64))
    d = blended_scores(np.array([0, 128, 256]), np.array([0, 255, 510]), weight=0.25, n_bits=256,
                       aux_scale=COLOUR_L1_SCALE)
    np.testing.assert_allclose(d, [0.0, 0.5, 1.0])
    d = blended_scores(np.array([256]), np.array([0]), weight=0.25, n_bits=256, aux_scale=COLOUR_L1_SCALE)
    np.testing.assert_allclose(d, [0.75])


# ------------------------------------------------------------------------------------------------ evaluation metrics


def test_ranking_metrics_known_values() -> None:
    from training.retrieval.engine import altered_metrics, ranking_metrics

    # One query (row 0 of the index, itself) against 5 items: relevant rows 2 and 4; ranked 2, 1, 4, 3.
    dist = np.array([[0.0, 0.2, 0.1, 0.4, 0.3]])
    rel = np.array([[True, False, True, False, True]])
    m = ranking_metrics(dist, rel, np.array([0]))
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert m["p_at_1"] == 1.0 and m["p_at_5"] == pytest.approx(2 / 4)  # only 4 others exist
    # Ties rank by row: original row 3 tied with row 1 -> rank 2.
    a = altered_metrics(np.array([[0.5, 0.1, 0.9, 0.1]]), np.array([3]))
    assert a["p_at_1_altered"] == 0.0 and a["r_at_10_altered"] == 1.0
    a = altered_metrics(np.array([[0.5, 0.1, 0.9, 0.1]]), np.array([1]))
    assert a["p_at_1_altered"] == 1.0


def test_alter_is_seeded_and_changes_the_image() -> None:
    from training.retrieval.data import alter

    img = photo(4, (120, 160))
    a = np.asarray(alter(img, random.Random(5)))
    b = np.asarray(alter(img, random.Random(5)))
    c = np.asarray(alter(img, random.Random(6)))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_isolate_item_undoes_padding_on_a_colour() -> None:
    """A product shot, padded on a coloured backdrop, is brought back to the framing of the original."""
    from shared.vision.features import isolate_item

    original = on_white((200, 30, 30))  # a 30x40 red item on a 60x80 white photo
    padded = Image.new("RGB", (100, 110), (40, 160, 60))
    padded.paste(original, (25, 12))
    a, b = isolate_item(original), isolate_item(padded)
    assert abs(a.size[0] - b.size[0]) <= 3 and abs(a.size[1] - b.size[1]) <= 3
    assert a.size[0] < 40 and a.size[1] < 50  # tightened to the item (plus a small margin)
    for view in (a, b):
        arr = np.asarray(view)
        assert tuple(arr[arr.shape[0] // 2, arr.shape[1] // 2]) == (200, 30, 30)
        assert not (np.abs(arr.astype(int) - (40, 160, 60)).max(axis=2) < 30).any()  # no green left
    # A busy (street) crop is left as it is.
    street = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    assert isolate_item(street) is not None and isolate_item(street).size == street.size


def test_relevance_rule() -> None:
    """Same category, and same colour only when the query has a colour label."""
    from pathlib import Path

    from training.retrieval.data import RetrievalItem, relevance

    def item(i: int, cat: int, colour: str | None) -> RetrievalItem:
        return RetrievalItem(id=str(i), dataset="x", path=Path("x"), split="test", category_id=cat, colour=colour,
                             roi=None)

    index = [item(0, 1, "colour.red"), item(1, 1, "colour.blue"), item(2, 1, None), item(3, 2, "colour.red")]
    rel = relevance([index[0], index[2]], index)
    assert rel[0].tolist() == [True, False, False, False]  # red query: only red items of its category
    assert rel[1].tolist() == [True, True, True, False]  # no colour label: category only


def test_ground_truth_roi_is_largest_box_of_the_category() -> None:
    from types import SimpleNamespace

    from training.retrieval.data import ground_truth_roi

    boxes = (SimpleNamespace(category_id=4, xyxy=(0, 0, 10, 10)), SimpleNamespace(category_id=4, xyxy=(0, 0, 30, 20)),
             SimpleNamespace(category_id=7, xyxy=(0, 0, 100, 100)))
    assert ground_truth_roi(SimpleNamespace(boxes=boxes, category_id=4)) == (0, 0, 30, 20)
    assert ground_truth_roi(SimpleNamespace(boxes=(), category_id=4)) is None


def test_tanh_activation_keeps_the_code() -> None:
    """A learned configuration's float feature is tanh of the projection: same signs, so the same code."""
    ex = tiny_extractor(32)
    imgs = [photo(i) for i in range(4)]
    plain = extract_features(ex, imgs)
    ex.activation = "tanh"
    squashed = extract_features(ex, imgs)
    np.testing.assert_allclose(squashed.feats, np.tanh(plain.feats), atol=1e-6)
    assert np.array_equal(squashed.codes, plain.codes) and np.abs(squashed.feats).max() <= 1.0
    with pytest.raises(ValueError):
        FeatureExtractor(encoder=ex.encoder, mean=ex.mean, projection=ex.projection, activation="relu")


def test_street_to_shop_uses_catalogue_only() -> None:
    """Street-photo queries are ranked against catalogue items only; other street photos never count."""
    from pathlib import Path

    from training.retrieval.data import RetrievalItem
    from training.retrieval.evaluate import street_to_shop

    def item(i: int, dataset: str, cat: int) -> RetrievalItem:
        return RetrievalItem(id=str(i), dataset=dataset, path=Path("x"), split="test", category_id=cat, colour=None,
                             roi=None)

    items = [item(0, "colorful_fashion", 1), item(1, "colorful_fashion", 1), item(2, "myntra_small", 1),
             item(3, "myntra_small", 2), item(4, "clothing_dataset", 2)]
    feats = np.array([[1, 0], [1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    codes = binarize(np.array([[1, 1], [1, 1], [1, 1], [-1, 1], [-1, -1]], np.float32))
    colours = np.full((5, N_COLOUR_BINS), 1.0 / N_COLOUR_BINS, np.float32)
    res = street_to_shop(items, np.arange(5), feats, feats, codes, colours, colour_weight=0.1, n_bits=2)
    assert res["n_queries"] == 2 and res["n_catalogue"] == 3
    m = res["rows"]["float_projected_cosine"]
    assert m["map"] == 1.0 and m["p_at_1"] == 1.0 and m["n_queries"] == 2  # item 2 is the one relevant, ranked first
    assert res["rows"]["combined"]["p_at_1"] == 1.0
