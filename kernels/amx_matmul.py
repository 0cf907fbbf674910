"""Matmuls of long sequences on AMX tiles, y = x @ W.T for Q8_0 / Q4_0 weights packed for the integer design
(int_panels), when the caller says the batch is long (numba_backend.matmuls' long_batch). A task takes a group of
panels of 32 rows: it turns each panel's integers times their block scales into B tiles, bf16(d * q), then
multiplies every 32 tokens of x, rounded to bfloat16 once a call, by them.

One term: x and d * q each rounded to bfloat16, so a product is within 2^-8 of x w (float32 sums); finer than
the weights' own quantization. numpy_backend's matmul with long_batch rounds alike, as the oracle.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .amx import AVAILABLE, I64, QB, TILE_BYTES, TILE_ROWS, Tiles, bf16_parts, pointers, round_tiles, scratch
from .blocks import Q4_0, Q8_0, activations, quant_type
from .int_matmul import SHARED, claim_panels, f32_outputs, launch_plan, u16_scales, u8_panels
from .int_panels import INT_OFFSET, NR, PackedWeight
from .jit import aligned, compiled, f32_rows_ro, i64_counter, i64_vec, jit, launch, read_only

LONG_SEQUENCE = 48


def _panel_tiles_codegen(nibbles: bool):
    """codegen for (panel, scales, k, w): an int16-design panel (nibbles: Q4_0's two rows a byte, else Q8_0's
    byte a value) and its float16 scales -> bf16(d * q) as B tiles."""
    offset = INT_OFFSET[Q4_0 if nibbles else Q8_0]

    def codegen(context, builder, signature, args):
        (panel, _), (scales, _), _, (w, _) = pointers(context, builder, signature, args)
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
        bytes_, ints, floats = ir.VectorType(i8, 32), ir.VectorType(i32, 32), ir.VectorType(f32, 32)
        each_twice = ir.Constant(ir.VectorType(i32, 32), [j // 2 for j in range(32)])  # a row's scale, both values

        def c64(v):
            return ir.Constant(I64, v)

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
                    hi, _ = bf16_parts(builder, builder.fmul(q, d[g]))
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
        (xp, x_stride), _, (wp, w_stride), _, (yp, y_stride), _ = pointers(context, builder, signature, args)
        n_pairs, n_panels, yc = args[1], args[3], args[5]
        ops = Tiles(builder)
        ops.configure()
        values = builder.extract_value(context.make_array(signature.args[0])(context, builder, args[0]).shape, 1)
        k = builder.udiv(values, ir.Constant(I64, TILE_ROWS))  # a row of x: 16 tokens' k values
        row = ir.Constant(I64, TILE_BYTES)
        tile_bytes = ir.Constant(I64, TILE_ROWS * TILE_BYTES)
        second_rows = ir.Constant(I64, TILE_ROWS * TILE_BYTES)  # the panel's rows 16-31: the block's second B tile
        with cgutils.for_range(builder, n_pairs) as pairs:
            x_r = builder.gep(xp, [builder.mul(builder.mul(pairs.index, ir.Constant(I64, 2)), x_stride)])
            x_second = builder.gep(x_r, [x_stride])
            with cgutils.for_range(builder, n_panels) as panels:
                p = panels.index
                w_p = builder.gep(wp, [builder.mul(p, w_stride)])
                for t in range(4):
                    ops.zero(t)
                with cgutils.for_range(builder, builder.udiv(k, ir.Constant(I64, QB))) as blocks:
                    a = builder.mul(blocks.index, tile_bytes)
                    b = builder.gep(w_p, [builder.mul(blocks.index, ir.Constant(I64, 2 * TILE_ROWS * TILE_BYTES))])
                    ops.load(4, builder.gep(x_r, [a]), row)
                    ops.load(5, builder.gep(x_second, [a]), row)
                    ops.load(6, b, row)
                    ops.load(7, builder.gep(b, [second_rows]), row)
                    for c, (ta, tb) in enumerate(((4, 6), (4, 7), (5, 6), (5, 7))):
                        ops.dot(c, ta, tb)
                column = builder.add(yc, builder.mul(p, ir.Constant(I64, NR)))
                r0 = builder.mul(pairs.index, ir.Constant(I64, 2 * TILE_ROWS))
                out = builder.gep(yp, [builder.add(builder.mul(r0, y_stride), builder.mul(column, ir.Constant(I64, 4)))])
                out_second = builder.gep(out, [builder.mul(ir.Constant(I64, TILE_ROWS), y_stride)])
                for c, at in enumerate((out, builder.gep(out, [row]), out_second, builder.gep(out_second, [row]))):
                    ops.store(c, at, y_stride)
        ops.release()
        return context.get_dummy_value()

    return types.void(x, n_pairs, w, n_panels, y, yc), codegen


u16_rows = types.uint16[:, ::1]


@jit(types.void(u16_rows, u8_panels, u16_scales, f32_outputs, i64_vec, types.int64, types.boolean, i64_counter))
def _linear_worker(x, panels, scales, ys, task_starts, group, nibbles, counter):
    """Claim tasks until none are left; a task is `group` panels of one weight (int_matmul.claim_panels),
    made B tiles, then every token times them."""
    k = x.shape[1] // TILE_ROWS
    n_pairs = x.shape[0] // 2  # x: a row of A tiles per 16 tokens, an even number of them
    w = scratch(group, k * NR, np.uint16)
    while True:
        j, p0 = claim_panels(counter, task_starts, group)
        if j < 0:
            break
        p1 = min(panels[j].shape[0], p0 + group)
        for p in range(p0, p1):
            if nibbles:
                _tiles_from_nibbles(panels[j][p], scales[j][p], k, w[p - p0:])
            else:
                _tiles_from_bytes(panels[j][p], scales[j][p], k, w[p - p0:])
        _tile_linear(x, n_pairs, w, p1 - p0, ys[j], p0 * NR)


@jit(types.void(u16_rows, u8_panels, u16_scales, f32_outputs, i64_vec, types.int64, types.boolean, types.int64),
      parallel=True, calls=(_linear_worker,))
def _linear_parallel(x, panels, scales, ys, task_starts, group, nibbles, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _linear_worker(x, panels, scales, ys, task_starts, group, nibbles, counter)


@jit(types.void(f32_rows_ro, u16_rows), parallel=True)
def _round_activations(x, tiles):
    """tiles = bf16(x) as A tiles (_round_tiles), zeros in the rows past x's; a row of A tiles (16 tokens) a task.
    (On one thread it was ~7 % of a long batch's matmuls, the other idle.)"""
    n, k = x.shape
    for t in prange(tiles.shape[0]):
        r0, r1 = t * TILE_ROWS, min(n, (t + 1) * TILE_ROWS)
        if r1 - r0 < TILE_ROWS:  # a part-filled tile or one past x: zeros where x has no rows
            tiles[t] = 0
        if r1 > r0:
            round_tiles(x[r0:r1], tiles[t:t + 1], r1 - r0, k)


def takes_matmul(weights) -> bool:
    """Whether matmuls runs these weights on the tiles here: Q8_0 / Q4_0 packed for the integer design, whole
    blocks of 32 values a row (as every GGUF block type has)."""
    return AVAILABLE and all(isinstance(w, PackedWeight) for w in weights)


def matmuls(x, weights, qtype) -> list[np.ndarray]:
    """[x @ W.T for W in weights] on the tiles: 1 to SHARED PackedWeights (takes_matmul) of type qtype sharing x."""
    if not AVAILABLE:  # (a tile instruction would kill the process)
        raise NotImplementedError("the tiles' matmul needs a CPU with AMX-BF16 that Linux lends (and Numba compiling)")
    if not (takes_matmul(weights) and 1 <= len(weights) <= SHARED):
        raise ValueError(f"the tiles' matmul takes 1 to {SHARED} Q8_0 / Q4_0 weights packed for the integer design")
    plan = launch_plan(weights, int(qtype))
    x = activations(x, plan.k, quant_type(qtype).label)
    n = x.shape[0]
    padded = -(-n // (2 * TILE_ROWS)) * 2 * TILE_ROWS  # whole pairs of token tiles
    outputs = [aligned((padded, w.panels.shape[0] * NR), np.float32) for w in weights]
    if n and plan.n_panels:
        tiles = aligned((padded // TILE_ROWS, TILE_ROWS * plan.k), np.uint16)
        compiled(_round_activations)(read_only(x), tiles)
        ys = tuple(outputs) + (np.empty((0, 0), np.float32),) * (SHARED - len(outputs))
        launch(_linear_worker, _linear_parallel, plan.threads, tiles, plan.panels, plan.scales, ys, plan.task_starts,
               plan.group, plan.nibbles)
    return [y[:n, :w.rows] if w.rows == y.shape[1] else np.ascontiguousarray(y[:n, :w.rows]) for y, w in zip(outputs, weights)]


KERNELS = (_round_activations, _linear_worker, _linear_parallel)  # what matmuls launches
