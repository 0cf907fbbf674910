"""The steps of an attention task that both designs share (the float one in self_attention, the AMX one in
amx_attention): which queries and keys a task takes, its queries gathered and scaled, the softmax of its scores,
and its output rows scattered back. A task is one key/value head and ATTENTION_BLOCK query positions.
"""
from __future__ import annotations

import numpy as np

from .jit import FAST, inner
from .scalar import exp, max_of

ATTENTION_BLOCK = 32  # query positions per attention task: with 3 heads a group, 96 rows = 8 micro-tiles


@inner(fastmath=FAST)
def _softmax_unscaled(s):
    """s = e^(s - max s), in place; returns 1 / sum(s), the factor that would make it a softmax (attention
    applies it to the output row, d values, instead of to the row of scores, one per key)."""
    top = max_of(s)
    total = np.float32(0.0)
    for j in range(s.size):
        e = exp(s[j] - top)
        s[j] = e
        total += e
    return np.float32(1.0) / total


@inner()
def attention_task(task, n_blocks, length, radius):
    """Attention task -> (key/value head h, its positions start .. stop, the keys lo .. hi they can see)."""
    h, block = task // n_blocks, task % n_blocks
    start = block * ATTENTION_BLOCK
    stop = min(length, start + ATTENTION_BLOCK)
    lo, hi = (0, length) if radius < 0 else (max(0, start - radius), min(length, stop + radius))
    return h, start, stop, lo, hi


@inner(fastmath=FAST)
def gather_queries(q, h, group, start, stop, scale, queries):
    """A task's rows of queries: (position, head of h's group) pairs, the scale folded in."""
    for p in range(start, stop):
        for g in range(group):
            src, dst = q[p, h * group + g], queries[(p - start) * group + g]
            for i in range(src.size):
                dst[i] = src[i] * scale


@inner(fastmath=FAST)
def softmax_rows(scores, n_rows, start, group, lo, hi, radius, first, width, inverse):
    """Each row's softmax (_softmax_unscaled, 1 / sum into inverse) over the keys its position can see, the rest
    of its `width` columns 0; column j holds key first + j."""
    for row in range(n_rows):
        pos = start + row // group
        a, b = (lo, hi) if radius < 0 else (max(lo, pos - radius), min(hi, pos + radius + 1))
        a, b = a - first, b - first
        inverse[row] = _softmax_unscaled(scores[row, a:b])
        scores[row, :a] = np.float32(0.0)
        scores[row, b:width] = np.float32(0.0)


@inner(fastmath=FAST)
def scatter_outputs(mixed, inverse, out, h, group, start, stop):
    """A task's rows of weights times values, each times its 1 / sum, into out's (position, head) rows."""
    for p in range(start, stop):
        for g in range(group):
            row = (p - start) * group + g
            src, dst, scale_row = mixed[row], out[p, h * group + g], inverse[row]
            for i in range(dst.size):
                dst[i] = src[i] * scale_row
