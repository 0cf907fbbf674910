"""An independent EmbeddingGemma forward pass, for tests only.

Written from Hugging Face's Gemma 3 code, straight off a sentence-transformers checkpoint folder
(HF tensor names, norms *not* folded, `1 + w` applied here), in float64, one sequence at a time
with an explicit attention mask. It shares nothing with edgegemma's model code, so agreement
between the two means something.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


class HFReference:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.cfg = json.loads((folder / "config.json").read_text())
        self.w = {k: v.astype(np.float64) for k, v in load_file(folder / "model.safetensors").items()}
        self.dense = [load_file(folder / d / "model.safetensors")["linear.weight"].astype(np.float64) for d in ("2_Dense", "3_Dense")]

    def _norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg["rms_norm_eps"]) * (1.0 + w)

    def _rope(self, x, base):
        # x (L, heads, d): Hugging Face's rotate_half over the duplicated frequency table.
        length, _, d = x.shape
        inv = 1.0 / base ** (np.arange(0, d, 2) / d)
        freqs = np.arange(length)[:, None] * inv[None, :]
        emb = np.concatenate([freqs, freqs], axis=-1)[:, None, :]
        rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
        return x * np.cos(emb) + rotated * np.sin(emb)

    def embed(self, ids: list[int]) -> np.ndarray:
        c, w = self.cfg, self.w
        n_heads, n_kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        length = len(ids)
        x = w["embed_tokens.weight"][ids] * np.sqrt(c["hidden_size"])
        # Bidirectional; sliding layers: HF's window (w // 2 + 1), strict inequality.
        dist = np.abs(np.arange(length)[:, None] - np.arange(length)[None, :])
        for i in range(c["num_hidden_layers"]):
            p = f"layers.{i}."
            sliding = c["layer_types"][i] == "sliding_attention"
            allowed = dist < (c["sliding_window"] // 2 + 1) if sliding else np.ones_like(dist, bool)
            base = c["rope_local_base_freq"] if sliding else c["rope_theta"]
            h = self._norm(x, w[p + "input_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(length, n_heads, d)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(length, n_kv, d)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(length, n_kv, d)
            q = self._rope(self._norm(q, w[p + "self_attn.q_norm.weight"]), base)
            k = self._rope(self._norm(k, w[p + "self_attn.k_norm.weight"]), base)
            heads = []
            for hq in range(n_heads):
                kv = hq // (n_heads // n_kv)
                s = q[:, hq] @ k[:, kv].T * c["query_pre_attn_scalar"] ** -0.5
                s = np.where(allowed, s, -np.inf)
                s = np.exp(s - s.max(axis=1, keepdims=True))
                heads.append((s / s.sum(axis=1, keepdims=True)) @ v[:, kv])
            a = np.concatenate(heads, axis=-1) @ w[p + "self_attn.o_proj.weight"].T
            x = x + self._norm(a, w[p + "post_attention_layernorm.weight"])
            h = self._norm(x, w[p + "pre_feedforward_layernorm.weight"])
            g = h @ w[p + "mlp.gate_proj.weight"].T
            g = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
            f = (g * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
            x = x + self._norm(f, w[p + "post_feedforward_layernorm.weight"])
        x = self._norm(x, w["norm.weight"])
        out = x.mean(axis=0) @ self.dense[0].T @ self.dense[1].T
        return out / np.linalg.norm(out)
