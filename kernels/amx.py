"""The AMX tile designs (Intel Xeon since Sapphire Rapids), for numba_backend: attention's two products, for
sequences from MIN_LENGTH tokens on, and the matmuls of long sequences' tokens (numba_backend.matmuls with
long_batch, from LONG_SEQUENCE tokens).

A tile product (tdpbf16ps) takes 16 x 16 results from 32 pairs of bfloat16s: exact products, float32 sums.
Attention splits every float32 operand x into two bfloat16s, hi = bf16(x) and lo = bf16(x - hi), both rounded
to nearest: hi + lo is x within 2^-16 |x|. A product x y is then hi_x hi_y + hi_x lo_y + lo_x hi_y (lo_x lo_y,
~2^-16 |x y|, is left out): three tile products, where the float design issues one FMA a product. The matmul
takes one: x and the weights rounded to bfloat16, as the weights' own quantization allows (see its section).

    queries x keys:     A = queries' hi or lo [16 rows][32 features]; B = keys, [16 feature pairs][16 keys][2]
    weights x values:   A = the softmax's weights' hi or lo [16 rows][32 keys]; B = values, [16 key pairs][16
                        features][2]
    x @ W.T:            A = bf16(x) [16 tokens][32 values]; B = bf16(d * q) of a panel of 32 rows, [16 value
                        pairs][16 rows][2], made from the integer design's packed panel by the task that takes
                        it (as many bytes as the blocks stay in memory)

The float32 softmax between the attention products is numba_backend's. Linux lends a process the tile registers
only once it asks (arch_prctl ARCH_REQ_XCOMP_PERM); AVAILABLE says whether this CPU has the tiles, Numba
compiles, and Linux agreed.

Attention's price is the split's rounding: each product within 3 * 2^-16 of its value, where float32's FMA is
within 2^-24. One tile product (16 x 16 results of 32 pairs) issues every 16 cycles: 32 keys times 16 query
rows at d = 256 are 48 of them, 768 cycles, against 8,192 FMAs, 4,096 cycles at two a cycle. In practice ~5-10
ns a product here (4.8 at best, operands in L1 or streaming from L2, 64-byte aligned).

Attention, measured (2026-12-01, this 2-core Xeon): the 205 reference texts' embeddings move by at most 1.2e-7
in cosine (q4_0; q8_0 less), against the reference q4_0 0.98999 / 0.97158 and q8_0 0.99996 / 0.99983 (mean /
min) either way, numba against numpy 0.99999988 either way; attention over those texts 3.06-3.37 s -> 1.91-2.21
s, the whole run 15.9-17.8 s -> 14.4-16.6 s (q4_0, 6 alternating runs).
"""
from __future__ import annotations

import ctypes
import platform

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .blocks import Q4_0, Q8_0, activations, block_format
from .numba_backend import (ATTENTION_BLOCK, FAST, INT_OFFSET, NR, QB, SHARED, PackedWeight, _aligned,
                            _attention_task, _claim, _compiled, _f32_outputs, _gather_queries, _host_has, _inner,
                            _jit, _launch_plan, _read_only, _scatter_outputs, _softmax_rows, _task_panels, _threads,
                            _u16_scales, _u8_panels, f32_3d, f32_3d_ro, f32_rows_ro, i64_counter, i64_vec)

TILE_ROWS = 16  # rows of every tile used here: 16 query rows, 16 feature or key pairs
TILE_BYTES = 64  # bytes of a tile row: 32 bfloat16s, or 16 float32 results
TILE_SIZE = TILE_ROWS * TILE_BYTES // 2  # bfloat16s in one B tile
FEATURES = 32  # features of a query (or keys of a weight row) one A tile holds


def _request_tile_state() -> bool:
    """Ask Linux for the AMX tile state for this process (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA));
    whether it agreed. Without it the first tile instruction kills the process (SIGILL)."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    except (OSError, AttributeError):
        return False


AVAILABLE = (_host_has("amx-tile") and _host_has("amx-bf16") and not numba.config.DISABLE_JIT
             and _request_tile_state())

u16_3d = types.uint16[:, :, ::1]


# ---------------------------------------------------------------------------------------------------------------
# The tile code. In attention's steps (_Tiles.step) tiles 0 and 1 accumulate two 16 x 16 blocks of results, 2 and
# 3 hold the A operand's hi and lo, 4 and 5 the first block's B hi and lo, 6 and 7 the second's (the matmul's
# one-term use of them is in _tile_linear).

class _Tiles:
    """Emits the tile instructions into `builder`: LLVM's intrinsics that name tiles by number."""

    def __init__(self, builder):
        self.builder = builder

    def _call(self, name, arg_types, args):
        fn = cgutils.get_or_insert_function(self.builder.module, ir.FunctionType(ir.VoidType(), arg_types), name)
        self.builder.call(fn, args)

    def configure(self):
        """Palette 1, all eight tiles 16 rows x 64 bytes."""
        i8, i16, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(64)
        raw = self.builder.bitcast(cgutils.alloca_once_value(self.builder, ir.Constant(ir.ArrayType(i8, 64), [0] * 64)),
                                   i8.as_pointer())
        self.builder.store(ir.Constant(i8, 1), raw)
        for t in range(8):
            colsb = self.builder.bitcast(self.builder.gep(raw, [ir.Constant(i64, 16 + 2 * t)]), i16.as_pointer())
            self.builder.store(ir.Constant(i16, TILE_BYTES), colsb, align=1)
            self.builder.store(ir.Constant(i8, TILE_ROWS), self.builder.gep(raw, [ir.Constant(i64, 48 + t)]))
        self._call("llvm.x86.ldtilecfg", [i8.as_pointer()], [raw])

    def load(self, t, address, stride):
        self._call("llvm.x86.tileloadd64", [_I8, _I8P, _I64], [ir.Constant(_I8, t), address, stride])

    def store(self, t, address, stride):
        self._call("llvm.x86.tilestored64", [_I8, _I8P, _I64], [ir.Constant(_I8, t), address, stride])

    def zero(self, t):
        self._call("llvm.x86.tilezero", [_I8], [ir.Constant(_I8, t)])

    def dot(self, c, a, b):
        """Tile c += tile a . tile b (bfloat16 pairs, float32 sums)."""
        self._call("llvm.x86.tdpbf16ps", [_I8] * 3, [ir.Constant(_I8, t) for t in (c, a, b)])

    def release(self):
        self._call("llvm.x86.tilerelease", [], [])

    def step(self, a_hi, a_lo, a_stride, b_hi, b_lo, b_second):
        """Tiles 0 and 1 += A . B1 and A . B2 in three terms each (hi.hi + hi.lo + lo.hi): A's hi and lo tiles at
        a_hi, a_lo (rows a_stride bytes apart); B1's at b_hi, b_lo and B2's b_second bytes on (rows adjacent)."""
        row = ir.Constant(_I64, TILE_BYTES)
        self.load(2, a_hi, a_stride)
        self.load(3, a_lo, a_stride)
        self.load(4, b_hi, row)
        self.load(5, b_lo, row)
        self.load(6, self.builder.gep(b_hi, [b_second]), row)
        self.load(7, self.builder.gep(b_lo, [b_second]), row)
        for c, a, b in ((0, 2, 4), (1, 2, 6), (0, 2, 5), (1, 2, 7), (0, 3, 4), (1, 3, 6)):
            self.dot(c, a, b)


_I8, _I64 = ir.IntType(8), ir.IntType(64)
_I8P = _I8.as_pointer()


def _pointers(context, builder, signature, args):
    """(data as i8*, row stride in bytes) of each array argument, None for the others."""
    out = []
    for t, a in zip(signature.args, args):
        if isinstance(t, types.Array):
            array = context.make_array(t)(context, builder, a)
            stride = builder.extract_value(array.strides, 0) if t.ndim > 1 else ir.Constant(ir.IntType(64), 0)
            out.append((builder.bitcast(array.data, ir.IntType(8).as_pointer()), stride))
        else:
            out.append(None)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Splitting float32 into bfloat16 hi + lo.

def _bf16_parts(builder, x):
    """<N x float> -> (hi, lo) as <N x i16> bfloat16 bits: hi = bf16(x), lo = bf16(x - hi), each rounded to
    nearest (ties to even) by integer arithmetic on the bits."""
    n = x.type.count
    vi = ir.VectorType(ir.IntType(32), n)

    def splat(v):
        return ir.Constant(vi, [v] * n)

    def rounded(v):  # v's bits rounded to their high 16, the low 16 cleared
        u = builder.bitcast(v, vi)
        odd = builder.and_(builder.lshr(u, splat(16)), splat(1))
        return builder.and_(builder.add(builder.add(u, splat(0x7FFF)), odd), splat(-65536))

    hi = rounded(x)
    lo = rounded(builder.fsub(x, builder.bitcast(hi, x.type)))
    return tuple(builder.trunc(builder.lshr(bits, splat(16)), ir.VectorType(ir.IntType(16), n)) for bits in (hi, lo))


def _split_codegen(tiled: bool, parts: int):
    """codegen for (src, hi, lo, n, cols) or, parts = 1, (src, hi, n, cols): see _split_block and _round_tiles."""
    def codegen(context, builder, signature, args):
        (src, src_stride), *outs = _pointers(context, builder, signature, args)[:1 + parts]
        n, cols = args[1 + parts], args[2 + parts]
        vf = ir.VectorType(ir.FloatType(), 16)

        def c64(v):
            return ir.Constant(_I64, v)

        def at(base, stride, r, c, size):  # values 16 c .. of row r, `size` bytes of them
            if tiled:  # [r / 16][c / 2][r % 16][32 values]
                tile = builder.add(builder.mul(builder.udiv(r, c64(TILE_ROWS)), builder.udiv(cols, c64(QB))),
                                   builder.udiv(c, c64(2)))
                offset = builder.add(builder.mul(builder.urem(r, c64(TILE_ROWS)), c64(TILE_BYTES)),
                                     builder.mul(builder.urem(c, c64(2)), c64(TILE_BYTES // 2)))
                return builder.gep(base, [builder.add(builder.mul(tile, c64(TILE_ROWS * TILE_BYTES)), offset)])
            return builder.gep(base, [builder.add(builder.mul(r, stride), builder.mul(c, c64(size)))])

        with cgutils.for_range(builder, n) as rows:
            r = rows.index
            with cgutils.for_range(builder, builder.udiv(cols, c64(16))) as steps:
                c = steps.index
                source = builder.gep(src, [builder.add(builder.mul(r, src_stride), builder.mul(c, c64(64)))])
                x = builder.load(builder.bitcast(source, vf.as_pointer()), align=4)
                for half, (base, stride) in zip(_bf16_parts(builder, x), outs):
                    builder.store(half, builder.bitcast(at(base, stride, r, c, 32), half.type.as_pointer()), align=2)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _split_block(typingctx, src, hi, lo, n, cols):
    """hi[r, :cols], lo[r, :cols] = the bfloat16 split of src[r, :cols] for r < n (each rounded to nearest, ties to
    even, by integer arithmetic on the bits); cols a multiple of 16, 16 values a step (a scalar loop took a third
    of the tasks' time). Rows of src may be any distance apart, their values adjacent. No bounds checks."""
    return types.void(src, hi, lo, n, cols), _split_codegen(False, 2)


@intrinsic
def _round_tiles(typingctx, src, hi, n, cols):
    """hi = bf16(src[:n, :cols]) (the hi of _split_block) as A tiles: [r / 16][32-value block][r % 16][32] (1 KiB a
    tile, in order), cols a multiple of 32. No bounds checks."""
    return types.void(src, hi, n, cols), _split_codegen(True, 1)


@_inner()
def _split_rows(src, hi, lo, n, cols):
    """_split_block, then zeros in the rows of hi and lo from n to the next multiple of 16 (a tile's rows)."""
    _split_block(src, hi, lo, n, cols)
    for r in range(n, min(hi.shape[0], -(-n // TILE_ROWS) * TILE_ROWS)):
        hi[r, :cols] = 0
        lo[r, :cols] = 0


@_inner()
def _scratch(rows, cols, dtype):
    """np.empty((rows, cols), dtype) starting on a cache line. Tile rows that straddle two lines load ~6x slower
    (a 1 KiB tile from L1: 15 ns against 2.4, measured here), and every row here is a whole number of lines."""
    raw = np.empty(rows * cols + 64, dtype)
    start = (64 - raw.ctypes.data % 64) % 64 // raw.itemsize
    return raw[start:start + rows * cols].reshape((rows, cols))


# ---------------------------------------------------------------------------------------------------------------
# Attention.

@intrinsic
def _tile_scores(typingctx, q_hi, q_lo, n_tiles, k_hi, k_lo, p0, p1, scores):
    """scores[16 r ..., 32 (p - p0) ...] = query rows 16 r .. 16 r + 15 times the 32 keys of panel p, for r <
    n_tiles and p0 <= p < p1: q_hi, q_lo (rows, d) bfloat16 bits; k_hi, k_lo (panels, d / 32 * 2 tiles) as
    _pack_tiles lays them out. Row tiles outer (panels outer, each panel's keys in L1 while every row tile
    takes them, measured the same: 5.3 against 5.4 ms at 1,927 tokens). No bounds checks."""
    def codegen(context, builder, signature, args):
        (qh, q_stride), (ql, _), _, (kh, k_stride), (kl, _), _, _, (s, s_stride) = _pointers(context, builder, signature, args)
        n_tiles, p0, p1 = args[2], args[5], args[6]
        i64 = ir.IntType(64)
        ops = _Tiles(builder)
        ops.configure()
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


# Sequences shorter than this take the float design: the tiles' fixed costs (packing, configuring) outweigh them
# below ~130 tokens. Attention alone, 3 heads, d=256, window 512, 2 threads, ms, tiles / float (2026-12-01):
# 20 tokens 0.08 / 0.03, 64 0.11 / 0.09, 128 0.22 / 0.21, 256 0.52 / 0.75, 512 1.5 / 2.8, 1,927 9.5-9.9 /
# 19.5-20.4 (1,927 tokens without a window: 26 / 38 before the packing ran on both threads).
MIN_LENGTH = 192
MIX_PANELS = 8  # panels of values (32 keys each) whose tiles stay in L1 while every row tile takes them


@intrinsic
def _tile_mix(typingctx, w_hi, w_lo, n_tiles, v_hi, v_lo, p0, p1, mixed):
    """mixed[16 r ..., :d] = weight rows 16 r .. 16 r + 15 (over the keys of panels p0 <= p < p1, from column 0)
    times those keys' values, for r < n_tiles: w_hi, w_lo (rows, >= 32 (p1 - p0)) bfloat16 bits; v_hi, v_lo
    (panels, d / 16 tiles) as _pack_tiles lays them out. MIX_PANELS panels at a time, so that their values' tiles
    stay in L1 while every row tile takes them (the sums so far wait in `mixed`). No bounds checks."""
    def codegen(context, builder, signature, args):
        (wh, w_stride), (wl, _), _, (vh, v_stride), (vl, _), _, _, (m, m_stride) = _pointers(context, builder, signature, args)
        n_tiles, p0, p1 = args[2], args[5], args[6]
        i64 = ir.IntType(64)
        ops = _Tiles(builder)
        ops.configure()
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


@_jit(types.void(f32_3d_ro, f32_3d_ro, u16_3d, u16_3d, u16_3d, u16_3d), parallel=True)
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
                _split_block(k[key, h:h + 1], split[0:1], split[1:2], 1, d)
                _split_block(v[key, h:h + 1], split[2:3], split[3:4], 1, d)
            else:
                split[:] = 0
            g, j = jj // TILE_ROWS, jj % TILE_ROWS
            i, e = jj // 2, jj % 2
            for f in range(d):
                at = ((2 * (f // FEATURES) + g) * TILE_ROWS + f % FEATURES // 2) * 32 + 2 * j + f % 2
                kh[at], kl[at] = split[0, f], split[1, f]
                at = (f // 16 * TILE_ROWS + i) * 32 + 2 * (f % 16) + e
                vh[at], vl[at] = split[2, f], split[3, f]


@_jit(types.void(f32_3d_ro, u16_3d, u16_3d, u16_3d, u16_3d, types.float32, types.int64, f32_3d, i64_counter,
                 types.int64), fastmath=FAST)
def _attention_worker(q, k_hi, k_lo, v_hi, v_lo, scale, radius, out, counter, n_tasks):
    """numba_backend._attention_worker's tasks, with both products on the tiles."""
    length, n_heads, d = q.shape
    n_kv = k_hi.shape[0]
    group = n_heads // n_kv
    n_blocks = (length + ATTENTION_BLOCK - 1) // ATTENTION_BLOCK
    reach = length if radius < 0 else min(length, ATTENTION_BLOCK + 2 * radius)
    rows = -(-ATTENTION_BLOCK * group // TILE_ROWS) * TILE_ROWS
    width = min(k_hi.shape[1], reach // NR + 2) * NR
    queries = np.empty((rows, d), np.float32)
    q_hi, q_lo = _scratch(rows, d, np.uint16), _scratch(rows, d, np.uint16)
    scores = _scratch(rows, width, np.float32)
    w_hi, w_lo = _scratch(rows, width, np.uint16), _scratch(rows, width, np.uint16)
    mixed = _scratch(rows, d, np.float32)
    inverse = np.empty(rows, np.float32)
    while True:
        task = _claim(counter)
        if task >= n_tasks:
            break
        h, start, stop, lo, hi = _attention_task(task, n_blocks, length, radius)
        p0, p1 = lo // NR, (hi + NR - 1) // NR
        n_rows, seen = (stop - start) * group, (p1 - p0) * NR
        n_tiles = -(-n_rows // TILE_ROWS)
        _gather_queries(q, h, group, start, stop, scale, queries)
        _split_rows(queries, q_hi, q_lo, n_rows, d)
        _tile_scores(q_hi, q_lo, n_tiles, k_hi[h], k_lo[h], p0, p1, scores)
        _softmax_rows(scores, n_rows, start, group, lo, hi, radius, p0 * NR, seen, inverse)
        _split_rows(scores, w_hi, w_lo, n_rows, seen)
        _tile_mix(w_hi, w_lo, n_tiles, v_hi[h], v_lo[h], p0, p1, mixed)
        _scatter_outputs(mixed, inverse, out, h, group, start, stop)


@_jit(types.void(f32_3d_ro, u16_3d, u16_3d, u16_3d, u16_3d, types.float32, types.int64, f32_3d, types.int64,
                 types.int64), parallel=True, calls=(_attention_worker,))
def _attention_parallel(q, k_hi, k_lo, v_hi, v_lo, scale, radius, out, n_tasks, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _attention_worker(q, k_hi, k_lo, v_hi, v_lo, scale, radius, out, counter, n_tasks)


def takes(length: int, d: int) -> bool:
    """Whether attention over `length` positions with head dimension d runs here: tiles, whole tiles of features,
    and long enough to pay for them."""
    return AVAILABLE and d % FEATURES == 0 and length >= MIN_LENGTH


def attention(q, k, v, scale, radius, out):
    """numba_backend.attention's work (its checks done) for a head dimension `takes` accepts."""
    length, _, d = q.shape
    n_kv, panels = k.shape[1], -(-length // NR)
    k_hi, k_lo, v_hi, v_lo = (_aligned((n_kv, panels, NR * d), np.uint16) for _ in range(4))
    _compiled(_pack_tiles)(k, v, k_hi, k_lo, v_hi, v_lo)
    n_tasks = n_kv * -(-length // ATTENTION_BLOCK)
    threads = _threads(n_tasks)
    if threads > 1:
        _compiled(_attention_parallel)(q, k_hi, k_lo, v_hi, v_lo, np.float32(scale), radius, out, n_tasks, threads)
    else:
        _compiled(_attention_worker)(q, k_hi, k_lo, v_hi, v_lo, np.float32(scale), radius, out, np.zeros(1, np.int64),
                                     n_tasks)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Matmul, y = x @ W.T, for Q8_0 / Q4_0 weights as numba_backend.pack laid them out for the integer design, in
# batches of long sequences (the caller says so: see matmuls). A task takes a group of panels of 32 rows of W: it
# turns each panel's integers times their block scales into B tiles ([block][rows 0-15, 16-31][16 value pairs][16
# rows][2]: the panel's own order), then multiplies every 32 tokens of x (rounded once a call) by them.
#
# One term, not attention's three: x and the weights d * q each rounded to bfloat16, so a product is within
# 2^-8 of x w (sums in float32; numpy_backend's matmul with long_batch rounds alike, as the oracle). The
# weights' own rounding is coarser (Q8_0: up to 2^-8 of a block's largest value; Q4_0: 2^-4), and the
# embeddings kept their agreement with the reference (2026-12-02, 205 texts in document mode, the three-term
# tiles from 192 tokens -> one term from 48: q8_0 mean 0.9999646 -> 0.9999614, q4_0 0.9899904 -> 0.9899880,
# mixed 0.9924598 -> 0.9924570, the minima unchanged to 7 digits; each text within 4e-5 in cosine of before).
# Attention keeps three terms: its operands are not quantized, and the softmax exponentiates its scores' errors.
#
# Why one term is ~2x three: the products issue ~10 ns each (4.8 at best: they wait on their operands' 1 KiB
# tile loads, one a product with three terms, and run slower on real values than on zeros), and one term needs
# a third of them and a load per product with two token tiles by two row tiles in the eight tiles (four
# accumulators). One layer's matmuls, 2 threads, q4_0, GOP/s, three terms / one / the integer design: 32 tokens
# -/383/391, 64 -/597/412, 128 -/767/429, 256 531/861/~460, 512 564/1143/450-500. Hence LONG_SEQUENCE.

LONG_SEQUENCE = 48


def _panel_tiles_codegen(nibbles: bool):
    """codegen for (panel, scales, k, w): an int16-design panel (nibbles: Q4_0's two rows a byte, else Q8_0's
    byte a value) and its float16 scales -> bf16(d * q) as B tiles."""
    offset = INT_OFFSET[Q4_0 if nibbles else Q8_0]

    def codegen(context, builder, signature, args):
        (panel, _), (scales, _), _, (w, _) = _pointers(context, builder, signature, args)
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
        bytes_, ints, floats = ir.VectorType(i8, 32), ir.VectorType(i32, 32), ir.VectorType(f32, 32)
        each_twice = ir.Constant(ir.VectorType(i32, 32), [j // 2 for j in range(32)])  # a row's scale, both values

        def c64(v):
            return ir.Constant(_I64, v)

        def load(base, at, vector, align=1):
            return builder.load(builder.bitcast(builder.gep(base, [at]), vector.as_pointer()), align=align)

        with cgutils.for_range(builder, builder.udiv(args[2], c64(QB))) as blocks:
            b = blocks.index
            d = []
            for g in range(2):  # rows 16 g .. 16 g + 15
                half = load(scales, builder.add(builder.mul(b, c64(2 * NR)), c64(32 * g)), ir.VectorType(ir.HalfType(), 16), 2)
                single = builder.fpext(half, ir.VectorType(f32, 16))
                d.append(builder.shuffle_vector(single, single, each_twice))
            with cgutils.for_range(builder, c64(TILE_ROWS)) as steps:  # a step: 2 values of each row
                step = builder.add(builder.mul(b, c64(TILE_ROWS)), steps.index)
                if nibbles:  # 32 bytes: rows r (low nibble) and r + 16 (high), 2 values each
                    both = builder.zext(load(panel, builder.mul(step, c64(32)), bytes_), ints)
                    u = [builder.and_(both, ir.Constant(ints, [15] * 32)), builder.lshr(both, ir.Constant(ints, [4] * 32))]
                else:  # 64 bytes: rows 0..31, 2 values each
                    u = [builder.zext(load(panel, builder.add(builder.mul(step, c64(64)), c64(32 * g)), bytes_), ints)
                         for g in range(2)]
                for g in range(2):
                    q = builder.sitofp(builder.sub(u[g], ir.Constant(ints, [offset] * 32)), floats)
                    row = builder.add(builder.mul(builder.add(builder.mul(b, c64(2)), c64(g)), c64(TILE_ROWS)), steps.index)
                    hi, _ = _bf16_parts(builder, builder.fmul(q, d[g]))
                    target = builder.gep(w, [builder.mul(row, c64(TILE_BYTES))])
                    builder.store(hi, builder.bitcast(target, hi.type.as_pointer()), align=64)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _tiles_from_nibbles(typingctx, panel, scales, k, w):
    """A Q4_0 nibble panel's weights as B tiles (see _panel_tiles_codegen); no bounds checks."""
    return types.void(panel, scales, k, w), _panel_tiles_codegen(True)


@intrinsic
def _tiles_from_bytes(typingctx, panel, scales, k, w):
    """A Q8_0 byte panel's weights as B tiles (see _panel_tiles_codegen); no bounds checks."""
    return types.void(panel, scales, k, w), _panel_tiles_codegen(False)


@intrinsic
def _tile_linear(typingctx, x, n_pairs, w, n_panels, y, yc):
    """y[32 r .., yc + 32 p .. yc + 32 p + 32] = x rows 32 r .. 32 r + 31 times panel p's 32 rows, for r < n_pairs
    and p < n_panels: x (tokens / 16, 16 k) bfloat16 bits as A tiles (_round_tiles); w[p] panel p's B tiles.
    Tiles 0-3 accumulate tokens 0-15 and 16-31 by rows 0-15 and 16-31; 4 and 5 hold the two token tiles, 6 and 7
    the two row tiles. Token tiles outer: their x (2 x 24 KiB at k = 768) stays in L1 and L2 while the panels
    take it, where panels outer streamed all of x from L3 for every panel. No bounds checks."""
    def codegen(context, builder, signature, args):
        (xp, x_stride), _, (wp, w_stride), _, (yp, y_stride), _ = _pointers(context, builder, signature, args)
        n_pairs, n_panels, yc = args[1], args[3], args[5]
        ops = _Tiles(builder)
        ops.configure()
        values = builder.extract_value(context.make_array(signature.args[0])(context, builder, args[0]).shape, 1)
        k = builder.udiv(values, ir.Constant(_I64, TILE_ROWS))  # a row of x: 16 tokens' k values
        row = ir.Constant(_I64, TILE_BYTES)
        tile_bytes = ir.Constant(_I64, TILE_ROWS * TILE_BYTES)
        second_rows = ir.Constant(_I64, TILE_ROWS * TILE_BYTES)  # the panel's rows 16-31: the block's second B tile
        with cgutils.for_range(builder, n_pairs) as pairs:
            x_r = builder.gep(xp, [builder.mul(builder.mul(pairs.index, ir.Constant(_I64, 2)), x_stride)])
            x_second = builder.gep(x_r, [x_stride])
            with cgutils.for_range(builder, n_panels) as panels:
                p = panels.index
                w_p = builder.gep(wp, [builder.mul(p, w_stride)])
                for t in range(4):
                    ops.zero(t)
                with cgutils.for_range(builder, builder.udiv(k, ir.Constant(_I64, QB))) as blocks:
                    a = builder.mul(blocks.index, tile_bytes)
                    b = builder.gep(w_p, [builder.mul(blocks.index, ir.Constant(_I64, 2 * TILE_ROWS * TILE_BYTES))])
                    ops.load(4, builder.gep(x_r, [a]), row)
                    ops.load(5, builder.gep(x_second, [a]), row)
                    ops.load(6, b, row)
                    ops.load(7, builder.gep(b, [second_rows]), row)
                    for c, (ta, tb) in enumerate(((4, 6), (4, 7), (5, 6), (5, 7))):
                        ops.dot(c, ta, tb)
                column = builder.add(yc, builder.mul(p, ir.Constant(_I64, NR)))
                r0 = builder.mul(pairs.index, ir.Constant(_I64, 2 * TILE_ROWS))
                out = builder.gep(yp, [builder.add(builder.mul(r0, y_stride), builder.mul(column, ir.Constant(_I64, 4)))])
                out_second = builder.gep(out, [builder.mul(ir.Constant(_I64, TILE_ROWS), y_stride)])
                for c, at in enumerate((out, builder.gep(out, [row]), out_second, builder.gep(out_second, [row]))):
                    ops.store(c, at, y_stride)
        ops.release()
        return context.get_dummy_value()

    return types.void(x, n_pairs, w, n_panels, y, yc), codegen


u16_rows = types.uint16[:, ::1]


@_jit(types.void(u16_rows, _u8_panels, _u16_scales, _f32_outputs, i64_vec, i64_counter, types.int64, types.boolean))
def _linear_worker(x, panels, scales, ys, task_starts, counter, group, nibbles):
    """Claim tasks until none are left; a task is `group` panels of one weight (see numba_backend._task_panels),
    made B tiles, then every token times them."""
    k = x.shape[1] // TILE_ROWS
    n_pairs = x.shape[0] // 2  # x: a row of A tiles per 16 tokens, an even number of them
    w = _scratch(group, k * NR, np.uint16)
    end = task_starts[SHARED]
    while True:
        task = _claim(counter)
        if task >= end:
            break
        j, p0 = _task_panels(task_starts, task, group)
        p1 = min(panels[j].shape[0], p0 + group)
        for p in range(p0, p1):
            if nibbles:
                _tiles_from_nibbles(panels[j][p], scales[j][p], k, w[p - p0:])
            else:
                _tiles_from_bytes(panels[j][p], scales[j][p], k, w[p - p0:])
        _tile_linear(x, n_pairs, w, p1 - p0, ys[j], p0 * NR)


@_jit(types.void(u16_rows, _u8_panels, _u16_scales, _f32_outputs, i64_vec, types.int64, types.boolean, types.int64),
      parallel=True, calls=(_linear_worker,))
def _linear_parallel(x, panels, scales, ys, task_starts, group, nibbles, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _linear_worker(x, panels, scales, ys, task_starts, counter, group, nibbles)


@_jit(types.void(f32_rows_ro, u16_rows), parallel=True)
def _round_activations(x, tiles):
    """tiles = bf16(x) as A tiles (_round_tiles), zeros in the rows past x's; a row of A tiles (16 tokens) a task.
    (On one thread it was ~7 % of a long batch's matmuls, the other idle.)"""
    n, k = x.shape
    for t in prange(tiles.shape[0]):
        r0, r1 = t * TILE_ROWS, min(n, (t + 1) * TILE_ROWS)
        if r1 - r0 < TILE_ROWS:  # a part-filled tile or one past x: zeros where x has no rows
            tiles[t] = 0
        if r1 > r0:
            _round_tiles(x[r0:r1], tiles[t:t + 1], r1 - r0, k)


def takes_matmul(weights) -> bool:
    """Whether matmuls runs these weights on the tiles here: Q8_0 / Q4_0 packed for the integer design, whole
    blocks of 32 values a row (as every GGUF block type has)."""
    return AVAILABLE and all(isinstance(w, PackedWeight) and w.bits == 16 for w in weights)


def matmuls(x, weights, qtype) -> list[np.ndarray]:
    """[x @ W.T for W in weights] on the tiles: 1 to SHARED PackedWeights (takes_matmul) of type qtype sharing x."""
    if not AVAILABLE:  # (a tile instruction would kill the process)
        raise NotImplementedError("the tiles' matmul needs a CPU with AMX-BF16 that Linux lends (and Numba compiling)")
    if not (takes_matmul(weights) and 1 <= len(weights) <= SHARED):
        raise ValueError(f"the tiles' matmul takes 1 to {SHARED} Q8_0 / Q4_0 weights packed for the integer design")
    plan = _launch_plan(weights, int(qtype), 16)
    x = activations(x, plan.k, block_format(qtype)[0])
    n = x.shape[0]
    padded = -(-n // (2 * TILE_ROWS)) * 2 * TILE_ROWS  # whole pairs of token tiles
    outputs = [_aligned((padded, w.panels.shape[0] * NR), np.float32) for w in weights]
    if n and plan.n_panels:
        tiles = _aligned((padded // TILE_ROWS, TILE_ROWS * plan.k), np.uint16)
        _compiled(_round_activations)(_read_only(x), tiles)
        ys = tuple(outputs) + (np.empty((0, 0), np.float32),) * (SHARED - len(outputs))
        if plan.threads > 1:
            _compiled(_linear_parallel)(tiles, plan.panels, plan.scales, ys, plan.task_starts, plan.group,
                                        plan.nibbles, plan.threads)
        else:
            _compiled(_linear_worker)(tiles, plan.panels, plan.scales, ys, plan.task_starts, np.zeros(1, np.int64),
                                      plan.group, plan.nibbles)
    return [y[:n, :w.rows] if w.rows == y.shape[1] else np.ascontiguousarray(y[:n, :w.rows]) for y, w in zip(outputs, weights)]
