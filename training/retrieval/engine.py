"""Retrieval evaluation loops: distance matrices, rankings, mAP / P@k and altered-copy (UKB-style) scores."""
from __future__ import annotations

import numpy as np

from shared.codes.hamming import blended_scores, hamming_distances
from shared.index.colours import COLOUR_L1_SCALE, quantize_colours

# Query rows per block of a (nq, n) distance matrix: keeps the colour distance's (block, n, bins) temporary small.
_BLOCK = 32


def hamming_matrix(q_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """q_codes: uint8 (nq, n_bytes), codes: uint8 (n, n_bytes) -> dists int32 (nq, n), via shared.codes.hamming."""
    codes = np.ascontiguousarray(codes)
    out = np.empty((q_codes.shape[0], codes.shape[0]), dtype=np.int32)
    for i in range(q_codes.shape[0]):
        out[i] = hamming_distances(np.ascontiguousarray(q_codes[i]), codes)
    return out


def cosine_matrix(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 (nq, d), (n, d) -> cosine distance float32 (nq, n) = 1 - cos."""
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return (1.0 - qn @ xn.T).astype(np.float32)


def colour_matrix(q: np.ndarray, hists: np.ndarray) -> np.ndarray:
    """Histograms (float32 summing to 1, or uint8 as the index quantises them), (nq, bins) and (n, bins) -> int32
    (nq, n) L1 distance of the quantised histograms: the colour term the daemon's kernel reads."""
    qq, hq = _quantised(q).astype(np.int16), _quantised(hists).astype(np.int16)
    out = np.empty((qq.shape[0], hq.shape[0]), dtype=np.int32)
    for s in range(0, qq.shape[0], _BLOCK):
        out[s:s + _BLOCK] = np.abs(hq[None, :, :] - qq[s:s + _BLOCK, None, :]).sum(axis=2)
    return out


def combined_matrix(ham: np.ndarray, col: np.ndarray, *, n_bits: int, colour_weight: float) -> np.ndarray:
    """The served ranking score for whole matrices: ham (Hamming) and col (colour_matrix's L1), scored by
    shared.codes.hamming.blended_scores, the expression the daemon's kernel ranks by; float64 (nq, n)."""
    return blended_scores(ham, col, weight=colour_weight, n_bits=n_bits, aux_scale=COLOUR_L1_SCALE)


def _quantised(hists: np.ndarray) -> np.ndarray:
    return hists if hists.dtype == np.uint8 else quantize_colours(np.ascontiguousarray(hists, dtype=np.float32))


def _order(d: np.ndarray) -> np.ndarray:
    """Row order by (distance, row number): deterministic ties."""
    return np.argsort(d, kind="stable")


def ranking_metrics(dist: np.ndarray, rel: np.ndarray, self_idx: np.ndarray | None, ks: tuple[int, ...] = (1, 5, 10)
                    ) -> dict[str, float]:
    """mAP and P@k over the whole index, each query's own row left out.

    dist: (nq, n) float or int; rel: bool (nq, n); self_idx: int64 (nq,) row of the query in the index, or None.
    Queries with no relevant item are skipped (counted in "n_queries_without_relevant").
    """
    aps, pk = [], {k: [] for k in ks}
    skipped = 0
    for i in range(dist.shape[0]):
        d = dist[i].astype(np.float64, copy=True)
        r = rel[i].copy()
        if self_idx is not None:
            d[self_idx[i]] = np.inf
            r[self_idx[i]] = False
        n_rel = int(r.sum())
        if n_rel == 0:
            skipped += 1
            continue
        order = _order(d)
        if self_idx is not None:
            order = order[:-1]  # the query itself, sorted last
        hits = r[order]
        cum = np.cumsum(hits)
        ranks = np.nonzero(hits)[0] + 1
        aps.append(float((cum[ranks - 1] / ranks).mean()))
        for k in ks:
            pk[k].append(float(hits[:k].mean()))
    out = {"map": float(np.mean(aps)) if aps else 0.0}
    out.update({f"p_at_{k}": float(np.mean(v)) if v else 0.0 for k, v in pk.items()})
    out["n_queries"] = len(aps)
    out["n_queries_without_relevant"] = skipped
    return out


def altered_metrics(dist: np.ndarray, target_idx: np.ndarray, k: int = 10) -> dict[str, float]:
    """Altered-copy queries against the full index: P@1 (the original ranks first) and R@k (it is in the top k).

    dist: (nq, n); target_idx: int64 (nq,) row of each query's original. Ties rank by row number, so an original
    tied with others can lose to a lower row (the pessimistic side on average).
    """
    p1, rk = [], []
    for i in range(dist.shape[0]):
        d = dist[i]
        t = target_idx[i]
        # Rank of the target under (distance, row): strictly closer rows plus tied rows before it.
        rank = int((d < d[t]).sum() + (d[:t] == d[t]).sum())
        p1.append(rank == 0)
        rk.append(rank < k)
    return {"p_at_1_altered": float(np.mean(p1)) if p1 else 0.0,
            f"r_at_{k}_altered": float(np.mean(rk)) if rk else 0.0, "n_altered": len(p1)}


def reranked_matrix(dist: np.ndarray, q_vecs: np.ndarray, x_vecs: np.ndarray, *, depth: int,
                    self_idx: np.ndarray | None = None) -> np.ndarray:
    """What api/rerank.py serves, for whole matrices: each row's first `depth` items by `dist` (the query's own row
    left out) ranked first, in order of re-rank distance (1 - cosine(q_vec, x_vec)) / 2; the rest keep `dist`.

    dist: (nq, n); q_vecs: float (nq, d) query projections; x_vecs: float (n, d) the stored copies, dequantised.
    """
    out = dist.astype(np.float64, copy=True)
    if self_idx is not None:
        out[np.arange(out.shape[0]), self_idx] = np.inf
    depth = min(depth, out.shape[1] - 1)
    top = np.argpartition(out, depth, axis=1)[:, :depth]
    xn = x_vecs / np.maximum(np.linalg.norm(x_vecs, axis=1, keepdims=True), 1e-12)
    qn = q_vecs / np.maximum(np.linalg.norm(q_vecs, axis=1, keepdims=True), 1e-12)
    cos = np.einsum("qd,qkd->qk", qn.astype(np.float64), xn[top].astype(np.float64))
    # Shortlist distances in [-2, -1]: below every distance outside it, ordered by the re-rank distance.
    np.put_along_axis(out, top, (1.0 - cos) / 2.0 - 2.0, axis=1)
    return out
