"""`lookalike train embedding`: fine-tune EfficientNet-Lite0 into a binarisation-aware 256-bit appearance code.

Recipe (issue 12): instance discrimination (NT-Xent, temperature 0.1) between two views of each TRAIN crop, made
with the evaluation protocol's alterations (`training.retrieval.data.alter`: crop, rescale, padding on a random
colour, brightness, JPEG) plus a flip, then the serving path's `isolate_item` + letterbox; a supervised term
(SupCon: same category, and same colour where both are labelled, closer); a tanh head whose output is binarised at
serving, with a penalty pulling |tanh| to 1 so the sign bits lose little. A queue of past embeddings (cross-batch
memory) adds negatives that a CPU-sized batch lacks. BatchNorm statistics stay frozen (ImageNet's): no batch
leakage between the two views, no train/serve gap.

The head is `tanh((descriptor - mean) @ projection)` on the serving descriptor (masked avg+max of the stride-16 and
stride-32 maps, each part L2-normalised), so the trained `mean` and `projection` ship in the same file format as
the PCA/ITQ configuration and `extract_features` needs no second path.

CPU-friendly: images are decoded once into RAM; the stem and the first blocks are frozen (their backward pass at
full resolution dominates the cost); the run is time-budgeted (`--max-minutes`, cosine LR over the budget),
checkpoints to var/embedding/<run>/last.pt every few minutes and resumes from it; progress goes to the log.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from shared.config import REPO_ROOT, load_settings
from shared.vision import efficientnet_lite as effnet
from shared.vision import presets
from shared.vision.features import _content_cells, _pasted_box, isolate_item, masked_pool
from training.retrieval.data import RetrievalItem, alter, altered_crop, load_items, open_image, set_threads

logger = logging.getLogger(__name__)

RUNS_DIR = REPO_ROOT / "var" / "embedding"
SEED = 1609
LAYERS = (16, 32)
# Training alterations: the protocol's kinds, slightly wider ranges (the protocol's are the defaults of `alter`).
TRAIN_ALTER = dict(keep=(0.70, 1.0), scale=(0.5, 1.5), pad=(0.0, 0.2), brightness=(0.7, 1.3), quality=(25, 90))
_DECODE_SIDE = 192  # longer side kept in RAM: views end at <= 160 px, alterations rescale by <= 1.5


# ----------------------------------------------------------------------------------------------------------------
# model


class EmbeddingNet(nn.Module):
    """Encoder + the serving descriptor + tanh((d - mean) @ projection). `frozen_blocks` blocks (and the stem) run
    without gradients."""

    def __init__(self, encoder: nn.Module, *, n_bits: int = 256, frozen_blocks: int = 3, gain: float = 8.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.frozen_blocks = frozen_blocks
        d = 2 * sum(effnet.STRIDE_CHANNELS[s] for s in LAYERS)
        self.mean = nn.Parameter(torch.zeros(d))
        proj = torch.empty(d, n_bits)
        nn.init.orthogonal_(proj)
        self.projection = nn.Parameter(proj * gain)  # gain: start in tanh's useful range (|descriptor| = 2)
        # tanh(beta * x), beta annealed upwards (HashNet-style) so the float embedding approaches its sign;
        # folded into the projection at export.
        self.beta = 1.0
        for name, p in encoder.named_parameters():
            p.requires_grad = not self._in_frozen_prefix(name)

    def _in_frozen_prefix(self, name: str) -> bool:
        if name.startswith(("_conv_stem.", "_bn0.")):
            return True
        if name.startswith("_blocks."):
            return int(name.split(".")[1]) < self.frozen_blocks
        return not name.startswith("_blocks.")  # the head conv is not used

    def train(self, mode: bool = True) -> "EmbeddingNet":
        super().train(mode)
        self.encoder.eval()  # frozen BatchNorm statistics
        return self

    def descriptor(self, x: torch.Tensor, cells: dict[int, torch.Tensor]) -> torch.Tensor:
        """(n, 3, s, s) letterboxed inputs -> (n, D) descriptor, as `descriptors_from_pooled(pooled_maps(...))`."""
        enc = self.encoder
        with torch.no_grad():
            h = F.relu6(enc._bn0(enc._conv_stem(x)))
            for block in enc._blocks[:self.frozen_blocks]:
                h = block(h)
        maps = {}
        for i in range(self.frozen_blocks, effnet.STRIDE_BLOCKS[32] + 1):
            h = enc._blocks[i](h)
            for s in LAYERS:
                if effnet.STRIDE_BLOCKS[s] == i:
                    maps[s] = h
        parts = []
        for s in LAYERS:
            for v in masked_pool(maps[s], cells[s]):
                parts.append(F.normalize(v, dim=1, eps=1e-12))
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor, cells: dict[int, torch.Tensor]) -> torch.Tensor:
        """tanh embedding (n, n_bits); the code is its sign."""
        return torch.tanh(self.beta * ((self.descriptor(x, cells) - self.mean) @ self.projection))


# ----------------------------------------------------------------------------------------------------------------
# data


@dataclass
class TrainSet:
    """Decoded TRAIN crops (ROI applied, longer side <= _DECODE_SIDE) and their labels."""

    images: list[Image.Image]
    category: np.ndarray  # int64 (n,)
    colour: np.ndarray  # int64 (n,), -1 = no colour label


def load_train_set(items: list[RetrievalItem], limit: int | None = None) -> TrainSet:
    rows = [it for it in items if it.split == "train"]
    if limit:
        rows = random.Random(SEED).sample(rows, min(limit, len(rows)))
    colours = sorted({it.colour for it in rows if it.colour})
    cidx = {c: i for i, c in enumerate(colours)}
    imgs = []
    for it in rows:
        img = presets.crop(open_image(it.path), it.roi)
        imgs.append(presets.colour_thumbnail(img, _DECODE_SIDE) if max(img.size) > _DECODE_SIDE else img)
    return TrainSet(imgs, np.array([it.category_id for it in rows], np.int64),
                    np.array([cidx[it.colour] if it.colour else -1 for it in rows], np.int64))


def encoder_view(crop: Image.Image, size: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """What serving feeds the encoder for a crop: isolate_item, letterbox on white; plus the pasted box."""
    view = isolate_item(crop)
    return presets.encoder_input(view, size), _pasted_box(view, size)


def batch_cells(boxes: list[tuple[int, int, int, int]], size: int) -> dict[int, torch.Tensor]:
    return {s: _content_cells(list(boxes), size, s) for s in LAYERS}


def train_view(img: Image.Image, rng: random.Random, size: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """One training view: protocol-kind alteration (wider ranges), flip half the time, then the serving path."""
    out = alter(img, rng, **TRAIN_ALTER)
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    return encoder_view(out, size)


def make_batch(ts: TrainSet, idx: np.ndarray, rng: random.Random, size: int):
    """Two views of each index: x (2B, 3, s, s) channels_last, cells, labels (2B,) x2."""
    xs, boxes = [], []
    for view in range(2):
        for i in idx:
            x, b = train_view(ts.images[i], rng, size)
            xs.append(x)
            boxes.append(b)
    x = torch.stack(xs).contiguous(memory_format=torch.channels_last)
    cat = torch.from_numpy(np.concatenate([ts.category[idx]] * 2))
    col = torch.from_numpy(np.concatenate([ts.colour[idx]] * 2))
    return x, batch_cells(boxes, size), cat, col


# ----------------------------------------------------------------------------------------------------------------
# losses


def same_label(cat_a: torch.Tensor, col_a: torch.Tensor, cat_b: torch.Tensor, col_b: torch.Tensor) -> torch.Tensor:
    """bool (na, nb): same category, and same colour when both carry a colour label (the evaluation's relevance,
    made symmetric)."""
    same_cat = cat_a[:, None] == cat_b[None, :]
    both = (col_a[:, None] >= 0) & (col_b[None, :] >= 0)
    return same_cat & (~both | (col_a[:, None] == col_b[None, :]))


def losses(z: torch.Tensor, cat: torch.Tensor, col: torch.Tensor, queue: tuple[torch.Tensor, ...] | None, *,
           temperature: float) -> dict[str, torch.Tensor]:
    """z: tanh embeddings (2B, n_bits), rows i and i+B are views of one image. Returns instance (NT-Xent),
    supervised (SupCon, multi-positive, the twin excluded from positives) and quantisation ((1 - |z|)^2) terms."""
    n = z.shape[0]
    b = n // 2
    zn = F.normalize(z, dim=1)
    keys, kcat, kcol = zn, cat, col
    if queue is not None:
        keys = torch.cat([zn, queue[0]])
        kcat, kcol = torch.cat([cat, queue[1]]), torch.cat([col, queue[2]])
    logits = zn @ keys.T / temperature
    eye = torch.zeros_like(logits, dtype=torch.bool)
    eye[torch.arange(n), torch.arange(n)] = True
    logits = logits.masked_fill(eye, -1e9)
    twin = torch.cat([torch.arange(b, n), torch.arange(0, b)])
    log_p = F.log_softmax(logits, dim=1)
    inst = -log_p[torch.arange(n), twin].mean()
    pos = same_label(cat, col, kcat, kcol) & ~eye
    pos[torch.arange(n), twin] = False
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    sup = (-(log_p * pos).sum(dim=1)[has] / n_pos[has]).mean() if has.any() else z.new_zeros(())
    quant = ((1.0 - z.abs()) ** 2).mean()
    return {"inst": inst, "sup": sup, "quant": quant}


def sign_st(z: torch.Tensor) -> torch.Tensor:
    """The sign code in the forward pass, the tanh's gradient in the backward pass (straight-through): losses on it
    rank by Hamming distance, as serving does."""
    return z + (torch.where(z > 0, 1.0, -1.0) - z).detach()


# ----------------------------------------------------------------------------------------------------------------
# probe: a small VAL altered-copy check during training (the real figures come from `evaluate retrieval`)


@dataclass
class Probe:
    index_x: torch.Tensor
    index_cells: dict[int, torch.Tensor]
    query_x: torch.Tensor
    query_cells: dict[int, torch.Tensor]


def build_probe(items: list[RetrievalItem], size: int, n_index: int, n_query: int) -> Probe:
    val = [it for it in items if it.split == "val"]
    val = random.Random(SEED).sample(val, min(n_index, len(val)))
    ix, ib = zip(*(encoder_view(presets.crop(open_image(it.path), it.roi), size) for it in val))
    qx, qb = zip(*(encoder_view(altered_crop(it), size) for it in val[:n_query]))
    return Probe(torch.stack(ix), batch_cells(list(ib), size), torch.stack(qx), batch_cells(list(qb), size))


@torch.no_grad()
def embed(net: EmbeddingNet, x: torch.Tensor, cells: dict[int, torch.Tensor], bs: int = 128) -> torch.Tensor:
    out = []
    for s in range(0, x.shape[0], bs):
        out.append(net(x[s:s + bs].contiguous(memory_format=torch.channels_last),
                       {k: v[s:s + bs] for k, v in cells.items()}))
    return torch.cat(out)


def run_probe(net: EmbeddingNet, probe: Probe) -> dict[str, float]:
    """Altered-copy P@1 of the probe's queries among its index: float cosine and sign bits (Hamming)."""
    was = net.training
    net.eval()
    zi, zq = embed(net, probe.index_x, probe.index_cells), embed(net, probe.query_x, probe.query_cells)
    net.train(was)
    target = torch.arange(zq.shape[0])
    cos = F.normalize(zq, dim=1) @ F.normalize(zi, dim=1).T
    bits = (zq > 0).float() @ (zi > 0).float().T + (zq <= 0).float() @ (zi <= 0).float().T  # agreements
    return {"p1_float": float((cos.argmax(dim=1) == target).float().mean()),
            "p1_bits": float((bits.argmax(dim=1) == target).float().mean()),
            "mean_abs_z": float(zi.abs().mean())}


# ----------------------------------------------------------------------------------------------------------------
# training loop


def beta_at(frac: float, beta_final: float, start: float) -> float:
    """tanh sharpness: 1 until `start` (fraction of the budget), then linear up to beta_final at the end."""
    if beta_final <= 1.0 or frac <= start:
        return 1.0
    return 1.0 + (beta_final - 1.0) * min(1.0, (frac - start) / max(1e-6, 1.0 - start))


def lr_factor(frac: float, step: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine over the time budget (frac = elapsed / budget)."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def save_checkpoint(path: Path, net: EmbeddingNet, opt: torch.optim.Optimizer, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.state_dict(), "opt": opt.state_dict(), **state}, tmp)
    tmp.replace(path)


def init_from_features(net: EmbeddingNet, folder: Path) -> None:
    """Start from an exported features folder (`export`'s output, e.g. models/features/): its encoder, mean and
    projection (beta already folded in, so training continues at beta 1 relative to it)."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    if meta.get("encoder", {}).get("source") != "file" or meta.get("projection") != "learned":
        raise SystemExit(f"--init-from {folder}: not a `lookalike train embedding` export")
    enc = {k: v.float() for k, v in load_file(str(folder / meta["encoder"]["file"])).items()}
    _, unexpected = net.encoder.load_state_dict(enc, strict=False)
    if unexpected:
        raise SystemExit(f"--init-from {folder}: unexpected encoder keys {unexpected[:3]}")
    head = load_file(str(folder / meta["file"]))
    with torch.no_grad():
        net.mean.copy_(head["mean"].float())
        net.projection.copy_(head["projection"].float())
    logger.info("initialised from %s (%s)", folder, meta.get("version"))


def stop_budget(stop_at: str | None, max_minutes: float, elapsed: float) -> float:
    """Training seconds: --max-minutes, cut so that the run ends by the wall-clock time --stop-at (UTC, ISO or HH:MM,
    today or, if passed, tomorrow) counting what was already trained (`elapsed`, when resuming)."""
    budget = max_minutes * 60.0
    if not stop_at:
        return budget
    now = datetime.now(timezone.utc)
    if len(stop_at) <= 5:
        hh, mm = (int(v) for v in stop_at.split(":"))
        end = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        if end <= now:
            end += timedelta(days=1)
    else:
        end = datetime.fromisoformat(stop_at)
        end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
    return max(60.0, min(budget, elapsed + (end - now).total_seconds()))


def train(args: argparse.Namespace) -> Path:
    from shared.vision.registry import build_encoder

    run_dir = RUNS_DIR / args.run
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "args.json").write_text(json.dumps(vars(args), default=str, indent=1), encoding="utf-8")
    torch.manual_seed(SEED)
    data_dir = args.data or load_settings().data_dir
    items = load_items(data_dir)
    t0 = time.time()
    ts = load_train_set(items, args.limit)
    logger.info("decoded %d train crops in %.1f s", len(ts.images), time.time() - t0)
    probe = build_probe(items, args.input_size, args.probe_index, args.probe_queries) if args.probe_every else None
    net = EmbeddingNet(build_encoder("efficientnet_lite0", pretrained=True), n_bits=args.n_bits,
                       frozen_blocks=args.frozen_blocks)
    if args.init_from is not None:
        init_from_features(net, args.init_from)
    net.encoder.to(memory_format=torch.channels_last)
    head = [net.mean, net.projection]
    body = [p for p in net.encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": head, "lr": args.lr_head}, {"params": body, "lr": args.lr}],
                            weight_decay=args.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    ckpt = run_dir / "last.pt"
    step, elapsed, epoch, pos = 0, 0.0, 0, 0
    rng = random.Random(SEED)
    order = np.random.default_rng(args.shuffle_seed).permutation(len(ts.images))
    q_z = torch.zeros((0, args.n_bits))
    q_cat = q_col = torch.zeros((0,), dtype=torch.int64)
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed, epoch, pos = state["step"], state["elapsed"], state["epoch"], state["pos"]
        rng.setstate(state["rng"])
        order = state["order"]
        q_z, q_cat, q_col = state["queue"]
        net.beta = float(state.get("beta", 1.0))
        logger.info("resumed at step %d, %.1f min elapsed", step, elapsed / 60)
    budget = stop_budget(args.stop_at, args.max_minutes, elapsed)
    logger.info("training budget %.1f min (%.1f already done)", budget / 60, elapsed / 60)
    net.train()
    last_ckpt = last_probe = time.time()
    t_mark, seen_mark = time.time(), 0
    seen = 0
    stop_file = run_dir / "STOP"  # touch it to end the run early (checkpoint, then stop)
    stop_file.unlink(missing_ok=True)
    while elapsed < budget and (args.max_steps <= 0 or step < args.max_steps) and not stop_file.exists():
        t_step = time.time()
        if pos + args.batch_size > len(order):
            epoch, pos = epoch + 1, 0
            order = np.random.default_rng(args.shuffle_seed + epoch).permutation(len(ts.images))
        idx = order[pos:pos + args.batch_size]
        pos += args.batch_size
        x, cells, cat, col = make_batch(ts, idx, rng, args.input_size)
        f = lr_factor(elapsed / budget, step, args.warmup)
        net.beta = beta_at(elapsed / budget, args.beta_final, args.beta_from)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * f
        z = net(x, cells)
        use_queue = step >= args.queue_after and q_z.shape[0] > 0
        parts = losses(z, cat, col, (q_z, q_cat, q_col) if use_queue else None, temperature=args.temperature)
        loss = parts["inst"] + args.sup_weight * parts["sup"] + args.quant_weight * parts["quant"]
        if args.st_weight > 0:  # the same losses on the sign codes (queue keys binarised too)
            bq = (torch.where(q_z > 0, 1.0, -1.0) / math.sqrt(args.n_bits), q_cat, q_col) if use_queue else None
            st = losses(sign_st(z), cat, col, bq, temperature=args.temperature)
            parts["st"] = st["inst"].detach()
            loss = loss + args.st_weight * (st["inst"] + args.sup_weight * st["sup"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if args.queue_size > 0:
            q_z = torch.cat([F.normalize(z.detach(), dim=1), q_z])[:args.queue_size]
            q_cat, q_col = torch.cat([cat, q_cat])[:args.queue_size], torch.cat([col, q_col])[:args.queue_size]
        step += 1
        seen += x.shape[0]
        elapsed += time.time() - t_step
        if step % args.log_every == 0:
            rate = (seen - seen_mark) / max(1e-6, time.time() - t_mark)
            t_mark, seen_mark = time.time(), seen
            logger.info("step %d epoch %d (%.2f) %.1f/%.0f min lr %.2e loss %.4f inst %.4f sup %.4f quant %.4f "
                        "|z| %.3f st %.4f beta %.2f %.1f views/s", step, epoch, pos / len(order), elapsed / 60, budget / 60,
                        opt.param_groups[1]["lr"], loss.item(), parts["inst"].item(), parts["sup"].item(),
                        parts["quant"].item(), float(z.detach().abs().mean()), float(parts.get("st", torch.zeros(()))),
                        net.beta, rate)
        if probe is not None and time.time() - last_probe > args.probe_every * 60:
            t_p = time.time()
            logger.info("probe step %d: %s (%.0f s)", step, run_probe(net, probe), time.time() - t_p)
            last_probe = time.time()
        if time.time() - last_ckpt > args.checkpoint_every * 60:
            save_checkpoint(ckpt, net, opt, {"step": step, "elapsed": elapsed, "epoch": epoch, "pos": pos,
                                             "rng": rng.getstate(), "order": order, "queue": (q_z, q_cat, q_col),
                                             "beta": net.beta})
            last_ckpt = time.time()
    save_checkpoint(ckpt, net, opt, {"step": step, "elapsed": elapsed, "epoch": epoch, "pos": pos,
                                     "rng": rng.getstate(), "order": order, "queue": (q_z, q_cat, q_col),
                                     "beta": net.beta})
    if probe is not None:
        logger.info("final probe step %d: %s", step, run_probe(net, probe))
    (run_dir / "done.json").write_text(json.dumps({"step": step, "elapsed_s": round(elapsed, 1), "epoch": epoch,
                                                   "epoch_frac": pos / len(order), "views": seen},
                                                  indent=1), encoding="utf-8")
    logger.info("done: %d steps, %.1f min", step, elapsed / 60)
    return ckpt


# ----------------------------------------------------------------------------------------------------------------
# export: a features folder that FeatureExtractor.load serves


def export(ckpt: Path, out_dir: Path, *, input_size: int, n_bits: int, frozen_blocks: int, command: str,
           colour_weight: float = 0.1, extra: dict | None = None, tag: str = "v2") -> dict:
    """encoder.safetensors (fp16, blocks up to stride 32) + projection.safetensors (fp16 mean, projection) +
    manifest.json."""
    from safetensors.torch import save_file

    from shared.vision.features import ISOLATE_VERSION, N_COLOUR_BINS
    from shared.vision.registry import build_encoder

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    net = EmbeddingNet(build_encoder("efficientnet_lite0"), n_bits=n_bits, frozen_blocks=frozen_blocks)
    net.load_state_dict(state["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = {k: (v.detach().half() if v.is_floating_point() else v).contiguous()
           for k, v in net.encoder.state_dict().items() if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}
    version = f"effl0-emb.in{input_size}.s16s32-avgmax.tanh{n_bits}.flat{ISOLATE_VERSION}.hsv{N_COLOUR_BINS}-{tag}"
    save_file(enc, str(out_dir / "encoder.safetensors"), metadata={"version": version})
    beta = float(state.get("beta", 1.0))  # tanh(beta * x @ P) = tanh(x @ (beta * P))
    save_file({"mean": net.mean.detach().half().contiguous(),
               "projection": (beta * net.projection.detach()).half().contiguous()},
              str(out_dir / "projection.safetensors"), metadata={"version": version})
    meta = {
        "version": version,
        "file": "projection.safetensors",
        "encoder": {"source": "file", "name": "efficientnet_lite0", "file": "encoder.safetensors"},
        "input_size": input_size,
        "layers": list(LAYERS),
        "pooling": "avgmax",
        "projection": "learned",
        "activation": "tanh",
        "n_bits": n_bits,
        "binarizer": "shared.codes.binarize (bit = feature > 0, packbits big-endian: feature 0 = MSB of byte 0)",
        "colour_bins": N_COLOUR_BINS,
        "colour_mask": True,
        "flatten_background": True,
        "isolate_version": ISOLATE_VERSION,
        "colour_weight": colour_weight,
        "distance": "(1 - w) * hamming / n_bits + w * 0.5 * L1(colour histograms)",
        "preprocessing": {"roi": "crop, isolate_item (plain backdrop painted white, tightened), letterbox on white",
                          "normalize": "(x - 127) / 128",
                          "pooled": "masked average and max over the crop's cells of the stride-16 and stride-32 "
                                    "maps, each part L2-normalised, concatenated; feature = tanh((d - mean) @ "
                                    "projection), both learned"},
        "training": {"steps": state["step"], "elapsed_s": round(state["elapsed"], 1), "epochs": state["epoch"]
                     + state["pos"] / len(state["order"]), "final_beta": beta},
        "seed": SEED,
        "command": command,
        "training_args": _run_args(ckpt.parent),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    (out_dir / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name in ("encoder.safetensors", "projection.safetensors"):
        (out_dir / name).chmod(0o644)  # safetensors writes 0600
    return meta


def _run_args(run_dir: Path) -> dict:
    """The training run's arguments (var/embedding/<run>/args.json), for the manifest."""
    path = run_dir / "args.json"
    if not path.exists():
        return {}
    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items()
            if k not in ("export", "export_only", "tune_colour", "data")}


def tune_colour(features_dir: Path, data_dir: Path, *, batch_size: int = 16, grid: tuple[float, ...] | None = None
                ) -> dict:
    """Pick the colour weight on VAL (`training.retrieval.tune.tune_colour_weight`, on the fp16 weights as shipped)
    and record it with the VAL figures in the folder's manifest."""
    from shared.vision.features import FeatureExtractor
    from training.retrieval.data import data_tag
    from training.retrieval.tune import load_cached, score_config, tune_colour_weight

    ex = FeatureExtractor.load(features_dir)
    c = load_cached(ex.encoder, data_dir, input_size=ex.input_size, splits=("val",), batch_size=batch_size,
                    roipool=False, flatten=ex.flatten_background)
    w, table = tune_colour_weight(c, "val", pooling=ex.pooling, mean=ex.mean, proj=ex.projection, grid=grid)
    val = score_config(c, "val", pooling=ex.pooling, mean=ex.mean, proj=ex.projection, colour_weight=w)
    path = features_dir / "manifest.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.update({"colour_weight": w, "colour_weight_objective": "map+p1alt", "data_hash": data_tag(data_dir),
                 "val_metrics": val, "colour_weight_grid": table})
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return {"colour_weight": w, "val": val}


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike train embedding", description=__doc__.split("\n")[0])
    p.add_argument("--run", default="emb", help="run name: var/embedding/<run>/ (log, checkpoint; touch STOP there "
                                                 "to end the run early)")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--resume", action="store_true", help="continue from var/embedding/<run>/last.pt")
    p.add_argument("--max-minutes", type=float, default=80.0, help="training time budget (the LR schedule follows it)")
    p.add_argument("--stop-at", default=None, metavar="TIME",
                   help="UTC wall-clock end (HH:MM or ISO): the budget shrinks so that training stops by then")
    p.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                   help="start from an exported features folder (encoder, mean, projection), e.g. models/features")
    p.add_argument("--shuffle-seed", type=int, default=SEED,
                   help="seed of the image order (another one when continuing a run's weights via --init-from)")
    p.add_argument("--st-weight", type=float, default=0.0,
                   help="weight of the instance + supervised losses on straight-through sign codes (0 = off)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = time budget only)")
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--n-bits", type=int, default=256)
    p.add_argument("--frozen-blocks", type=int, default=3, help="stem + this many first blocks frozen")
    p.add_argument("--batch-size", type=int, default=48, help="images per step (two views each)")
    p.add_argument("--lr", type=float, default=3e-4, help="encoder learning rate (AdamW)")
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=30, help="warm-up steps")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--sup-weight", type=float, default=0.3, help="weight of the supervised (SupCon) term")
    p.add_argument("--quant-weight", type=float, default=0.1, help="weight of the (1 - |tanh|)^2 penalty")
    p.add_argument("--beta-final", type=float, default=1.0, help="tanh sharpness at the end of the budget (1 = off)")
    p.add_argument("--beta-from", type=float, default=0.0, help="fraction of the budget where beta starts rising")
    p.add_argument("--queue-size", type=int, default=4096, help="past embeddings used as extra keys (0 = none)")
    p.add_argument("--queue-after", type=int, default=150, help="steps before the queue is used")
    p.add_argument("--limit", type=int, default=None, help="train on this many images (smoke tests)")
    p.add_argument("--probe-every", type=float, default=10.0, help="minutes between VAL probes (0 = none)")
    p.add_argument("--probe-index", type=int, default=1000)
    p.add_argument("--probe-queries", type=int, default=300)
    p.add_argument("--checkpoint-every", type=float, default=4.0, help="minutes between checkpoints")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="after training (or with --export-only), write a features folder here")
    p.add_argument("--export-only", action="store_true", help="export var/embedding/<run>/last.pt, no training")
    p.add_argument("--colour-weight", type=float, default=0.1, help="colour weight written by --export")
    p.add_argument("--version-tag", default="v2",
                   help="last part of the exported version string: a new one for every new set of weights")
    p.add_argument("--tune-colour", action="store_true",
                   help="after --export, pick the colour weight on VAL and record it (encodes the whole folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    command = "lookalike train embedding " + " ".join(argv if argv is not None else sys.argv[1:])
    ckpt = RUNS_DIR / args.run / "last.pt" if args.export_only else train(args)
    if args.export is not None:
        meta = export(ckpt, args.export, input_size=args.input_size, n_bits=args.n_bits,
                      frozen_blocks=args.frozen_blocks, command=command, colour_weight=args.colour_weight,
                      tag=args.version_tag)
        print(json.dumps({"out": str(args.export), "version": meta["version"], "training": meta["training"]}))
        if args.tune_colour:
            print(json.dumps(tune_colour(args.export, args.data or load_settings().data_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
