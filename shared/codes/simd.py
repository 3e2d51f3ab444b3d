"""The vector building blocks of the popcount scans (shared.codes.hamming): LLVM intrinsics numba calls inline.

`group8` gives the Hamming distances of 8 rows at once in 512-bit vectors (vpopcntq on AVX-512; LLVM lowers the same
IR to whatever the host has) for 256- and 512-bit codes, plus a mask of the rows at or under a threshold; `aux_l1`
the L1 distance of a row's <= 64 side bytes (colour histograms) with one 64-byte load; `row_dist` the scalar
fallback for every other width.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["popcount", "row_dist", "vector_words", "group8", "aux_l1", "tiled_query"]


@intrinsic
def popcount(typingctx, x):
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
def row_dist(q, codes, r):
    s = 0
    for w in range(q.shape[0]):
        s += popcount(codes[r, w] ^ q[w])
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
def vector_words(q):
    # Word counts with a vector path; everything else (odd byte lengths included) takes the scalar loop.
    nw = q.shape[0]
    return q.itemsize == 8 and (nw == 4 or nw == 8)


@njit(cache=True, nogil=True, inline="always")
def group8(codes, first, rows, use_rows, qt, thr, dbuf):
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
def aux_l1(aux_q, aux, r):
    # aux_q is zero-padded to >= 64 bytes. The 64-byte vector load may read into the following rows (masked off),
    # so it is used only where those bytes still belong to aux; the last few rows take the scalar loop.
    m = aux.shape[1]
    if m <= 64 and r * m + 64 <= aux.shape[0] * m:
        return _l1_x64(aux, r, aux_q)
    l1 = 0
    for b in range(m):
        l1 += abs(np.int32(aux[r, b]) - np.int32(aux_q[b]))
    return l1



@njit(cache=True, nogil=True, inline="always")
def tiled_query(q):
    # The query repeated to fill whole 8-word vectors (or q itself when it is already >= 8 words).
    nw = q.shape[0]
    qt = np.empty(max(8, nw), dtype=q.dtype)
    for i in range(qt.shape[0]):
        qt[i] = q[i % nw]
    return qt
