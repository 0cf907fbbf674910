"""The integer design's weights: each Q8_0 / Q4_0 matrix laid out once, at load, as the integer tile reads it.

    pack_int(w, qtype) -> PackedWeight    panels of NR rows: each row's block integers as unsigned bytes
                                          u = q + INT_OFFSET[qtype], two values of each row side by side per
                                          step ([block][2-value step][NR rows][2]); Q4_0's as nibbles, rows r and
                                          r + 16 in one byte; the blocks' float16 scales beside them [block][row]

The panels take as many bytes as the blocks did, and the file's pages of a packed weight are then never read.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .blocks import Q4_0, Q8_0, quant_type, weight_bytes
from .jit import aligned, compiled, f32_rows, inner, jit, read_only, u8_rows
from .scalar import HARDWARE_HALF, f16_to_f32

NR = 32  # rows of W a panel holds
QB = 32  # values per block, of the weights and of the quantized activations
Q8_0_OFFSET, Q4_0_OFFSET = 128, 8  # the panels' bytes u = q + offset: unsigned (Q4_0's nibbles as stored)
INT_OFFSET = {Q8_0: Q8_0_OFFSET, Q4_0: Q4_0_OFFSET}
PACK_PAIRS, PACK_NIBBLES = 1, 2  # panel layouts: a byte a value, or Q4_0's nibbles two rows a byte


@inner()
def _block_integers(qtype, src, dst, scales, stride):
    """One stored Q8_0 / Q4_0 row as bytes q + INT_OFFSET in 0..255 (dst: k values) and its block scales
    (scales[b * stride], float32)."""
    halves = src.view(np.uint16)
    if qtype == Q8_0:
        n_blocks = src.size // 34
        block = dst.size // n_blocks if n_blocks else QB
        signed = src.view(np.int8)
        for b in range(n_blocks):
            scales[b * stride] = f16_to_f32(halves[17 * b])
            qb, ub = signed[34 * b + 2:34 * b + 2 + block], dst[block * b:block * (b + 1)]
            for i in range(block):
                ub[i] = np.int32(qb[i]) + Q8_0_OFFSET
    else:
        n_blocks = src.size // 18
        n_half = dst.size // n_blocks // 2 if n_blocks else QB // 2
        for b in range(n_blocks):
            scales[b * stride] = f16_to_f32(halves[9 * b])
            qb = src[18 * b + 2:18 * b + 2 + n_half]
            lo, hi = dst[2 * n_half * b:2 * n_half * b + n_half], dst[2 * n_half * b + n_half:2 * n_half * (b + 1)]
            for j in range(n_half):
                lo[j] = np.int32(qb[j] & np.uint8(15)) + (Q4_0_OFFSET - 8)
                hi[j] = np.int32(qb[j] >> np.uint8(4)) + (Q4_0_OFFSET - 8)


@inner()
def _scratch_rows(qtype, w, r0, nr, integers, scales):
    """Rows r0 .. r0 + nr of W as bytes q + INT_OFFSET in integers (NR, k), their block scales in scales [block][row];
    the rest of the NR rows zero."""
    for j in range(nr):
        _block_integers(qtype, w[r0 + j], integers[j], scales[j:], NR)
    integers[nr:] = 0
    for j in range(nr, NR):
        scales[j::NR] = np.float32(0.0)


@inner()
def _pair_rows(qtype, w, r0, nr, integers, packed, scales):
    """A panel of rows r0 .. r0 + nr (the rest of NR zero): 2 bytes of each row side by side ([block][2-byte
    step][row]), which the tile widens to int16 and multiplies with 2 int16 activations. Through the scratch rows
    `integers` (NR, k); a whole Q8_0 / Q4_0 panel comes from _panel_codegen where the CPU converts halves."""
    _scratch_rows(qtype, w, r0, nr, integers, scales)
    pairs, steps = integers.view(np.uint16), packed.view(np.uint16)
    for i in range(pairs.shape[1]):
        for j in range(NR):
            steps[i * NR + j] = pairs[j, i]


# A whole panel straight from the blocks, 16 rows at a time: each row's block of q as 16-bit words, the words of
# 16 rows transposed in registers (zips within 128-bit lanes), a column of words one 2-byte step of the panel.
def _panel_codegen(block_bytes: int):
    """codegen for (w, r0, packed, scales): rows r0 .. r0 + NR of a Q8_0 (34-byte blocks) or Q4_0 (18) weight
    -> the panel and scales _pair_rows makes of them at INT_OFFSET, the same bytes."""
    words = (block_bytes - 2) // 2

    def codegen(context, builder, signature, args):
        wa, _, pa, sa = (context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else None
                         for t, a in zip(signature.args, args))
        r0 = args[1]
        i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
        i8p = i8.as_pointer()

        def c64(v):
            return ir.Constant(i64, v)

        def mask(indices):
            indices = list(indices)
            return ir.Constant(ir.VectorType(i32, len(indices)), indices)

        n = 2 * words  # i16 lanes of two rows side by side
        zip_low = mask(8 * L + j // 2 + (j % 2) * n for L in range(n // 8) for j in range(8))
        zip_high = mask(8 * L + 4 + j // 2 + (j % 2) * n for L in range(n // 8) for j in range(8))
        v8 = ir.VectorType(i8, 32)
        low_bits, four, high_bit = (ir.Constant(v8, [c] * 32) for c in (15, 4, Q8_0_OFFSET))  # q + 128 = q ^ 128
        stride = builder.extract_value(wa.strides, 0)
        rows = [builder.gep(wa.data, [builder.mul(builder.add(r0, c64(a)), stride)]) for a in range(NR)]
        n_blocks = builder.udiv(builder.extract_value(wa.shape, 1), c64(block_bytes))
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            panel = builder.gep(builder.bitcast(pa.data, i8p), [builder.mul(b, c64(QB * NR))])
            for g in range(NR // 16):
                at = [builder.gep(rows[16 * g + a], [builder.mul(b, c64(block_bytes))]) for a in range(16)]
                halves = ir.Constant(ir.VectorType(i16, 16), ir.Undefined)
                for a in range(16):
                    d = builder.load(builder.bitcast(at[a], i16.as_pointer()), align=1)
                    halves = builder.insert_element(halves, d, ir.Constant(i32, a))
                d = builder.fpext(builder.bitcast(halves, ir.VectorType(ir.HalfType(), 16)), ir.VectorType(f32, 16))
                target = builder.gep(sa.data, [builder.add(builder.mul(b, c64(NR)), c64(16 * g))])
                builder.store(d, builder.bitcast(target, d.type.as_pointer()), align=4)
                vq = ir.VectorType(i16, words)
                q = [builder.load(builder.bitcast(builder.gep(x, [c64(2)]), vq.as_pointer()), align=1) for x in at]
                u = [builder.shuffle_vector(q[i], q[i + 8], mask(range(n))) for i in range(8)]  # rows i, i + 8
                for _ in range(3):
                    u = [builder.shuffle_vector(u[i // 2], u[i // 2 + 4], zip_low if i % 2 == 0 else zip_high) for i in range(8)]
                if words == 8:  # u[c]: word c of rows 0..15
                    columns = u
                else:  # u[c]'s lanes: word c and c + 8 of rows 0..7, then of rows 8..15
                    columns = ([builder.shuffle_vector(c, c, mask([*range(8), *range(16, 24)])) for c in u]
                               + [builder.shuffle_vector(c, c, mask([*range(8, 16), *range(24, 32)])) for c in u])

                def put(step, pairs):  # the step's pair of bytes of each of the 16 rows
                    target = builder.gep(panel, [c64(2 * (step * NR + 16 * g))])
                    builder.store(pairs, builder.bitcast(target, v8.as_pointer()), align=2)

                for c, column in enumerate(columns):
                    pairs = builder.bitcast(column, v8)
                    if words == 16:  # Q8_0: q + 128
                        put(c, builder.xor(pairs, high_bit))
                    else:  # Q4_0: the nibbles (q + 8); low ones are values 0..15 of the block, high ones 16..31
                        put(c, builder.and_(pairs, low_bits))
                        put(c + 8, builder.lshr(pairs, four))
        return context.get_dummy_value()

    return codegen


if numba.config.DISABLE_JIT or not HARDWARE_HALF:
    _pair_panel = _pair_rows
else:

    @intrinsic
    def _q8_0_panel(typingctx, w, r0, packed, scales):
        """NR rows of a Q8_0 weight as a panel and its scales (see _panel_codegen); no bounds checks."""
        return types.void(w, r0, packed, scales), _panel_codegen(34)

    @intrinsic
    def _q4_0_panel(typingctx, w, r0, packed, scales):
        """NR rows of a Q4_0 weight as a panel and its scales (see _panel_codegen); no bounds checks."""
        return types.void(w, r0, packed, scales), _panel_codegen(18)

    @inner()
    def _pair_panel(qtype, w, r0, nr, integers, packed, scales):
        """_pair_rows, or for a whole panel the same bytes from _panel_codegen."""
        if nr < NR:
            _pair_rows(qtype, w, r0, nr, integers, packed, scales)
        elif qtype == Q8_0:
            _q8_0_panel(w, r0, packed, scales)
        else:
            _q4_0_panel(w, r0, packed, scales)


@inner()
def _nibble_pairs(pairs, panel):
    """A byte panel of the int16 design ([2-byte step][NR rows][2]) -> its nibble panel ([step][16 rows][2]):
    the bytes of rows r and r + 16 in one, r's in the low nibble (values 0..15 of Q4_0 blocks fit)."""
    for s in range(pairs.size // (2 * NR)):
        low, high = pairs[2 * NR * s:2 * NR * s + NR], pairs[2 * NR * s + NR:2 * NR * (s + 1)]
        out = panel[NR * s:NR * (s + 1)]
        for i in range(NR):
            out[i] = low[i] | (high[i] << np.uint8(4))


@jit(types.void(types.int64, u8_rows, types.int64, types.uint8[:, ::1], f32_rows), parallel=True)
def _pack_panels(qtype, w, layout, panels, scales):
    """Every NR rows of W as one panel of `layout` (rows past the end zero) and their block scales [block][row]."""
    k = scales.shape[1] // NR * QB
    for p in prange(panels.shape[0]):
        integers = np.zeros((NR, k), np.uint8)  # scratch rows
        r0 = p * NR
        nr = min(NR, w.shape[0] - r0)
        if layout == PACK_PAIRS:
            _pair_panel(qtype, w, r0, nr, integers, panels[p], scales[p])
        else:
            pairs = np.empty(k * NR, np.uint8)
            _pair_panel(qtype, w, r0, nr, integers, pairs, scales[p])
            _nibble_pairs(pairs, panels[p])


class PackedWeight:
    """A Q8_0 or Q4_0 weight packed for the integer design (pack_int): `panels` uint8 (panels, bytes), one per NR
    rows; `scales` float16 bits (panels, blocks * NR); `stored`, the weight as stored."""

    __slots__ = ("qtype", "rows", "k", "layout", "panels", "scales", "stored", "launches")

    def __init__(self, qtype, rows, k, layout, panels, scales, stored):
        self.qtype, self.rows, self.k, self.layout = qtype, rows, k, layout
        self.panels, self.scales = panels, scales
        self.stored = stored  # the bytes it was packed from: what every other design reads
        self.launches: dict = {}  # the calls it leads (int_matmul.launch_plan)

    @property
    def nbytes(self) -> int:
        return self.panels.nbytes + self.scales.nbytes

    def __repr__(self) -> str:
        return f"PackedWeight({quant_type(self.qtype).label}, ({self.rows}, {self.k}))"


def pack_int(w, qtype) -> PackedWeight:
    """A stored Q8_0 / Q4_0 weight as the integer design's panels (the same values, as many bytes)."""
    if int(qtype) not in INT_OFFSET:
        raise ValueError(f"the integer matmul takes Q8_0 and Q4_0 weights, not {quant_type(qtype).label}")
    w, rows, k = weight_bytes(w, qtype)
    qtype = int(qtype)
    layout = PACK_NIBBLES if qtype == Q4_0 else PACK_PAIRS
    n_panels = -(-rows // NR)
    panels = aligned((n_panels, k * NR // 2 if layout == PACK_NIBBLES else k * NR), np.uint8)
    scales = np.empty((n_panels, k // QB * NR), np.float32)
    if n_panels:
        compiled(_pack_panels)(qtype, read_only(w), layout, panels, scales)
    halves = aligned(scales.shape, np.uint16)
    halves[:] = scales.astype(np.float16).view(np.uint16)  # exact: they were float16
    return PackedWeight(qtype, rows, k, layout, panels, halves, w)


KERNELS = (_pack_panels,)  # what pack_int launches
