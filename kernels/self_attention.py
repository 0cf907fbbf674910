"""Bidirectional softmax attention of one sequence, grouped heads, optional band |i - j| <= radius: per task,
scores, softmax and mix with the outer-product tile, in float32; sequences long enough for them take the AMX
tiles where there are some (amx_attention).
"""
from __future__ import annotations

import numpy as np
from numba import prange, types

from . import amx_attention
from .attention_steps import ATTENTION_BLOCK, attention_task, gather_queries, scatter_outputs, softmax_rows
from .blocks import check_in_place
from .jit import FAST, compiled, f32_3d, f32_3d_ro, i64_counter, jit, launch, threads_for
from .outer import MR, NR, outer_tile, pack_panel
from .scalar import claim


@jit(types.void(f32_3d_ro, f32_3d_ro, f32_3d, f32_3d))
def _pack_keys_values(k, v, keys, values):
    """keys[h, p] = keys p*NR ... p*NR + NR - 1 of head h packed as the outer kernel reads W (the NR keys' i-th
    features side by side), values[h, c] = features c*NR ... of every key, NR floats a key; zeros beyond.
    Only the padding is zeroed, and whole panels are transposed in registers."""
    length, n_kv, d = k.shape
    whole = length // NR  # panels of NR keys: transposed in registers (_pack), the rest key by key
    keys[:, whole:] = np.float32(0.0)  # only what no key fills
    if d % NR:
        values[:] = np.float32(0.0)
    else:
        values[:, :, length * NR:] = np.float32(0.0)
    for h in range(n_kv):
        for p in range(whole):
            pack_panel(k[p * NR:(p + 1) * NR, h], keys[h, p])
        for j in range(whole * NR, length):
            src, dst = k[j, h], keys[h, j // NR]
            for i in range(d):
                dst[i * NR + j % NR] = src[i]
        for j in range(length):
            for c in range(values.shape[1]):
                f1 = min(d, (c + 1) * NR)
                src, dst = v[j, h, c * NR:f1], values[h, c, j * NR:j * NR + f1 - c * NR]
                for f in range(src.size):
                    dst[f] = src[f]


@jit(types.void(f32_3d_ro, f32_3d_ro, f32_3d_ro, types.float32, types.int64, f32_3d, types.int64, i64_counter),
      fastmath=FAST)
def _attention_worker(q, keys, values, scale, radius, out, n_tasks, counter):
    """Claim tasks (key/value head h, block of query positions) until none are left. For one task: its queries
    (positions x the heads sharing h) times the keys they can see, softmax per row, times the values; both
    products by the outer-product kernel, the packed keys and values standing in for W. The softmax's division
    by its sum is applied to the output row (d values) instead of the scores (one per key)."""
    length, n_heads, d = q.shape
    n_kv = keys.shape[0]
    group = n_heads // n_kv
    n_blocks = (length + ATTENTION_BLOCK - 1) // ATTENTION_BLOCK
    reach = length if radius < 0 else min(length, ATTENTION_BLOCK + 2 * radius)
    rows = ATTENTION_BLOCK * group
    queries = np.empty((rows, d), np.float32)
    scores = np.empty((rows, min(keys.shape[1], reach // NR + 2) * NR), np.float32)
    mixed = np.empty((rows, values.shape[1] * NR), np.float32)
    inverse = np.empty(rows, np.float32)  # each row's 1 / sum of its softmax's exponentials
    while True:
        task = claim(counter)
        if task >= n_tasks:
            break
        h, start, stop, lo, hi = attention_task(task, n_blocks, length, radius)
        p0, p1 = lo // NR, (hi + NR - 1) // NR  # the panels of keys holding [lo, hi)
        n_rows, width = (stop - start) * group, (p1 - p0) * NR
        gather_queries(q, h, group, start, stop, scale, queries)
        for p in range(p0, p1):
            for t in range(0, n_rows, MR):
                outer_tile(min(MR, n_rows - t), queries, t, keys[h, p], d, scores, t, (p - p0) * NR)
        softmax_rows(scores, n_rows, start, group, lo, hi, radius, p0 * NR, width, inverse)
        for c in range(values.shape[1]):
            panel = values[h, c, p0 * NR * NR:]
            for t in range(0, n_rows, MR):
                outer_tile(min(MR, n_rows - t), scores, t, panel, width, mixed, t, c * NR)
        scatter_outputs(mixed, inverse, out, h, group, start, stop)


@jit(types.void(f32_3d_ro, f32_3d_ro, f32_3d_ro, types.float32, types.int64, f32_3d, types.int64, types.int64),
      parallel=True, calls=(_attention_worker,))
def _attention_parallel(q, keys, values, scale, radius, out, n_tasks, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _attention_worker(q, keys, values, scale, radius, out, n_tasks, counter)


def attention(q, k, v, scale, radius, out=None) -> np.ndarray:
    """Bidirectional softmax attention of one sequence: q (L, heads, d), k and v (L, kv_heads, d); query heads
    share key/value heads in equal groups. softmax(scale q.k) over the keys, times the values; with a radius,
    position i sees position j only when |i - j| <= radius. Into `out` (q's shape) when given, which may be q
    itself: a task copies its queries before it writes their rows, and no other task reads them."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    k, v = np.ascontiguousarray(k, dtype=np.float32), np.ascontiguousarray(v, dtype=np.float32)
    length, _, d = q.shape
    if out is None:
        out = np.empty_like(q)
    check_in_place(out, q)
    if length == 0:
        return out
    radius = -1 if radius is None else int(radius)
    if amx_attention.takes(length, d):
        return amx_attention.attention(q, k, v, scale, radius, out)
    n_kv = k.shape[1]
    keys = np.empty((n_kv, -(-length // NR), d * NR), np.float32)
    values = np.empty((n_kv, -(-d // NR), keys.shape[1] * NR * NR), np.float32)
    compiled(_pack_keys_values)(k, v, keys, values)
    n_tasks = n_kv * -(-length // ATTENTION_BLOCK)
    launch(_attention_worker, _attention_parallel, threads_for(n_tasks), q, keys, values, np.float32(scale), radius, out,
           n_tasks)
    return out


KERNELS = (_pack_keys_values, _attention_worker, _attention_parallel)  # what attention launches
