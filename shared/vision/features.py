"""Appearance and colour features of an ROI: float embedding, binary code and HSV colour histogram.

Ingestion and query both call `extract_features` (after Kim et al., arXiv 1609.07859, section 3.3: convolutional
activations of two layers pooled inside the ROI, binarised at 0; plus a colour histogram):

1. The ROI is cropped from the image; on a plain backdrop (product photo, padding) `isolate_item` paints the
   backdrop white and tightens the crop to the item; the view is letterboxed to `input_size` on white
   (`shared.vision.presets`).
2. The encoder's stride-16 and stride-32 block outputs (linear projections, so both signs occur) are pooled
   (average, or average and max: "avgmax", shipped) over the map cells covered by the crop (the white letterbox
   padding is left out), each part is L2-normalised and the parts are concatenated: the *descriptor*, float32
   (n, D); D = 864 for EfficientNet-Lite0 with avgmax.
3. The descriptor is centred and projected: the *feature*, float32 (n, n_bits). Two kinds of configuration share
   this form: ImageNet encoder + TRAIN-split mean + PCA/ITQ matrix (`training/retrieval/tune.py`), or an encoder,
   mean and projection trained together for retrieval with a tanh on top (`training/retrieval/embedding.py`,
   manifest "activation": "tanh"; tanh keeps the signs, so the code is the same).
4. `shared.codes.binarize.binarize` turns it into the code: bit j = feature j > 0, packed 8 bits per byte,
   most significant bit first (numpy packbits, bitorder="big"): feature 0 is the high bit of byte 0.
5. The colour histogram (`colour_histogram`) is taken from the same crop (before step 1's flattening), foreground
   pixels only.

The ranking score is (1 - w) * hamming / n_bits + w * colour distance (half the L1 distance of the histograms
quantised to 1/255 per bin), w shipped in the manifest; one implementation serves and evaluates it:
`shared.codes.hamming.top_k_blended` / `blended_scores`, colours from `shared.index.colours`. The shipped projection, mean, w and encoder name live in models/features/ (safetensors + manifest.json).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from shared.codes.binarize import binarize, n_bytes_for
from shared.index.colours import quantize_colours  # noqa: F401 - the one RAM form of colours
from shared.vision import presets
from shared.vision.foreground import BORDER_FRAC, foreground_mask  # noqa: F401 - re-exported for callers
from shared.vision.rerank import Reranker

# Version of the shipped feature configuration (encoder, layers, pooling, projection, colour bins). Codes and colour
# histograms of two versions are not comparable: a new version means a reindex.
FEATURES_VERSION = "effl0-emb.in112.s16s32-avgmax.tanh256.flat2.hsv52-v3.rr512x1"
FEATURES_DIR = "features"  # folder name under settings.models_dir

Box = tuple[float, float, float, float]

# ----------------------------------------------------------------------------------------------------------------
# colour histogram
#
# Bins (52): pixels with saturation >= 0.2 and value >= 0.2 are chromatic and fall into 8 hue x 3 saturation x 2 value
# bins; the others are achromatic and fall into 4 value (grey-level) bins. Hue is PIL's 0..255 for 0..360 degrees,
# shifted by half a bin so that red (hue 0) sits in the middle of hue bin 0 rather than on its edge:
#   hue bin h  = ((H + 16) // 32) % 8           -> centres 0, 45, 90, ... 315 degrees (red, orange, yellow, ...)
#   sat bin s  = S in [51, 115) / [115, 179) / [179, 255]   (S, V in 0..255)
#   val bin v  = V in [51, 153) / [153, 255]
#   chromatic index = 8 * 0 + h * 6 + s * 2 + v    (0 .. 47)
#   achromatic index = 48 + V // 64                 (48 .. 51: black, dark grey, light grey, white)
N_HUE, N_SAT, N_VAL, N_GREY = 8, 3, 2, 4
N_COLOUR_BINS = N_HUE * N_SAT * N_VAL + N_GREY
_CHROMA_MIN = 51  # 0.2 * 255
# Colour histograms are computed on a thumbnail: 64 px on the longer side is plenty for 52 bins and keeps it ~1 ms.
_COLOUR_SIDE = 64


# Bump when isolate_item's behaviour changes (cached encoder outputs are keyed by it).
ISOLATE_VERSION = 2
# The item mask for background flattening is computed on a thumbnail this size (cheap; scaled back up).
_MASK_SIDE = 128
_SEAM_PX = 3  # thumbnail pixels


def _border_median(rgb: np.ndarray) -> np.ndarray:
    """Median colour of the border ring `foreground_mask` uses: float (3,)."""
    h, w = rgb.shape[:2]
    b = max(1, int(round(BORDER_FRAC * min(h, w))))
    ring = np.zeros((h, w), dtype=bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    return np.median(rgb[ring].astype(np.float32), axis=0)


def _is_whiteish(colour: np.ndarray) -> bool:
    """Light and unsaturated: white to light grey (a studio backdrop under brightness changes)."""
    return float(colour.min()) >= 170 and float(colour.max() - colour.min()) <= 30


def _trim_box(mask: np.ndarray, y0: int, y1: int, x0: int, x1: int, *, max_frac: float = 0.2,
              min_fill: float = 0.5) -> tuple[int, int, int, int]:
    """Move each side of the box inwards while its edge line is less than `min_fill` mask, by at most `max_frac`
    of the box's size per side (what JPEG ringing along a padding seam leaves is a sparse band, an item edge is not)."""
    steps_y, steps_x = int(max_frac * (y1 - y0)), int(max_frac * (x1 - x0))
    for _ in range(steps_y):
        if y1 - y0 <= 8 or mask[y0, x0:x1].mean() >= min_fill:
            break
        y0 += 1
    for _ in range(steps_y):
        if y1 - y0 <= 8 or mask[y1 - 1, x0:x1].mean() >= min_fill:
            break
        y1 -= 1
    for _ in range(steps_x):
        if x1 - x0 <= 8 or mask[y0:y1, x0].mean() >= min_fill:
            break
        x0 += 1
    for _ in range(steps_x):
        if x1 - x0 <= 8 or mask[y0:y1, x1 - 1].mean() >= min_fill:
            break
        x1 -= 1
    return y0, y1, x0, x1


def isolate_item(crop: Image.Image, *, passes: int = 2) -> Image.Image:
    """The encoder's view of a crop: on a plain backdrop (product photo, padding), the backdrop is painted white and
    the crop tightened to the item; otherwise (street photo) the crop unchanged. See `foreground_mask`.

    Up to two passes on one thumbnail, because a product shot padded on another colour has two backdrops (the
    padding, then the studio white): the second pass looks inside the box the first one kept. The box ignores
    structures thinner than ~2 thumbnail pixels (JPEG fringes along a padding seam); the painting does not, except
    in a thin band along the box's edge (so thin chains and straps inside the item stay).
    """
    from scipy import ndimage

    crop = crop.convert("RGB")
    rgb = np.asarray(presets.colour_thumbnail(crop, _MASK_SIDE), dtype=np.uint8)
    h, w = rgb.shape[:2]
    keep = np.ones((h, w), dtype=bool)
    y0, y1, x0, x1 = 0, h, 0, w
    changed = False
    for _ in range(passes):
        fg = foreground_mask(rgb[y0:y1, x0:x1])
        if fg.all():
            break
        opened = ndimage.binary_opening(fg, structure=np.ones((3, 3), bool))
        if not opened.any():
            opened = fg
        ys, xs = np.nonzero(opened.any(axis=1))[0], np.nonzero(opened.any(axis=0))[0]
        by0, by1, bx0, bx1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        # A white (or brightened/dimmed white) backdrop is the studio's: the item is found after this pass. A
        # coloured one (padding, a seller's sheet) may hide a white one inside it, and its seam carries JPEG
        # ringing wider than the opening removes: trim box edges that are mostly not item.
        whiteish = _is_whiteish(_border_median(rgb[y0:y1, x0:x1]))
        if not whiteish:
            by0, by1, bx0, bx1 = _trim_box(opened, by0, by1, bx0, bx1)
        # Thin structures in a band along the new box's edge are seam fringes: paint them too.
        band = np.ones_like(fg)
        band[by0 + _SEAM_PX:by1 - _SEAM_PX, bx0 + _SEAM_PX:bx1 - _SEAM_PX] = False
        keep[y0:y1, x0:x1] &= fg & ~(band & ~opened)
        keep[:y0 + by0], keep[y0 + by1:], keep[:, :x0 + bx0], keep[:, x0 + bx1:] = False, False, False, False
        changed = True
        # The next pass looks inside the new box, minus the seam band.
        ny0, ny1, nx0, nx1 = y0 + by0 + _SEAM_PX, y0 + by1 - _SEAM_PX, x0 + bx0 + _SEAM_PX, x0 + bx1 - _SEAM_PX
        if whiteish or ny1 - ny0 < 8 or nx1 - nx0 < 8:
            break
        y0, y1, x0, x1 = ny0, ny1, nx0, nx1
    if not changed or not keep.any():
        return crop
    return presets.flatten_background(crop, keep)


def _hsv_bins(hsv: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) PIL HSV -> int64 (...) bin index in 0 .. N_COLOUR_BINS-1."""
    hh = hsv[..., 0].astype(np.int64)
    s = hsv[..., 1].astype(np.int64)
    v = hsv[..., 2].astype(np.int64)
    hue_bin = ((hh + 16) // 32) % N_HUE
    sat_bin = np.clip((s - _CHROMA_MIN) // 64, 0, N_SAT - 1)
    val_bin = (v >= 153).astype(np.int64)
    chroma = hue_bin * (N_SAT * N_VAL) + sat_bin * N_VAL + val_bin
    grey = N_HUE * N_SAT * N_VAL + np.minimum(v // 64, N_GREY - 1)
    return np.where((s >= _CHROMA_MIN) & (v >= _CHROMA_MIN), chroma, grey)


def colour_histogram(img: Image.Image, roi: Box | None = None, *, use_mask: bool = True) -> np.ndarray:
    """HSV histogram of the ROI's foreground pixels, normalised to sum 1: float32 (N_COLOUR_BINS,)."""
    crop = presets.crop(img.convert("RGB"), roi)
    small = presets.colour_thumbnail(crop, _COLOUR_SIDE)
    rgb = np.asarray(small, dtype=np.uint8)
    mask = foreground_mask(rgb) if use_mask else np.ones(rgb.shape[:2], dtype=bool)
    hsv = np.asarray(small.convert("HSV"), dtype=np.uint8)
    counts = np.bincount(_hsv_bins(hsv[mask]), minlength=N_COLOUR_BINS).astype(np.float32)
    return counts / max(float(counts.sum()), 1.0)


def dequantize_colours(q: np.ndarray) -> np.ndarray:
    """uint8 (n, n_bins) -> float32 (n, n_bins) = q / 255 (sums to 1 up to rounding)."""
    if q.dtype != np.uint8:
        raise TypeError(f"quantized colours must be uint8, got {q.dtype}")
    return q.astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------------------------
# appearance descriptor


def _content_cells(boxes: list[tuple[float, float, float, float]], size: int, stride: int) -> torch.Tensor:
    """float32 (n, 1, g, g) weights: 1 for the map cells whose centre lies on the pasted crop, not the padding."""
    g = -(-size // stride)  # SAME padding: ceil(size / stride) cells
    centres = (torch.arange(g, dtype=torch.float32) + 0.5) * stride
    out = torch.zeros((len(boxes), 1, g, g), dtype=torch.float32)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        cols = (centres >= x0) & (centres < x1)
        rows = (centres >= y0) & (centres < y1)
        if not cols.any():  # a sliver narrower than a cell: keep the nearest one
            cols[int(min(g - 1, ((x0 + x1) / 2) // stride))] = True
        if not rows.any():
            rows[int(min(g - 1, ((y0 + y1) / 2) // stride))] = True
        out[i, 0] = rows[:, None].float() * cols[None, :].float()
    return out


def _pasted_box(img: Image.Image, size: int) -> tuple[int, int, int, int]:
    """Where `presets.letterbox` pastes an image of this size: (x0, y0, x1, y1) in letterbox pixels."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    x0, y0 = (size - nw) // 2, (size - nh) // 2
    return x0, y0, x0 + nw, y0 + nh


def masked_pool(m: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average and max of a map (n, c, g, g) over the cells where `cells` (n, 1, g, g) is 1: two (n, c) tensors.

    Differentiable: the embedding trainer (training/retrieval/embedding.py) pools exactly as serving does."""
    assert cells.shape[-2:] == m.shape[-2:], (cells.shape, m.shape)
    avg = (m * cells).sum(dim=(2, 3)) / cells.sum(dim=(2, 3))
    mx = m.masked_fill(cells == 0, float("-inf")).amax(dim=(2, 3))
    return avg, mx


@torch.inference_mode()
def pooled_maps(encoder: nn.Module, images: Sequence[Image.Image], rois: Sequence[Box | None] | None = None, *,
                input_size: int, layers: Sequence[int] = (16, 32), batch_size: int = 8) -> dict[str, np.ndarray]:
    """Masked average and max of each layer's map over the ROI's cells (letterbox padding never counts).

    Each image is letterboxed whole to input_size; `rois` (image pixels, None = the whole image) pick the cells
    pooled (ROI pooling on a shared map). `extract_features` passes crops with rois=None (crop-then-encode).
    Returns {"avg16": float32 (n, c16), "max16": ..., "avg32": ..., "max32": ...}, un-normalised (cached by
    training/retrieval, combined by `descriptors_from_pooled`).
    """
    encoder.eval()
    if rois is None:
        rois = [None] * len(images)
    device = next(encoder.parameters()).device
    upto = max(layers)
    out: dict[str, list[np.ndarray]] = {f"{kind}{s}": [] for s in layers for kind in ("avg", "max")}
    for start in range(0, len(images), batch_size):
        chunk = [img.convert("RGB") for img in images[start:start + batch_size]]
        # channels_last: ~1.3x faster on CPU for EfficientNet's depthwise convs (same results here).
        x = torch.stack([presets.encoder_input(c, input_size) for c in chunk]).to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        boxes = [_roi_in_letterbox(c, r, input_size) for c, r in zip(chunk, rois[start:start + batch_size])]
        maps = encoder.forward_maps(x, upto=upto)
        for s in layers:
            avg, mx = masked_pool(maps[s].float(), _content_cells(boxes, input_size, s).to(device))
            out[f"avg{s}"].append(avg.cpu().numpy().astype(np.float32))
            out[f"max{s}"].append(mx.cpu().numpy().astype(np.float32))
    return {k: (np.concatenate(v) if v else np.zeros((0, 0), np.float32)) for k, v in out.items()}


def _roi_in_letterbox(img: Image.Image, roi: Box | None, size: int) -> tuple[float, float, float, float]:
    """The ROI (image pixels, clipped; None = whole image) in letterbox pixels."""
    x0, y0, x1, y1 = _pasted_box(img, size)
    if roi is None:
        return float(x0), float(y0), float(x1), float(y1)
    w, h = img.size
    sx, sy = (x1 - x0) / w, (y1 - y0) / h
    r0, r1 = max(0.0, min(w, roi[0])), max(0.0, min(w, roi[2]))
    q0, q1 = max(0.0, min(h, roi[1])), max(0.0, min(h, roi[3]))
    return x0 + r0 * sx, y0 + q0 * sy, x0 + r1 * sx, y0 + q1 * sy


def descriptors_from_pooled(pooled: dict[str, np.ndarray], *, layers: Sequence[int] = (16, 32),
                            pooling: str = "avg") -> np.ndarray:
    """Per-layer L2-normalised pooled vectors, concatenated: float32 (n, D).

    pooling "avg" uses the masked averages; "avgmax" also appends the masked maxima (each part normalised on its own,
    so every layer and statistic weighs the same in the Hamming distance).
    """
    kinds = {"avg": ("avg",), "avgmax": ("avg", "max")}.get(pooling)
    if kinds is None:
        raise ValueError(f"pooling must be 'avg' or 'avgmax', got {pooling!r}")
    parts = []
    for s in layers:
        for kind in kinds:
            v = pooled[f"{kind}{s}"].astype(np.float32)
            parts.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# the extractor


@dataclass(frozen=True)
class Features:
    """What ingestion stores and a query searches with, one row per (image, ROI).

    feats: float32 (n, n_bits) projected features (the code is their sign);
    codes: uint8 (n, n_bytes) = shared.codes.binarize(feats), bit j = feats[:, j] > 0, MSB first;
    colours: float32 (n, N_COLOUR_BINS) foreground HSV histograms summing to 1 (`quantize_colours` for RAM);
    rerank: float32 (n, d) re-ranking projections (`shared.vision.rerank`), None when the configuration has none.
    """

    feats: np.ndarray
    codes: np.ndarray
    colours: np.ndarray
    rerank: np.ndarray | None = None


@dataclass
class FeatureExtractor:
    """Encoder + pooling spec + projection + colour weight: everything `extract_features` needs.

    mean: float32 (D,) centring vector; projection: float32 (D, n_bits). For a PCA/ITQ configuration the mean is
    the TRAIN-split mean of the descriptors and the encoder ImageNet's; for a learned one (`lookalike train
    embedding`) encoder, mean and projection were trained together and `activation` is "tanh" (the trained float
    embedding; the sign, hence the code, is the same either way).
    """

    encoder: nn.Module
    mean: np.ndarray
    projection: np.ndarray
    input_size: int = 224
    layers: tuple[int, ...] = (16, 32)
    pooling: str = "avg"
    colour_weight: float = 0.3
    use_colour_mask: bool = True
    flatten_background: bool = True
    activation: str | None = None  # None or "tanh", applied by `project`
    version: str = FEATURES_VERSION
    meta: dict[str, Any] | None = None
    path: Path | None = None  # the folder it was loaded from
    reranker: Reranker | None = None  # the shortlist's second look (rerank.safetensors), when shipped

    def __post_init__(self) -> None:
        if self.mean.dtype != np.float32 or self.projection.dtype != np.float32:
            raise TypeError(f"mean and projection must be float32, got {self.mean.dtype} and {self.projection.dtype}")
        if self.projection.ndim != 2 or self.mean.shape != (self.projection.shape[0],):
            raise ValueError(f"projection must be (D, n_bits) and mean (D,), got {self.projection.shape} and {self.mean.shape}")
        if self.activation not in (None, "tanh"):
            raise ValueError(f"activation must be None or 'tanh', got {self.activation!r}")

    @property
    def n_bits(self) -> int:
        return int(self.projection.shape[1])

    @property
    def n_bytes(self) -> int:
        return n_bytes_for(self.n_bits)

    def describe(self, crops: Sequence[Image.Image], *, batch_size: int = 8) -> np.ndarray:
        """Crops -> descriptors float32 (n, D), before centring and projection."""
        if self.flatten_background:
            crops = [isolate_item(c) for c in crops]
        pooled = pooled_maps(self.encoder, crops, None, input_size=self.input_size, layers=self.layers,
                             batch_size=batch_size)
        return descriptors_from_pooled(pooled, layers=self.layers, pooling=self.pooling)

    def project(self, descriptors: np.ndarray) -> np.ndarray:
        """float32 (n, D) -> float32 (n, n_bits): (descriptor - mean) @ projection, then tanh if `activation`."""
        if descriptors.ndim != 2 or descriptors.shape[1] != self.mean.shape[0]:
            raise ValueError(f"descriptors must be (n, {self.mean.shape[0]}), got {descriptors.shape}")
        out = (descriptors - self.mean[None, :]) @ self.projection
        if self.activation == "tanh":
            out = np.tanh(out)
        return np.ascontiguousarray(out, dtype=np.float32)

    @classmethod
    def load(cls, path: str | Path | None = None, *, encoder: nn.Module | None = None,
             device: str | torch.device = "cpu") -> "FeatureExtractor":
        """Load the shipped configuration (default: models/features/); `encoder` overrides the manifest's."""
        from safetensors.numpy import load_file

        from shared.checkpoints import read_manifest

        folder = Path(path) if path is not None else default_features_dir()
        meta = read_manifest(folder, kind="features", taxonomy=False)  # explicit version (ValueError otherwise)
        if meta.get("flatten_background", True) and int(meta.get("isolate_version", ISOLATE_VERSION)) != ISOLATE_VERSION:
            raise ValueError(f"{folder} was fitted with isolate_item v{meta['isolate_version']}, code has "
                             f"v{ISOLATE_VERSION}: refit it (lookalike train features)")
        tensors = load_file(str(folder / meta.get("file", "projection.safetensors")))
        if encoder is None:
            encoder = build_feature_encoder(meta["encoder"], folder)
        encoder.to(device).to(memory_format=torch.channels_last).eval()
        return cls(encoder=encoder, mean=tensors["mean"].astype(np.float32),
                   projection=tensors["projection"].astype(np.float32),
                   input_size=int(meta["input_size"]), layers=tuple(int(s) for s in meta["layers"]),
                   pooling=str(meta["pooling"]), colour_weight=float(meta["colour_weight"]),
                   use_colour_mask=bool(meta.get("colour_mask", True)),
                   flatten_background=bool(meta.get("flatten_background", True)),
                   activation=meta.get("activation"), version=str(meta["version"]), meta=meta, path=folder,
                   reranker=Reranker.load(folder))


def default_features_dir() -> Path:
    """models/features/ under the configured models folder."""
    from shared.config import load_settings

    return load_settings().models_dir / FEATURES_DIR


def build_feature_encoder(spec: dict[str, Any], folder: str | Path | None = None) -> nn.Module:
    """The encoder a manifest names: {"source": "registry", "name": ..., "pretrained": bool},
    {"source": "file", "name": ..., "file": weights in the manifest's `folder`} (trained for retrieval by
    `lookalike train embedding`; fp16 safetensors of the blocks up to stride 32) or
    {"source": "attributes", "path": optional folder} (the fine-tuned encoder of the attribute network)."""
    source = spec.get("source", "registry")
    if source == "registry":
        from shared.vision.registry import build_encoder

        return build_encoder(spec["name"], pretrained=bool(spec.get("pretrained", True))).eval()
    if source == "file":
        from safetensors.torch import load_file

        from shared.vision.registry import build_encoder

        if folder is None:
            raise ValueError("an encoder of source 'file' needs the features folder")
        net = build_encoder(spec["name"])
        state = {k: v.float() for k, v in load_file(str(Path(folder) / spec["file"])).items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        # The head conv after stride 32 is never used by the appearance feature, so it is not shipped.
        if unexpected or any(not k.startswith(("_conv_head.", "_bn1.")) for k in missing):
            raise ValueError(f"{spec['file']}: unexpected {unexpected[:3]}, missing {missing[:3]}")
        return net.eval()
    if source == "attributes":
        from shared.vision.attributes import load_attribute_network

        loaded = load_attribute_network(spec.get("path"))
        # The projection was fitted on this encoder's maps: another attribute checkpoint means a refit + reindex.
        if spec.get("version") and loaded.meta.get("version") != spec["version"]:
            raise ValueError(f"features were fitted on attribute checkpoint {spec['version']}, "
                             f"found {loaded.meta.get('version')}: refit them (lookalike train features --encoder attributes)")
        return loaded.net.encoder.eval()
    raise ValueError(f"unknown encoder source {source!r} (expected 'registry' or 'attributes')")


def crop_rois(images: Sequence[Image.Image], rois: Sequence[Box | None] | None) -> list[Image.Image]:
    """One RGB crop per (image, roi); None keeps the whole image (product photos)."""
    if rois is None:
        rois = [None] * len(images)
    if len(rois) != len(images):
        raise ValueError(f"got {len(images)} images but {len(rois)} rois")
    return [presets.crop(img.convert("RGB"), roi) for img, roi in zip(images, rois)]


def extract_features(extractor: FeatureExtractor, images: Sequence[Image.Image],
                     rois: Sequence[Box | None] | None = None, *, batch_size: int = 8) -> Features:
    """Images + ROIs (x0, y0, x1, y1 pixels, or None for the whole image) -> Features (see its docstring).

    The one function ingestion and query both call, so a query's code matches an indexed copy of the same crop.
    """
    crops = crop_rois(images, rois)
    if not crops:
        n_bits = extractor.n_bits
        return Features(np.zeros((0, n_bits), np.float32), np.zeros((0, n_bytes_for(n_bits)), np.uint8),
                        np.zeros((0, N_COLOUR_BINS), np.float32))
    descriptors = extractor.describe(crops, batch_size=batch_size)
    feats = extractor.project(descriptors)
    codes = binarize(feats)
    colours = np.stack([colour_histogram(c, None, use_mask=extractor.use_colour_mask) for c in crops])
    rerank = extractor.reranker.project(descriptors) if extractor.reranker is not None else None
    return Features(feats=feats, codes=codes, colours=colours.astype(np.float32), rerank=rerank)
