"""The model's hyper-parameters, with Hugging Face's names, filled from a GGUF file's metadata."""
from __future__ import annotations

from dataclasses import dataclass

from gguf import Keys, PoolingType

from .formats import ARCH, DENSE_2


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
        model cannot run with ValueError."""

        def get(template: str, default=None, **fields):
            key = template.format(arch=ARCH, **fields)
            if key in meta:
                return meta[key]
            if default is None:
                raise KeyError(key)
            return default

        # The forward pass mean-pools, as the checkpoint does; a file declaring another pooling would give other
        # embeddings in llama.cpp than here. (Absent: llama.cpp's older files, mean by the model's definition.)
        pooling = get(Keys.LLM.POOLING_TYPE, int(PoolingType.MEAN))
        if pooling != PoolingType.MEAN:
            label = PoolingType(pooling).name if pooling in set(PoolingType) else pooling
            raise ValueError(f"{Keys.LLM.POOLING_TYPE.format(arch=ARCH)} is {label}; EmbeddingGemma pools by MEAN")
        head_dim = int(get(Keys.Attention.KEY_LENGTH))
        return cls(
            vocab_size=len(meta[Keys.Tokenizer.LIST]) if Keys.Tokenizer.LIST in meta else int(get(Keys.LLM.VOCAB_SIZE)),
            hidden_size=int(get(Keys.LLM.EMBEDDING_LENGTH)),
            num_hidden_layers=int(get(Keys.LLM.BLOCK_COUNT)),
            num_attention_heads=int(get(Keys.Attention.HEAD_COUNT)),
            num_key_value_heads=int(get(Keys.Attention.HEAD_COUNT_KV)),
            head_dim=head_dim,
            intermediate_size=int(get(Keys.LLM.FEED_FORWARD_LENGTH)),
            rms_norm_eps=float(get(Keys.Attention.LAYERNORM_RMS_EPS)),
            rope_theta=float(get(Keys.Rope.FREQ_BASE, 1_000_000.0)),
            # llama.cpp hard-codes these two for gemma-embedding; files may carry them.
            rope_local_base_freq=float(get(Keys.Rope.FREQ_BASE_SWA, 10_000.0)),
            sliding_window_pattern=int(get(Keys.Attention.SLIDING_WINDOW_PATTERN, 6)),
            sliding_window=int(get(Keys.Attention.SLIDING_WINDOW)),
            max_position_embeddings=int(get(Keys.LLM.CONTEXT_LENGTH)),
            query_pre_attn_scalar=float(head_dim),  # Gemma 3 300m: equal to head_dim, as llama.cpp assumes
            dense_2_features=int(get(Keys.LLM.DENSE_FEAT_OUT_SIZE, dense=DENSE_2)),
        )
