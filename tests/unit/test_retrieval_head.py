"""Head-only retraining of a learned features folder (training/retrieval/head.py) on cached descriptors."""
from __future__ import annotations

import argparse
import types
from dataclasses import dataclass

import numpy as np
import torch

from shared.vision.features import FeatureExtractor
from shared.vision.registry import build_encoder
from training.retrieval import embedding as E
from training.retrieval import head as H


@dataclass(frozen=True)
class Item:
    id: str
    split: str
    category_id: int
    colour: str | None


def test_head_training_improves_held_out_altered_pairs() -> None:
    """Altered copies = clean descriptor + strong noise in a fixed subspace: a trained head learns to ignore it."""
    rng = np.random.default_rng(0)
    n, d, bits = 2000, 864, 64
    clean = rng.standard_normal((n, d)).astype(np.float32)
    rows = np.arange(1500, dtype=np.int64)
    noise = np.zeros((1500, d), np.float32)
    noise[:, :400] = 3.0 * rng.standard_normal((1500, 400))
    items = [Item(str(i), "train" if i < 1800 else "val", i % 5, None) for i in range(n)]
    ex = types.SimpleNamespace(mean=np.zeros(d, np.float32),
                               projection=(0.05 * rng.standard_normal((d, bits))).astype(np.float32))
    args = argparse.Namespace(holdout=200, lr=3e-3, epochs=10, batch=64, keys=128, beta_final=2.0, temperature=0.1,
                              sup_weight=0.0, st_weight=0.5, quant_weight=0.3, log_every=1000)
    mean, proj, log = H.train_head(ex, clean[rows] + noise, rows, clean, items, args)
    assert log["end"]["p1_codes"] > log["start"]["p1_codes"] + 0.03  # measured 0.14 -> 0.19
    assert mean.shape == (d,) and proj.shape == (d, bits) and log["final_beta"] > 1.9


def test_export_head_keeps_the_encoder_and_changes_the_version(tmp_path) -> None:
    net = E.EmbeddingNet(build_encoder("efficientnet_lite0"), n_bits=64, frozen_blocks=3)
    opt = torch.optim.AdamW(net.parameters())
    E.save_checkpoint(tmp_path / "last.pt", net, opt, {"step": 1, "elapsed": 1.0, "epoch": 0, "pos": 1,
                                                       "order": np.arange(2)})
    E.export(tmp_path / "last.pt", tmp_path / "src", input_size=64, n_bits=64, frozen_blocks=3, command="t")
    ex = FeatureExtractor.load(tmp_path / "src")
    mean, proj = torch.randn(864) * 0.01, torch.randn(864, 64)
    meta = H.export_head(tmp_path / "src", tmp_path / "out", mean, proj, tag="t9", command="test", log={"steps": 1})
    out = FeatureExtractor.load(tmp_path / "out")
    assert out.version == meta["version"] and out.version.endswith("-t9") and out.version != ex.version
    assert meta["head"]["from"] == ex.version
    np.testing.assert_allclose(out.projection, proj.numpy(), rtol=1e-2, atol=1e-2)
    assert (tmp_path / "out" / "encoder.safetensors").read_bytes() == (tmp_path / "src" / "encoder.safetensors").read_bytes()


def test_cache_key_ignores_the_unused_head_conv() -> None:
    """A features folder ships no head conv (randomly initialised at load): the cache key must not depend on it,
    or every process re-encodes the whole folder."""
    from training.retrieval.data import encoder_tag

    torch.manual_seed(1)
    a = build_encoder("efficientnet_lite0")
    torch.manual_seed(2)
    b = build_encoder("efficientnet_lite0")
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith(("_conv_head.", "_bn1."))},
                      strict=False)
    assert not torch.equal(a._conv_head.weight, b._conv_head.weight)
    assert encoder_tag(a) == encoder_tag(b)
    with torch.no_grad():
        b._blocks[5]._project_conv.weight.add_(1e-3)
    assert encoder_tag(a) != encoder_tag(b)
