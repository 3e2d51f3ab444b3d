"""ResCeption encoder: shapes per stride, projection shortcuts where the paper puts them, split forward, determinism."""
from __future__ import annotations

import pytest
import torch

from shared.vision.resception import FULL, SMALL, PoolStream, ResCeption, ResCeptionConfig, Stream, resception

TINY = ResCeptionConfig("tiny", width=0.125, repeats=(1, 1, 1), input_size=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The dev box is shared by concurrent trainings: oversubscribed intra-op threads make tiny convs 5x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny() -> ResCeption:
    torch.manual_seed(0)
    return resception(config=TINY).eval()


@pytest.mark.parametrize("size", [64, 67])
def test_maps_have_the_encoder_interface_shapes(tiny: ResCeption, size: int) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = tiny.forward_maps(x)
        emb = tiny(x)
    assert sorted(maps) == [8, 16, 32]
    for stride, m in maps.items():
        # "same" padding everywhere: stride s maps h to ceil(h / s)
        assert m.shape == (2, tiny.map_channels[stride], -(-size // stride), -(-size // stride))
    assert emb.shape == (2, tiny.embedding_dim)
    assert torch.isfinite(emb).all()


def test_upto_stops_early(tiny: ResCeption) -> None:
    with torch.no_grad():
        maps = tiny.forward_maps(torch.randn(1, 3, 64, 64), upto=16)
    assert sorted(maps) == [8, 16]


def test_forward_from_continues_the_same_computation(tiny: ResCeption) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = tiny.forward_maps(x)
        rest = tiny.forward_from(full[16], 16)
    assert sorted(rest) == [32]
    torch.testing.assert_close(rest[32], full[32])


def test_multi_conv_streams_and_only_they_have_projection_shortcuts() -> None:
    net = ResCeption(TINY)
    streams = [m for m in net.modules() if isinstance(m, Stream)]
    assert streams
    for s in streams:
        n_convs = len(s.body) + (len(s.split) if s.split is not None else 0)
        assert (s.shortcut is not None) == (n_convs > 1)
        if s.shortcut is not None:
            assert s.shortcut.conv.kernel_size == (1, 1)
    pools = [m for m in net.modules() if isinstance(m, PoolStream)]
    assert pools and all(not hasattr(p, "shortcut") for p in pools)
    # factorised 1x7 / 7x1 convolutions are present (module C) and 1x3 / 3x1 splits (module E)
    kernels = {m.kernel_size for m in net.modules() if isinstance(m, torch.nn.Conv2d)}
    assert {(1, 7), (7, 1), (1, 3), (3, 1)} <= kernels


def test_shortcut_carries_signal_at_init() -> None:
    # The main path's last BN starts at zero, so a fresh stream equals relu(projection(x)).
    torch.manual_seed(1)
    s = Stream(8, [(8, 1, 1), (16, 3, 2)]).eval()
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        y = s(x)
        ref = torch.relu(s.shortcut(x))
    assert y.shape == (1, 16, 5, 5)
    torch.testing.assert_close(y, ref)


def test_deterministic_and_trainable(tiny: ResCeption) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tiny(x), tiny(x))
    net = ResCeption(TINY).train()
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_configs() -> None:
    assert FULL.input_size == 299 and FULL.width == 1.0 and FULL.repeats == (3, 4, 2)
    assert SMALL.input_size <= 160
    full = ResCeption(FULL)
    assert full.map_channels == {8: 288, 16: 768, 32: 2048}  # inception-v3's Mixed_5d / 6e / 7c widths
    n_full = sum(p.numel() for p in full.parameters())
    n_small = sum(p.numel() for p in ResCeption(SMALL).parameters())
    assert 20e6 < n_full < 40e6 and n_small < n_full / 10
