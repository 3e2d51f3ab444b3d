"""Guided ROI detection: a Faster R-CNN over EfficientNet-Lite0 + FPN for the 19 taxonomy categories,
and `detect_rois`, which keeps the boxes of a listing's category (the paper's "guided" mode, Table 3).

Network: EfficientNet-Lite0 stride 8/16/32 maps -> FPN (64 channels, plus a max-pooled stride-64 level)
-> RPN (6 anchors per position) -> RoIAlign 7x7 -> TwoMLPHead(256) -> 20 classes (0 = background,
class c + 1 = taxonomy category c). Inputs are RGB floats in [0, 1]; GeneralizedRCNNTransform normalises
them as (x - 127/255) / (128/255), i.e. the backbone's (x - 127) / 128 on 0..255 pixels, and resizes so
that the longer side is `max_size` (the serving resolution, 256 px).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from shared.config import REPO_ROOT
from shared.taxonomy import Taxonomy, load_taxonomy
from shared.vision.efficientnet_lite import EfficientNetLite0, STRIDE_CHANNELS, efficientnet_lite0
from shared.vision.presets import MEAN, SCALE, to_uint8_tensor

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = REPO_ROOT / "models" / "detector"
NETWORK_NAME = "roi_detector_effl0_fpn"
NUM_CLASSES = 20  # 19 taxonomy categories + background
FPN_CHANNELS = 64
REPRESENTATION = 256
SERVING_SIZE = 256  # longer side, px (our staged photos are at most 256 px: more would only upsample)
# Anchor sizes per FPN level (strides 8, 16, 32, 64), in px of the resized image. Two scales per level
# cover sunglasses/shoes in street photos (~12-30 px at 256) up to whole-photo product boxes (~256 px).
ANCHOR_SIZES = ((16, 24), (40, 56), (80, 112), (160, 256))
# torchvision's ratio is h / w: wide shoes/bags/sunglasses (0.5), square, tall trousers/dresses (2).
ASPECT_RATIOS = (0.5, 1.0, 2.0)
# Frozen (no gradient) part of the backbone: stem + the stride-2/4 blocks; their ImageNet filters are generic.
FROZEN_BLOCKS = 3
FALLBACKS = ("none", "compatible_category", "whole_image")


class LiteFPNBackbone(nn.Module):
    """EfficientNet-Lite0 body (up to stride 32) + FPN; returns OrderedDict '0','1','2','pool'."""

    def __init__(self, body: EfficientNetLite0, out_channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        # The head conv (320 -> 1280) is not used by the detector: drop it to save 0.4M params.
        body._conv_head = None  # type: ignore[assignment]
        body._bn1 = None  # type: ignore[assignment]
        body._fc = None
        self.body = body
        self.fpn = FeaturePyramidNetwork([STRIDE_CHANNELS[s] for s in (8, 16, 32)], out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.channels_last = False  # set by load_detector: the weights are stored channels_last, inputs follow

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self.body.forward_maps(x, upto=32)
        return self.fpn(OrderedDict((str(i), maps[s]) for i, s in enumerate((8, 16, 32))))


def freeze_backbone_bn_and_stem(detector: FasterRCNN, frozen_blocks: int = FROZEN_BLOCKS) -> None:
    """Freeze BatchNorm statistics/affine everywhere in the backbone body (batches of 2-8 images give
    useless batch statistics, as torchvision's FrozenBatchNorm2d reasons) and the stem + first blocks."""
    body = detector.backbone.body
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
    for p in list(body._conv_stem.parameters()) + list(body._bn0.parameters()):
        p.requires_grad_(False)
    for block in body._blocks[:frozen_blocks]:
        for p in block.parameters():
            p.requires_grad_(False)


def build_roi_detector(*, num_classes: int = NUM_CLASSES, weights: str | Path | dict | None = None,
                       pretrained_backbone: bool = False, min_size: int = SERVING_SIZE,
                       max_size: int = SERVING_SIZE, rpn_pre_nms_top_n_test: int = 300,
                       rpn_post_nms_top_n_test: int = 100, box_score_thresh: float = 0.01,
                       box_detections_per_img: int = 50, **kwargs: Any) -> FasterRCNN:
    """Faster R-CNN (EfficientNet-Lite0 + FPN) for `num_classes` (incl. background).

    weights: a checkpoint dir / .safetensors path / state dict (overrides pretrained_backbone);
    pretrained_backbone: start the body from the pip package's ImageNet weights (training).
    min_size == max_size == 256 resizes every image so its longer side is 256 px (the serving resolution).
    """
    body = efficientnet_lite0(pretrained=pretrained_backbone and weights is None)
    backbone = LiteFPNBackbone(body)
    anchor_gen = AnchorGenerator(sizes=ANCHOR_SIZES, aspect_ratios=(ASPECT_RATIOS,) * len(ANCHOR_SIZES))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(FPN_CHANNELS * 7 * 7, REPRESENTATION)
    box_predictor = FastRCNNPredictor(REPRESENTATION, num_classes)
    detector = FasterRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        # Inputs in [0, 1]: (x - 127/255) / (128/255) == the backbone's (x*255 - 127) / 128.
        image_mean=[MEAN / 255.0] * 3, image_std=[SCALE / 255.0] * 3,
        rpn_anchor_generator=anchor_gen, box_roi_pool=roi_pool, box_head=box_head,
        box_predictor=box_predictor, rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test, box_score_thresh=box_score_thresh,
        box_detections_per_img=box_detections_per_img, **kwargs)
    if weights is not None:
        state = weights if isinstance(weights, dict) else _read_state_dict(Path(weights))
        missing, unexpected = detector.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        assert not missing and not unexpected
    return detector


def set_serving_size(net: FasterRCNN, size: int) -> None:
    """Resize inputs so that their longer side is `size` px (min_size == max_size), e.g. to test a resolution."""
    net.transform.min_size = (int(size),)
    net.transform.max_size = int(size)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if path.is_dir():
        path = path / "detector.safetensors"
    return load_file(str(path))


# --------------------------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Roi:
    """One box: pixel (x0, y0, x1, y1) of the input image, taxonomy category id, score in [0, 1]."""

    xyxy: tuple[float, float, float, float]
    category_id: int | None  # whole-image fallback: the requested category, None when not guided
    score: float


@dataclass(frozen=True)
class RoiResult:
    """Detections (score-descending), the box to use for the listing, and how it was chosen.

    fallback: "none" (a box of the requested category, or the best box when not guided),
    "compatible_category" (no box of that category; best box of the same great-category group),
    "whole_image" (nothing usable was detected).
    """

    boxes: list[Roi]
    chosen: Roi
    fallback: str


@dataclass
class LoadedDetector:
    """A detector network with the metadata it was trained with (taxonomy version, preprocessing, ...)."""

    net: FasterRCNN
    meta: dict[str, Any] = field(default_factory=dict)
    taxonomy: Taxonomy = field(default_factory=load_taxonomy)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def load_detector(path: str | Path | None = None, *, device: str | torch.device | None = None) -> LoadedDetector:
    """Load the shipped detector (default `models/detector/`): weights + manifest, eval mode, on `device`
    (default CUDA when present). Raises FileNotFoundError when the checkpoint is missing and ValueError
    when its taxonomy version differs from the code's."""
    from shared.checkpoints import read_manifest

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT_DIR
    meta = read_manifest(path, kind="detector")  # explicit version, same taxonomy (ValueError otherwise)
    tax = load_taxonomy()
    size = int(meta.get("preprocessing", {}).get("max_size", SERVING_SIZE))
    net = build_roi_detector(num_classes=int(meta.get("num_classes", NUM_CLASSES)), weights=path,
                             min_size=size, max_size=size)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(dev).eval()
    # channels_last: EfficientNet's depthwise convs and the FPN run ~15 % faster on CPU (same results up to rounding).
    net.backbone.to(memory_format=torch.channels_last)
    net.rpn.to(memory_format=torch.channels_last)
    net.backbone.channels_last = True
    return LoadedDetector(net=net, meta=meta, taxonomy=tax, device=dev)


def image_to_input(image: Image.Image) -> torch.Tensor:
    """PIL image -> float32 (3, h, w) in [0, 1], the detector's input (it normalises and resizes itself)."""
    return to_uint8_tensor(image).float().div_(255.0)


def compatible_categories(tax: Taxonomy, category_id: int) -> set[int]:
    """Categories a guided search may fall back to: those of the same great-category group
    (top / bottom / others) in the taxonomy, excluding the category itself."""
    group = tax.category(category_id).group
    return {c.id for c in tax.categories if c.group == group and c.id != category_id}


def _raw_rois(output: dict[str, torch.Tensor], score_threshold: float) -> list[Roi]:
    boxes = output["boxes"].float().cpu().numpy()
    labels = output["labels"].cpu().numpy()
    scores = output["scores"].float().cpu().numpy()
    out = []
    for b, lab, s in zip(boxes, labels, scores):  # torchvision returns them score-descending
        if s < score_threshold or lab < 1:
            continue
        out.append(Roi(xyxy=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), category_id=int(lab) - 1,
                       score=float(s)))
    out.sort(key=lambda r: -r.score)
    return out


def choose_roi(rois: Sequence[Roi], *, width: int, height: int, category_id: int | None,
               tax: Taxonomy | None = None) -> RoiResult:
    """Guided filtering on already-detected boxes (score-descending).

    Not guided (category_id None): every box, chosen = the best one. Guided: only boxes of that category;
    if none, the best box of a compatible category (same great-category group), else the whole image.
    """
    whole = Roi(xyxy=(0.0, 0.0, float(width), float(height)), category_id=category_id, score=0.0)
    rois = sorted(rois, key=lambda r: -r.score)
    if category_id is None:
        if rois:
            return RoiResult(boxes=list(rois), chosen=rois[0], fallback="none")
        return RoiResult(boxes=[], chosen=whole, fallback="whole_image")
    tax = tax or load_taxonomy()
    tax.category(category_id)  # KeyError for an unknown id
    own = [r for r in rois if r.category_id == category_id]
    if own:
        return RoiResult(boxes=own, chosen=own[0], fallback="none")
    compatible = compatible_categories(tax, category_id)
    near = [r for r in rois if r.category_id in compatible]
    if near:
        return RoiResult(boxes=near, chosen=near[0], fallback="compatible_category")
    return RoiResult(boxes=[], chosen=whole, fallback="whole_image")


def detect_all(loaded: LoadedDetector, image: Image.Image) -> list[Roi]:
    """Every detection of one image (score >= the network's box_score_thresh, 0.01), score-descending: the raw
    material of `shared.vision.items` (low-score boxes still count as class evidence there)."""
    loaded.net.eval()
    with torch.inference_mode():
        out = loaded.net([image_to_input(image).to(loaded.device)])[0]
    return _raw_rois(out, 0.0)


def detect_all_batch(loaded: LoadedDetector, images: Sequence[Image.Image]) -> list[list[Roi]]:
    """`detect_all` for many images, with the same results. On CUDA one forward per group of images of one size
    (torchvision pads a batch to its largest image, which would change the maps near the border); on CPU one image
    at a time, which costs less CPU per image than a batched forward (measured: batch 8 +30 %, batch 32 +80 %:
    big batches of stride-2 maps fall out of cache)."""
    if not images:
        return []
    loaded.net.eval()
    outs: list[dict[str, torch.Tensor] | None] = [None] * len(images)
    with torch.inference_mode():
        if loaded.device.type == "cpu":
            groups = [[i] for i in range(len(images))]
        else:
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, im in enumerate(images):
                by_size.setdefault(im.size, []).append(i)
            groups = list(by_size.values())
        for group in groups:
            for i, out in zip(group, loaded.net([image_to_input(images[i]).to(loaded.device) for i in group])):
                outs[i] = out
    return [_raw_rois(out, 0.0) for out in outs]


def detect_rois(loaded: LoadedDetector, image: Image.Image, *, category_id: int | None = None,
                score_threshold: float = 0.3) -> RoiResult:
    """Detect fashion items in one image; guided by the listing's category when `category_id` is given."""
    return detect_rois_batch(loaded, [image], category_ids=[category_id], score_threshold=score_threshold)[0]


def detect_rois_batch(loaded: LoadedDetector, images: Sequence[Image.Image], *,
                      category_ids: Sequence[int | None] | None = None,
                      score_threshold: float = 0.3) -> list[RoiResult]:
    """Batched `detect_rois` for workers (one forward for the whole list; pays off on a GPU)."""
    if category_ids is None:
        category_ids = [None] * len(images)
    if len(category_ids) != len(images):
        raise ValueError(f"category_ids must have one entry per image: {len(category_ids)} vs {len(images)}")
    if not images:
        return []
    net = loaded.net
    net.eval()
    with torch.inference_mode():
        outputs = net([image_to_input(im).to(loaded.device) for im in images])
    return [choose_roi(_raw_rois(out, score_threshold), width=im.size[0], height=im.size[1],
                       category_id=cat, tax=loaded.taxonomy)
            for im, out, cat in zip(images, outputs, category_ids)]
