"""The retrieval embedding trainer (training/retrieval/embedding.py): same descriptor as serving, losses, export."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from shared.codes.binarize import binarize
from shared.vision.features import (FeatureExtractor, descriptors_from_pooled, extract_features, isolate_item,
                                    pooled_maps)
from shared.vision.registry import build_encoder
from training.retrieval import embedding as E

SIZE = 64


def photo(seed: int, size: tuple[int, int] = (60, 80)) -> Image.Image:
    """A product-photo-like image: a random-texture item on a white background."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.full((h, w, 3), 255, dtype=np.uint8)
    arr[h // 5: 4 * h // 5, w // 5: 4 * w // 5] = rng.integers(0, 200, (4 * h // 5 - h // 5, 4 * w // 5 - w // 5, 3))
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def net() -> E.EmbeddingNet:
    torch.manual_seed(0)
    n = E.EmbeddingNet(build_encoder("efficientnet_lite0"), n_bits=64, frozen_blocks=3)
    with torch.no_grad():  # a non-trivial centring, as after training
        n.mean.copy_(torch.randn_like(n.mean) * 0.01)
    return n.eval()


def test_frozen_prefix_and_head_parameters(net: E.EmbeddingNet) -> None:
    trainable = {k for k, p in net.named_parameters() if p.requires_grad}
    assert "mean" in trainable and "projection" in trainable
    assert not any(k.startswith(("encoder._conv_stem", "encoder._blocks.0.", "encoder._blocks.2.")) for k in trainable)
    assert any(k.startswith("encoder._blocks.3.") for k in trainable)
    assert not any(k.startswith("encoder._conv_head") for k in trainable)  # unused by the feature
    net.train()
    assert not net.encoder.training  # BatchNorm statistics stay frozen
    net.eval()


def test_training_path_equals_serving_path(net: E.EmbeddingNet) -> None:
    """What the trainer optimises is exactly what extract_features computes (isolate, letterbox, masked pooling)."""
    crops = [photo(i, (60 + 10 * i, 80)) for i in range(3)]
    views = [E.encoder_view(c, SIZE) for c in crops]
    x = torch.stack([v[0] for v in views])
    with torch.no_grad():
        z = net(x, E.batch_cells([v[1] for v in views], SIZE)).numpy()
    ex = FeatureExtractor(encoder=net.encoder, mean=net.mean.detach().numpy().astype(np.float32),
                          projection=net.projection.detach().numpy().astype(np.float32), input_size=SIZE,
                          pooling="avgmax", activation="tanh")
    out = extract_features(ex, crops)
    np.testing.assert_allclose(out.feats, z, atol=1e-4)
    assert np.array_equal(out.codes, binarize(z)) or np.unpackbits(out.codes ^ binarize(z)).sum() <= 1
    # The evaluation's cached path (pooled maps of isolate_item views) gives the same codes.
    pooled = pooled_maps(net.encoder, [isolate_item(c) for c in crops], None, input_size=SIZE)
    assert np.array_equal(binarize(ex.project(descriptors_from_pooled(pooled, pooling="avgmax"))), out.codes)


def test_losses_reward_matching_twins() -> None:
    torch.manual_seed(0)
    base = torch.randn(8, 32)
    good = torch.tanh(torch.cat([base, base + 0.01 * torch.randn(8, 32)]))
    bad = torch.tanh(torch.randn(16, 32))
    cat = torch.arange(16) % 4
    col = torch.full((16,), -1)
    lg = E.losses(good, cat, col, None, temperature=0.1)
    lb = E.losses(bad, cat, col, None, temperature=0.1)
    assert lg["inst"] < 0.1 < lb["inst"]
    assert set(lg) == {"inst", "sup", "quant"} and all(torch.isfinite(v) for v in lg.values())
    # A queue of keys is accepted and only adds negatives (the instance loss cannot drop).
    queue = (torch.nn.functional.normalize(torch.randn(20, 32), dim=1), torch.arange(20) % 4, torch.full((20,), -1))
    assert E.losses(good, cat, col, queue, temperature=0.1)["inst"] >= lg["inst"] - 1e-6
    # Saturated embeddings have no quantisation penalty.
    assert E.losses(torch.sign(base).repeat(2, 1), cat, col, None, temperature=0.1)["quant"] == 0


def test_same_label_rule() -> None:
    cat = torch.tensor([1, 1, 1, 2])
    col = torch.tensor([5, 6, -1, 5])
    m = E.same_label(cat, col, cat, col)
    assert m[0].tolist() == [True, False, True, False]  # other colour: no; unlabelled colour: category decides
    assert m[2].tolist() == [True, True, True, False]


def test_train_view_and_lr_schedule() -> None:
    x, box = E.train_view(photo(3, (120, 160)), random.Random(0), SIZE)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    assert 0 <= box[0] < box[2] <= SIZE and 0 <= box[1] < box[3] <= SIZE
    assert E.lr_factor(0.0, 0, 10) == pytest.approx(0.1)
    assert E.lr_factor(0.5, 100, 10) == pytest.approx(0.5)
    assert E.lr_factor(1.0, 100, 10) == pytest.approx(0.0)


def test_export_loads_as_features_folder(tmp_path, net: E.EmbeddingNet) -> None:
    """The exported folder (fp16 encoder + projection, manifest) serves through FeatureExtractor.load."""
    opt = torch.optim.AdamW(net.parameters())
    ckpt = tmp_path / "last.pt"
    E.save_checkpoint(ckpt, net, opt, {"step": 1, "elapsed": 1.0, "epoch": 0, "pos": 4, "order": np.arange(8)})
    meta = E.export(ckpt, tmp_path / "features", input_size=SIZE, n_bits=64, frozen_blocks=3, command="test",
                    colour_weight=0.2)
    ex = FeatureExtractor.load(tmp_path / "features")
    assert ex.version == meta["version"] and ex.activation == "tanh" and ex.n_bits == 64
    assert ex.colour_weight == 0.2 and ex.input_size == SIZE
    crops = [photo(i) for i in range(4)]
    views = [E.encoder_view(c, SIZE) for c in crops]
    with torch.no_grad():
        z = net(torch.stack([v[0] for v in views]), E.batch_cells([v[1] for v in views], SIZE)).numpy()
    out = extract_features(ex, crops)
    np.testing.assert_allclose(out.feats, z, atol=0.05)  # fp16 weights
    assert (np.unpackbits(out.codes) == np.unpackbits(binarize(z))).mean() > 0.95


def test_init_from_an_export_continues_the_same_network(tmp_path, net: E.EmbeddingNet) -> None:
    """--init-from: a fresh net loaded from an exported folder computes what the exported net did (fp16 weights,
    beta folded into the projection)."""
    opt = torch.optim.AdamW(net.parameters())
    ckpt = tmp_path / "last.pt"
    E.save_checkpoint(ckpt, net, opt, {"step": 1, "elapsed": 1.0, "epoch": 0, "pos": 4, "order": np.arange(8),
                                       "beta": 2.0})
    E.export(ckpt, tmp_path / "features", input_size=SIZE, n_bits=64, frozen_blocks=3, command="test", tag="t1")
    fresh = E.EmbeddingNet(build_encoder("efficientnet_lite0"), n_bits=64, frozen_blocks=3)
    E.init_from_features(fresh, tmp_path / "features")
    fresh.eval()
    views = [E.encoder_view(photo(i), SIZE) for i in range(3)]
    x, cells = torch.stack([v[0] for v in views]), E.batch_cells([v[1] for v in views], SIZE)
    net.beta = 2.0
    try:
        with torch.no_grad():
            np.testing.assert_allclose(fresh(x, cells).numpy(), net(x, cells).numpy(), atol=0.05)
    finally:
        net.beta = 1.0
    assert FeatureExtractor.load(tmp_path / "features").version.endswith("-t1")


def test_sign_codes_straight_through() -> None:
    z = torch.tensor([[0.3, -0.2, 0.9]], requires_grad=True)
    s = E.sign_st(z)
    assert s.tolist() == [[1.0, -1.0, 1.0]]
    (s * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert z.grad.tolist() == [[1.0, 2.0, 3.0]]  # the gradient passes as if through the identity


def test_stop_budget() -> None:
    assert E.stop_budget(None, 10, 0.0) == 600.0
    soon = (E.datetime.now(E.timezone.utc) + E.timedelta(minutes=5)).isoformat()
    assert 240 < E.stop_budget(soon, 10, 0.0) <= 300
    assert 240 + 100 < E.stop_budget(soon, 10, 100.0) <= 400  # resuming: what was trained counts
    assert E.stop_budget(soon, 2, 0.0) == 120.0  # --max-minutes still caps
