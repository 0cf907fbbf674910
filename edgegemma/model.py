"""EmbeddingGemma's forward pass: token ids in, one 768-d sentence vector per sequence out.

A batch is packed: every sequence's tokens sit end to end in one (tokens, hidden) matrix, so the
linear layers run over all of them at once and nothing is computed on padding; only attention
looks at one sequence at a time. Every activation is float32 (fp16 overflows in this model).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import kernels

from .config import Config
from .weights import LayerWeights, Weight, Weights

Trace = Callable[[str, np.ndarray], None]  # receives named intermediates, for layer-by-layer comparisons


def linear(x: np.ndarray, weight: Weight) -> np.ndarray:
    """x @ W.T, with W read block by block where it lies in the file."""
    return kernels.matmul(x, weight.data, weight.qtype)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """Gemma's RMSNorm; the file stores its (1 + w) already folded, as llama.cpp does."""
    mean_square = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    return x / np.sqrt(mean_square + np.float32(eps)) * weight


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x * x * x)))


def rope_table(base: float, head_dim: int, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (max_positions, head_dim / 2) of position × base^(-2i / head_dim)."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate (tokens, heads, head_dim) by position; the halves pair up (Hugging Face's rotate_half)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, radius: int | None,
              block: int = 256) -> np.ndarray:
    """Bidirectional attention of one sequence: q (L, heads, d), k and v (L, kv_heads, d).

    With a radius, token i sees token j only when |i - j| <= radius (the sliding window). Queries go
    in blocks, each against just the keys it can see, so memory stays at block × window.
    """
    length, n_heads, d = q.shape
    group = n_heads // k.shape[1]  # query heads sharing one key/value head
    out = np.empty_like(q)
    for kv_head in range(k.shape[1]):
        heads = slice(kv_head * group, (kv_head + 1) * group)
        keys, values = k[:, kv_head], v[:, kv_head]
        for start in range(0, length, block):
            stop = min(length, start + block)
            lo, hi = (max(0, start - radius), min(length, stop + radius)) if radius is not None else (0, length)
            # Rows are (query position, head) pairs: one matrix product for the whole group.
            queries = q[start:stop, heads].reshape(-1, d)
            scores = (queries @ keys[lo:hi].T) * np.float32(scale)
            if radius is not None:
                pos_q = np.repeat(np.arange(start, stop), group)[:, None]
                pos_k = np.arange(lo, hi)[None, :]
                scores[np.abs(pos_q - pos_k) > radius] = -np.inf
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            out[start:stop, heads] = (scores @ values[lo:hi]).reshape(stop - start, group, d)
    return out


class EmbeddingGemma:
    def __init__(self, config: Config, weights: Weights):
        self.config, self.weights = config, weights
        c = config
        self.rope_local = rope_table(c.rope_local_base_freq, c.head_dim, c.max_position_embeddings)
        self.rope_global = rope_table(c.rope_theta, c.head_dim, c.max_position_embeddings)

    def forward(self, sequences: Sequence[Sequence[int]], trace: Trace | None = None) -> np.ndarray:
        """Token-id sequences -> (batch, hidden) sentence vectors, L2-normalised."""
        c, w = self.config, self.weights
        lengths = [len(s) for s in sequences]
        ids = np.fromiter((t for s in sequences for t in s), dtype=np.int64, count=sum(lengths))
        positions = np.concatenate([np.arange(n) for n in lengths])
        bounds = np.cumsum([0] + lengths)
        note = trace or (lambda name, value: None)

        # Embeddings, scaled by sqrt(hidden) as Gemma does.
        x = kernels.dequantize_rows(w.token_embd.data, w.token_embd.qtype, ids) * np.float32(np.sqrt(c.hidden_size))
        note("embeddings", x)
        for i, layer in enumerate(w.layers):
            x = self._block(i, layer, x, positions, bounds)
            note(f"blk.{i}", x)
        x = rms_norm(x, w.output_norm, c.rms_norm_eps)
        note("output_norm", x)

        # Mean over every token of each sequence (prompt, <bos> and <eos> included).
        pooled = np.add.reduceat(x.astype(np.float64), bounds[:-1], axis=0) / np.asarray(lengths)[:, None]
        pooled = pooled.astype(np.float32)
        note("pooled", pooled)
        # The dense head 768 -> 3072 -> 768 (no bias, no activation), then unit length.
        out = linear(linear(pooled, w.dense_2), w.dense_3)
        note("dense", out)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))

    def _block(self, i: int, layer: LayerWeights, x: np.ndarray, positions: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        c = self.config
        n = x.shape[0]
        sliding = c.is_sliding(i)
        cos, sin = self.rope_local if sliding else self.rope_global
        cos, sin = cos[positions], sin[positions]

        # Attention: norm, project, q/k norms, rotate, attend per sequence, project back, norm, add.
        h = rms_norm(x, layer.attn_norm, c.rms_norm_eps)
        q = linear(h, layer.attn_q).reshape(n, c.num_attention_heads, c.head_dim)
        k = linear(h, layer.attn_k).reshape(n, c.num_key_value_heads, c.head_dim)
        v = linear(h, layer.attn_v).reshape(n, c.num_key_value_heads, c.head_dim)
        q = apply_rope(rms_norm(q, layer.attn_q_norm, c.rms_norm_eps), cos, sin)
        k = apply_rope(rms_norm(k, layer.attn_k_norm, c.rms_norm_eps), cos, sin)
        radius = c.attention_radius if sliding else None
        a = np.empty_like(q)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            a[start:stop] = attention(q[start:stop], k[start:stop], v[start:stop], c.query_pre_attn_scalar ** -0.5, radius)
        h = linear(a.reshape(n, -1), layer.attn_output)
        x = x + rms_norm(h, layer.post_attention_norm, c.rms_norm_eps)

        # Feed-forward: norm, GeGLU (gelu-tanh gate times up), down, norm, add.
        h = rms_norm(x, layer.ffn_norm, c.rms_norm_eps)
        h = linear(gelu_tanh(linear(h, layer.ffn_gate)) * linear(h, layer.ffn_up), layer.ffn_down)
        return x + rms_norm(h, layer.post_ffw_norm, c.rms_norm_eps)
