"""Popcount kernel: Hamming distances and a fused xor + popcount + top-k over packed codes, plus a numpy reference.

Codes are the uint8 (n, n_bytes) rows `shared.codes.binarize` produces. When n_bytes % 8 == 0 they are viewed (no
copy) as uint64 words; for 256- and 512-bit codes 8 rows at a time are xored with the query and popcounted in 512-bit
vectors (shared.codes.simd), and one vector compare tells which of the 8 rows can enter the top-k at all. Other
widths, including lengths that are not a multiple of 64 bits, take a scalar loop over words or bytes. The top-k keeps
a small candidate buffer and a (score, id) admission threshold that tightens at every compaction, so almost every
row costs a popcount and one compare. Results are exact and ordered by (score, id). Every variant (Hamming or
blended with a colour L1, over a row range or a list of rows) is the one template `_scan`, and every public entry
point checks its arguments with the one `_scan_args`.

Why numba and not faiss: one thread beats faiss IndexBinaryFlat on 1M x 256 bits, and a category range of a
category-sorted index is a (start, stop) pair here, where faiss needs an ID selector and scans everything (figures
in bench/README.md, "Popcount kernel"). Compile: cache=True stores machine code next to this file (first compile
~20 s, later loads ~0.7 s, see warm_up).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from numba import njit

from shared.codes.simd import aux_l1, group8, row_dist, tiled_query, vector_words

__all__ = [
    "hamming_distances",
    "top_k",
    "top_k_parallel",
    "top_k_blended",
    "blended_scores",
    "top_k_reference",
    "check_query",
    "check_codes",
    "as_words",
    "warm_up",
]

# Candidate buffer: max(2k, 256) rows. A compaction (histogram over distances, O(cap + n_bits)) runs once per
# cap - k admitted rows; a small buffer tightens the threshold sooner, so fewer rows are admitted at all
# (measured at k = 100: 1e5 rows 0.115 ms with 256 vs 0.174 ms with 2048; 1e6 rows no worse).
_MIN_CAP = 256
# Below this many rows per thread, splitting the scan costs more (thread hand-off, ~50 us) than it saves.
_MIN_ROWS_PER_THREAD = 250_000

_EMPTY_I32 = np.empty(0, dtype=np.int32)
_EMPTY_I64 = np.empty(0, dtype=np.int64)
_EMPTY_U8 = np.empty(0, dtype=np.uint8)



# ---------------------------------------------------------------------------------------------------------------------
# Kernels: one scan template, instantiated for (Hamming | blended score) x (a row range | a list of rows).


@njit(cache=True, nogil=True)
def _compact(cd, cr, cnt, kk, ids, use_ids, hist):
    """Keep exactly the best kk of cd/cr[:cnt] by (distance, id); return (new count, threshold d, threshold id)."""
    hist[:] = 0
    for i in range(cnt):
        hist[cd[i]] += 1
    cum = 0
    t = 0
    for t in range(hist.shape[0]):
        if cum + hist[t] >= kk:
            break
        cum += hist[t]
    need = kk - cum  # how many of the rows at distance t survive: the ones with the smallest ids
    tie_ids = np.empty(hist[t], dtype=np.int64)
    nt = 0
    for i in range(cnt):
        if cd[i] == t:
            tie_ids[nt] = ids[cr[i]] if use_ids else cr[i]
            nt += 1
    tie_ids.sort()
    id_cut = tie_ids[need - 1]
    # Rows listed twice in `rows` share an id: keep only as many copies of id_cut as fit, so exactly kk survive and
    # the buffer always has room after a compaction.
    quota = need - np.searchsorted(tie_ids, id_cut)
    out = 0
    for i in range(cnt):
        d = cd[i]
        keep = d < t
        if d == t:
            idv = ids[cr[i]] if use_ids else cr[i]
            if idv < id_cut:
                keep = True
            elif idv == id_cut and quota > 0:
                keep = True
                quota -= 1
        if keep:
            cd[out] = d
            cr[out] = cr[i]
            out += 1
    return out, t, id_cut


@njit(cache=True, nogil=True)
def _compact_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids):
    """Keep exactly the best kk blended candidates by (score, id), unordered; O(cnt) by quickselect, not a sort.

    Returns (count, threshold score, threshold id): the k-th best so far, for the admission rule.
    """
    kth = np.partition(cs[:cnt].copy(), kk - 1)[kk - 1]
    n_lt = 0
    n_eq = 0
    for i in range(cnt):
        if cs[i] < kth:
            n_lt += 1
        elif cs[i] == kth:
            n_eq += 1
    need = kk - n_lt  # rows at exactly the k-th score that survive: the smallest ids
    tie_ids = np.empty(n_eq, dtype=np.int64)
    nt = 0
    for i in range(cnt):
        if cs[i] == kth:
            tie_ids[nt] = ids[cr[i]] if use_ids else cr[i]
            nt += 1
    tie_ids.sort()
    id_cut = tie_ids[need - 1]
    quota = need - np.searchsorted(tie_ids, id_cut)
    out = 0
    for i in range(cnt):
        s = cs[i]
        keep = s < kth
        if s == kth:
            idv = ids[cr[i]] if use_ids else cr[i]
            if idv < id_cut:
                keep = True
            elif idv == id_cut and quota > 0:
                keep = True
                quota -= 1
        if keep:
            cs[out] = s
            cd[out] = cd[i]
            cl[out] = cl[i]
            cr[out] = cr[i]
            out += 1
    return out, kth, id_cut


@njit(cache=True, nogil=True, inline="always")
def _d_bound(thr, w_d, max_d):
    # Largest distance that can still beat the k-th blended score (the aux term is >= 0); +1 absorbs rounding.
    if w_d <= 0.0 or thr >= w_d * (max_d + 1):
        return max_d + 1
    return np.int64(thr / w_d) + 1


@njit(cache=True, nogil=True, inline="always")
def _scan(q, codes, rows, use_rows, start, stop, k, blended, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude,
          use_exclude):
    """The one scan: exact top-k of codes[start:stop] (use_rows False) or of the rows listed in rows[start:stop], by
    (score, id), where score = the Hamming distance (blended False) or w_d * hamming + w_l * min(L1(aux), l1_cap).

    Returns (scores f64, dists i32, l1 i32, rows i64, ok), unordered (the caller orders them with np.lexsort; numba's
    argsort would add seconds to the first compile for a sort of ~k items); scores and l1 are empty when not blended;
    ok is False when a listed row is out of range. Inlined into each entry point with use_rows and blended constant,
    so LLVM drops the branches a variant does not take.

    Admission, written out in the loops (numba did not inline a helper; calls cost ~25 ns/row): score < thr, or
    score == thr and id < thr_id, and not excluded. Until the buffer first fills thr is above every score; after each
    compaction (thr, thr_id) is the k-th best so far, and `bound` the largest distance that can still enter, which
    the 8-row vector compare tests so that almost every group costs a popcount and one compare.
    """
    kk = min(k, stop - start)
    empty = (np.empty(0, np.float64), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64))
    if kk <= 0:
        return empty[0], empty[1], empty[2], empty[3], True
    if use_rows:
        # One pass over the row numbers first: numba does not bounds-check, and the gather must never read past codes.
        n = codes.shape[0]
        for j in range(start, stop):
            if rows[j] < 0 or rows[j] >= n:
                return empty[0], empty[1], empty[2], empty[3], False
    max_d = q.shape[0] * q.itemsize * 8
    cap = max(2 * kk, _MIN_CAP)
    cd = np.empty(cap, dtype=np.int32)
    cr = np.empty(cap, dtype=np.int64)
    cs = np.empty(cap if blended else 0, dtype=np.float64)
    cl = np.empty(cap if blended else 0, dtype=np.int32)
    hist = np.empty(0 if blended else max_d + 1, dtype=np.int64)
    dbuf = np.empty(8, dtype=np.int32)
    cnt = 0
    thr = np.inf
    thr_id = 0
    bound = max_d + 1
    j = start
    if vector_words(q):
        qt = tiled_query(q)
        while j + 8 <= stop:
            m = group8(codes, j, rows, use_rows, qt, bound, dbuf)
            if m != 0:
                for t in range(8):
                    if (m >> t) & 1:
                        r = rows[j + t] if use_rows else j + t
                        d = dbuf[t]
                        l1 = aux_l1(aux_q, aux, r) if blended else 0
                        s = w_d * d + w_l * min(float(l1), l1_cap) if blended else float(d)
                        if (s < thr or (s == thr and (ids[r] if use_ids else r) < thr_id)) and (
                            not use_exclude or exclude[r] == 0
                        ):
                            cd[cnt] = d
                            cr[cnt] = r
                            if blended:
                                cs[cnt] = s
                                cl[cnt] = l1
                            cnt += 1
                            if cnt == cap:
                                if blended:
                                    cnt, thr, thr_id = _compact_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids)
                                    bound = _d_bound(thr, w_d, max_d)
                                else:
                                    cnt, t_d, thr_id = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
                                    thr, bound = float(t_d), t_d
            j += 8
    while j < stop:
        r = rows[j] if use_rows else j
        d = row_dist(q, codes, r)
        if d <= bound:
            l1 = aux_l1(aux_q, aux, r) if blended else 0
            s = w_d * d + w_l * min(float(l1), l1_cap) if blended else float(d)
            if (s < thr or (s == thr and (ids[r] if use_ids else r) < thr_id)) and (not use_exclude or exclude[r] == 0):
                cd[cnt] = d
                cr[cnt] = r
                if blended:
                    cs[cnt] = s
                    cl[cnt] = l1
                cnt += 1
                if cnt == cap:
                    if blended:
                        cnt, thr, thr_id = _compact_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids)
                        bound = _d_bound(thr, w_d, max_d)
                    else:
                        cnt, t_d, thr_id = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
                        thr, bound = float(t_d), t_d
        j += 1
    if cnt > kk:
        if blended:
            cnt, _, _ = _compact_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids)
        else:
            cnt, _, _ = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
    if blended:
        return cs[:cnt].copy(), cd[:cnt].copy(), cl[:cnt].copy(), cr[:cnt].copy(), True
    return empty[0], cd[:cnt].copy(), empty[2], cr[:cnt].copy(), True


# The four variants. A Hamming scan passes placeholder side vectors (never read: blended is False).


@njit(cache=True, nogil=True)
def _top_k_range(q, codes, start, stop, k, ids, use_ids, exclude, use_exclude):
    _, d, _, r, _ = _scan(q, codes, np.empty(0, np.int32), False, start, stop, k, False, np.zeros(64, np.uint8),
                          np.zeros((1, 1), np.uint8), 0.0, 0.0, 0.0, ids, use_ids, exclude,
                          use_exclude)
    return d, r


@njit(cache=True, nogil=True)
def _top_k_rows(q, codes, rows, start, stop, k, ids, use_ids, exclude, use_exclude):
    _, d, _, r, ok = _scan(q, codes, rows, True, start, stop, k, False, np.zeros(64, np.uint8),
                           np.zeros((1, 1), np.uint8), 0.0, 0.0, 0.0, ids, use_ids, exclude,
                          use_exclude)
    return d, r, ok


@njit(cache=True, nogil=True)
def _blend_range(q, codes, start, stop, k, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude, use_exclude):
    s, d, l1, r, _ = _scan(q, codes, np.empty(0, np.int32), False, start, stop, k, True, aux_q, aux, w_d, w_l, l1_cap,
                           ids, use_ids, exclude, use_exclude)
    return s, d, l1, r


@njit(cache=True, nogil=True)
def _blend_rows(q, codes, rows, start, stop, k, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude, use_exclude):
    return _scan(q, codes, rows, True, start, stop, k, True, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude,
                 use_exclude)


@njit(cache=True, nogil=True)
def _distances_kernel(q, codes, out):
    n = codes.shape[0]
    rows = np.empty(0, dtype=np.int32)
    dbuf = np.empty(8, dtype=np.int32)
    j = 0
    if vector_words(q):
        qt = tiled_query(q)
        while j + 8 <= n:
            group8(codes, j, rows, False, qt, 0, dbuf)
            out[j : j + 8] = dbuf
            j += 8
    while j < n:
        out[j] = row_dist(q, codes, j)
        j += 1


# ---------------------------------------------------------------------------------------------------------------------
# Boundary checks: dtype, shape and contiguity, with messages that say what was expected and what was found.


def check_codes(codes: np.ndarray, name: str = "codes") -> None:
    """Raise unless codes is a C-contiguous uint8 (n, n_bytes) array with n_bytes >= 1."""
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {codes.dtype}")
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, n_bytes), got shape {codes.shape}")
    if codes.shape[1] == 0:
        raise ValueError(f"{name} must have n_bytes >= 1, got shape {codes.shape}")
    if not codes.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray once, not per query)")


def check_query(q: np.ndarray, n_bytes: int) -> None:
    """Raise unless q is a uint8 (n_bytes,) array."""
    if not isinstance(q, np.ndarray):
        raise TypeError(f"q must be a numpy array, got {type(q).__name__}")
    if q.dtype != np.uint8:
        raise TypeError(f"q must be uint8, got {q.dtype}")
    if q.shape != (n_bytes,):
        raise ValueError(f"q must have shape ({n_bytes},) to match codes, got {q.shape}")


def as_words(codes: np.ndarray) -> np.ndarray:
    """View uint8 (n, n_bytes) codes as uint64 (n, n_bytes // 8) words when n_bytes % 8 == 0 (no copy), else as is."""
    if codes.shape[1] % 8 == 0:
        return codes.view(np.uint64)
    return codes


def _check_rows(rows: np.ndarray | None) -> np.ndarray:
    if rows is None:
        return _EMPTY_I32
    if not isinstance(rows, np.ndarray):
        raise TypeError(f"rows must be a numpy array, got {type(rows).__name__}")
    if rows.dtype != np.int32 and rows.dtype != np.int64:
        raise TypeError(f"rows must be int32 or int64, got {rows.dtype}")
    if rows.ndim != 1:
        raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
    return rows


def _check_ids(ids: np.ndarray | None, n: int) -> np.ndarray:
    if ids is None:
        return _EMPTY_I64
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"ids must be a numpy array, got {type(ids).__name__}")
    if ids.dtype != np.int64:
        raise TypeError(f"ids must be int64, got {ids.dtype}")
    if ids.shape != (n,):
        raise ValueError(f"ids must have shape ({n},) to match codes, got {ids.shape}")
    return ids


def _check_exclude(exclude: np.ndarray | None, n: int) -> np.ndarray:
    if exclude is None:
        return _EMPTY_U8
    if not isinstance(exclude, np.ndarray):
        raise TypeError(f"exclude must be a numpy array, got {type(exclude).__name__}")
    if exclude.dtype != np.uint8 and exclude.dtype != np.bool_:
        raise TypeError(f"exclude must be uint8 or bool, got {exclude.dtype}")
    if exclude.shape != (n,):
        raise ValueError(f"exclude must have shape ({n},) to match codes, got {exclude.shape}")
    return exclude.view(np.uint8)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(k)


def _order(primary: np.ndarray, rows: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    # Final order of a kernel's (unordered) top-k: by primary key, then by id (the row number when ids is None).
    return np.lexsort((rows if ids is None else ids[rows], primary))


class _Scan(NamedTuple):
    k: int
    q: np.ndarray  # the query as uint64 words when the codes are
    codes: np.ndarray  # the codes as uint64 words when n_bytes % 8 == 0
    rows: np.ndarray
    ids: np.ndarray
    use_ids: bool
    exclude: np.ndarray
    use_exclude: bool
    start: int
    stop: int


def _scan_args(
    q: np.ndarray, codes: np.ndarray, k: int, rows: np.ndarray | None, ids: np.ndarray | None,
    exclude: np.ndarray | None, start: int, stop: int | None,
) -> _Scan:
    """The one argument check of every scan entry point: raise on anything the kernels must not see, else the
    arguments in the kernels' form."""
    k = _check_k(k)
    check_codes(codes)
    check_query(q, codes.shape[1])
    words = as_words(codes)
    qw = np.ascontiguousarray(q).view(words.dtype) if words.dtype == np.uint64 else np.ascontiguousarray(q)
    n = codes.shape[0]
    rows_a = _check_rows(rows)
    ids_a = _check_ids(ids, n)
    excl_a = _check_exclude(exclude, n)
    total = rows_a.shape[0] if rows is not None else n
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"need 0 <= start <= stop <= {total}, got start={start}, stop={stop}")
    return _Scan(k, qw, words, rows_a, ids_a, ids is not None, excl_a, exclude is not None, int(start), int(stop))


# ---------------------------------------------------------------------------------------------------------------------
# Public API.


def hamming_distances(q: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distance from one query code to every code.

    q: uint8 (n_bytes,), codes: uint8 (n, n_bytes) C-contiguous -> dists: int32 (n,).
    """
    a = _scan_args(q, codes, 0, None, None, None, 0, None)
    out = np.empty(codes.shape[0], dtype=np.int32)
    _distances_kernel(a.q, a.codes, out)
    return out


def top_k(
    q: np.ndarray,
    codes: np.ndarray,
    k: int,
    *,
    rows: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    start: int = 0,
    stop: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k codes nearest to q in Hamming distance, exact, one thread (releases the GIL).

    q: uint8 (n_bytes,); codes: uint8 (n, n_bytes) C-contiguous.
    rows: int32 or int64 (m,) | None -- scan only these row numbers (a posting list), in any order.
    ids: int64 (n,) | None -- tie-break key per row (listing ids); None means the row number itself.
    exclude: uint8/bool (n,) | None -- rows to skip when nonzero (tombstones); checked only for rows that would enter
        the top-k, so it costs nothing on rows that lose anyway.
    start, stop: scan only rows[start:stop] (or codes[start:stop] when rows is None); a category's range in a
        category-sorted snapshot, without slicing.
    Returns dists: int32 (k',), idx: int64 (k',) -- row numbers into codes, sorted by (distance, id); k' is
    min(k, rows scanned that are not excluded). A row listed twice in `rows` is scanned, and can be reported, twice
    (as top_k_reference does); posting lists are duplicate-free.
    """
    a = _scan_args(q, codes, k, rows, ids, exclude, start, stop)
    if rows is None:
        dists, idx = _top_k_range(a.q, a.codes, a.start, a.stop, a.k, a.ids, a.use_ids, a.exclude, a.use_exclude)
    else:
        dists, idx, ok = _top_k_rows(
            a.q, a.codes, a.rows, a.start, a.stop, a.k, a.ids, a.use_ids, a.exclude, a.use_exclude
        )
        if not ok:
            raise IndexError(f"rows must be in [0, {codes.shape[0]}), got a row out of range")
    order = _order(dists, idx, ids)
    return dists[order], idx[order]


def blended_scores(hamming: np.ndarray, l1: np.ndarray, *, weight: float, n_bits: int,
                   aux_scale: float) -> np.ndarray:
    """The score top_k_blended ranks by, for whole arrays: w_d * hamming + w_l * min(l1, aux_scale), float64, with
    w_d = (1 - weight) / n_bits and w_l = weight / aux_scale -- the kernel's expression in the kernel's operation
    order, so `evaluate retrieval` (which ranks whole matrices with it) ranks exactly as the daemon does.
    hamming, l1: integer arrays of one shape -> float64 array of that shape."""
    w_d = (1.0 - float(weight)) / float(n_bits)
    w_l = float(weight) / float(aux_scale)
    return w_d * np.asarray(hamming, dtype=np.float64) + w_l * np.minimum(np.asarray(l1, dtype=np.float64),
                                                                           float(aux_scale))


def top_k_blended(
    q: np.ndarray,
    codes: np.ndarray,
    k: int,
    *,
    aux_q: np.ndarray,
    aux: np.ndarray,
    weight: float,
    n_bits: int,
    aux_scale: float,
    rows: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    start: int = 0,
    stop: int | None = None,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k by a blend of Hamming distance and an L1 distance between small uint8 side vectors, in one scan.

    score = (1 - weight) * hamming / n_bits + weight * min(L1(aux_q, aux[row]) / aux_scale, 1); lower is better, ties
    by id (scores are computed as w_d * hamming + w_l * min(L1, aux_scale), w_d = (1 - weight) / n_bits,
    w_l = weight / aux_scale; callers that recompute a score should use the same expression).
    q, codes, rows, ids, exclude, start, stop: as in top_k. aux_q: uint8 (m,); aux: uint8 (n, m) C-contiguous.
    The side vector of a row is read only when its Hamming term alone can still beat the running k-th score, so a
    small weight costs little more than top_k. Returns scores: float64 (k',), dists: int32 (k',), l1: int32 (k',),
    idx: int64 (k',) -- row numbers, sorted by (score, id). n_threads > 1 splits a range scan (rows None) across
    threads as top_k_parallel does; the results are identical.
    """
    a = _scan_args(q, codes, k, rows, ids, exclude, start, stop)
    n = codes.shape[0]
    if not isinstance(aux_q, np.ndarray) or aux_q.dtype != np.uint8 or aux_q.ndim != 1:
        raise TypeError(f"aux_q must be a uint8 (m,) array, got {getattr(aux_q, 'dtype', type(aux_q).__name__)}")
    check_codes(aux, "aux")
    if aux.shape != (n, aux_q.shape[0]):
        raise ValueError(f"aux must have shape ({n}, {aux_q.shape[0]}), got {aux.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    if n_bits <= 0 or aux_scale <= 0:
        raise ValueError(f"n_bits and aux_scale must be positive, got {n_bits}, {aux_scale}")
    w_d = (1.0 - float(weight)) / float(n_bits)
    w_l = float(weight) / float(aux_scale)
    cap = float(aux_scale)
    aq = np.zeros(max(64, aux_q.shape[0]), dtype=np.uint8)  # zero-padded for the 64-byte vector L1
    aq[: aux_q.shape[0]] = aux_q
    if rows is None:
        def one(lo: int, hi: int) -> tuple[np.ndarray, ...]:
            return _blend_range(a.q, a.codes, lo, hi, a.k, aq, aux, w_d, w_l, cap, a.ids, a.use_ids, a.exclude,
                                a.use_exclude)

        s, d, l1, r = _split(one, a, n_threads)
    else:
        s, d, l1, r, ok = _blend_rows(a.q, a.codes, a.rows, a.start, a.stop, a.k, aq, aux, w_d, w_l, cap, a.ids,
                                      a.use_ids, a.exclude, a.use_exclude)
        if not ok:
            raise IndexError(f"rows must be in [0, {n}), got a row out of range")
    order = _order(s, r, ids)
    return s[order], d[order], l1[order], r[order]


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    # One pool for the process, made on first use (nothing happens at import); the kernel releases the GIL.
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="hamming")
    return _POOL


def top_k_parallel(
    q: np.ndarray,
    codes: np.ndarray,
    k: int,
    *,
    ids: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    start: int = 0,
    stop: int | None = None,
    n_threads: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """top_k over codes[start:stop] split across n_threads threads; same contract and same results as top_k.

    Each thread keeps its own exact top-k of its slice (the global top-k is a subset of their union under the same
    (distance, id) order), then the k' best are merged here. Plain Python threads over the GIL-free kernel rather than
    numba prange: any number of request threads may call this at once, which numba's workqueue layer does not allow.
    """
    a = _scan_args(q, codes, k, None, ids, exclude, start, stop)

    def one(lo: int, hi: int) -> tuple[np.ndarray, ...]:
        return _top_k_range(a.q, a.codes, lo, hi, a.k, a.ids, a.use_ids, a.exclude, a.use_exclude)

    d, r = _split(one, a, n_threads)
    order = _order(d, r, ids)
    return d[order], r[order]


def _split(scan, a: _Scan, n_threads: int) -> tuple[np.ndarray, ...]:
    """scan(lo, hi) -> (..., rows) over a.start:a.stop, on up to n_threads threads (each slice >= 250k rows); the
    per-slice top-k are concatenated and cut to the a.k best by (first array, id), unordered beyond that cut.

    Each thread keeps its own exact top-k of its slice (the global top-k is a subset of their union under the same
    (score, id) order). The calling thread scans the last slice itself, so one request never waits on a busy pool
    for all of its work.
    """
    n_threads = max(1, min(int(n_threads), (a.stop - a.start) // _MIN_ROWS_PER_THREAD))
    if n_threads == 1:
        return scan(a.start, a.stop)
    bounds = np.linspace(a.start, a.stop, n_threads + 1).astype(np.int64)
    futures = [_pool().submit(scan, int(bounds[i]), int(bounds[i + 1])) for i in range(n_threads - 1)]
    parts = [scan(int(bounds[-2]), int(bounds[-1]))] + [f.result() for f in futures]
    cols = [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
    rows = cols[-1]
    keep = np.lexsort((a.ids[rows] if a.use_ids else rows, cols[0]))[: a.k]
    return tuple(c[keep] for c in cols)


def top_k_reference(
    q: np.ndarray, codes: np.ndarray, k: int, *, rows: np.ndarray | None = None, ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Naive numpy top_k (unpack bits, count, sort by (distance, id)): slow, obviously right; for tests only."""
    k = _check_k(k)
    check_codes(codes)
    check_query(q, codes.shape[1])
    n = codes.shape[0]
    cand = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    bits = np.unpackbits(codes[cand] ^ q[None, :], axis=1)
    d = bits.sum(axis=1).astype(np.int32)
    key = cand if ids is None else ids[cand]
    order = np.lexsort((key, d))[:k]
    return d[order], cand[order]


def warm_up(*, blended: bool = True, distances: bool = False) -> None:
    """Compile, or load from numba's on-disk cache (cache=True, next to this file), the kernels a search uses.

    Only the uint64-word specialisations (codes of a multiple of 64 bits, which is what IndexSnapshot stores) with
    int32 posting rows: about 0.5 s when cached, 20-60 s on this machine the first time (bake the cache into the
    image by running this once at build time on the target CPU). Odd widths compile lazily on first use.
    """
    codes = np.zeros((16, 32), dtype=np.uint8)
    q = np.zeros(32, dtype=np.uint8)
    ids = np.arange(16, dtype=np.int64)
    exclude = np.zeros(16, dtype=np.uint8)
    rows = np.arange(9, dtype=np.int32)
    top_k(q, codes, 2, ids=ids, exclude=exclude)
    top_k(q, codes, 2, rows=rows, ids=ids, exclude=exclude)
    if blended:
        aux = np.zeros((16, 4), dtype=np.uint8)
        for span in ({}, {"rows": rows}):
            top_k_blended(q, codes, 2, aux_q=aux[0], aux=aux, weight=0.5, n_bits=256, aux_scale=510.0, ids=ids,
                          exclude=exclude, **span)
    if distances:
        hamming_distances(q, codes)
