"""The GGUF spec constants the runtime reads, under the `gguf` package's names and with its values.

Importing `gguf` costs a process ~40 ms beside numpy on a core of its own, 60-100 ms on a busy one (its constants
tables, its metadata module and yaml, the reader and writer), as much as opening a model file; the runtime needs
only these few constants from it. The converter still writes with `gguf` itself, and tests/test_gguf_spec.py holds
every value here equal to the package's, so the two cannot drift apart.
"""
from __future__ import annotations

from enum import IntEnum

GGUF_MAGIC = 0x46554747  # "GGUF", read as a little-endian uint32
GGUF_DEFAULT_ALIGNMENT = 32


class GGUFValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


class TokenType(IntEnum):  # numbered as SentencePiece's piece types
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class PoolingType(IntEnum):
    NONE = 0
    MEAN = 1
    CLS = 2
    LAST = 3
    RANK = 4


class Keys:
    """The metadata keys edgegemma reads; `{arch}` is formatted with the architecture, `{dense}` with dense_2/3."""

    class General:
        ARCHITECTURE = "general.architecture"
        ALIGNMENT = "general.alignment"

    class LLM:
        VOCAB_SIZE = "{arch}.vocab_size"
        CONTEXT_LENGTH = "{arch}.context_length"
        EMBEDDING_LENGTH = "{arch}.embedding_length"
        BLOCK_COUNT = "{arch}.block_count"
        FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
        POOLING_TYPE = "{arch}.pooling_type"
        DENSE_FEAT_OUT_SIZE = "{arch}.{dense}_feat_out"

    class Attention:
        HEAD_COUNT = "{arch}.attention.head_count"
        HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
        KEY_LENGTH = "{arch}.attention.key_length"
        LAYERNORM_RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
        SLIDING_WINDOW = "{arch}.attention.sliding_window"
        SLIDING_WINDOW_PATTERN = "{arch}.attention.sliding_window_pattern"

    class Rope:
        FREQ_BASE = "{arch}.rope.freq_base"
        FREQ_BASE_SWA = "{arch}.rope.freq_base_swa"

    class Tokenizer:
        MODEL = "tokenizer.ggml.model"
        LIST = "tokenizer.ggml.tokens"
        TOKEN_TYPE = "tokenizer.ggml.token_type"
        SCORES = "tokenizer.ggml.scores"
        BOS_ID = "tokenizer.ggml.bos_token_id"
        EOS_ID = "tokenizer.ggml.eos_token_id"
        UNK_ID = "tokenizer.ggml.unknown_token_id"
        PAD_ID = "tokenizer.ggml.padding_token_id"
        ADD_BOS = "tokenizer.ggml.add_bos_token"
        ADD_EOS = "tokenizer.ggml.add_eos_token"
        ADD_PREFIX = "tokenizer.ggml.add_space_prefix"
        REMOVE_EXTRA_WS = "tokenizer.ggml.remove_extra_whitespaces"
