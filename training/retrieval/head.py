"""`python -m training.retrieval.head`: retrain only the head (mean, projection) of a learned features folder on
cached descriptors, for the 256 sign bits.

Why: on a shared CPU a step of `lookalike train embedding` (encoder blocks 3-15 forward and backward, 96 views at
112 px) takes ~50 s at load 11, while the trained encoder's 864-d descriptor already finds altered copies far better
than its 256-bit code does (the head has not caught up, and binarising costs ~0.12 P@1). With the encoder fixed,
every descriptor is computed once (the same `var/retrieval/` cache `evaluate retrieval` uses) and the head trains
in seconds per epoch:

- pairs: the protocol's altered copy of a TRAIN crop (`altered_crop`, cached) and the crop itself (the evaluation
  index's cache) — the query/index relation the altered-copy figure measures, on TRAIN images only;
- loss: InfoNCE of each altered copy against clean TRAIN crops (its own crop positive, `--keys` sampled negatives),
  a supervised term (same category and colour closer, as in the trainer), both on the tanh embedding and on
  straight-through sign codes (what Hamming ranking sees), plus the (1 - |tanh|)^2 penalty; tanh sharpness
  annealed 1 -> `--beta-final` (folded into the projection on export);
- export: the same encoder file, the new fp16 mean and projection, the manifest with a new version
  (`--version-tag`), then (`--tune-colour`) the colour weight picked on VAL as `lookalike train embedding` does.

`--encode-only` fills the altered-copy cache of the TRAIN subset and stops (run it beside the evaluation's cache
build); training uses the finished prefix of the evaluation's crop cache, so it can start before that is complete.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shared.config import load_settings
from shared.vision.features import FeatureExtractor, descriptors_from_pooled
from training.retrieval.data import cache_folder, cached_pooled, cached_prefix, load_items, set_threads
from training.retrieval.embedding import SEED, losses, sign_st, tune_colour

logger = logging.getLogger(__name__)


def train_subset(items, n: int):
    """The first `n` TRAIN items in manifest order (a fixed, reproducible subset)."""
    return [it for it in items if it.split == "train"][:n]


def load_data(ex: FeatureExtractor, data_dir: Path, n_train: int, *, encode: bool, batch_size: int = 16):
    """(pairs: altered desc (p, D), clean row (p,)), clean desc (n, D) of the available index prefix, items."""
    items = load_items(data_dir)
    kw = dict(input_size=ex.input_size, data_dir=data_dir, layers=ex.layers, flatten=ex.flatten_background)
    subset = train_subset(items, n_train)
    if encode:
        alt = cached_pooled(ex.encoder, subset, variant="altered", batch_size=batch_size, **kw)
    else:
        alt = cached_prefix(cache_folder(ex.encoder, subset, variant="altered", **kw), len(subset))
    crop = cached_prefix(cache_folder(ex.encoder, items, variant="crop", **kw), len(items))
    if not alt or not crop:
        raise SystemExit("no cached descriptors yet (altered TRAIN copies or the evaluation's crop cache)")
    n_clean = crop["colour"].shape[0]
    clean = descriptors_from_pooled(crop, layers=ex.layers, pooling=ex.pooling)
    row_of = {it.id: i for i, it in enumerate(items)}
    a_desc = descriptors_from_pooled(alt, layers=ex.layers, pooling=ex.pooling)
    rows = np.array([row_of[it.id] for it in subset[:a_desc.shape[0]]], dtype=np.int64)
    keep = rows < n_clean
    logger.info("%d altered TRAIN copies, %d with their clean crop cached; %d of %d index rows cached",
                a_desc.shape[0], int(keep.sum()), n_clean, len(items))
    return a_desc[keep], rows[keep], clean, items[:n_clean]


def labels(items) -> tuple[torch.Tensor, torch.Tensor]:
    colours = sorted({it.colour for it in items if it.colour})
    cidx = {c: i for i, c in enumerate(colours)}
    return (torch.tensor([it.category_id for it in items], dtype=torch.int64),
            torch.tensor([cidx[it.colour] if it.colour else -1 for it in items], dtype=torch.int64))


def codes_p1(q: torch.Tensor, keys: torch.Tensor, target: torch.Tensor) -> float:
    """Altered-copy P@1 by sign agreement (Hamming), ties to the lower row."""
    qs, ks = torch.where(q > 0, 1.0, -1.0), torch.where(keys > 0, 1.0, -1.0)
    return float(((qs @ ks.T).argmax(dim=1) == target).float().mean())


def train_head(ex: FeatureExtractor, a_desc: np.ndarray, rows: np.ndarray, clean: np.ndarray, items,
               args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Returns (mean, projection with beta folded in, log)."""
    torch.manual_seed(SEED)
    gen = np.random.default_rng(SEED)
    train_rows = np.array([i for i, it in enumerate(items) if it.split == "train"], dtype=np.int64)
    cat, col = labels(items)
    clean_t = torch.from_numpy(clean)
    # Held out for the probe: the last `--holdout` pairs (their crops stay in the key set, as in an index).
    n_hold = min(args.holdout, len(rows) // 5)
    tr_a, tr_r = torch.from_numpy(a_desc[:-n_hold]), torch.from_numpy(rows[:-n_hold])
    ho_a, ho_r = torch.from_numpy(a_desc[-n_hold:]), torch.from_numpy(rows[-n_hold:])
    mean = torch.nn.Parameter(torch.from_numpy(ex.mean.copy()))
    proj = torch.nn.Parameter(torch.from_numpy(ex.projection.copy()))
    opt = torch.optim.Adam([mean, proj], lr=args.lr)
    n_steps = max(1, int(args.epochs * len(tr_r) / args.batch))
    probe_keys = torch.from_numpy(np.union1d(train_rows, ho_r.numpy()))

    def head(x: torch.Tensor, beta: float) -> torch.Tensor:
        return torch.tanh(beta * ((x - mean) @ proj))

    def probe(beta: float) -> dict:
        with torch.no_grad():
            kz = head(clean_t[probe_keys], beta)
            target = torch.searchsorted(probe_keys, ho_r)
            qz = head(ho_a, beta)
            cos = F.normalize(qz, dim=1) @ F.normalize(kz, dim=1).T
            return {"p1_codes": codes_p1(qz, kz, target),
                    "p1_float": float((cos.argmax(dim=1) == target).float().mean()), "n_keys": int(len(probe_keys))}

    log = {"start": probe(1.0), "steps": n_steps, "pairs": int(len(tr_r)), "holdout": int(n_hold)}
    logger.info("probe before: %s (%d steps of %d pairs)", log["start"], n_steps, args.batch)
    beta = 1.0
    t0 = time.time()
    for step in range(n_steps):
        frac = step / n_steps
        beta = 1.0 + (args.beta_final - 1.0) * frac
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * frac))
        b = torch.from_numpy(gen.choice(len(tr_r), args.batch, replace=False))
        own = tr_r[b]
        extra = torch.from_numpy(gen.choice(train_rows, args.keys, replace=False))
        extra = extra[~torch.isin(extra, own)]
        key_rows = torch.cat([own, extra])
        za = head(tr_a[b], beta)
        zk = head(clean_t[key_rows], beta)
        # losses() takes rows i and i+B as twins: queries = altered copies, their twins = their clean crops; the
        # other clean crops enter as queue keys (negatives, or positives of the supervised term).
        z = torch.cat([za, zk[:len(own)]])
        c2, k2 = torch.cat([cat[own], cat[own]]), torch.cat([col[own], col[own]])
        queue = (F.normalize(zk[len(own):], dim=1), cat[extra], col[extra])
        parts = losses(z, c2, k2, queue, temperature=args.temperature)
        loss = parts["inst"] + args.sup_weight * parts["sup"] + args.quant_weight * parts["quant"]
        if args.st_weight > 0:
            bq = (torch.where(zk[len(own):] > 0, 1.0, -1.0) / math.sqrt(zk.shape[1]), cat[extra], col[extra])
            st = losses(sign_st(z), c2, k2, bq, temperature=args.temperature)
            loss = loss + args.st_weight * (st["inst"] + args.sup_weight * st["sup"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == n_steps:
            logger.info("step %d/%d beta %.2f loss %.4f inst %.4f sup %.4f quant %.4f |z| %.3f probe %s (%.0f s)",
                        step + 1, n_steps, beta, loss.item(), parts["inst"].item(), parts["sup"].item(),
                        parts["quant"].item(), float(za.detach().abs().mean()), probe(beta), time.time() - t0)
    log["end"] = probe(beta)
    log["final_beta"] = beta
    log["elapsed_s"] = round(time.time() - t0, 1)
    return mean.detach(), (beta * proj.detach()), log


def export_head(src: Path, out: Path, mean: torch.Tensor, proj: torch.Tensor, *, tag: str, command: str,
                log: dict) -> dict:
    """A features folder: the source's encoder file, the new head (fp16), its manifest with a new version."""
    from safetensors.torch import save_file

    meta = json.loads((src / "manifest.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / meta["encoder"]["file"], out / meta["encoder"]["file"])
    version = meta["version"].rsplit("-", 1)[0] + f"-{tag}"
    save_file({"mean": mean.half().contiguous(), "projection": proj.half().contiguous()},
              str(out / meta["file"]), metadata={"version": version})
    (out / meta["file"]).chmod(0o644)
    source_version = meta["version"]
    for key in [k for k in meta if k.endswith("_metrics") or k.startswith("colour_weight_")]:
        del meta[key]  # figures of the old head
    meta.update({"version": version, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "head": {"command": command, "from": source_version, **log}})
    (out / "manifest.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.retrieval.head", description=__doc__.split("\n")[0])
    p.add_argument("--init-from", type=Path, default=Path("models/features"), help="features folder to start from")
    p.add_argument("--out", type=Path, default=None, help="write the new features folder here")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--train-items", type=int, default=6000, help="first N TRAIN items (manifest order) as pairs")
    p.add_argument("--encode-only", action="store_true", help="fill the altered-copy cache of the subset, then stop")
    p.add_argument("--epochs", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--keys", type=int, default=4096, help="clean TRAIN crops per step as negatives / label keys")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--sup-weight", type=float, default=0.3)
    p.add_argument("--st-weight", type=float, default=0.5)
    p.add_argument("--quant-weight", type=float, default=0.3)
    p.add_argument("--beta-final", type=float, default=2.0, help="tanh sharpness at the end, relative to the start")
    p.add_argument("--holdout", type=int, default=500, help="pairs held out for the probe")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--version-tag", default="v3")
    p.add_argument("--tune-colour", action="store_true", help="pick the colour weight on VAL (needs the full cache)")
    p.add_argument("--w-grid", default="", metavar="W[,W]", help="colour weights tried by --tune-colour (default: "
                   "tune.W_GRID, 0 to 1 by 0.05)")
    p.add_argument("--tune-only", action="store_true", help="only --tune-colour the folder --out (no training)")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    data_dir = args.data or load_settings().data_dir
    grid = tuple(float(w) for w in args.w_grid.split(",") if w) or None
    if args.tune_only:
        print(json.dumps(tune_colour(args.out, data_dir, grid=grid)))
        return 0
    ex = FeatureExtractor.load(args.init_from)
    if ex.activation != "tanh":
        raise SystemExit(f"{args.init_from}: not a learned (tanh) head")
    a_desc, rows, clean, items = load_data(ex, data_dir, args.train_items, encode=args.encode_only)
    if args.encode_only:
        return 0
    mean, proj, log = train_head(ex, a_desc, rows, clean, items, args)
    print(json.dumps(log))
    if args.out is not None:
        command = "python -m training.retrieval.head " + " ".join(argv if argv is not None else sys.argv[1:])
        meta = export_head(args.init_from, args.out, mean, proj, tag=args.version_tag, command=command, log=log)
        print(json.dumps({"out": str(args.out), "version": meta["version"]}))
        if args.tune_colour:
            print(json.dumps(tune_colour(args.out, data_dir, grid=grid)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
