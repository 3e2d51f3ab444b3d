"""CNN encoder + LSTM attribute-sequence generator (paper Sec. 3.1): AttributeNet, constrained greedy/beam
decoding, guided generation, and the public inference functions `recognize_attributes` / `encode_images`.

A sequence is BOS, category, attributes in canonical order, EOS (`Taxonomy.sequence`). Decoding masks the
vocabulary so that the first token is a category, later tokens are attributes that apply to the decoded (or given)
category, each attribute appears at most once and in canonical order, and every attribute group holds at most
`MAX_PER_GROUP` values (default 1). Probabilities are those of the masked, renormalised softmax the decoder chose
from, so they sum to 1 over what could legally come next.

Colour from the pixels (optional, `colour_bins` > 0): an HSV histogram of the letterboxed crop's foreground
(background removed by shared.vision.foreground.foreground_mask) and a per-cell HSV histogram pooled with an attention
map that the stride-32 features predict (the network learns where the product is) are projected and added to the
context that initialises and feeds the LSTM.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from shared.taxonomy import BOS, EOS, N_SPECIAL, PAD, Taxonomy, load_taxonomy
from shared.vision import presets
from shared.vision.registry import build_encoder

# Groups that may take more than one value on one item (a two-colour shirt, a cotton-linen blend, printed +
# floral); every other group (gender, sleeve, neckline, fit, length, usage, season, age, *_style) takes at most one.
MAX_PER_GROUP: dict[str, int] = {"colour": 2, "material": 2, "pattern": 2}
MAX_STEPS = 16  # BOS excluded: category + up to 14 attributes + EOS, the paper's 14-token budget plus slack
DEFAULT_STRIDES = (16, 32)  # maps returned by encode_images for the appearance feature (ROI pooling)

# Colour histogram bins of the colour input: 12 hues x 2 saturations x 3 values for chromatic pixels, plus 5 grey
# levels for pixels with low saturation or value (where hue is noise). Fixed here (not borrowed from the retrieval
# feature) so that a change of the retrieval histogram cannot silently invalidate a trained checkpoint.
N_HUE, N_SAT, N_VAL, N_GREY = 12, 2, 3, 5
COLOUR_BINS = N_HUE * N_SAT * N_VAL + N_GREY
COLOUR_CELL = 16  # px of the letterboxed input per histogram cell (pooled to the attention map's grid)
_COLOUR_SCALE = 2  # histograms are taken on the crop shrunk 2x (area average): 4x cheaper, same colours


def hsv_bins(hsv: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) PIL HSV (all channels 0-255) -> int64 (...) colour bin in 0 .. COLOUR_BINS - 1."""
    h, sat, v = (hsv[..., k].astype(np.int64) for k in range(3))
    hue_bin = ((h * N_HUE + 128) // 256) % N_HUE
    chroma = hue_bin * (N_SAT * N_VAL) + (sat >= 128) * N_VAL + np.clip(v // 86, 0, N_VAL - 1)
    grey = N_HUE * N_SAT * N_VAL + np.clip(v * N_GREY // 256, 0, N_GREY - 1)
    return np.where((sat < 51) | (v < 40), grey, chroma)


def colour_features(pixels: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Letterboxed crops uint8 (n, 3, s, s) -> (foreground histogram float32 (n, COLOUR_BINS),
    per-cell histograms float32 (n, COLOUR_BINS, s // COLOUR_CELL, s // COLOUR_CELL)), each summing to 1."""
    from shared.vision.foreground import foreground_mask

    px = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    n, _, s, _ = px.shape
    g = s // COLOUR_CELL
    cell = COLOUR_CELL // _COLOUR_SCALE
    side = g * cell
    glob = np.zeros((n, COLOUR_BINS), np.float32)
    cells = np.zeros((n, COLOUR_BINS, g, g), np.float32)
    yy, xx = np.mgrid[0:side, 0:side] // cell
    offset = ((yy * g + xx) * COLOUR_BINS).ravel()
    for i in range(n):
        small = Image.fromarray(np.ascontiguousarray(px[i].transpose(1, 2, 0))).resize((side, side), Image.BOX)
        bins = hsv_bins(np.asarray(small.convert("HSV"), dtype=np.uint8))
        c = np.bincount(offset + bins.ravel(), minlength=g * g * COLOUR_BINS).reshape(g * g, COLOUR_BINS)
        cells[i] = (c.T / float(cell * cell)).reshape(COLOUR_BINS, g, g)
        fg = foreground_mask(np.asarray(small, dtype=np.uint8))
        h = np.bincount(bins[fg], minlength=COLOUR_BINS).astype(np.float32)
        glob[i] = h / max(float(h.sum()), 1.0)
    return glob, cells


class AttributeScore(NamedTuple):
    attribute_id: int
    key: str
    prob: float


@dataclass(frozen=True)
class AttributePrediction:
    """One image's decoded sequence: its category (given when guided) and attributes with their probabilities."""

    category_id: int
    category_key: str
    category_prob: float  # the model's probability of this category (also when it was forced)
    attributes: list[AttributeScore]
    guided: bool


@dataclass(frozen=True)
class EncodedImages:
    """Encoder outputs of one forward pass: embedding float32 (n, embedding_dim); maps {stride: float32 (n, c, h, w)}."""

    embedding: np.ndarray
    maps: dict[int, np.ndarray]


class AttributeNet(nn.Module):
    """Image encoder -> projected embedding -> 2-layer LSTM over taxonomy tokens.

    The projected image embedding initialises the LSTM state (h0, c0 of every layer) and is also concatenated to
    every input token embedding, so the image conditions each step, not only the first.
    """

    def __init__(self, *, encoder: nn.Module, encoder_name: str, n_tokens: int, embed_dim: int = 256,
                 hidden: int = 512, layers: int = 2, dropout: float = 0.3, colour_bins: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder_name = encoder_name
        self.n_tokens = n_tokens
        self.hidden = hidden
        self.layers = layers
        d = int(encoder.embedding_dim)
        self.img_proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, embed_dim), nn.ReLU())
        self.init_state = nn.Linear(embed_dim, 2 * layers * hidden)
        self.tok_emb = nn.Embedding(n_tokens, embed_dim, padding_idx=PAD)
        self.lstm = nn.LSTM(2 * embed_dim, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_tokens))
        self.channels_last = False  # set by load_attribute_network: inputs then go in channels_last
        self.colour_bins = colour_bins
        if colour_bins:
            self.colour_att = nn.Conv2d(int(encoder.map_channels[32]), 1, 1)
            self.colour_proj = nn.Sequential(nn.Linear(2 * colour_bins, 256), nn.ReLU(), nn.Dropout(dropout),
                                             nn.Linear(256, embed_dim))

    def encode(self, x: torch.Tensor, *, from_stride: int = 0) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Pixels (from_stride=0) or a cached intermediate map -> (embedding (n, d), {stride: map})."""
        if from_stride:
            maps = {from_stride: x, **self.encoder.forward_from(x, from_stride)}
        else:
            maps = self.encoder.forward_maps(x)
        return self.encoder.head(maps[32]), maps

    def context(self, embedding: torch.Tensor, colour: tuple[torch.Tensor, torch.Tensor] | None = None,
                map32: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder embedding (n, d) -> LSTM conditioning vector (n, embed_dim).

        With a colour branch, `colour` = (foreground histogram (n, B), cell histograms (n, B, g, g)) from
        `colour_features` and `map32` the stride-32 map, whose 1x1-conv attention pools the cell histograms.
        """
        ctx = self.img_proj(embedding)
        if not self.colour_bins:
            return ctx
        if colour is None or map32 is None:
            raise ValueError("this network takes the colour histograms and the stride-32 map (colour_bins > 0)")
        glob, cells = colour
        att = torch.softmax(self.colour_att(map32.float()).flatten(1), 1)  # (n, h*w)
        cells = F.adaptive_avg_pool2d(cells, map32.shape[-2:]).flatten(2)  # (n, B, h*w)
        pooled = torch.bmm(cells, att[:, :, None])[:, :, 0]
        return ctx + self.colour_proj(torch.cat([glob, pooled], 1))

    def initial_state(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = ctx.shape[0]
        hc = torch.tanh(self.init_state(ctx)).view(n, 2, self.layers, self.hidden).permute(1, 2, 0, 3)
        return hc[0].contiguous(), hc[1].contiguous()

    def step(self, ctx: torch.Tensor, tokens: torch.Tensor,
             state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Tokens (n, t) with context (n, e) -> logits (n, t, n_tokens) and the new LSTM state."""
        inp = torch.cat([self.tok_emb(tokens), ctx[:, None, :].expand(-1, tokens.shape[1], -1)], 2)
        out, state = self.lstm(inp, state)
        return self.out(out), state

    def decode_weights(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-decode constants: the image context's share of layer 0's input gates (n, 4 * hidden), computed once
        instead of at every step, and layer 0's token-embedding weight (contiguous)."""
        e = self.tok_emb.embedding_dim
        w = self.lstm.weight_ih_l0
        return F.linear(ctx, w[:, e:], self.lstm.bias_ih_l0), w[:, :e].contiguous()

    def step_one(self, ctx: torch.Tensor, tokens: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                 consts: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One decoding step, tokens (n,) -> logits (n, n_tokens), in eval mode (no dropout).

        Same weights as `step`, computed cell by cell: for one token nn.LSTM's fused CPU path costs 5-10x more
        (it re-packs its weights on every call), which dominated per-image latency. Decoding is bound by reading
        the LSTM weights, so the context's constant share of the layer-0 gates comes precomputed in `consts`.
        """
        ctx_gates, w_tok = consts if consts is not None else self.decode_weights(ctx)
        x = self.tok_emb(tokens)
        hs, cs = [], []
        for k in range(self.layers):
            h_gates = F.linear(state[0][k], getattr(self.lstm, f"weight_hh_l{k}"), getattr(self.lstm, f"bias_hh_l{k}"))
            if k == 0:
                gates = F.linear(x, w_tok) + ctx_gates + h_gates
            else:
                gates = F.linear(x, getattr(self.lstm, f"weight_ih_l{k}"), getattr(self.lstm, f"bias_ih_l{k}")) + h_gates
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * state[1][k] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            hs.append(x)
            cs.append(c)
        return self.out(x), (torch.stack(hs), torch.stack(cs))

    def forward(self, x: torch.Tensor, tokens_in: torch.Tensor, *, from_stride: int = 0,
                colour: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Teacher forcing: images (or cached maps) and input tokens (n, t) -> logits (n, t, n_tokens)."""
        emb, maps = self.encode(x, from_stride=from_stride)
        ctx = self.context(emb, colour, maps.get(32))
        logits, _ = self.step(ctx, tokens_in, self.initial_state(ctx))
        return logits


def pad_sequences(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Token lists -> int64 (n, max_len) padded with PAD."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the targets (PAD ignored) and the number of tokens counted."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=PAD, reduction="sum")
    return loss, int((targets != PAD).sum())


class DecodeRules:
    """The vocabulary masks of constrained decoding, as tensors, for one taxonomy."""

    def __init__(self, tax: Taxonomy, max_per_group: dict[str, int] | None = None,
                 require: Sequence[str] = (), min_prob: float = 0.0) -> None:
        limits = dict(MAX_PER_GROUP if max_per_group is None else max_per_group)
        self.tax = tax
        self.min_prob = float(min_prob)  # generated attributes below this step probability are not reported
        self.n_cat = len(tax.categories)
        self.n_attr = len(tax.attributes)
        self.attr0 = N_SPECIAL + self.n_cat
        order = tax.canonical_order(list(range(self.n_attr)))
        rank = torch.empty(self.n_attr, dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(self.n_attr)
        self.rank = rank
        groups = list(tax.attribute_groups)
        self.group = torch.tensor([groups.index(a.group) for a in tax.attributes], dtype=torch.long)
        self.max_count = torch.tensor([limits.get(g, 1) for g in groups], dtype=torch.long)
        applies = torch.zeros(self.n_cat, self.n_attr, dtype=torch.bool)
        for a in tax.attributes:
            for c in a.applies_to:
                applies[c, a.id] = True
        self.applies = applies
        # Required groups (e.g. colour for the storefront): where one applies to the category, EOS and every
        # attribute ranked after the group are masked until a value of it is emitted. Canonical order means "no
        # value yet" is exactly "last rank below the group's first rank", so no extra state is needed.
        self.require = tuple(require)
        self.req = [(self.rank[self.group == groups.index(g)].min(), self.rank[self.group == groups.index(g)].max(),
                     applies[:, self.group == groups.index(g)].any(1)) for g in self.require]

    def allowed(self, cat: torch.Tensor, last_rank: torch.Tensor, last_group: torch.Tensor,
                count: torch.Tensor) -> torch.Tensor:
        """Per hypothesis state (int64 (N,) each; cat = -1 before the category step) -> bool (N, n_tokens)."""
        n = cat.shape[0]
        mask = torch.zeros(n, self.attr0 + self.n_attr, dtype=torch.bool)
        first = cat < 0
        mask[first, N_SPECIAL:self.attr0] = True
        later = ~first
        if later.any():
            c = cat[later]
            ok = self.applies[c] & (self.rank[None, :] > last_rank[later, None])
            full = (self.group[None, :] == last_group[later, None]) & (count[later, None] >= self.max_count[self.group][None, :])
            eos = torch.ones(len(c), dtype=torch.bool)
            for lo, hi, has in self.req:
                missing = has[c] & (last_rank[later] < lo)
                ok &= ~(missing[:, None] & (self.rank[None, :] > hi))
                eos &= ~missing
            mask[later, self.attr0:] = ok & ~full
            mask[later, EOS] = eos
        return mask

    def advance(self, tok: torch.Tensor, cat: torch.Tensor, last_rank: torch.Tensor, last_group: torch.Tensor,
                count: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """State after emitting `tok` (int64 (N,))."""
        is_cat = (tok >= N_SPECIAL) & (tok < self.attr0)
        is_attr = tok >= self.attr0
        cat = torch.where(is_cat, tok - N_SPECIAL, cat)
        a = (tok - self.attr0).clamp(min=0, max=self.n_attr - 1)
        g = self.group[a]
        count = torch.where(is_attr, torch.where(g == last_group, count + 1, torch.ones_like(count)), count)
        last_group = torch.where(is_attr, g, last_group)
        last_rank = torch.where(is_attr, self.rank[a], last_rank)
        return cat, last_rank, last_group, count


@torch.inference_mode()
def decode(net: AttributeNet, ctx: torch.Tensor, rules: DecodeRules, *, beam: int = 1,
           categories: Sequence[int | None] | None = None, max_steps: int = MAX_STEPS
           ) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """Constrained beam search (beam=1: greedy) from conditioning vectors ctx (n, e).

    `categories[i]` forces image i's category token (guided generation, Fig. 7); its reported probability is the
    model's own. Returns per image (category_id, category_prob, [(attribute_id, prob), ...]).
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    n, dev = ctx.shape[0], ctx.device
    b = beam
    nb = n * b
    forced = torch.full((n,), -1, dtype=torch.long)
    if categories is not None:
        if len(categories) != n:
            raise ValueError(f"categories has {len(categories)} entries for {n} images")
        for i, c in enumerate(categories):
            if c is not None:
                if not 0 <= int(c) < rules.n_cat:
                    raise ValueError(f"category_id {c} out of range 0..{rules.n_cat - 1}")
                forced[i] = int(c)
    ctx_b = ctx.repeat_interleave(b, 0)
    state = net.initial_state(ctx_b)
    scores = torch.full((n, b), float("-inf"))
    scores[:, 0] = 0.0
    cat = torch.full((nb,), -1, dtype=torch.long)
    last_rank = torch.full((nb,), -1, dtype=torch.long)
    last_group = torch.full((nb,), -1, dtype=torch.long)
    count = torch.zeros(nb, dtype=torch.long)
    done = torch.zeros(nb, dtype=torch.bool)
    toks = torch.zeros(nb, 0, dtype=torch.long)
    probs = torch.zeros(nb, 0)
    cat_prob = torch.zeros(nb)
    inp = torch.full((nb, 1), BOS, dtype=torch.long, device=dev)
    vocab = rules.attr0 + rules.n_attr
    step_one = getattr(net, "step_one", None)
    consts = net.decode_weights(ctx_b) if step_one is not None else None
    for t in range(max_steps):
        if step_one is not None:
            logits, state = step_one(ctx_b, inp[:, 0], state, consts)
        else:
            logits, state = net.step(ctx_b, inp, state)
            logits = logits[:, 0]
        logits = logits[:, :vocab].float().cpu()
        mask = rules.allowed(cat, last_rank, last_group, count)
        logp = torch.log_softmax(logits.masked_fill(~mask, float("-inf")), 1)
        if t == 0:
            f = forced.repeat_interleave(b)
            has = f >= 0
            model_cat = logp.clone()  # the model's own category distribution, kept for guided probabilities
            if has.any():
                only = torch.full_like(logp[has], float("-inf"))
                only[torch.arange(int(has.sum())), N_SPECIAL + f[has]] = 0.0
                logp[has] = only
        logp[done] = float("-inf")
        logp[done, PAD] = 0.0
        cand = (scores.view(nb, 1) + logp).view(n, b * vocab)
        top, idx = cand.topk(b, dim=1)
        src = (idx // vocab) + torch.arange(n)[:, None] * b
        src = src.view(-1)
        tok = (idx % vocab).view(-1)
        step_p = logp.view(n, b * vocab).gather(1, idx).exp().view(-1)
        if t == 0:
            cat_prob = model_cat[src, tok].exp()
        else:
            cat_prob = cat_prob[src]
        scores = top
        cat, last_rank, last_group, count, done = cat[src], last_rank[src], last_group[src], count[src], done[src]
        toks, probs = torch.cat([toks[src], tok[:, None]], 1), torch.cat([probs[src], step_p[:, None]], 1)
        src_dev = src.to(dev)
        state = (state[0][:, src_dev], state[1][:, src_dev])
        if consts is not None and b > 1:
            consts = (consts[0][src_dev], consts[1])
        cat, last_rank, last_group, count = rules.advance(tok, cat, last_rank, last_group, count)
        done = done | (tok == EOS) | (tok == PAD)
        inp = tok.to(dev)[:, None]
        if bool(done.all()):
            break
    out = []
    for i in range(n):
        j = i * b  # topk is sorted: the first beam is the best
        c = int(cat[j])
        attrs = [(int(tk) - rules.attr0, float(p)) for tk, p in zip(toks[j].tolist(), probs[j].tolist())
                 if tk >= rules.attr0 and p >= rules.min_prob]
        out.append((c, float(cat_prob[j]), attrs))
    return out


_RULES: dict[tuple, DecodeRules] = {}


def decode_rules(tax: Taxonomy, max_per_group: dict[str, int] | None = None,
                 require: Sequence[str] = (), min_prob: float = 0.0) -> DecodeRules:
    """DecodeRules for a taxonomy, memoised (building the masks costs about a millisecond per call otherwise)."""
    limits = dict(MAX_PER_GROUP if max_per_group is None else max_per_group)
    key = (tax.version, tuple(sorted(limits.items())), tuple(require), float(min_prob))
    if key not in _RULES:
        _RULES[key] = DecodeRules(tax, limits, require, min_prob)
    return _RULES[key]


def manifest_rules(tax: Taxonomy, arch: dict[str, Any], max_per_group: dict[str, int] | None = None) -> DecodeRules:
    """The decoding options a checkpoint's manifest names (architecture.max_per_group, require_groups,
    min_attribute_prob), chosen on val when it was promoted."""
    return decode_rules(tax, arch.get("max_per_group") if max_per_group is None else max_per_group,
                        arch.get("require_groups", ()), float(arch.get("min_attribute_prob", 0.0)))


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def images_to_batch(images: Sequence[Image.Image], size: int, *, channels_last: bool = False) -> torch.Tensor:
    """PIL images -> float32 (n, 3, size, size), letterboxed and normalised by shared.vision.presets."""
    x = torch.stack([presets.encoder_input(img, size) for img in images])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def prepare_batch(images: Sequence[Image.Image], size: int, *, channels_last: bool = False, colour: bool = False
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """PIL images -> (normalised float32 (n, 3, size, size), colour histograms of the same letterboxed pixels or None)."""
    px = torch.stack([presets.to_uint8_tensor(presets.letterbox(img, size)) for img in images])
    x = presets.normalize(px)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    if not colour:
        return x, None
    glob, cells = colour_features(px)
    return x, (torch.from_numpy(glob), torch.from_numpy(cells))


def _channels_last(net: nn.Module) -> bool:
    # load_attribute_network stores CPU encoders channels_last (about 20% faster at batch 1); inputs must follow.
    return bool(getattr(net, "channels_last", False))


def _categories(category_id: int | Sequence[int | None] | None, n: int) -> list[int | None] | None:
    if category_id is None:
        return None
    if isinstance(category_id, (int, np.integer)):
        return [int(category_id)] * n
    cats = list(category_id)
    if len(cats) != n:
        raise ValueError(f"category_id has {len(cats)} entries for {n} images")
    return cats


@torch.inference_mode()
def analyze_images(loaded, images: Sequence[Image.Image], *, category_id: int | Sequence[int | None] | None = None,
                   beam: int = 1, strides: Sequence[int] = DEFAULT_STRIDES, batch_size: int = 32,
                   max_per_group: dict[str, int] | None = None) -> tuple[list[AttributePrediction], EncodedImages]:
    """Attributes and encoder features from ONE encoder pass per image.

    `loaded` is a LoadedNetwork (load_attribute_network). Returns the predictions and EncodedImages with
    embedding float32 (n, d) and maps {stride: float32 (n, c, h, w)} for `strides`.
    """
    net: AttributeNet = loaded.net
    net.eval()
    tax = load_taxonomy()
    arch = (getattr(loaded, "meta", None) or {}).get("architecture", {})
    rules = manifest_rules(tax, arch, max_per_group)
    cats = _categories(category_id, len(images))
    dev = _device(net)
    preds: list[AttributePrediction] = []
    embs: list[np.ndarray] = []
    maps: dict[int, list[np.ndarray]] = {s: [] for s in strides}
    for lo in range(0, len(images), batch_size):
        x, colour = prepare_batch(images[lo: lo + batch_size], loaded.input_size, channels_last=_channels_last(net),
                                  colour=bool(getattr(net, "colour_bins", 0)))
        emb, fmaps = net.encode(x.to(dev))
        embs.append(emb.float().cpu().numpy())
        for s in strides:
            maps[s].append(fmaps[s].float().cpu().numpy())
        chunk = None if cats is None else cats[lo: lo + batch_size]
        colour = None if colour is None else (colour[0].to(dev), colour[1].to(dev))
        for c, cp, attrs in decode(net, net.context(emb, colour, fmaps.get(32)), rules, beam=beam, categories=chunk):
            preds.append(AttributePrediction(
                category_id=c, category_key=tax.categories[c].key, category_prob=cp,
                attributes=[AttributeScore(a, tax.attributes[a].key, p) for a, p in attrs],
                guided=chunk is not None and chunk[len(preds) - lo] is not None))
    d = int(net.encoder.embedding_dim)
    enc = EncodedImages(
        embedding=np.concatenate(embs) if embs else np.zeros((0, d), np.float32),
        maps={s: np.ascontiguousarray(np.concatenate(v)) if v else np.zeros((0, net.encoder.map_channels[s], 0, 0), np.float32)
              for s, v in maps.items()})
    return preds, enc


def recognize_attributes(loaded, images: Sequence[Image.Image], *, category_id: int | Sequence[int | None] | None = None,
                         beam: int = 1, batch_size: int = 32) -> list[AttributePrediction]:
    """Category + attributes per image (batched). With `category_id` the category is forced (guided, Fig. 7)."""
    return analyze_images(loaded, images, category_id=category_id, beam=beam, strides=(), batch_size=batch_size)[0]


@torch.inference_mode()
def encode_images(loaded, images: Sequence[Image.Image], *, strides: Sequence[int] = DEFAULT_STRIDES,
                  batch_size: int = 32) -> EncodedImages:
    """Encoder embedding float32 (n, d) and maps {stride: float32 (n, c, h, w)} from one forward pass per batch."""
    net: AttributeNet = loaded.net
    net.eval()
    dev = _device(net)
    embs, maps = [], {s: [] for s in strides}
    for lo in range(0, len(images), batch_size):
        x = images_to_batch(images[lo: lo + batch_size], loaded.input_size, channels_last=_channels_last(net)).to(dev)
        emb, fmaps = net.encode(x)
        embs.append(emb.float().cpu().numpy())
        for s in strides:
            maps[s].append(fmaps[s].float().cpu().numpy())
    d = int(net.encoder.embedding_dim)
    return EncodedImages(
        embedding=np.concatenate(embs) if embs else np.zeros((0, d), np.float32),
        maps={s: np.ascontiguousarray(np.concatenate(v)) if v else np.zeros((0, net.encoder.map_channels[s], 0, 0), np.float32)
              for s, v in maps.items()})


def build_attribute_net(*, encoder: str = "efficientnet_lite0", pretrained_encoder: bool = False,
                        embed_dim: int = 256, hidden: int = 512, layers: int = 2, dropout: float = 0.3,
                        colour_bins: int = 0, weights: dict[str, torch.Tensor] | None = None) -> AttributeNet:
    """Build an AttributeNet around a registry encoder; `weights` is a full state dict (e.g. from a checkpoint)."""
    net = AttributeNet(encoder=build_encoder(encoder, pretrained=pretrained_encoder and weights is None),
                       encoder_name=encoder, n_tokens=load_taxonomy().n_tokens, embed_dim=embed_dim, hidden=hidden,
                       layers=layers, dropout=dropout, colour_bins=colour_bins)
    if weights is not None:
        net.load_state_dict(weights)
    return net


ATTRIBUTE_CHECKPOINT = "attributes"  # folder name under settings.models_dir


@dataclass
class LoadedNetwork:
    """A checkpoint ready for inference: the network (eval mode), its manifest and preprocessing size."""

    net: nn.Module
    meta: dict[str, Any]
    taxonomy_version: str
    input_size: int


def default_attribute_dir() -> Path:
    """models/attributes/ under the configured models folder."""
    from shared.config import load_settings

    return load_settings().models_dir / ATTRIBUTE_CHECKPOINT


def load_attribute_network(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> LoadedNetwork:
    """Load the attribute network (AttributeNet) from a checkpoint folder (default: the shipped models/attributes/).

    The folder holds model.safetensors (fp16) and manifest.json; the taxonomy version must match the code's.
    """
    from safetensors.torch import load_file

    from shared.taxonomy import load_taxonomy
    from shared.checkpoints import read_manifest

    folder = Path(path) if path is not None else default_attribute_dir()
    meta = read_manifest(folder, kind="attributes")  # explicit version, same taxonomy (ValueError otherwise)
    tax = load_taxonomy()
    arch = meta["architecture"]
    net = AttributeNet(encoder=build_encoder(arch["encoder"]), encoder_name=arch["encoder"], n_tokens=tax.n_tokens,
                       embed_dim=arch["embed_dim"], hidden=arch["hidden"], layers=arch["layers"],
                       colour_bins=int(arch.get("colour_bins", 0)))
    state = load_file(str(folder / "model.safetensors"))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    net.to(device).eval()
    if torch.device(device).type == "cpu":
        # channels_last convolutions are about 20% faster on CPU at batch 1 (measured at 160 px, one thread).
        net.encoder.to(memory_format=torch.channels_last)
        net.channels_last = True
    return LoadedNetwork(net=net, meta=meta, taxonomy_version=meta["taxonomy_version"],
                         input_size=int(meta["preprocessing"]["input_size"]))
