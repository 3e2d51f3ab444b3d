"""Loops of attribute training and evaluation: teacher-forced epochs, validation, set precision/recall, checkpoints."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from shared.taxonomy import N_SPECIAL, Taxonomy
from shared.taxonomy.labels import colour_family
from shared.vision import presets
from shared.vision.attributes import AttributeNet, decode, decode_rules, pad_sequences, sequence_nll

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- metrics

@dataclass
class SetMetrics:
    """Per-image set precision/recall (paper Table 2) plus attribute-only micro figures and group accuracy.

    `tokens` sets hold the category token and the attribute tokens (never empty); `attributes` sets hold attribute
    ids only (often empty: Colorful Fashion carries no attribute labels), so they are micro-averaged.
    """

    tax: Taxonomy
    n: int = 0
    p_sum: float = 0.0
    r_sum: float = 0.0
    cat_correct: int = 0
    attr_tp: int = 0
    attr_pred: int = 0
    attr_true: int = 0
    group_total: dict[str, int] = field(default_factory=dict)
    group_correct: dict[str, int] = field(default_factory=dict)
    colour_family_correct: int = 0  # predicted colour families == true colour families (navy ~ blue)
    colour_clean_total: int = 0  # images whose colour label is not disputed (labels.LABEL_NOISE_RULE)
    colour_clean_correct: int = 0
    colour_clean_family_correct: int = 0

    def add(self, pred_cat: int, pred_attrs: Sequence[int], true_cat: int, true_attrs: Sequence[int],
            disputed: Sequence[str] = ()) -> None:
        pred = {("c", pred_cat)} | {("a", a) for a in pred_attrs}
        true = {("c", true_cat)} | {("a", a) for a in true_attrs}
        hit = len(pred & true)
        self.n += 1
        self.p_sum += hit / len(pred)
        self.r_sum += hit / len(true)
        self.cat_correct += int(pred_cat == true_cat)
        pa, ta = set(pred_attrs), set(true_attrs)
        self.attr_tp += len(pa & ta)
        self.attr_pred += len(pa)
        self.attr_true += len(ta)
        for g in {self.tax.attributes[a].group for a in ta}:
            self.group_total[g] = self.group_total.get(g, 0) + 1
            want = {a for a in ta if self.tax.attributes[a].group == g}
            got = {a for a in pa if self.tax.attributes[a].group == g}
            self.group_correct[g] = self.group_correct.get(g, 0) + int(want == got)
            if g == "colour":
                fam = {colour_family(self.tax.attributes[a].key) for a in want}
                fam_ok = fam == {colour_family(self.tax.attributes[a].key) for a in got}
                self.colour_family_correct += int(fam_ok)
                if "colour" not in disputed:
                    self.colour_clean_total += 1
                    self.colour_clean_correct += int(want == got)
                    self.colour_clean_family_correct += int(fam_ok)

    def summary(self) -> dict[str, Any]:
        n = max(self.n, 1)
        groups = {g: {"accuracy": self.group_correct[g] / self.group_total[g], "n": self.group_total[g]}
                  for g in self.tax.attribute_groups if g in self.group_total}
        if "colour" in groups:
            c = groups["colour"]
            c["family_accuracy"] = self.colour_family_correct / c["n"]
            k = max(self.colour_clean_total, 1)
            c["undisputed"] = {"n": self.colour_clean_total, "accuracy": self.colour_clean_correct / k,
                               "family_accuracy": self.colour_clean_family_correct / k}
        ap = self.attr_tp / self.attr_pred if self.attr_pred else 0.0
        ar = self.attr_tp / self.attr_true if self.attr_true else 0.0
        return {"n": self.n, "precision": self.p_sum / n, "recall": self.r_sum / n,
                "category_accuracy": self.cat_correct / n,
                "attribute_precision_micro": ap, "attribute_recall_micro": ar,
                "attribute_f1_micro": 2 * ap * ar / (ap + ar) if ap + ar else 0.0,
                "group_accuracy": groups}


# ---------------------------------------------------------------- batches

Colour = tuple[torch.Tensor, torch.Tensor]  # cached (foreground histograms (n, B), cell histograms (n, B, g, g))


def batch_input(store: torch.Tensor, idx: torch.Tensor, *, from_stride: int, train: bool,
                gen: torch.Generator | None = None, colour: Colour | None = None
                ) -> tuple[torch.Tensor, Colour | None]:
    """Rows of the cache as float input: prefix maps fp16 (n, views, c, h, w) or pixels uint8 (n, 3, s, s), and the
    matching colour histograms (cells mirrored with the view).

    In training a random view (original or mirror) is drawn per row; evaluation uses the original.
    """
    flip = torch.zeros(len(idx), dtype=torch.bool)
    if from_stride:
        if train and store.shape[1] > 1:
            view = torch.randint(0, store.shape[1], (len(idx),), generator=gen)
            x = store[idx, view].float()
            flip = view == 1
        else:
            x = store[idx, 0].float()
    else:
        x = presets.normalize(store[idx])
        if train:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(3)
    if colour is None:
        return x, None
    glob, cells = colour[0][idx].float(), colour[1][idx].float()
    cells[flip] = cells[flip].flip(3)
    return x, (glob, cells)


@torch.no_grad()
def validate(net: AttributeNet, store: torch.Tensor, seqs: Sequence[Sequence[int]], cats: Sequence[int],
             attrs: Sequence[Sequence[int]], tax: Taxonomy, *, from_stride: int, device: torch.device,
             batch_size: int = 128, colour: Colour | None = None,
             targets: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Teacher-forced NLL per token (of `targets`, default `seqs`, as in train_epoch) and greedy-decoded set
    precision/recall on a cached split."""
    net.eval()
    rules = decode_rules(tax)
    metrics = SetMetrics(tax)
    nll_sum, n_tok = 0.0, 0
    for lo in range(0, len(seqs), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(seqs)))
        x, col = batch_input(store, idx, from_stride=from_stride, train=False, colour=colour)
        toks = pad_sequences([seqs[i] for i in idx.tolist()]).to(device)
        emb, maps = net.encode(x.to(device), from_stride=from_stride)
        ctx = net.context(emb, _to(col, device), maps.get(32))
        logits, _ = net.step(ctx, toks[:, :-1], net.initial_state(ctx))
        tgt = toks if targets is None else pad_sequences([targets[i] for i in idx.tolist()]).to(device)
        loss, k = sequence_nll(logits, tgt[:, 1:])
        nll_sum += float(loss)
        n_tok += k
        for i, (c, _, pa) in zip(idx.tolist(), decode(net, ctx, rules)):
            metrics.add(c, [a for a, _ in pa], cats[i], attrs[i])
    out = metrics.summary()
    out["nll"] = nll_sum / max(n_tok, 1)
    return out


# ---------------------------------------------------------------- schedule and checkpoints

def lr_factor(progress: float, step: int, warmup: int = 100) -> float:
    """Linear warm-up then cosine decay to 2% over progress in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup)
    return warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def export_checkpoint(net: AttributeNet, folder: Path, manifest: dict[str, Any]) -> None:
    """Write model.safetensors (floating tensors in fp16) and manifest.json into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    # Every checkpoint names its version (shared.checkpoints): keep the caller's, else name it by its creation time.
    manifest = {"version": f"attributes-{manifest.get('created', 'unnamed')}", **manifest}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _to(colour: Colour | None, device: torch.device) -> Colour | None:
    return None if colour is None else (colour[0].to(device), colour[1].to(device))


def train_epoch(net: AttributeNet, store: torch.Tensor, seqs: Sequence[Sequence[int]], *, from_stride: int,
                batch_size: int, optimizer: torch.optim.Optimizer, base_lrs: list[float], device: torch.device,
                gen: torch.Generator, step: int, progress_fn: Callable[[int], float], desc: str,
                targets: Sequence[Sequence[int]] | None = None, colour: Colour | None = None
                ) -> tuple[int, float, bool]:
    """One pass over the cache in a seeded order. Returns (global step, mean token NLL, budget exhausted).

    `targets` (default: `seqs`) are the scored tokens, PAD where the label is disputed (see data.Sample.targets)."""
    net.train()
    order = torch.randperm(len(seqs), generator=gen)
    total, count = 0.0, 0
    bar = tqdm(range(0, len(order), batch_size), desc=desc, leave=False)
    exhausted = False
    for lo in bar:
        progress = progress_fn(step)
        if progress >= 1.0:
            exhausted = True
            break
        f = lr_factor(progress, step)
        for g, base in zip(optimizer.param_groups, base_lrs):
            g["lr"] = base * f
        idx = order[lo: lo + batch_size]
        x, col = batch_input(store, idx, from_stride=from_stride, train=True, gen=gen, colour=colour)
        toks = pad_sequences([seqs[i] for i in idx.tolist()]).to(device)
        tgt = toks if targets is None else pad_sequences([targets[i] for i in idx.tolist()]).to(device)
        logits = net(x.to(device), toks[:, :-1], from_stride=from_stride, colour=_to(col, device))
        loss, k = sequence_nll(logits, tgt[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        (loss / k).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        step += 1
        total += loss.item()
        count += k
        bar.set_postfix(nll=f"{total / max(count, 1):.3f}", lr=f"{base_lrs[0] * f:.2e}")
    return step, total / max(count, 1), exhausted


def category_token_range(tax: Taxonomy) -> tuple[int, int]:
    return N_SPECIAL, N_SPECIAL + len(tax.categories)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def numpy_seed(seed: int) -> None:
    np.random.seed(seed)
