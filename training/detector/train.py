"""`lookalike train detector`: train the guided ROI detector (Faster R-CNN, EfficientNet-Lite0 + FPN).

Joint data: Colorful Fashion street photos with their boxes + single-item product photos (all clothing
dataset images, Myntra subsampled per category) with one whole-item foreground box. Writes resumable
checkpoints to --out/last.pt and, at the end, the fp16 safetensors + manifest.json in --out/export/
(ready to copy to models/detector/ once promoted).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.config import REPO_ROOT, load_settings
from shared.taxonomy import load_taxonomy
from shared.vision import roi
from training.detector import data as ddata
from training.detector import engine
from training.provenance import data_dir_label

logger = logging.getLogger(__name__)

DEFAULT_OUT = REPO_ROOT / "var" / "detector" / "run"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lookalike train detector", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings data_dir)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run folder: checkpoints, log, export/")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02, help="peak SGD learning rate (cosine decay, linear warm-up)")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--size", type=int, default=roi.SERVING_SIZE, help="longer side in px (train = serve)")
    p.add_argument("--myntra-per-category", type=int, default=50,
                   help="Myntra photos per taxonomy category (60x80 px and easy; -1 = all)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = all; smoke tests)")
    p.add_argument("--time-budget", type=float, default=72.0,
                   help="minutes of training: the cosine schedule follows max(step/total, elapsed/budget) and "
                        "training ends when either reaches 1, so a shared CPU still finishes on time (0 = off)")
    p.add_argument("--ckpt-every", type=int, default=100, help="save last.pt every N steps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present) / cpu / cuda")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    p.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "var" / "detector" / "cache",
                   help="decoded images + product boxes, reused across runs")
    p.add_argument("--no-val", action="store_true", help="skip the final validation pass")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this detector checkpoint (dir with detector.safetensors) instead of ImageNet: "
                        "a fine-tune continuation")
    p.add_argument("--train-sizes", default="",
                   help="comma-separated longer sides in px; each batch is resized to a random one (scale jitter; "
                        "default: --size only)")
    p.add_argument("--colour-jitter", type=float, default=0.0,
                   help="random brightness / contrast / saturation factors in [1 - x, 1 + x] (0 = off)")
    p.add_argument("--street-repeat", type=int, default=1,
                   help="each Colorful Fashion street photo occurs this many times per epoch")
    return p.parse_args(argv)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_factor(step: int, progress: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 to 0.01 over progress in [0, 1]."""
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / max(1, warmup)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def export(net: torch.nn.Module, out_dir: Path, meta: dict) -> Path:
    """fp16 safetensors + manifest.json of a trained detector."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in net.state_dict().items()
             if v.is_floating_point()}
    # Integer buffers (BN num_batches_tracked) are not needed for inference, but load_state_dict is strict.
    state.update({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(out_dir / "detector.safetensors"))
    # Every checkpoint names its version (shared.checkpoints): keep the caller's, else name it by its export time.
    meta = {"version": time.strftime("detector-%Y%m%dT%H%M%S", time.gmtime()), **meta}
    (out_dir / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = _device(args.device)
    data_dir = args.data or load_settings().data_dir
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tax = load_taxonomy()
    started = time.time()

    per_cat = None if args.myntra_per_category < 0 else args.myntra_per_category
    items = ddata.select_items(data_dir, splits=("train",), myntra_per_category=per_cat, seed=args.seed)
    if not items:
        logger.error("no training images in %s (split train)", data_dir)
        return 2
    data_hash = ddata.items_hash(items)
    samples, pixels = ddata.load_cached_samples(items, args.cache_dir)
    logger.info("training on %d images (%s), data hash %s", len(samples),
                {d: sum(s.dataset == d for s in samples) for d in sorted({s.dataset for s in samples})}, data_hash[:12])

    net = roi.build_roi_detector(num_classes=len(tax.categories) + 1, pretrained_backbone=args.init_from is None,
                                 weights=args.init_from, min_size=args.size, max_size=args.size,
                                 # Fewer proposals and sampled RoIs than torchvision's defaults: 2-6 boxes
                                 # per image need no more, and the box head is most of a CPU step.
                                 rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                                 box_batch_size_per_image=128)
    net.to(device)
    roi.freeze_backbone_bn_and_stem(net)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    repeat = {ds: args.street_repeat for ds in ddata.STREET_DATASETS}
    sizes = tuple(int(x) for x in args.train_sizes.split(",") if x.strip())
    steps_per_epoch = len(engine.epoch_batches(samples, args.batch_size, seed=args.seed, epoch=0, repeat=repeat))
    total = steps_per_epoch * args.epochs
    if args.max_steps:
        total = min(total, args.max_steps)
    warmup = min(args.warmup_steps, total // 4)
    budget_s = args.time_budget * 60.0

    def progress() -> float:
        p = step / max(1, total)
        if budget_s > 0:
            p = max(p, (elapsed_before + time.time() - started) / budget_s)
        return p

    def set_lr() -> None:
        for g in optimizer.param_groups:
            g["lr"] = args.lr * lr_factor(step, progress(), warmup)

    step, elapsed_before = 0, 0.0
    ckpt_path = out / "last.pt"
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["data_hash"] != data_hash:
            logger.error("checkpoint %s was trained on other data (%s vs %s)", ckpt_path, ck["data_hash"][:12], data_hash[:12])
            return 2
        net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        step, elapsed_before = ck["step"], ck.get("elapsed_s", 0.0)
        logger.info("resumed from %s at step %d", ckpt_path, step)

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "data_hash": data_hash, "args": vars(args) | {"data": data_dir_label(data_dir), "out": str(out)},
                    "elapsed_s": elapsed_before + time.time() - started}, tmp)
        tmp.replace(ckpt_path)

    net.train()
    roi.freeze_backbone_bn_and_stem(net)  # .train() would put the frozen BN layers back in batch-stat mode
    bar = tqdm(total=total, initial=step, desc="detector", unit="step", file=sys.stderr, dynamic_ncols=True)
    ema: dict[str, float] = {}
    set_lr()
    while step < total and progress() < 1.0:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        batches = engine.epoch_batches(samples, args.batch_size, seed=args.seed, epoch=epoch, repeat=repeat)[in_epoch:]
        batches = batches[: total - step]
        rng = random.Random(args.seed * 7919 + step)  # flips depend on the step: same after a resume

        def on_step(losses: dict[str, float]) -> bool:
            nonlocal step
            step += 1
            for k, v in losses.items():
                ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
            bar.update(1)
            bar.set_postfix(ep=epoch, loss=f"{ema['loss']:.3f}", cls=f"{ema['loss_classifier']:.3f}",
                            box=f"{ema['loss_box_reg']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}")
            if step % args.ckpt_every == 0 or step == total:
                save()
            set_lr()
            return progress() < 1.0

        engine.train_steps(net, optimizer, samples, pixels, batches, device=device, rng=rng, on_step=on_step,
                           sizes=sizes, colour=args.colour_jitter)
    bar.close()
    save()
    train_seconds = elapsed_before + time.time() - started
    logger.info("training done: %d steps in %.0f s", step, train_seconds)

    metrics: dict = {"train_steps": step, "train_seconds": round(train_seconds, 1),
                     "final_loss_ema": {k: round(v, 4) for k, v in ema.items()}}
    if not args.no_val:
        val_items = ddata.select_items(data_dir, splits=("val",))
        if val_items:
            vs, vp = ddata.build_samples(val_items)
            vbar = tqdm(total=len(vs), desc="val", unit="img", file=sys.stderr, dynamic_ncols=True)
            dets = engine.detect_samples(net, vs, vp, device=device, progress=vbar.update)
            vbar.close()
            metrics["val"] = {gt: engine.table3(vs, dets, num_categories=len(tax.categories), gt=gt)
                              for gt in ("listing", "all")}
            logger.info("val mAP: %s", json.dumps(metrics["val"]))
    meta = {
        "network": roi.NETWORK_NAME,
        "taxonomy_version": tax.version,
        "num_classes": len(tax.categories) + 1,
        "class_offset": 1,
        "preprocessing": {"input": "RGB float in [0,1]", "normalize": "(x*255 - 127) / 128",
                          "min_size": args.size, "max_size": args.size, "resize": "longer side = max_size"},
        "data_dir": data_dir_label(data_dir),
        "data_hash": data_hash,
        "n_train_images": len(samples),
        "command": "lookalike train detector " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "metrics": metrics,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    net.to("cpu")
    export(net, out / "export", meta)
    logger.info("exported %s", out / "export")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
