"""Encoder registry (one interface for every encoder) and attribute-checkpoint loading."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shared.taxonomy import load_taxonomy
from shared.vision.attributes import AttributeNet, build_attribute_net, load_attribute_network
from shared.vision.registry import ENCODERS, EfficientNetLite0Encoder, build_encoder, encoder_spec, frozen_prefix
from training.attributes.engine import export_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registry_names_and_unknown() -> None:
    assert {"efficientnet_lite0", "resception_small", "resception_full"} <= set(ENCODERS)
    with pytest.raises(KeyError, match="known"):
        encoder_spec("vgg16")
    with pytest.raises(ValueError):
        build_encoder("resception_small", pretrained=True)  # no public ResCeption weights


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resception_small"])
def test_every_encoder_has_the_same_interface(name: str) -> None:
    net = build_encoder(name).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        maps = net.forward_maps(x)
        emb = net.head(maps[32])
        rest = net.forward_from(maps[16], 16)
    assert sorted(maps) == [8, 16, 32]
    for s, m in maps.items():
        assert m.shape[1] == net.map_channels[s] and m.shape[2] == 96 // s
    assert emb.shape == (1, net.embedding_dim)
    torch.testing.assert_close(rest[32], maps[32])


def test_efficientnet_pretrained_matches_the_package_network() -> None:
    from shared.vision.efficientnet_lite import efficientnet_lite0

    ours = build_encoder("efficientnet_lite0", pretrained=True).eval()
    ref = efficientnet_lite0(pretrained=True).eval()
    assert isinstance(ours, EfficientNetLite0Encoder)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_frozen_prefix_selects_the_layers_before_the_split() -> None:
    inside = frozen_prefix("efficientnet_lite0", 16)
    assert inside("_conv_stem.weight") and inside("_blocks.10._project_conv.weight")
    assert not inside("_blocks.11._expand_conv.weight") and not inside("_conv_head.weight")
    inside_r = frozen_prefix("resception_small", 16)
    assert inside_r("stem.0.conv.weight") and inside_r("stage16.1.streams.0.body.0.conv.weight")
    assert not inside_r("stage32.0.streams.0.body.0.conv.weight")
    inside32 = frozen_prefix("efficientnet_lite0", 32)  # the shipped attribute network trains only what follows
    assert inside32("_blocks.15._project_conv.weight") and not inside32("_conv_head.weight")
    with pytest.raises(ValueError):
        frozen_prefix("resception_small", 32)


def _manifest(encoder: str, **arch) -> dict:
    return {"name": "attributes", "taxonomy_version": load_taxonomy().version,
            "architecture": {"encoder": encoder, "embed_dim": 8, "hidden": 16, "layers": 2, **arch},
            "preprocessing": {"input_size": 64}}


def test_checkpoint_round_trip_in_fp16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_attribute_net(encoder="resception_small", embed_dim=8, hidden=16).eval()
    export_checkpoint(net, tmp_path, _manifest("resception_small"))
    loaded = load_attribute_network(tmp_path)
    assert isinstance(loaded.net, AttributeNet) and not loaded.net.training
    assert loaded.input_size == 64 and loaded.taxonomy_version == load_taxonomy().version
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.net.state_dict().items()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a.half().float(), msg=k)
        else:
            assert torch.equal(a, b), k


def test_checkpoint_with_another_taxonomy_is_refused(tmp_path: Path) -> None:
    net = build_attribute_net(encoder="resception_small", embed_dim=8, hidden=16)
    meta = _manifest("resception_small")
    meta["taxonomy_version"] = "1999.1.1"
    export_checkpoint(net, tmp_path, meta)
    with pytest.raises(ValueError, match="taxonomy"):
        load_attribute_network(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_attribute_network(tmp_path / "missing")


def test_shipped_attribute_checkpoint_loads() -> None:
    loaded = load_attribute_network()  # default: models/attributes
    meta = json.loads((Path(__file__).resolve().parents[2] / "models" / "attributes" / "manifest.json").read_text())
    assert loaded.meta == meta
    assert loaded.net.encoder_name == meta["architecture"]["encoder"] in ENCODERS
    assert loaded.input_size == meta["preprocessing"]["input_size"]
