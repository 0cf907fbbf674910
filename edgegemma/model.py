"""EmbeddingGemma's forward pass: token ids in, one 768-d sentence vector per sequence out.

A batch is packed: every sequence's tokens sit end to end in one (tokens, hidden) matrix, so the
linear layers run over all of them at once and nothing is computed on padding; only attention
looks at one sequence at a time. Every activation is float32 (fp16 overflows in this model).
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np

import edgegemma.kernels as kernels
from edgegemma.kernels.blocks import row_indices

from .config import Config
from .weights import LayerWeights, Weight, Weights

MAX_TOKENS = 2048  # tokens through the layers at once (the model's context: a longer sequence cannot occur)

Trace = Callable[[str, np.ndarray], None]  # receives named intermediates, for layer-by-layer comparisons


def linear(x: np.ndarray, weight: Weight, long_batch: bool = False) -> np.ndarray:
    """x @ W.T, with W's blocks as the kernels packed them at load (or where they lie in the file); long_batch:
    x is from sequences of at least kernels.LONG_SEQUENCE tokens (which may take a faster design)."""
    return kernels.matmul(x, weight.packed, weight.qtype, long_batch)


def linears(x: np.ndarray, *weights: Weight, long_batch: bool = False) -> list[np.ndarray]:
    """[linear(x, W, long_batch) for W in weights], the kernels sharing their work on x."""
    return kernels.matmuls(x, [(w.packed, w.qtype) for w in weights], long_batch)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Gemma's RMSNorm, x / sqrt(mean(x²) + eps) · weight; the file stores its (1 + w) already folded, as llama.cpp does."""
    return kernels.rms_norm(x, weight, eps)


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) · up, into gate; gelu_tanh(x) = 0.5 · x · (1 + tanh(sqrt(2/π) · (x + 0.044715 · x³)))."""
    return kernels.gelu_tanh_mul(gate, up)


def rope_table(base: float, head_dim: int, max_positions: int) -> tuple["RopeRows", "RopeRows"]:
    """cos and sin (max_positions, head_dim / 2) of position × base^(-2i / head_dim), indexed by positions."""
    rope = _Rope(base, head_dim, max_positions)
    return RopeRows(rope, 0), RopeRows(rope, 1)


class _Rope:
    """The cos and sin tables, their rows computed as far as a position yet asked for: a short text needs a few
    of the 2,048 rows (all of them cost ~20 ms of a process's start). Each value is the float64 cos or sin of
    position × frequency, rounded to float32, however far the table has grown."""

    def __init__(self, base: float, head_dim: int, max_positions: int):
        self.inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
        self.max_positions = max_positions
        self.tables = (np.empty((0, head_dim // 2), np.float32),) * 2
        self._lock = threading.Lock()  # threads sharing a model grow it one at a time

    def grow(self, rows: int) -> None:
        if rows <= len(self.tables[0]):
            return
        with self._lock:
            have = len(self.tables[0])
            rows = min(self.max_positions, max(rows, 2 * have, 64))
            angles = np.arange(have, rows, dtype=np.float64)[:, None] * self.inv_freq[None, :]
            self.tables = tuple(np.concatenate([t, f(angles).astype(np.float32)])
                                for t, f in zip(self.tables, (np.cos, np.sin)))


class RopeRows:
    """One of the tables (0: cos, 1: sin); `table[positions]` is its rows for those positions."""

    def __init__(self, rope: _Rope, which: int):
        self.rope, self.which = rope, which

    def __getitem__(self, positions) -> np.ndarray:
        positions = np.asarray(positions)
        if positions.size:
            self.rope.grow(int(positions.max()) + 1)
        return self.rope.tables[self.which][positions]

    def __len__(self) -> int:
        return self.rope.max_positions


def norm_and_rotate(x: np.ndarray, weight: np.ndarray, eps: float, cos: np.ndarray, sin: np.ndarray,
                    out: np.ndarray) -> np.ndarray:
    """The q or k norm (RMSNorm over each head), then RoPE on (tokens, heads, head_dim), into out; the halves
    pair up (Hugging Face's rotate_half)."""
    return kernels.rms_norm_rope(x, weight, eps, cos, sin, out=out)


def add_normed(x: np.ndarray, y: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x += rms_norm(y): Gemma 3 norms each sublayer's output before the residual add. In place."""
    return kernels.add_rms_norm(x, y, weight, eps)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, radius: int | None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Bidirectional attention of one sequence: q (L, heads, d), k and v (L, kv_heads, d), query heads sharing
    key/value heads in groups; softmax(scale · q·k) · v.

    With a radius, token i sees token j only when |i - j| <= radius (the sliding window). Queries go in
    blocks, each against just the keys it can see, so memory stays at block × window. `out` may be q itself.
    """
    return kernels.attention(q, k, v, scale, radius, out)


class EmbeddingGemma:
    def __init__(self, config: Config, weights: Weights):
        self.config, self.weights = config, weights
        c = config
        self.rope_local = rope_table(c.rope_local_base_freq, c.head_dim, c.max_position_embeddings)
        self.rope_global = rope_table(c.rope_theta, c.head_dim, c.max_position_embeddings)

    def forward(self, sequences: Sequence[Sequence[int]], trace: Trace | None = None) -> np.ndarray:
        """Token-id sequences -> (batch, hidden) sentence vectors, L2-normalised.

        Sequences of at least kernels.LONG_SEQUENCE tokens go through the layers apart from shorter ones, and at
        most MAX_TOKENS tokens at once (a longer batch runs as several):
        the activations take ~14 KiB a token at their peak (~17 with the numpy backend, which takes whole
        batches), so this bounds them at ~28 MiB (~35) whatever the batch size, and costs nothing in speed
        (a layer's weights are re-read once per 2,048 tokens)."""
        lengths = [len(s) for s in sequences]
        if trace is not None:
            return self._forward(sequences, trace, long_batch=self._long(min(lengths, default=0)))
        # Long and short sequences go separately: the kernels may multiply long ones another way (rounded
        # differently), and a text's embedding must not depend on what it is batched with.
        out = np.empty((len(sequences), self.config.hidden_size), np.float32)
        for long_batch in (False, True):
            chosen = [i for i, n in enumerate(lengths) if self._long(n) == long_batch]
            for group in _batches(chosen, lengths, MAX_TOKENS):
                out[group] = self._forward([sequences[j] for j in group], None, long_batch)
        return out

    @staticmethod
    def _long(length: int) -> bool:
        return 0 < kernels.LONG_SEQUENCE <= length

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """The rows of the embedding table for token ids `ids`, as float32 (len(ids), hidden), unscaled."""
        w = self.weights
        e, read = w.token_embd, w.read_token_rows
        if read is None:
            x = kernels.dequantize_rows(e.data, e.qtype, ids)
        else:
            rows, inverse = np.unique(row_indices(ids, e.shape[0]), return_inverse=True)
            x = kernels.dequantize_rows(read(rows), e.qtype, inverse.reshape(-1))
        if len(w.fine_token_ids):  # more of the used rows, stored in a finer block type beside a 4-bit table
            at = np.searchsorted(w.fine_token_ids, ids).clip(max=len(w.fine_token_ids) - 1)
            hit = w.fine_token_ids[at] == ids
            if hit.any():
                rows, inverse = np.unique(at[hit], return_inverse=True)
                x[hit] = kernels.dequantize_rows(w.read_fine_token_rows(rows), w.fine_token_type, inverse.reshape(-1))
        if len(w.exact_token_ids):  # the most used rows, stored exact beside a 4-bit table
            at = np.searchsorted(w.exact_token_ids, ids).clip(max=len(w.exact_token_ids) - 1)
            hit = w.exact_token_ids[at] == ids
            x[hit] = w.exact_token_rows[at[hit]]
        return x

    def _forward(self, sequences: Sequence[Sequence[int]], trace: Trace | None, long_batch: bool) -> np.ndarray:
        c, w = self.config, self.weights
        lengths = [len(s) for s in sequences]
        ids = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=sum(lengths))
        positions = np.concatenate([np.arange(n) for n in lengths])
        bounds = np.cumsum([0] + lengths)
        note = trace or (lambda name, value: None)
        # Position-wise steps (norms, projections, feed-forward) go as many tokens at a time as the kernels work
        # best with (512 with Numba: faster than the whole batch, and their intermediates stay small).
        # A trace records whole intermediates.
        chunk = kernels.MATMUL_ROWS if trace is None else max(1, len(ids))

        # Embeddings, scaled by sqrt(hidden) as Gemma does.
        x = self.embed(ids)
        x *= np.float32(np.sqrt(c.hidden_size))
        note("embeddings", x)
        for i, layer in enumerate(w.layers):
            x = self._block(i, layer, x, positions, bounds, note, chunk, long_batch)  # x is updated in place
            note(f"blk.{i}", x)
        x = rms_norm(x, w.output_norm, c.rms_norm_eps)
        note("output_norm", x)

        # Mean over every token of each sequence (prompt, <bos> and <eos> included), summed in float64
        # (cast on the fly: no float64 copy of x).
        pooled = np.add.reduceat(x, bounds[:-1], axis=0, dtype=np.float64) / np.asarray(lengths)[:, None]
        del x
        pooled = pooled.astype(np.float32)
        note("pooled", pooled)
        # The dense head 768 -> 3072 -> 768 (no bias, no activation), then unit length.
        h = linear(pooled, w.dense_2)
        note("dense_2", h)
        out = linear(h, w.dense_3)
        note("dense", out)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))

    def _block(self, i: int, layer: LayerWeights, x: np.ndarray, positions: np.ndarray, bounds: np.ndarray,
               note: Trace, chunk: int, long_batch: bool) -> np.ndarray:
        c = self.config
        n, eps = x.shape[0], c.rms_norm_eps
        sliding = c.is_sliding(i)
        cos, sin = self.rope_local if sliding else self.rope_global
        heads, kv_heads, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        # The position-wise steps go `chunk` tokens at a time and x is added to in place: x, q, k and v are the
        # only whole-batch arrays, attention writes over q, and in 512-token steps the activations' peak is
        # ~14 KiB a token (28 MiB at 2,048 tokens, tracemalloc).

        # Attention: norm, project, q/k norms, rotate; attend per sequence; project back, norm, add.
        block = np.empty(n * (heads + 2 * kv_heads) * d, np.float32)  # q, k and v in one allocation
        q = block[:n * heads * d].reshape(n, heads, d)
        k, v = block[n * heads * d:].reshape(2, n, kv_heads, d)
        for a, b in _spans(n, chunk):
            h = rms_norm(x[a:b], layer.attn_norm, eps)
            note(f"blk.{i}.attn_norm", h)  # the input of q, k and v
            qc, kc, vc = linears(h, layer.attn_q, layer.attn_k, layer.attn_v, long_batch=long_batch)
            rotate = cos[positions[a:b]], sin[positions[a:b]]
            norm_and_rotate(qc.reshape(b - a, heads, d), layer.attn_q_norm, eps, *rotate, out=q[a:b])
            norm_and_rotate(kc.reshape(b - a, kv_heads, d), layer.attn_k_norm, eps, *rotate, out=k[a:b])
            v[a:b] = vc.reshape(b - a, kv_heads, d)
        radius = c.attention_radius if sliding else None
        for start, stop in zip(bounds[:-1], bounds[1:]):  # each sequence's output replaces its queries
            attention(q[start:stop], k[start:stop], v[start:stop], c.query_pre_attn_scalar ** -0.5, radius, out=q[start:stop])
        mixed = q.reshape(n, heads * d)
        note(f"blk.{i}.attn_out_in", mixed)
        for a, b in _spans(n, chunk):
            add_normed(x[a:b], linear(mixed[a:b], layer.attn_output, long_batch), layer.post_attention_norm, eps)
        del block, q, k, v, mixed

        # Feed-forward: norm, GeGLU (gelu-tanh gate times up), down, norm, add.
        for a, b in _spans(n, chunk):
            h = rms_norm(x[a:b], layer.ffn_norm, eps)
            note(f"blk.{i}.ffn_norm", h)  # the input of gate and up
            g, up = linears(h, layer.ffn_gate, layer.ffn_up, long_batch=long_batch)
            g = geglu(g, up)
            note(f"blk.{i}.ffn_down_in", g)
            add_normed(x[a:b], linear(g, layer.ffn_down, long_batch), layer.post_ffw_norm, eps)
        return x


def _batches(indices: list[int], lengths: list[int], limit: int):
    """`indices` in order, in runs whose lengths sum to at most `limit` (a longer sequence alone)."""
    group, total = [], 0
    for i in indices:
        if group and total + lengths[i] > limit:
            yield group
            group, total = [], 0
        group.append(i)
        total += lengths[i]
    if group:
        yield group


def _spans(n: int, chunk: int):
    """[0, n) in consecutive spans of at most `chunk`."""
    return ((a, min(n, a + chunk)) for a in range(0, n, chunk))
