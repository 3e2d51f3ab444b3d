"""Popcount kernel: Hamming distances and a fused xor + popcount + top-k over packed codes, plus a numpy reference.

Codes are the uint8 (n, n_bytes) rows `shared.codes.binarize` produces. When n_bytes % 8 == 0 they are viewed (no
copy) as uint64 words; for 256- and 512-bit codes 8 rows at a time are xored with the query and popcounted in 512-bit
vectors (vpopcntq on AVX-512; LLVM lowers the same IR to whatever the host has), and one vector compare tells which
of the 8 rows can enter the top-k at all. Other widths, including lengths that are not a multiple of 64 bits, take a
scalar loop over words or bytes. The top-k keeps a small candidate buffer and a (distance, id) admission threshold
that tightens at every compaction (a histogram over distances), so almost every row costs a popcount and one
compare. Results are exact and ordered by (distance, id).

Why numba and not faiss: on this machine (2 cores, AVX-512) one thread does 1M x 256-bit top-100 in ~1.1 ms against
faiss IndexBinaryFlat's ~1.4-1.6 ms in the same runs (bench/hamming.py), and a category range of a category-sorted
index is a (start, stop) pair here, where faiss needs an ID selector and scans everything (0.26 ms vs ~6 ms).
Compile: cache=True stores machine code next to this file (first compile ~20 s, later loads ~0.7 s, see warm_up).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "hamming_distances",
    "top_k",
    "top_k_parallel",
    "top_k_blended",
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


@intrinsic
def _popcount(typingctx, x):
    """llvm.ctpop on any integer width; LLVM lowers it to popcnt / vpopcntq (AVX-512) when the host has them."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        (val,) = args
        fnty = ir.FunctionType(val.type, [val.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.ctpop.i{val.type.width}")
        res = builder.call(fn, [val])
        if val.type.width < 64:
            res = builder.zext(res, ir.IntType(64))
        return res

    return types.int64(x), codegen


@njit(cache=True, nogil=True, inline="always")
def _row_dist(q, codes, r):
    s = 0
    for w in range(q.shape[0]):
        s += _popcount(codes[r, w] ^ q[w])
    return s


_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V8I64 = ir.VectorType(_I64, 8)
_V8I32 = ir.VectorType(_I32, 8)


def _make_group8(nw: int, gather: bool):
    """Build an intrinsic: distances of 8 rows at once in 512-bit vectors, for codes of nw (4 or 8) uint64 words.

    Loads the 8 rows as nw vectors of 8 words (row-major), xors them with the tiled query, popcounts every word
    (vpopcntq), then sums adjacent lanes pairwise log2(nw) times, which leaves one lane per row. Writes the 8 distances
    to dbuf[0:8] and returns a bit mask of the rows with distance <= thr, so the caller skips whole groups with one
    test. LLVM does not find this itself: numba's row loop stays scalar (4 popcnt per 256-bit row, ~2x slower).
    `first` is the first row (contiguous) or the index of the first of 8 row numbers in `rows` (gather).
    """
    piece = min(nw, 8)

    @intrinsic
    def group8(typingctx, codes, first, rows, qt, thr, dbuf):
        sig = types.int64(codes, first, rows, qt, thr, dbuf)

        def codegen(context, builder, signature, args):
            codes_v, first_v, rows_v, qt_v, thr_v, dbuf_v = args
            codes_t, first_t, rows_t, qt_t, thr_t, dbuf_t = signature.args
            # Only ever executed for uint64 codes (callers test itemsize); the cast keeps uint8 builds compiling.
            data = builder.bitcast(context.make_array(codes_t)(context, builder, codes_v).data, _I64.as_pointer())
            qdata = builder.bitcast(context.make_array(qt_t)(context, builder, qt_v).data, _I64.as_pointer())
            ddata = context.make_array(dbuf_t)(context, builder, dbuf_v).data
            first = context.cast(builder, first_v, first_t, types.int64)
            n_words = ir.Constant(_I64, nw)
            if gather:
                rdata = context.make_array(rows_t)(context, builder, rows_v).data
                row_ptrs = []
                for t in range(8):
                    r = builder.load(builder.gep(rdata, [builder.add(first, ir.Constant(_I64, t))]))
                    r = context.cast(builder, r, rows_t.dtype, types.int64)
                    row_ptrs.append(builder.gep(data, [builder.mul(r, n_words)]))
            else:
                start = builder.gep(data, [builder.mul(first, n_words)])
            ctpop = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8I64, [_V8I64]), "llvm.ctpop.v8i64"
            )
            vecs = []
            for v in range(nw):
                if not gather:
                    p = builder.gep(start, [ir.Constant(_I64, 8 * v)])
                    x = builder.load(builder.bitcast(p, _V8I64.as_pointer()), align=1)
                else:
                    pieces = []
                    for pc in range(8 // piece):
                        lane = 8 * v + pc * piece
                        p = builder.gep(row_ptrs[lane // nw], [ir.Constant(_I64, lane % nw)])
                        if piece == 1:
                            pieces.append(builder.load(p, align=1))
                        else:
                            vt = ir.VectorType(_I64, piece)
                            pieces.append(builder.load(builder.bitcast(p, vt.as_pointer()), align=1))
                    if piece == 1:
                        x = ir.Constant(_V8I64, ir.Undefined)
                        for i, s in enumerate(pieces):
                            x = builder.insert_element(x, s, ir.Constant(_I32, i))
                    else:
                        size = piece
                        while len(pieces) > 1:
                            mask = ir.Constant(ir.VectorType(_I32, 2 * size), list(range(2 * size)))
                            pieces = [
                                builder.shuffle_vector(pieces[i], pieces[i + 1], mask)
                                for i in range(0, len(pieces), 2)
                            ]
                            size *= 2
                        x = pieces[0]
                qp = builder.gep(qdata, [ir.Constant(_I64, (8 * v) % max(8, nw))])
                qv = builder.load(builder.bitcast(qp, _V8I64.as_pointer()), align=1)
                vecs.append(builder.call(ctpop, [builder.xor(x, qv)]))
            even = ir.Constant(_V8I32, list(range(0, 16, 2)))
            odd = ir.Constant(_V8I32, list(range(1, 16, 2)))
            while len(vecs) > 1:
                vecs = [
                    builder.add(
                        builder.shuffle_vector(vecs[i], vecs[i + 1], even),
                        builder.shuffle_vector(vecs[i], vecs[i + 1], odd),
                    )
                    for i in range(0, len(vecs), 2)
                ]
            s = vecs[0]
            builder.store(builder.trunc(s, _V8I32), builder.bitcast(ddata, _V8I32.as_pointer()), align=1)
            thr = context.cast(builder, thr_v, thr_t, types.int64)
            splat = builder.insert_element(ir.Constant(_V8I64, ir.Undefined), thr, ir.Constant(_I32, 0))
            splat = builder.shuffle_vector(splat, ir.Constant(_V8I64, ir.Undefined), ir.Constant(_V8I32, [0] * 8))
            m = builder.icmp_signed("<=", s, splat)
            return builder.zext(builder.bitcast(m, ir.IntType(8)), _I64)

        return sig, codegen

    return group8


# Vector paths for 256- and 512-bit codes only: each variant is compiled into every kernel specialisation, and other
# widths (128, 1024 bits, odd lengths) are rare enough for the scalar loop.
_G4, _G8 = (_make_group8(w, False) for w in (4, 8))
_G4R, _G8R = (_make_group8(w, True) for w in (4, 8))


@njit(cache=True, nogil=True, inline="always")
def _vector_words(q):
    # Word counts with a vector path; everything else (odd byte lengths included) takes the scalar loop.
    nw = q.shape[0]
    return q.itemsize == 8 and (nw == 4 or nw == 8)


@njit(cache=True, nogil=True, inline="always")
def _group8(codes, first, rows, use_rows, qt, thr, dbuf):
    if use_rows:
        if codes.shape[1] == 4:
            return _G4R(codes, first, rows, qt, thr, dbuf)
        return _G8R(codes, first, rows, qt, thr, dbuf)
    if codes.shape[1] == 4:
        return _G4(codes, first, rows, qt, thr, dbuf)
    return _G8(codes, first, rows, qt, thr, dbuf)


_V64I8 = ir.VectorType(ir.IntType(8), 64)
_V64I16 = ir.VectorType(ir.IntType(16), 64)


@intrinsic
def _l1_x64(typingctx, aux, r, aux_q64):
    """Sum of |aux[r, b] - aux_q64[b]| over the row's n_aux <= 64 bytes with one 64-byte load (bytes past the row
    are masked to 0). The caller guarantees the 64 bytes from the row start lie inside aux."""
    sig = types.int64(aux, r, aux_q64)

    def codegen(context, builder, signature, args):
        aux_v, r_v, q_v = args
        aux_t, r_t, q_t = signature.args
        arr = context.make_array(aux_t)(context, builder, aux_v)
        width = builder.extract_value(arr.shape, 1)
        data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
        r64 = context.cast(builder, r_v, r_t, types.int64)
        row = builder.gep(data, [builder.mul(r64, width)])
        x = builder.load(builder.bitcast(row, _V64I8.as_pointer()), align=1)
        qdata = builder.bitcast(context.make_array(q_t)(context, builder, q_v).data, _V64I8.as_pointer())
        qv = builder.load(qdata, align=1)
        lanes = ir.Constant(_V64I16, list(range(64)))
        w16 = builder.trunc(width, ir.IntType(16))
        splat = builder.insert_element(ir.Constant(_V64I16, ir.Undefined), w16, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(splat, ir.Constant(_V64I16, ir.Undefined),
                                       ir.Constant(ir.VectorType(_I32, 64), [0] * 64))
        inside = builder.icmp_unsigned("<", lanes, splat)
        xa = builder.select(inside, builder.zext(x, _V64I16), ir.Constant(_V64I16, [0] * 64))
        qa = builder.zext(qv, _V64I16)
        d = builder.sub(xa, qa)
        neg = builder.icmp_signed("<", d, ir.Constant(_V64I16, [0] * 64))
        d = builder.select(neg, builder.sub(ir.Constant(_V64I16, [0] * 64), d), d)
        reduce = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(16), [_V64I16]), "llvm.vector.reduce.add.v64i16"
        )
        return builder.zext(builder.call(reduce, [d]), _I64)

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _aux_l1(aux_q, aux, r):
    # aux_q is zero-padded to >= 64 bytes. The 64-byte vector load may read into the following rows (masked off),
    # so it is used only where those bytes still belong to aux; the last few rows take the scalar loop.
    m = aux.shape[1]
    if m <= 64 and r * m + 64 <= aux.shape[0] * m:
        return _l1_x64(aux, r, aux_q)
    l1 = 0
    for b in range(m):
        l1 += abs(np.int32(aux[r, b]) - np.int32(aux_q[b]))
    return l1


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


@njit(cache=True, nogil=True, inline="always")
def _tiled_query(q):
    # The query repeated to fill whole 8-word vectors (or q itself when it is already >= 8 words).
    nw = q.shape[0]
    qt = np.empty(max(8, nw), dtype=q.dtype)
    for i in range(qt.shape[0]):
        qt[i] = q[i % nw]
    return qt


@njit(cache=True, nogil=True)
def _finish(cd, cr, cnt, kk, ids, use_ids, hist):
    """Exactly the top-kk candidates, unordered; the caller orders them with np.lexsort (numba's argsort would add
    seconds to the first compile for a sort of ~k items)."""
    if cnt > kk:
        cnt, _, _ = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
    return cd[:cnt].copy(), cr[:cnt].copy()


@njit(cache=True, nogil=True)
def _top_k_range(q, codes, start, stop, k, ids, use_ids, exclude, use_exclude):
    """Top-k of codes[start:stop] by (distance, id) -> (dists int32 (k',), rows int64 (k',))."""
    kk = min(k, stop - start)
    if kk <= 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
    max_d = q.shape[0] * q.itemsize * 8
    cd = np.empty(max(2 * kk, _MIN_CAP), dtype=np.int32)
    cr = np.empty(cd.shape[0], dtype=np.int64)
    hist = np.empty(max_d + 1, dtype=np.int64)
    dbuf = np.empty(8, dtype=np.int32)
    no_rows = np.empty(0, dtype=np.int32)
    cnt = 0
    thr = max_d + 1
    thr_id = 0
    j = start
    if _vector_words(q):
        qt = _tiled_query(q)
        while j + 8 <= stop:
            m = _group8(codes, j, no_rows, False, qt, thr, dbuf)
            if m != 0:
                for t in range(8):
                    d = dbuf[t]
                    r = j + t
                    # Admission, written out in each loop (numba did not inline a helper; calls cost ~25 ns/row):
                    # d < thr, or d == thr and id < thr_id, and not excluded. Until the buffer first fills thr is
                    # max_d + 1; after each compaction (thr, thr_id) is the k-th best so far.
                    if (m >> t) & 1 and (d < thr or (d == thr and (ids[r] if use_ids else r) < thr_id)) and (
                        not use_exclude or exclude[r] == 0
                    ):
                        cd[cnt] = d
                        cr[cnt] = r
                        cnt += 1
                        if cnt == cd.shape[0]:
                            cnt, thr, thr_id = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
            j += 8
    while j < stop:
        d = _row_dist(q, codes, j)
        if (d < thr or (d == thr and (ids[j] if use_ids else j) < thr_id)) and (not use_exclude or exclude[j] == 0):
            cd[cnt] = d
            cr[cnt] = j
            cnt += 1
            if cnt == cd.shape[0]:
                cnt, thr, thr_id = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
        j += 1
    return _finish(cd, cr, cnt, kk, ids, use_ids, hist)


@njit(cache=True, nogil=True)
def _top_k_rows(q, codes, rows, start, stop, k, ids, use_ids, exclude, use_exclude):
    """Top-k of the rows listed in rows[start:stop] -> (dists, rows, ok); ok is False when a row is out of range."""
    kk = min(k, stop - start)
    if kk <= 0:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64), True
    n = codes.shape[0]
    # One pass over the row numbers first: numba does not bounds-check, and the gather must never read past codes.
    for j in range(start, stop):
        if rows[j] < 0 or rows[j] >= n:
            return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64), False
    max_d = q.shape[0] * q.itemsize * 8
    cd = np.empty(max(2 * kk, _MIN_CAP), dtype=np.int32)
    cr = np.empty(cd.shape[0], dtype=np.int64)
    hist = np.empty(max_d + 1, dtype=np.int64)
    dbuf = np.empty(8, dtype=np.int32)
    cnt = 0
    thr = max_d + 1
    thr_id = 0
    j = start
    if _vector_words(q):
        qt = _tiled_query(q)
        while j + 8 <= stop:
            m = _group8(codes, j, rows, True, qt, thr, dbuf)
            if m != 0:
                for t in range(8):
                    d = dbuf[t]
                    r = rows[j + t]
                    if (m >> t) & 1 and (d < thr or (d == thr and (ids[r] if use_ids else r) < thr_id)) and (
                        not use_exclude or exclude[r] == 0
                    ):
                        cd[cnt] = d
                        cr[cnt] = r
                        cnt += 1
                        if cnt == cd.shape[0]:
                            cnt, thr, thr_id = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
            j += 8
    while j < stop:
        r = rows[j]
        d = _row_dist(q, codes, r)
        if (d < thr or (d == thr and (ids[r] if use_ids else r) < thr_id)) and (not use_exclude or exclude[r] == 0):
            cd[cnt] = d
            cr[cnt] = r
            cnt += 1
            if cnt == cd.shape[0]:
                cnt, thr, thr_id = _compact(cd, cr, cnt, kk, ids, use_ids, hist)
        j += 1
    out_d, out_r = _finish(cd, cr, cnt, kk, ids, use_ids, hist)
    return out_d, out_r, True


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


@njit(cache=True, nogil=True)
def _finish_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids):
    """Exactly the best min(cnt, kk) blended candidates, unordered (ordered by the caller, as in _finish)."""
    if cnt > kk:
        cnt, _, _ = _compact_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids)
    return cs[:cnt].copy(), cd[:cnt].copy(), cl[:cnt].copy(), cr[:cnt].copy()


@njit(cache=True, nogil=True, inline="always")
def _d_bound(thr, w_d, max_d):
    # Largest distance that can still beat the k-th blended score (the aux term is >= 0); +1 absorbs rounding.
    if w_d <= 0.0 or thr >= w_d * (max_d + 1):
        return max_d + 1
    return np.int64(thr / w_d) + 1


@njit(cache=True, nogil=True, inline="always")
def _blend_scan(
    q, codes, rows, use_rows, start, stop, k, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude, use_exclude
):
    """Exact top-k by w_d * hamming + w_l * L1(aux), ties by id -> (scores f64, dists i32, l1 i32, rows i64)."""
    kk = min(k, stop - start)
    if kk <= 0:
        return np.empty(0, np.float64), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64)
    max_d = q.shape[0] * q.itemsize * 8
    cap = max(2 * kk, _MIN_CAP)
    cs = np.empty(cap, dtype=np.float64)
    cd = np.empty(cap, dtype=np.int32)
    cl = np.empty(cap, dtype=np.int32)
    cr = np.empty(cap, dtype=np.int64)
    dbuf = np.empty(8, dtype=np.int32)
    cnt = 0
    thr = np.inf
    thr_id = 0
    j = start
    if _vector_words(q):
        qt = _tiled_query(q)
        while j + 8 <= stop:
            # Rows whose Hamming term alone already exceeds the k-th score are skipped without touching aux.
            m = _group8(codes, j, rows, use_rows, qt, _d_bound(thr, w_d, max_d), dbuf)
            if m != 0:
                for t in range(8):
                    if (m >> t) & 1:
                        r = rows[j + t] if use_rows else j + t
                        l1 = _aux_l1(aux_q, aux, r)
                        s = w_d * dbuf[t] + w_l * min(float(l1), l1_cap)
                        # Same admission rule as _top_k_range, on the blended score; written out for the same reason.
                        if (s < thr or (s == thr and (ids[r] if use_ids else r) < thr_id)) and (
                            not use_exclude or exclude[r] == 0
                        ):
                            cs[cnt] = s
                            cd[cnt] = dbuf[t]
                            cl[cnt] = l1
                            cr[cnt] = r
                            cnt += 1
                            if cnt == cs.shape[0]:
                                cnt, thr, thr_id = _compact_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids)
            j += 8
    while j < stop:
        r = rows[j] if use_rows else j
        d = _row_dist(q, codes, r)
        if d <= _d_bound(thr, w_d, max_d):
            l1 = _aux_l1(aux_q, aux, r)
            s = w_d * d + w_l * min(float(l1), l1_cap)
            if (s < thr or (s == thr and (ids[r] if use_ids else r) < thr_id)) and (not use_exclude or exclude[r] == 0):
                cs[cnt] = s
                cd[cnt] = d
                cl[cnt] = l1
                cr[cnt] = r
                cnt += 1
                if cnt == cs.shape[0]:
                    cnt, thr, thr_id = _compact_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids)
        j += 1
    return _finish_blend(cs, cd, cl, cr, cnt, kk, ids, use_ids)


@njit(cache=True, nogil=True)
def _blend_range(q, codes, start, stop, k, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude, use_exclude):
    no_rows = np.empty(0, dtype=np.int32)
    return _blend_scan(
        q, codes, no_rows, False, start, stop, k, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude, use_exclude
    )


@njit(cache=True, nogil=True)
def _blend_rows(q, codes, rows, start, stop, k, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude, use_exclude):
    n = codes.shape[0]
    for j in range(start, stop):
        if rows[j] < 0 or rows[j] >= n:
            return (
                np.empty(0, np.float64), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.int64), False
            )
    s, d, l1, r = _blend_scan(
        q, codes, rows, True, start, stop, k, aux_q, aux, w_d, w_l, l1_cap, ids, use_ids, exclude, use_exclude
    )
    return s, d, l1, r, True


@njit(cache=True, nogil=True)
def _distances_kernel(q, codes, out):
    n = codes.shape[0]
    rows = np.empty(0, dtype=np.int32)
    dbuf = np.empty(8, dtype=np.int32)
    j = 0
    if _vector_words(q):
        qt = _tiled_query(q)
        while j + 8 <= n:
            _group8(codes, j, rows, False, qt, 0, dbuf)
            out[j : j + 8] = dbuf
            j += 8
    while j < n:
        out[j] = _row_dist(q, codes, j)
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


def _prepared(q: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    check_codes(codes)
    check_query(q, codes.shape[1])
    words = as_words(codes)
    qw = np.ascontiguousarray(q).view(words.dtype) if words.dtype == np.uint64 else np.ascontiguousarray(q)
    return qw, words


# ---------------------------------------------------------------------------------------------------------------------
# Public API.


def hamming_distances(q: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distance from one query code to every code.

    q: uint8 (n_bytes,), codes: uint8 (n, n_bytes) C-contiguous -> dists: int32 (n,).
    """
    qw, words = _prepared(q, codes)
    out = np.empty(codes.shape[0], dtype=np.int32)
    _distances_kernel(qw, words, out)
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
    k = _check_k(k)
    qw, words = _prepared(q, codes)
    n = codes.shape[0]
    rows_a = _check_rows(rows)
    ids_a = _check_ids(ids, n)
    excl_a = _check_exclude(exclude, n)
    total = rows_a.shape[0] if rows is not None else n
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"need 0 <= start <= stop <= {total}, got start={start}, stop={stop}")
    if rows is None:
        dists, idx = _top_k_range(qw, words, start, stop, k, ids_a, ids is not None, excl_a, exclude is not None)
    else:
        dists, idx, ok = _top_k_rows(
            qw, words, rows_a, start, stop, k, ids_a, ids is not None, excl_a, exclude is not None
        )
        if not ok:
            raise IndexError(f"rows must be in [0, {n}), got a row out of range")
    order = _order(dists, idx, ids)
    return dists[order], idx[order]
    return dists, idx


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k by a blend of Hamming distance and an L1 distance between small uint8 side vectors, in one scan.

    score = (1 - weight) * hamming / n_bits + weight * min(L1(aux_q, aux[row]) / aux_scale, 1); lower is better, ties
    by id (scores are computed as w_d * hamming + w_l * min(L1, aux_scale), w_d = (1 - weight) / n_bits,
    w_l = weight / aux_scale; callers that recompute a score should use the same expression).
    q, codes, rows, ids, exclude, start, stop: as in top_k. aux_q: uint8 (m,); aux: uint8 (n, m) C-contiguous.
    The side vector of a row is read only when its Hamming term alone can still beat the running k-th score, so a
    small weight costs little more than top_k. Returns scores: float64 (k',), dists: int32 (k',), l1: int32 (k',),
    idx: int64 (k',) -- row numbers, sorted by (score, id).
    """
    k = _check_k(k)
    qw, words = _prepared(q, codes)
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
    rows_a = _check_rows(rows)
    ids_a = _check_ids(ids, n)
    excl_a = _check_exclude(exclude, n)
    total = rows_a.shape[0] if rows is not None else n
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise ValueError(f"need 0 <= start <= stop <= {total}, got start={start}, stop={stop}")
    w_d = (1.0 - float(weight)) / float(n_bits)
    w_l = float(weight) / float(aux_scale)
    cap = float(aux_scale)
    aq = np.zeros(max(64, aux_q.shape[0]), dtype=np.uint8)  # zero-padded for the 64-byte vector L1
    aq[: aux_q.shape[0]] = aux_q
    use_ids, use_excl = ids is not None, exclude is not None
    if rows is None:
        s, d, l1, r = _blend_range(qw, words, start, stop, k, aq, aux, w_d, w_l, cap, ids_a, use_ids, excl_a, use_excl)
    else:
        s, d, l1, r, ok = _blend_rows(
            qw, words, rows_a, start, stop, k, aq, aux, w_d, w_l, cap, ids_a, use_ids, excl_a, use_excl
        )
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
    k = _check_k(k)
    qw, words = _prepared(q, codes)
    n = codes.shape[0]
    ids_a = _check_ids(ids, n)
    excl_a = _check_exclude(exclude, n)
    stop = n if stop is None else stop
    if not 0 <= start <= stop <= n:
        raise ValueError(f"need 0 <= start <= stop <= {n}, got start={start}, stop={stop}")
    n_threads = max(1, min(int(n_threads), (stop - start) // _MIN_ROWS_PER_THREAD))
    if n_threads == 1:
        return top_k(q, codes, k, ids=ids, exclude=exclude, start=start, stop=stop)
    bounds = np.linspace(start, stop, n_threads + 1).astype(np.int64)
    use_ids, use_excl = ids is not None, exclude is not None

    def one(i: int) -> tuple[np.ndarray, np.ndarray]:
        return _top_k_range(qw, words, int(bounds[i]), int(bounds[i + 1]), k, ids_a, use_ids, excl_a, use_excl)

    # The calling thread scans the last slice itself, so one request never waits on a busy pool for all of its work.
    futures = [_pool().submit(one, i) for i in range(n_threads - 1)]
    parts = [one(n_threads - 1)] + [f.result() for f in futures]
    d = np.concatenate([p[0] for p in parts])
    r = np.concatenate([p[1] for p in parts])
    key = ids_a[r] if use_ids else r
    order = np.lexsort((key, d))[:k]
    return d[order], r[order]


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
