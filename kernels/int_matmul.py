"""The integer design of y = x @ W.T for Q8_0 / Q4_0 weights, as ggml multiplies them: x quantized once per call
to int16 blocks of 32 values, then integer dot products with the weight blocks' own integers (int_tile), never
decoding W to float32.

    quantize_activations(x, offset)          (qx int16, dx block scales, cx = -offset * sum(qx)), tile groups
    matmul_int_shared(x, weights, qtype)     up to SHARED packed weights of one type sharing one quantized x
    matmul_int(x, w, qtype)                  one weight

A row's rounding is up to half a step, 1/65534 of its block's largest |x|; its result depends on that row alone.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange, types

from .blocks import activations, quant_type
from .int_panels import INT_OFFSET, NR, PACK_NIBBLES, QB, PackedWeight, pack_int
from .int_tile import INT_MR, int_tile
from .jit import FAST, f32_rows, f32_rows_ro, i64_counter, i64_vec, inner, jit, launch, split, threads_for
from .scalar import bits_of, claim, f32_from_bits

LEVELS = 32767.0  # largest |qx|: int16
SHARED = 3  # weights one call multiplies the same activations by (q, k and v); fewer: padded with empty ones
QUANTIZE_ROWS = 8 * INT_MR  # rows of x a parallel quantizing task takes: whole groups

i16_rows = types.int16[:, ::1]
i16_rows_ro = types.Array(types.int16, 2, "C", readonly=True)
i32_rows = types.int32[:, ::1]
i32_rows_ro = types.Array(types.int32, 2, "C", readonly=True)
u8_panels = types.UniTuple(types.uint8[:, ::1], SHARED)
u16_scales = types.UniTuple(types.uint16[:, ::1], SHARED)
f32_outputs = types.UniTuple(f32_rows, SHARED)


@jit(types.void(f32_rows_ro, types.float32, types.int32, i16_rows, f32_rows, i32_rows, types.int64, types.int64),
     fastmath=FAST)
def _quantize_rows(x, levels, offset, qx, dx, cx, t0, t1):
    """For rows t0 <= t < t1 and each block b of 32 values: dx = max|x| / levels, qx = rint(x / dx) in
    -levels..levels (0 for an all-zero block), cx = -offset * sum(qx); dx and cx in groups of INT_MR tokens."""
    n_blocks = dx.shape[1] // INT_MR
    block = x.shape[1] // n_blocks if n_blocks else QB  # 32, from the sizes: LLVM then vectorizes the loops
    for t in range(t0, t1):
        g, a = t // INT_MR, t % INT_MR
        dg, cg = dx[g], cx[g]
        for b in range(n_blocks):
            xb, qb = x[t, block * b:block * (b + 1)], qx[t, block * b:block * (b + 1)]
            top = np.int32(0)  # max |x| through the bits: for |x| they order as the floats do
            for i in range(block):
                top = max(top, bits_of(xb[i]) & np.int32(0x7FFFFFFF))
            amax = f32_from_bits(top)
            inverse = levels / amax if amax > np.float32(0.0) else np.float32(0.0)
            total = np.int32(0)
            for i in range(block):
                v = np.int32(np.rint(xb[i] * inverse))
                qb[i] = v
                total += v
            dg[b * INT_MR + a] = amax / levels
            cg[b * INT_MR + a] = -offset * total


@jit(types.void(f32_rows_ro, types.float32, types.int32, i16_rows, f32_rows, i32_rows, types.int64), parallel=True,
     calls=(_quantize_rows,))
def _quantize_parallel(x, levels, offset, qx, dx, cx, per_task):
    for task in prange(-(-x.shape[0] // per_task)):
        _quantize_rows(x, levels, offset, qx, dx, cx, task * per_task, min(x.shape[0], (task + 1) * per_task))


def quantize_activations(x, offset=0):
    """x (n, k) float32 -> (qx (n, k) int16, dx float32, cx int32) as the tile reads them. dx and cx come in
    groups of INT_MR tokens, a tile's, one row a group: (groups, k / 32 * INT_MR), [block][token]."""
    n, k = x.shape
    groups = -(-n // INT_MR)
    qx = np.empty((n, k), np.int16)
    dx = np.empty((groups, k // QB * INT_MR), np.float32)
    cx = np.empty((groups, k // QB * INT_MR), np.int32)
    split(_quantize_rows, _quantize_parallel, n, QUANTIZE_ROWS, x, np.float32(LEVELS), np.int32(offset), qx, dx, cx)
    return qx, dx, cx


def activation_rows(grouped, n):
    """quantize_activations' dx or cx as rows, (n, k / 32)."""
    groups = grouped.shape[0]
    return grouped.reshape(groups, -1, INT_MR).transpose(0, 2, 1).reshape(groups * INT_MR, -1)[:n]


@inner()
def claim_panels(counter, task_starts, group):
    """Claim the next task: (j, p0), weight j's `group` panels from panel p0 on; j = -1 when none is left.
    Tasks task_starts[j] .. task_starts[j + 1] are weight j's."""
    task = claim(counter)
    if task >= task_starts[task_starts.size - 1]:
        return -1, 0
    j = 0
    while task >= task_starts[j + 1]:
        j += 1
    return j, (task - task_starts[j]) * group


@inner()
def _tile(m, qx, dx, cx, t, panel, scales, n_blocks, out, ot, oc, nibbles):
    if nibbles:  # a literal in each branch: the vector tile is compiled for its panel layout
        int_tile(m, qx, dx, cx, t, panel, scales, n_blocks, out, ot, oc, True)
    else:
        int_tile(m, qx, dx, cx, t, panel, scales, n_blocks, out, ot, oc, False)


@jit(types.void(i16_rows_ro, f32_rows_ro, i32_rows_ro, u8_panels, u16_scales, f32_outputs, i64_vec, types.int64,
                types.boolean, i64_counter))
def _int_worker(qx, dx, cx, panels, scales, ys, task_starts, group, nibbles, counter):
    """Claim tasks until none are left; tasks task_starts[j] .. task_starts[j + 1] are weight j's, `group` panels
    each; a panel at a time, every token against it (the panel stays in L1), INT_MR tokens a tile, into ys[j]."""
    n = qx.shape[0]
    n_blocks = dx.shape[1] // INT_MR
    spill = np.empty((INT_MR, NR), np.float32)
    while True:
        j, p0 = claim_panels(counter, task_starts, group)
        if j < 0:
            break
        y = ys[j]
        rows = y.shape[1]
        p1 = min(panels[j].shape[0], p0 + group)
        for p in range(p0, p1):
            r0 = p * NR
            nr = min(NR, rows - r0)
            for t in range(0, n, INT_MR):
                m = min(INT_MR, n - t)
                out, ot, oc = (y, t, r0) if nr == NR else (spill, 0, 0)
                _tile(m, qx, dx, cx, t, panels[j][p], scales[j][p], n_blocks, out, ot, oc, nibbles)
                if nr < NR:
                    y[t:t + m, r0:r0 + nr] = spill[:m, :nr]


@jit(types.void(i16_rows_ro, f32_rows_ro, i32_rows_ro, u8_panels, u16_scales, f32_outputs, i64_vec, types.int64,
                types.boolean, types.int64), parallel=True, calls=(_int_worker,))
def _int_parallel(qx, dx, cx, panels, scales, ys, task_starts, group, nibbles, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _int_worker(qx, dx, cx, panels, scales, ys, task_starts, group, nibbles, counter)


class LaunchPlan:
    """What a call over one group of packed weights passes its kernel besides x: the same every call, so built
    once and kept by the first weight (~8 us of Python a call, 96 calls a query)."""

    __slots__ = ("others", "k", "rows", "n_panels", "panels", "scales", "task_starts", "group", "nibbles", "threads")


def launch_plan(packed: list[PackedWeight], qtype: int) -> LaunchPlan:
    """The plan for `packed` (1 to SHARED weights). It holds the other weights, so the ids in its key stay theirs
    while it exists; Numba's thread count is part of the key (it can change between calls)."""
    key = (tuple(id(w) for w in packed[1:]), qtype, numba.get_num_threads())
    plan = packed[0].launches.get(key)
    if plan is not None:
        return plan
    for w in packed:
        if w.qtype != qtype:
            raise ValueError(f"a weight packed as {quant_type(w.qtype).label}, multiplied as {quant_type(qtype).label}")
    k = packed[0].k
    if any(w.k != k for w in packed):
        raise ValueError(f"weights sharing activations need rows of one length; got {[w.k for w in packed]} values")
    plan = LaunchPlan()
    plan.others, plan.k, plan.rows = packed[1:], k, [w.rows for w in packed]
    plan.n_panels = sum(w.panels.shape[0] for w in packed)
    plan.threads = threads_for(plan.n_panels)
    plan.group = max(1, min(4, plan.n_panels // (4 * plan.threads)))  # up to 4 panels a task, 4 tasks a thread
    padding = SHARED - len(packed)
    plan.panels = tuple(w.panels for w in packed) + (np.empty((0, packed[0].panels.shape[1]), np.uint8),) * padding
    plan.scales = tuple(w.scales for w in packed) + (np.empty((0, packed[0].scales.shape[1]), np.uint16),) * padding
    starts = [0]
    for p in plan.panels:
        starts.append(starts[-1] - (-p.shape[0] // plan.group))
    plan.task_starts = np.array(starts, np.int64)
    plan.nibbles = packed[0].layout == PACK_NIBBLES
    packed[0].launches[key] = plan
    return plan


def matmul_int_shared(x, weights, qtype) -> list[np.ndarray]:
    """[x @ W.T for W in weights]: up to SHARED Q8_0 / Q4_0 weights of one type, packed (pack_int; a stored
    weight is packed first, each call), sharing one quantized x and one parallel launch."""
    if int(qtype) not in INT_OFFSET:
        raise ValueError(f"the integer matmul takes Q8_0 and Q4_0 weights, not {quant_type(qtype).label}")
    if not 1 <= len(weights) <= SHARED:
        raise ValueError(f"the integer matmul takes 1 to {SHARED} weights at once, not {len(weights)}")
    packed = [w if isinstance(w, PackedWeight) else pack_int(w, qtype) for w in weights]
    plan = launch_plan(packed, int(qtype))
    x = activations(x, plan.k, quant_type(qtype).label)
    n = x.shape[0]
    ys = [np.empty((n, rows), np.float32) for rows in plan.rows]
    if n == 0 or plan.n_panels == 0:
        return ys
    qx, dx, cx = quantize_activations(x, INT_OFFSET[int(qtype)])
    outputs = tuple(ys) + (np.empty((n, 0), np.float32),) * (SHARED - len(ys))
    launch(_int_worker, _int_parallel, plan.threads, qx, dx, cx, plan.panels, plan.scales, outputs, plan.task_starts,
           plan.group, plan.nibbles)
    return ys


def matmul_int(x, w, qtype) -> np.ndarray:
    """matmul_int_shared with one weight."""
    return matmul_int_shared(x, [w], qtype)[0]


KERNELS = (_quantize_rows, _quantize_parallel, _int_worker, _int_parallel)  # what matmul_int(_shared) launch
