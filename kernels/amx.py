"""Intel AMX tiles (Xeon since Sapphire Rapids), for the designs in amx_attention and amx_matmul: whether this
process may use them, the instructions as LLVM intrinsics, and float32 -> bfloat16 rounding.

A tile product (tdpbf16ps) takes 16 x 16 results from 32 pairs of bfloat16s: exact products, float32 sums. A
float32 x splits into two bfloat16s, hi = bf16(x) and lo = bf16(x - hi), both rounded to nearest: hi + lo is x
within 2^-16 |x|. Linux lends a process the tile registers only once it asks (arch_prctl ARCH_REQ_XCOMP_PERM);
AVAILABLE says whether the target has the tiles, Numba compiles, and Linux agreed.
"""
from __future__ import annotations

import ctypes
import platform

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .cpu import target_has
from .jit import inner

TILE_ROWS = 16  # rows of every tile used here: 16 query rows, 16 feature or key pairs
TILE_BYTES = 64  # bytes of a tile row: 32 bfloat16s, or 16 float32 results
TILE_SIZE = TILE_ROWS * TILE_BYTES // 2  # bfloat16s in one B tile
FEATURES = 32  # features of a query (or keys of a weight row) one A tile holds
QB = 32  # values of a row one A tile holds: a ggml block


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


AVAILABLE = (target_has("amx-tile") and target_has("amx-bf16") and not numba.config.DISABLE_JIT
             and _request_tile_state())


# In attention's steps (Tiles.step) tiles 0 and 1 accumulate two 16 x 16 blocks of results, 2 and 3 hold the A
# operand's hi and lo, 4 and 5 the first block's B hi and lo, 6 and 7 the second's (amx_matmul uses them otherwise).

class Tiles:
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
        self._call("llvm.x86.tileloadd64", [I8, I8P, I64], [ir.Constant(I8, t), address, stride])

    def store(self, t, address, stride):
        self._call("llvm.x86.tilestored64", [I8, I8P, I64], [ir.Constant(I8, t), address, stride])

    def zero(self, t):
        self._call("llvm.x86.tilezero", [I8], [ir.Constant(I8, t)])

    def dot(self, c, a, b):
        """Tile c += tile a . tile b (bfloat16 pairs, float32 sums)."""
        self._call("llvm.x86.tdpbf16ps", [I8] * 3, [ir.Constant(I8, t) for t in (c, a, b)])

    def release(self):
        self._call("llvm.x86.tilerelease", [], [])

    def step(self, a_hi, a_lo, a_stride, b_hi, b_lo, b_second):
        """Tiles 0 and 1 += A . B1 and A . B2 in three terms each (hi.hi + hi.lo + lo.hi): A's hi and lo tiles at
        a_hi, a_lo (rows a_stride bytes apart); B1's at b_hi, b_lo and B2's b_second bytes on (rows adjacent)."""
        row = ir.Constant(I64, TILE_BYTES)
        self.load(2, a_hi, a_stride)
        self.load(3, a_lo, a_stride)
        self.load(4, b_hi, row)
        self.load(5, b_lo, row)
        self.load(6, self.builder.gep(b_hi, [b_second]), row)
        self.load(7, self.builder.gep(b_lo, [b_second]), row)
        for c, a, b in ((0, 2, 4), (1, 2, 6), (0, 2, 5), (1, 2, 7), (0, 3, 4), (1, 3, 6)):
            self.dot(c, a, b)


I8, I64 = ir.IntType(8), ir.IntType(64)
I8P = I8.as_pointer()


def pointers(context, builder, signature, args):
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


# Splitting float32 into bfloat16 hi + lo.

def bf16_parts(builder, x):
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
        (src, src_stride), *outs = pointers(context, builder, signature, args)[:1 + parts]
        n, cols = args[1 + parts], args[2 + parts]
        vf = ir.VectorType(ir.FloatType(), 16)

        def c64(v):
            return ir.Constant(I64, v)

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
                for half, (base, stride) in zip(bf16_parts(builder, x), outs):
                    builder.store(half, builder.bitcast(at(base, stride, r, c, 32), half.type.as_pointer()), align=2)
        return context.get_dummy_value()

    return codegen


@intrinsic
def split_block(typingctx, src, hi, lo, n, cols):
    """hi[r, :cols], lo[r, :cols] = the bfloat16 split of src[r, :cols] for r < n (each rounded to nearest, ties to
    even, by integer arithmetic on the bits); cols a multiple of 16, 16 values a step (a scalar loop took a third
    of the tasks' time). Rows of src may be any distance apart, their values adjacent. No bounds checks."""
    return types.void(src, hi, lo, n, cols), _split_codegen(False, 2)


@intrinsic
def round_tiles(typingctx, src, hi, n, cols):
    """hi = bf16(src[:n, :cols]) (the hi of _split_block) as A tiles: [r / 16][32-value block][r % 16][32] (1 KiB a
    tile, in order), cols a multiple of 32. No bounds checks."""
    return types.void(src, hi, n, cols), _split_codegen(True, 1)


@inner()
def split_rows(src, hi, lo, n, cols):
    """_split_block, then zeros in the rows of hi and lo from n to the next multiple of 16 (a tile's rows)."""
    split_block(src, hi, lo, n, cols)
    for r in range(n, min(hi.shape[0], -(-n // TILE_ROWS) * TILE_ROWS)):
        hi[r, :cols] = 0
        lo[r, :cols] = 0


@inner()
def scratch(rows, cols, dtype):
    """np.empty((rows, cols), dtype) starting on a cache line. Tile rows that straddle two lines load ~6x slower
    (a 1 KiB tile from L1: 15 ns against 2.4, measured here), and every row here is a whole number of lines."""
    raw = np.empty(rows * cols + 64, dtype)
    start = (64 - raw.ctypes.data % 64) % 64 // raw.itemsize
    return raw[start:start + rows * cols].reshape((rows, cols))


