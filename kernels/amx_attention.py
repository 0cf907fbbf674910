"""Attention's two products on AMX tiles, for sequences from MIN_LENGTH tokens on: queries x keys and the
softmax's weights x values, every operand split into bfloat16 hi + lo and each product taken in three terms
(hi.hi + hi.lo + lo.hi, within 3 * 2^-16 of its value; float32's FMA is within 2^-24). The float32 softmax in
between, and the tasks, are attention_steps'.

    queries x keys:     A = queries' hi or lo [16 rows][32 features]; B = keys [16 feature pairs][16 keys][2]
    weights x values:   A = the weights' hi or lo [16 rows][32 keys]; B = values [16 key pairs][16 features][2]
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .amx import AVAILABLE, FEATURES, TILE_BYTES, TILE_ROWS, TILE_SIZE, Tiles, pointers, scratch, split_block, split_rows
from .attention_steps import ATTENTION_BLOCK, attention_task, gather_queries, scatter_outputs, softmax_rows
from .jit import FAST, aligned, f32_3d, f32_3d_ro, i64_counter, jit, launch, threads_for
from .scalar import claim

NR = 32  # keys a panel of keys and values holds: two tiles' worth
u16_3d = types.uint16[:, :, ::1]

def _operands(context, builder, signature, args):
    """What both products' codegens take from (a_hi, a_lo, n_tiles, b_hi, b_lo, p0, p1, out): A's hi, lo and row
    stride, B's, out and its stride, (n_tiles, p0, p1), and the tiles, configured."""
    (ah, a_stride), (al, _), _, (bh, b_stride), (bl, _), _, _, (o, o_stride) = pointers(context, builder, signature, args)
    ops = Tiles(builder)
    ops.configure()
    return (ah, al, a_stride), (bh, bl, b_stride), (o, o_stride), (args[2], args[5], args[6]), ops


@intrinsic
def _tile_scores(typingctx, q_hi, q_lo, n_tiles, k_hi, k_lo, p0, p1, scores):
    """scores[16 r ..., 32 (p - p0) ...] = query rows 16 r .. 16 r + 15 times the 32 keys of panel p, for r <
    n_tiles and p0 <= p < p1: q_hi, q_lo (rows, d) bfloat16 bits; k_hi, k_lo (panels, d / 32 * 2 tiles) as
    _pack_tiles lays them out. Row tiles outer (panels outer, each panel's keys in L1 while every row tile
    takes them, measured the same: 5.3 against 5.4 ms at 1,927 tokens). No bounds checks."""
    def codegen(context, builder, signature, args):
        (qh, ql, q_stride), (kh, kl, k_stride), (s, s_stride), (n_tiles, p0, p1), ops = _operands(context, builder, signature, args)
        i64 = ir.IntType(64)
        chunks = builder.udiv(builder.extract_value(context.make_array(signature.args[0])(context, builder, args[0]).shape, 1),
                              ir.Constant(i64, FEATURES))
        two_tiles = ir.Constant(i64, 2 * TILE_SIZE * 2)  # bytes of the two B tiles of one chunk of features
        row = ir.Constant(i64, TILE_BYTES)
        tile_rows = ir.Constant(i64, TILE_ROWS)
        with cgutils.for_range(builder, n_tiles) as tiles:
            r0 = builder.mul(tiles.index, tile_rows)
            qh_r, ql_r = (builder.gep(a, [builder.mul(r0, q_stride)]) for a in (qh, ql))
            with cgutils.for_range(builder, builder.sub(p1, p0)) as panels:
                p = builder.add(p0, panels.index)
                kh_p, kl_p = (builder.gep(a, [builder.mul(p, k_stride)]) for a in (kh, kl))
                ops.zero(0)
                ops.zero(1)
                with cgutils.for_range(builder, chunks) as loop:
                    a, b = builder.mul(loop.index, row), builder.mul(loop.index, two_tiles)
                    ops.step(builder.gep(qh_r, [a]), builder.gep(ql_r, [a]), q_stride, builder.gep(kh_p, [b]),
                             builder.gep(kl_p, [b]), ir.Constant(i64, 2 * TILE_SIZE))
                out = builder.gep(s, [builder.add(builder.mul(r0, s_stride), builder.mul(panels.index, ir.Constant(i64, 2 * TILE_BYTES)))])
                ops.store(0, out, s_stride)
                ops.store(1, builder.gep(out, [row]), s_stride)
        ops.release()
        return context.get_dummy_value()

    return types.void(q_hi, q_lo, n_tiles, k_hi, k_lo, p0, p1, scores), codegen


MIN_LENGTH = 192  # shorter sequences take the float design: the tiles' fixed costs outweigh them (DESIGN.md)
MIX_PANELS = 8  # panels of values (32 keys each) whose tiles stay in L1 while every row tile takes them


@intrinsic
def _tile_mix(typingctx, w_hi, w_lo, n_tiles, v_hi, v_lo, p0, p1, mixed):
    """mixed[16 r ..., :d] = weight rows 16 r .. 16 r + 15 (over the keys of panels p0 <= p < p1, from column 0)
    times those keys' values, for r < n_tiles: w_hi, w_lo (rows, >= 32 (p1 - p0)) bfloat16 bits; v_hi, v_lo
    (panels, d / 16 tiles) as _pack_tiles lays them out. MIX_PANELS panels at a time, so that their values' tiles
    stay in L1 while every row tile takes them (the sums so far wait in `mixed`). No bounds checks."""
    def codegen(context, builder, signature, args):
        (wh, wl, w_stride), (vh, vl, v_stride), (m, m_stride), (n_tiles, p0, p1), ops = _operands(context, builder, signature, args)
        i64 = ir.IntType(64)
        d = builder.extract_value(context.make_array(signature.args[7])(context, builder, args[7]).shape, 1)
        row = ir.Constant(i64, TILE_BYTES)
        tile_bytes = ir.Constant(i64, 2 * TILE_SIZE)
        tile_rows = ir.Constant(i64, TILE_ROWS)
        n_panels = builder.sub(p1, p0)
        chunk = ir.Constant(i64, MIX_PANELS)
        n_chunks = builder.udiv(builder.add(n_panels, ir.Constant(i64, MIX_PANELS - 1)), chunk)
        with cgutils.for_range(builder, n_chunks) as chunks:
            first = builder.mul(chunks.index, chunk)
            count = builder.sub(n_panels, first)
            count = builder.select(builder.icmp_unsigned("<", count, chunk), count, chunk)
            fresh = builder.icmp_unsigned("==", chunks.index, ir.Constant(i64, 0))
            with cgutils.for_range(builder, builder.udiv(d, ir.Constant(i64, 32))) as pairs:  # 32 features a pass
                features = builder.mul(pairs.index, ir.Constant(i64, 2 * 2 * TILE_SIZE))
                with cgutils.for_range(builder, n_tiles) as tiles:
                    r0 = builder.mul(tiles.index, tile_rows)
                    wh_r, wl_r = (builder.gep(a, [builder.mul(r0, w_stride)]) for a in (wh, wl))
                    out = builder.gep(m, [builder.add(builder.mul(r0, m_stride), builder.mul(pairs.index, ir.Constant(i64, 2 * TILE_BYTES)))])
                    with builder.if_else(fresh) as (then, otherwise):
                        with then:
                            ops.zero(0)
                            ops.zero(1)
                        with otherwise:
                            ops.load(0, out, m_stride)
                            ops.load(1, builder.gep(out, [row]), m_stride)
                    with cgutils.for_range(builder, count) as panels:
                        j = builder.add(first, panels.index)
                        at = builder.mul(j, row)
                        b = builder.add(builder.mul(builder.add(p0, j), v_stride), features)
                        ops.step(builder.gep(wh_r, [at]), builder.gep(wl_r, [at]), w_stride, builder.gep(vh, [b]),
                                 builder.gep(vl, [b]), tile_bytes)
                    ops.store(0, out, m_stride)
                    ops.store(1, builder.gep(out, [row]), m_stride)
        ops.release()
        return context.get_dummy_value()

    return types.void(w_hi, w_lo, n_tiles, v_hi, v_lo, p0, p1, mixed), codegen


@jit(types.void(f32_3d_ro, f32_3d_ro, u16_3d, u16_3d, u16_3d, u16_3d), parallel=True)
def _pack_tiles(k, v, k_hi, k_lo, v_hi, v_lo):
    """Keys and values as B tiles, hi and lo, per key/value head and panel of NR = 32 keys (zeros past the end):
    keys [feature chunk c][half g: keys 0-15, 16-31][feature pair i][key j][2] = k[32 p + 16 g + j, c 32 + 2 i + e];
    values [features 16 t ..][key pair i][feature j][2] = v[32 p + 2 i + e, 16 t + j]."""
    length, n_kv, d = k.shape
    for task in prange(n_kv * k_hi.shape[1]):
        h, p = task // k_hi.shape[1], task % k_hi.shape[1]
        kh, kl, vh, vl = k_hi[h, p], k_lo[h, p], v_hi[h, p], v_lo[h, p]
        split = np.empty((4, d), np.uint16)  # one key's hi and lo, its value's hi and lo
        for jj in range(NR):
            key = p * NR + jj
            if key < length:
                split_block(k[key, h:h + 1], split[0:1], split[1:2], 1, d)
                split_block(v[key, h:h + 1], split[2:3], split[3:4], 1, d)
            else:
                split[:] = 0
            g, j = jj // TILE_ROWS, jj % TILE_ROWS
            i, e = jj // 2, jj % 2
            for f in range(d):
                at = ((2 * (f // FEATURES) + g) * TILE_ROWS + f % FEATURES // 2) * 32 + 2 * j + f % 2
                kh[at], kl[at] = split[0, f], split[1, f]
                at = (f // 16 * TILE_ROWS + i) * 32 + 2 * (f % 16) + e
                vh[at], vl[at] = split[2, f], split[3, f]


@jit(types.void(f32_3d_ro, u16_3d, u16_3d, u16_3d, u16_3d, types.float32, types.int64, f32_3d, types.int64,
                i64_counter), fastmath=FAST)
def _attention_worker(q, k_hi, k_lo, v_hi, v_lo, scale, radius, out, n_tasks, counter):
    """The float design's attention tasks (attention_steps), with both products on the tiles."""
    length, n_heads, d = q.shape
    n_kv = k_hi.shape[0]
    group = n_heads // n_kv
    n_blocks = (length + ATTENTION_BLOCK - 1) // ATTENTION_BLOCK
    reach = length if radius < 0 else min(length, ATTENTION_BLOCK + 2 * radius)
    rows = -(-ATTENTION_BLOCK * group // TILE_ROWS) * TILE_ROWS
    width = min(k_hi.shape[1], reach // NR + 2) * NR
    queries = np.empty((rows, d), np.float32)
    q_hi, q_lo = scratch(rows, d, np.uint16), scratch(rows, d, np.uint16)
    scores = scratch(rows, width, np.float32)
    w_hi, w_lo = scratch(rows, width, np.uint16), scratch(rows, width, np.uint16)
    mixed = scratch(rows, d, np.float32)
    inverse = np.empty(rows, np.float32)
    while True:
        task = claim(counter)
        if task >= n_tasks:
            break
        h, start, stop, lo, hi = attention_task(task, n_blocks, length, radius)
        p0, p1 = lo // NR, (hi + NR - 1) // NR
        n_rows, seen = (stop - start) * group, (p1 - p0) * NR
        n_tiles = -(-n_rows // TILE_ROWS)
        gather_queries(q, h, group, start, stop, scale, queries)
        split_rows(queries, q_hi, q_lo, n_rows, d)
        _tile_scores(q_hi, q_lo, n_tiles, k_hi[h], k_lo[h], p0, p1, scores)
        softmax_rows(scores, n_rows, start, group, lo, hi, radius, p0 * NR, seen, inverse)
        split_rows(scores, w_hi, w_lo, n_rows, seen)
        _tile_mix(w_hi, w_lo, n_tiles, v_hi[h], v_lo[h], p0, p1, mixed)
        scatter_outputs(mixed, inverse, out, h, group, start, stop)


@jit(types.void(f32_3d_ro, u16_3d, u16_3d, u16_3d, u16_3d, types.float32, types.int64, f32_3d, types.int64,
                types.int64), parallel=True, calls=(_attention_worker,))
def _attention_parallel(q, k_hi, k_lo, v_hi, v_lo, scale, radius, out, n_tasks, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _attention_worker(q, k_hi, k_lo, v_hi, v_lo, scale, radius, out, n_tasks, counter)


def takes(length: int, d: int) -> bool:
    """Whether attention over `length` positions with head dimension d runs here: tiles, whole tiles of features,
    and long enough to pay for them."""
    return AVAILABLE and d % FEATURES == 0 and length >= MIN_LENGTH


def attention(q, k, v, scale, radius, out):
    """self_attention.attention's work (its checks done) where `takes` accepts the sequence."""
    length, _, d = q.shape
    n_kv, panels = k.shape[1], -(-length // NR)
    k_hi, k_lo, v_hi, v_lo = (aligned((n_kv, panels, NR * d), np.uint16) for _ in range(4))
    compiled(_pack_tiles)(k, v, k_hi, k_lo, v_hi, v_lo)
    n_tasks = n_kv * -(-length // ATTENTION_BLOCK)
    launch(_attention_worker, _attention_parallel, threads_for(n_tasks), q, k_hi, k_lo, v_hi, v_lo, np.float32(scale),
           radius, out, n_tasks)
    return out


KERNELS = (_pack_tiles, _attention_worker, _attention_parallel)  # what attention launches
