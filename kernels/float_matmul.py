"""The float designs of y = x @ W.T: W's rows decoded to float32 a panel at a time (decode_row), multiplied in
float32 with float32 sums. They take every block type of blocks.QUANT_TYPES (K-quants included), one decoder
per type in decode.py, the rest generic.

    matmul_dot(x, w, qtype)     tasks of (32 rows, up to 264 tokens), 4 rows x 6 tokens dot products: small n
    matmul_outer(x, w, qtype)   tasks of NR decoded rows packed once, times every token by outer_tile: larger n

Threads claim tasks from a shared counter (jit.launch), so a descheduled thread costs one task, not half the work.
"""
from __future__ import annotations

import numpy as np
from numba import prange, types

from .blocks import activations, quant_type, weight_bytes
from .decode import decode_row
from .jit import FAST, f32_rows, f32_rows_ro, i64_counter, inner, jit, launch, threads_for, u8_rows
from .outer import MR, NR, outer_tile, pack_panel
from .scalar import claim

PANEL_ROWS = 32  # rows of W a dot-design task decodes: 96 KiB of float32 at k=768, in L2 while tokens stream by
TASK_TOKENS = 264  # tokens per dot-design task at most (a multiple of six); their rows of x: 0.8 MiB at k=768
# Both designs' kernels: (qtype, x, W, y, a task-size parameter, n_tasks, then a counter or the thread count).
_WORKER = types.void(types.int64, f32_rows_ro, u8_rows, f32_rows, types.int64, types.int64, i64_counter)
_PARALLEL = types.void(types.int64, f32_rows_ro, u8_rows, f32_rows, types.int64, types.int64, types.int64)


@inner(fastmath=FAST, inline="always")
def _fma4(v, u0, u1, u2, u3, a0, a1, a2, a3):
    """(a0 + v u0, ..., a3 + v u3): one token's value times four rows' values, added to its four sums."""
    return a0 + v * u0, a1 + v * u1, a2 + v * u2, a3 + v * u3


@inner(fastmath=FAST)
def _dot_4x6(x, t, xo, w, r, wo, k, y, yt, yc):
    """Four rows of W times six tokens: 24 running sums, each a vector over i, so ten loads feed 24 FMAs
    (LLVM keeps the sums in 24 zmm registers; 4x4 left the load ports the bottleneck at 8 loads per 16 FMAs)."""
    x0, x1, x2, x3, x4, x5 = x[t, xo:xo + k], x[t + 1, xo:xo + k], x[t + 2, xo:xo + k], x[t + 3, xo:xo + k], x[t + 4, xo:xo + k], x[t + 5, xo:xo + k]
    w0, w1, w2, w3 = w[r, wo:wo + k], w[r + 1, wo:wo + k], w[r + 2, wo:wo + k], w[r + 3, wo:wo + k]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = np.float32(0.0)
    for i in range(k):
        u0, u1, u2, u3 = w0[i], w1[i], w2[i], w3[i]
        a00, a01, a02, a03 = _fma4(x0[i], u0, u1, u2, u3, a00, a01, a02, a03)
        a10, a11, a12, a13 = _fma4(x1[i], u0, u1, u2, u3, a10, a11, a12, a13)
        a20, a21, a22, a23 = _fma4(x2[i], u0, u1, u2, u3, a20, a21, a22, a23)
        a30, a31, a32, a33 = _fma4(x3[i], u0, u1, u2, u3, a30, a31, a32, a33)
        a40, a41, a42, a43 = _fma4(x4[i], u0, u1, u2, u3, a40, a41, a42, a43)
        a50, a51, a52, a53 = _fma4(x5[i], u0, u1, u2, u3, a50, a51, a52, a53)
    sums = ((a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23), (a30, a31, a32, a33),
            (a40, a41, a42, a43), (a50, a51, a52, a53))
    for a in range(6):
        for b in range(4):
            y[yt + a, yc + b] = sums[a][b]


@inner(fastmath=FAST)
def _dot_4x1(x, t, xo, w, r, wo, k, y, yt, yc):
    """Four rows of W times one token: the tokens left over after the blocks of six."""
    x0 = x[t, xo:xo + k]
    w0, w1, w2, w3 = w[r, wo:wo + k], w[r + 1, wo:wo + k], w[r + 2, wo:wo + k], w[r + 3, wo:wo + k]
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for i in range(k):
        v = x0[i]
        a0 += v * w0[i]
        a1 += v * w1[i]
        a2 += v * w2[i]
        a3 += v * w3[i]
    y[yt, yc], y[yt, yc + 1], y[yt, yc + 2], y[yt, yc + 3] = a0, a1, a2, a3


@inner(fastmath=FAST)
def _dot_1x1(x, t, xo, w, r, wo, k, y, yt, yc):
    """One row of W times one token: the rows left over after the groups of four."""
    x0, w0 = x[t, xo:xo + k], w[r, wo:wo + k]
    a = np.float32(0.0)
    for i in range(k):
        a += x0[i] * w0[i]
    y[yt, yc] = a


@inner()
def _multiply(x, t0, t1, xo, w, r0, r1, wo, k, y, yt0, yc0):
    """y[yt0 + t - t0, yc0 + r - r0] = x[t, xo:xo + k] . w[r, wo:wo + k] for tokens t in [t0, t1) and rows r in
    [r0, r1). Six tokens (18 KiB at k=768: in L1) meet each group of four rows in turn."""
    t = t0
    while t < t1:
        six = t + 6 <= t1
        r = r0
        while r + 4 <= r1:
            if six:
                _dot_4x6(x, t, xo, w, r, wo, k, y, yt0 + t - t0, yc0 + r - r0)
            else:
                for tt in range(t, t1):
                    _dot_4x1(x, tt, xo, w, r, wo, k, y, yt0 + tt - t0, yc0 + r - r0)
            r += 4
        while r < r1:
            for tt in range(t, min(t + 6, t1)):
                _dot_1x1(x, tt, xo, w, r, wo, k, y, yt0 + tt - t0, yc0 + r - r0)
            r += 1
        t = t + 6 if six else t1


@jit(_WORKER)
def _dot_worker(qtype, x, w, y, chunk, n_tasks, counter):
    """Claim tasks (token chunk c, row panel p) until none are left: decode the panel, multiply the chunk."""
    n, k = x.shape
    rows = w.shape[0]
    n_panels = (rows + PANEL_ROWS - 1) // PANEL_ROWS
    panel = np.empty((PANEL_ROWS, k), np.float32)
    while True:
        task = claim(counter)
        if task >= n_tasks:
            break
        c, p = task // n_panels, task % n_panels  # chunk-major: threads at work share the same rows of x
        r0 = p * PANEL_ROWS
        nr = min(PANEL_ROWS, rows - r0)
        for j in range(nr):
            decode_row(qtype, w[r0 + j], panel[j])
        t0 = c * chunk
        _multiply(x, t0, min(n, t0 + chunk), 0, panel, 0, nr, 0, k, y, t0, r0)


@jit(_PARALLEL, parallel=True, calls=(_dot_worker,))
def _dot_parallel(qtype, x, w, y, chunk, n_tasks, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _dot_worker(qtype, x, w, y, chunk, n_tasks, counter)


@jit(_WORKER)
def _outer_worker(qtype, x, w, y, group, n_tasks, counter):
    """Claim tasks of `group` panels of NR rows until none are left: decode and pack them, then multiply every
    token by them, MR tokens at a time against each panel in turn, so that each token's row of x comes from
    memory once per task and from L1 for the other panels."""
    n, k = x.shape
    rows = w.shape[0]
    decoded = np.zeros((NR, k), np.float32)
    packed = np.empty((group, k * NR), np.float32)
    spill = np.empty((MR, NR), np.float32)  # a last, partial panel's results before they go to y
    while True:
        task = claim(counter)
        if task >= n_tasks:
            break
        first = task * group * NR
        panels = min(group, (rows - first + NR - 1) // NR)
        for q in range(panels):
            r0 = first + q * NR
            nr = min(NR, rows - r0)
            for j in range(nr):
                decode_row(qtype, w[r0 + j], decoded[j])
            decoded[nr:] = np.float32(0.0)
            pack_panel(decoded, packed[q])
        for t in range(0, n, MR):
            m = min(MR, n - t)
            for q in range(panels):
                r0 = first + q * NR
                nr = min(NR, rows - r0)
                if nr == NR:
                    outer_tile(m, x, t, packed[q], k, y, t, r0)
                else:
                    outer_tile(m, x, t, packed[q], k, spill, 0, 0)
                    y[t:t + m, r0:r0 + nr] = spill[:m, :nr]


@jit(_PARALLEL, parallel=True, calls=(_outer_worker,))
def _outer_parallel(qtype, x, w, y, group, n_tasks, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _outer_worker(qtype, x, w, y, group, n_tasks, counter)


def _dot_tasks(n, rows):
    """(threads, (chunk, n_tasks)) of the dot design: token chunks of at most TASK_TOKENS, whole sixes."""
    n_chunks = -(-n // TASK_TOKENS)
    chunk = -(-n // n_chunks)
    chunk += -chunk % 6
    n_tasks = n_chunks * -(-rows // PANEL_ROWS)
    return threads_for(n_tasks), (chunk, n_tasks)


def _outer_tasks(n, rows):
    """(threads, (group, n_tasks)) of the outer design: up to 4 panels a task, while leaving 4 tasks a thread."""
    n_panels = -(-rows // NR)
    threads = threads_for(n_panels)
    group = max(1, min(4, n_panels // (4 * threads)))
    return threads, (group, -(-n_panels // group))


def _run(design, x, w, qtype) -> np.ndarray:
    tasks, worker, parallel = design
    w, rows, k = weight_bytes(w, qtype)
    x = activations(x, k, quant_type(qtype).label)
    y = np.empty((x.shape[0], rows), np.float32)
    if x.shape[0] and rows:
        threads, plan = tasks(x.shape[0], rows)
        launch(worker, parallel, threads, int(qtype), x, w, y, *plan)
    return y


def matmul_dot(x, w, qtype) -> np.ndarray:
    """Design "dot": tasks of (32 rows, up to 264 tokens), decoded rows times tokens by the 4x6 dot kernel."""
    return _run((_dot_tasks, _dot_worker, _dot_parallel), x, w, qtype)


def matmul_outer(x, w, qtype) -> np.ndarray:
    """Design "outer": tasks of NR rows, decoded and packed once, times every token by the outer-product kernel."""
    return _run((_outer_tasks, _outer_worker, _outer_parallel), x, w, qtype)


KERNELS = (_dot_worker, _dot_parallel, _outer_worker, _outer_parallel)  # what matmul_dot / matmul_outer launch
