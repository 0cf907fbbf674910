"""The model's hyper-parameters, with Hugging Face's names, filled from a GGUF file's metadata."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .formats import ARCH, DENSE_2
from .gguf_file import StringArray, shown
from .gguf_spec import Keys, PoolingType

# Bounds on the sizes a file may declare: far above EmbeddingGemma's (and Gemma 3's), low enough that nothing sized
# from them (the RoPE tables: context x head size) can exhaust memory.
MAX_WIDTH = 1 << 16  # hidden, head, feed-forward and dense sizes
MAX_HEADS = 1 << 10
MAX_LAYERS = 1 << 10
MAX_CONTEXT = 1 << 15  # tokens (EmbeddingGemma: 2,048)
MAX_VOCAB = 1 << 24
MAX_ROPE_VALUES = 1 << 23  # context x head size: the RoPE tables take 8 bytes per value (EmbeddingGemma: 2,048 x 256)


@dataclass(frozen=True)
class Config:
    vocab_size: int  # 262,144
    hidden_size: int  # 768
    num_hidden_layers: int  # 24
    num_attention_heads: int  # 3
    num_key_value_heads: int  # 1
    head_dim: int  # 256
    intermediate_size: int  # 1152
    rms_norm_eps: float  # 1e-6
    rope_theta: float  # 1,000,000: full-attention layers
    rope_local_base_freq: float  # 10,000: sliding-window layers
    sliding_window: int  # 512, as configured (Hugging Face attends |i - j| <= 512 // 2)
    sliding_window_pattern: int  # 6: every 6th layer attends to the whole sequence
    max_position_embeddings: int  # 2,048
    query_pre_attn_scalar: float  # 256: scores are scaled by its -1/2 power
    dense_2_features: int  # 3072: the head is 768 -> 3072 -> 768

    def is_sliding(self, layer: int) -> bool:
        """Layers 5, 11, 17, 23 attend globally; the rest through the sliding window (llama.cpp's rule)."""
        return layer % self.sliding_window_pattern < self.sliding_window_pattern - 1

    @property
    def attention_radius(self) -> int:
        """How far apart two tokens of a sliding layer may be: Hugging Face turns the configured
        window w into `w // 2 + 1` and keeps |i - j| strictly below it, i.e. |i - j| <= w // 2."""
        return self.sliding_window // 2

    @classmethod
    def from_metadata(cls, meta: dict) -> "Config":
        """`meta` maps GGUF keys to values; a missing required key raises KeyError with its name, a value this
        model cannot run with (a wrong type, out of range, inconsistent) ValueError naming the key. Every size is
        bounded here, before anything is allocated from it."""

        def get(template: str, default=None, **fields):
            key = template.format(arch=ARCH, **fields)
            if key in meta:
                return key, meta[key]
            if default is None:
                raise KeyError(key)
            return key, default

        def integer(template: str, low: int, high: int, default=None, **fields) -> int:
            key, value = get(template, default, **fields)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"metadata key {key} is {shown(value)}; expected an integer from {low:,} to {high:,}")
            return value

        def positive(template: str, default=None) -> float:
            key, value = get(template, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"metadata key {key} is {shown(value)}; expected a positive number")
            return float(value)

        # The forward pass mean-pools, as the checkpoint does; a file declaring another pooling would give other
        # embeddings in llama.cpp than here. (Absent: llama.cpp's older files, mean by the model's definition.)
        key, pooling = get(Keys.LLM.POOLING_TYPE, int(PoolingType.MEAN))
        if isinstance(pooling, bool) or not isinstance(pooling, int) or pooling != PoolingType.MEAN:
            label = PoolingType(pooling).name if isinstance(pooling, int) and pooling in set(PoolingType) else shown(pooling)
            raise ValueError(f"{key} is {label}; EmbeddingGemma pools by MEAN")
        tokens = meta.get(Keys.Tokenizer.LIST)
        if tokens is not None and not isinstance(tokens, StringArray):
            raise ValueError(f"metadata key {Keys.Tokenizer.LIST} is not a string array")
        heads = integer(Keys.Attention.HEAD_COUNT, 1, MAX_HEADS)
        kv_heads = integer(Keys.Attention.HEAD_COUNT_KV, 1, heads)
        if heads % kv_heads:
            raise ValueError(f"{heads} attention heads do not share {kv_heads} key/value heads evenly")
        head_dim = integer(Keys.Attention.KEY_LENGTH, 2, MAX_WIDTH)
        if head_dim % 2:
            raise ValueError(f"metadata key {Keys.Attention.KEY_LENGTH.format(arch=ARCH)} is {head_dim}; RoPE needs an even head size")
        context = integer(Keys.LLM.CONTEXT_LENGTH, 1, MAX_CONTEXT)
        if context * head_dim > MAX_ROPE_VALUES:
            raise ValueError(f"a context of {context:,} tokens with heads of {head_dim:,} is beyond what edgegemma runs")
        eps = positive(Keys.Attention.LAYERNORM_RMS_EPS)
        return cls(
            vocab_size=len(tokens) if tokens is not None else integer(Keys.LLM.VOCAB_SIZE, 1, MAX_VOCAB),
            hidden_size=integer(Keys.LLM.EMBEDDING_LENGTH, 1, MAX_WIDTH),
            num_hidden_layers=integer(Keys.LLM.BLOCK_COUNT, 1, MAX_LAYERS),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=integer(Keys.LLM.FEED_FORWARD_LENGTH, 1, MAX_WIDTH),
            rms_norm_eps=eps,
            rope_theta=positive(Keys.Rope.FREQ_BASE, 1_000_000.0),
            # llama.cpp hard-codes these two for gemma-embedding; files may carry them.
            rope_local_base_freq=positive(Keys.Rope.FREQ_BASE_SWA, 10_000.0),
            sliding_window_pattern=integer(Keys.Attention.SLIDING_WINDOW_PATTERN, 1, MAX_LAYERS, 6),
            sliding_window=integer(Keys.Attention.SLIDING_WINDOW, 1, MAX_CONTEXT),
            max_position_embeddings=context,
            query_pre_attn_scalar=float(head_dim),  # Gemma 3 300m: equal to head_dim, as llama.cpp assumes
            dense_2_features=integer(Keys.LLM.DENSE_FEAT_OUT_SIZE, 1, MAX_WIDTH, dense=DENSE_2),
        )

