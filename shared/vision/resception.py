"""ResCeption encoder (Kim et al., arXiv 1609.07859, Sec. 3.1, Fig. 4): inception-v3 modules with projection
shortcuts, exposing the same encoder interface as EfficientNet-Lite0 (`forward_maps`, `head`, `embedding_dim`).

How the paper's description is read here
----------------------------------------
The network keeps inception-v3's layout (stem, 3 x module A on the stride-8 grid, reduction B, 4 x module C with
factorised 1x7/7x1 convolutions on the stride-16 grid, reduction D, 2 x module E with split 1x3/3x1 convolutions
on the stride-32 grid, global average pool). Each *stream* (branch) of a module that holds more than one
convolution gets a projection shortcut: a 1x1 convolution (+BN) from the stream's input, with the stream's stride,
to the stream's output channels, added to the stream's last (pre-activation) output before its ReLU, as in a
ResNet projection block. Single-convolution streams (the 1x1 stream, pool -> 1x1) and the max-pool stream of the
reductions stay as they are; the streams are then concatenated as in inception-v3. All convolutions use "same"
padding (inception-v3 uses "valid" padding in the stem and reductions), so a stride-s stream maps h to ceil(h / s)
and its shortcut has the same shape. For module E, the stream that splits into 1x3 and 3x1 gets one shortcut to
its concatenated output.

`width` multiplies every channel count (rounded to a multiple of 8); `repeats` sets how many A/C/E modules are
stacked. `resception_full` is inception-v3's shapes at 299 px; `resception_small` is narrow and shallower for CPU.
Inputs are RGB normalised as (x - 127) / 128 (see shared.vision.presets).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3


@dataclass(frozen=True)
class ResCeptionConfig:
    """Shape of a ResCeption encoder: channel multiplier, module repeats (A, C, E), default input size."""

    name: str
    width: float = 1.0
    repeats: tuple[int, int, int] = (3, 4, 2)
    input_size: int = 299


FULL = ResCeptionConfig("resception_full", width=1.0, repeats=(3, 4, 2), input_size=299)
SMALL = ResCeptionConfig("resception_small", width=0.25, repeats=(2, 2, 1), input_size=128)


def _ch(c: int, width: float) -> int:
    # Multiples of 8 keep the narrow configs friendly to vectorised kernels.
    return max(8, int(round(c * width / 8)) * 8)


class ConvBN(nn.Module):
    """Conv (no bias) + BN, with ReLU unless `act=False` (the last conv of a shortcut stream adds first)."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1, act: bool = True) -> None:
        super().__init__()
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=(k[0] // 2, k[1] // 2), bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y) if self.act else y


class Stream(nn.Module):
    """A chain of convolutions; with more than one, a 1x1 projection shortcut is added before the last ReLU.

    `split` (module E) ends the chain in two parallel convolutions whose outputs are concatenated.
    """

    def __init__(self, c_in: int, layers: list[tuple[int, int | tuple[int, int], int]],
                 split: tuple[int, int] | None = None) -> None:
        super().__init__()
        convs = []
        c = c_in
        stride = 1
        n_convs = len(layers) + (1 if split else 0)
        for i, (c_out, k, s) in enumerate(layers):
            last = i == len(layers) - 1 and split is None
            convs.append(ConvBN(c, c_out, k, s, act=not (last and n_convs > 1)))
            c, stride = c_out, stride * s
        self.body = nn.Sequential(*convs)
        self.split = None
        if split is not None:
            self.split = nn.ModuleList([ConvBN(c, split[0], (1, 3), act=False), ConvBN(c, split[1], (3, 1), act=False)])
            c = split[0] + split[1]
        self.c_out = c
        self.shortcut = ConvBN(c_in, c, 1, stride, act=False) if n_convs > 1 else None
        if self.shortcut is not None:
            # Zero-init the main path's last BN so the stream starts as its projection (ResNet's trick).
            for conv in (self.split if self.split is not None else [self.body[-1]]):
                nn.init.zeros_(conv.bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.split is not None:
            y = torch.cat([m(y) for m in self.split], 1)
        if self.shortcut is not None:
            y = F.relu(y + self.shortcut(x))
        return y


class PoolStream(nn.Module):
    """Average pool -> 1x1 conv (one convolution: no shortcut), or a bare max pool for reductions."""

    def __init__(self, c_in: int, c_out: int | None, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.proj = ConvBN(c_in, c_out, 1) if c_out else None
        self.c_out = c_out or c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is None:
            return F.max_pool2d(x, 3, self.stride, 1)
        return self.proj(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))


class Module(nn.Module):
    """Streams run in parallel on the same input and are concatenated along channels."""

    def __init__(self, streams: list[nn.Module]) -> None:
        super().__init__()
        self.streams = nn.ModuleList(streams)
        self.c_out = sum(s.c_out for s in streams)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([s(x) for s in self.streams], 1)


def module_a(c_in: int, pool_c: int, w: float) -> Module:
    return Module([Stream(c_in, [(_ch(64, w), 1, 1)]),
                   Stream(c_in, [(_ch(48, w), 1, 1), (_ch(64, w), 5, 1)]),
                   Stream(c_in, [(_ch(64, w), 1, 1), (_ch(96, w), 3, 1), (_ch(96, w), 3, 1)]),
                   PoolStream(c_in, _ch(pool_c, w))])


def reduction_b(c_in: int, w: float) -> Module:
    return Module([Stream(c_in, [(_ch(384, w), 3, 2)]),
                   Stream(c_in, [(_ch(64, w), 1, 1), (_ch(96, w), 3, 1), (_ch(96, w), 3, 2)]),
                   PoolStream(c_in, None, stride=2)])


def module_c(c_in: int, c7: int, w: float) -> Module:
    m = _ch(c7, w)
    o = _ch(192, w)
    return Module([Stream(c_in, [(o, 1, 1)]),
                   Stream(c_in, [(m, 1, 1), (m, (1, 7), 1), (o, (7, 1), 1)]),
                   Stream(c_in, [(m, 1, 1), (m, (7, 1), 1), (m, (1, 7), 1), (m, (7, 1), 1), (o, (1, 7), 1)]),
                   PoolStream(c_in, o)])


def reduction_d(c_in: int, w: float) -> Module:
    o = _ch(192, w)
    return Module([Stream(c_in, [(o, 1, 1), (_ch(320, w), 3, 2)]),
                   Stream(c_in, [(o, 1, 1), (o, (1, 7), 1), (o, (7, 1), 1), (o, 3, 2)]),
                   PoolStream(c_in, None, stride=2)])


def module_e(c_in: int, w: float) -> Module:
    c384 = _ch(384, w)
    return Module([Stream(c_in, [(_ch(320, w), 1, 1)]),
                   Stream(c_in, [(c384, 1, 1)], split=(c384, c384)),
                   Stream(c_in, [(_ch(448, w), 1, 1), (c384, 3, 1)], split=(c384, c384)),
                   PoolStream(c_in, _ch(192, w))])


class ResCeption(nn.Module):
    """ResCeption encoder. `forward_maps` gives the stride 8/16/32 maps (after the A, C and E modules),
    `head` pools the stride-32 map into the embedding, `forward` = head(forward_maps(x)[32])."""

    def __init__(self, config: ResCeptionConfig = FULL) -> None:
        super().__init__()
        w = config.width
        self.config = config
        self.input_size = config.input_size
        self.stem = nn.Sequential(
            ConvBN(3, _ch(32, w), 3, 2), ConvBN(_ch(32, w), _ch(32, w), 3), ConvBN(_ch(32, w), _ch(64, w), 3),
            nn.MaxPool2d(3, 2, 1),
            ConvBN(_ch(64, w), _ch(80, w), 1), ConvBN(_ch(80, w), _ch(192, w), 3),
            nn.MaxPool2d(3, 2, 1),
        )
        n_a, n_c, n_e = config.repeats
        c = _ch(192, w)
        stage8 = []
        for i in range(n_a):
            stage8.append(module_a(c, 32 if i == 0 else 64, w))
            c = stage8[-1].c_out
        self.stage8 = nn.Sequential(*stage8)
        c8 = c
        stage16: list[nn.Module] = [reduction_b(c, w)]
        c = stage16[-1].c_out
        for i in range(n_c):
            stage16.append(module_c(c, (128, 160, 160, 192)[min(i, 3)] if n_c == 4 else 160, w))
            c = stage16[-1].c_out
        self.stage16 = nn.Sequential(*stage16)
        c16 = c
        stage32: list[nn.Module] = [reduction_d(c, w)]
        c = stage32[-1].c_out
        for _ in range(n_e):
            stage32.append(module_e(c, w))
            c = stage32[-1].c_out
        self.stage32 = nn.Sequential(*stage32)
        self.map_channels = {8: c8, 16: c16, 32: c}
        self.embedding_dim = c
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Re-apply the zero init of Stream.__init__ (the loop above reset every BN to one).
        for m in self.modules():
            if isinstance(m, Stream) and m.shortcut is not None:
                last = m.split if m.split is not None else [m.body[-1]]
                for conv in last:
                    nn.init.zeros_(conv.bn.weight)

    def forward_maps(self, x: torch.Tensor, *, upto: int = 32) -> dict[int, torch.Tensor]:
        """Feature maps keyed by stride (8, 16, 32), computing only up to stride `upto`."""
        return self.forward_from(self.stem(x), 4, upto=upto)

    def forward_from(self, x: torch.Tensor, stride: int, *, upto: int = 32) -> dict[int, torch.Tensor]:
        """Continue from the map at `stride` (4 = stem output, 8, 16): maps at the later strides up to `upto`."""
        maps: dict[int, torch.Tensor] = {}
        for s, stage in ((8, self.stage8), (16, self.stage16), (32, self.stage32)):
            if s <= stride or s > upto:
                continue
            x = stage(x)
            maps[s] = x
        return maps

    def head(self, stride32: torch.Tensor) -> torch.Tensor:
        """Global average pool of the stride-32 map -> (n, embedding_dim)."""
        return stride32.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_maps(x)[32])


def resception(*, config: ResCeptionConfig = FULL, weights: dict[str, torch.Tensor] | None = None) -> ResCeption:
    """Build a ResCeption encoder; `weights` is a state dict (ours: there are no public ResCeption weights)."""
    net = ResCeption(config)
    if weights is not None:
        net.load_state_dict(weights)
    return net
