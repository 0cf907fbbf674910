"""The file format, as data: quant types, tensor names and metadata keys.

edgegemma files are plain GGUF v3 files of llama.cpp's `gemma-embedding` architecture, so the
names and keys below come from the `gguf` package; only what llama.cpp has no key for lives
under the one `edgegemma.` prefix. The converter writes with this table, the runtime reads with it.
"""
from __future__ import annotations

# The storage types are the kernels' one table (each type's name, block size and bytes).
from .kernels.blocks import QUANT_TYPES, QUANT_TYPES_BY_NAME, WRITTEN_TYPES, QuantType, quant_type  # noqa: F401

# llama.cpp's names (gguf.MODEL_ARCH_NAMES, gguf.TENSOR_NAMES), written out so that the runtime need not import
# gguf (edgegemma.gguf_spec says why); tests/test_gguf_spec.py holds them equal to the package's.
ARCH = "gemma-embedding"  # gguf.MODEL_ARCH.GEMMA_EMBEDDING

# Tensor names: llama.cpp's, for this architecture.
TOKEN_EMBD = "token_embd"
OUTPUT_NORM = "output_norm"
DENSE_2 = "dense_2"  # 768 -> 3072
DENSE_3 = "dense_3"  # 3072 -> 768
# Per block, with {bid} for the layer index.
ATTN_NORM = "blk.{bid}.attn_norm"
ATTN_Q = "blk.{bid}.attn_q"
ATTN_K = "blk.{bid}.attn_k"
ATTN_V = "blk.{bid}.attn_v"
ATTN_Q_NORM = "blk.{bid}.attn_q_norm"
ATTN_K_NORM = "blk.{bid}.attn_k_norm"
ATTN_OUT = "blk.{bid}.attn_output"
ATTN_POST_NORM = "blk.{bid}.post_attention_norm"
FFN_NORM = "blk.{bid}.ffn_norm"
FFN_GATE = "blk.{bid}.ffn_gate"
FFN_UP = "blk.{bid}.ffn_up"
FFN_DOWN = "blk.{bid}.ffn_down"
FFN_POST_NORM = "blk.{bid}.post_ffw_norm"

BLOCK_TENSORS = (
    ATTN_NORM, ATTN_Q, ATTN_K, ATTN_V, ATTN_Q_NORM, ATTN_K_NORM, ATTN_OUT, ATTN_POST_NORM,
    FFN_NORM, FFN_GATE, FFN_UP, FFN_DOWN, FFN_POST_NORM,
)
NORM_TENSORS = frozenset({OUTPUT_NORM, ATTN_NORM, ATTN_Q_NORM, ATTN_K_NORM, ATTN_POST_NORM, FFN_NORM, FFN_POST_NORM})


def tensor_name(kind: str, layer: int | None = None) -> str:
    """The GGUF name of a weight: tensor_name(ATTN_Q, 3) -> 'blk.3.attn_q.weight'."""
    return (kind.format(bid=layer) if layer is not None else kind) + ".weight"


def tensor_kind(name: str) -> tuple[str, int | None]:
    """The inverse of tensor_name: 'blk.3.attn_q.weight' -> (ATTN_Q, 3)."""
    base = name.removesuffix(".weight")
    parts = base.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdecimal():  # anything else (another model's, a corrupt name) as is
        return "blk.{bid}." + parts[2], int(parts[1])
    return base, None


# Metadata keys. llama.cpp's where it has one (gguf.Keys, formatted with the architecture) ...
def arch_key(template: str, **fields) -> str:
    return template.format(arch=ARCH, **fields)


# ... and ours, all under one prefix.
KEY_PREFIX = "edgegemma."
# The original SentencePiece model's bytes, as a uint8 array. (gguf.GGUFReader walks arrays element
# by element and needs minutes for it; edgegemma's own reader maps it in one piece.)
KEY_TOKENIZER_MODEL = KEY_PREFIX + "tokenizer.model"
KEY_PROMPT_NAMES = KEY_PREFIX + "prompt_names"  # string array, from config_sentence_transformers.json
KEY_PROMPT_TEXTS = KEY_PREFIX + "prompt_texts"  # string array, same order as the names
KEY_RECIPE = KEY_PREFIX + "recipe"  # f32, f16, bf16, q8_0, q4_0, mixed, e4_q8
KEY_QUANTIZER = KEY_PREFIX + "quantizer"  # which rule filled the blocks: ggml, search, imatrix, gptq
KEY_CONVERTER_VERSION = KEY_PREFIX + "converter_version"
# "sha256:" + the hex SHA-256 of the whole file with these 64 hex digits read as '0's (edgegemma.integrity).
KEY_CHECKSUM = KEY_PREFIX + "checksum"
# Rows of a 4-bit token table kept exact (converter.exact_rows): their ids (int32 array, sorted) and
# their float32 values, row after row (float32 array, len(ids) x hidden). llama.cpp ignores both.
KEY_EXACT_TOKEN_IDS = KEY_PREFIX + "token_embd.exact_ids"
KEY_EXACT_TOKEN_ROWS = KEY_PREFIX + "token_embd.exact_rows"
# More rows of a 4-bit token table, stored in a finer block type (converter.exact_rows): their ids (int32 array,
# sorted), the type (uint32, a ggml type id: Q8_0 or F16) and their bytes, row after row in that type (uint8
# array, len(ids) x the type's bytes per row). Disjoint from the float32 rows above. llama.cpp ignores all three.
KEY_FINE_TOKEN_IDS = KEY_PREFIX + "token_embd.fine_ids"
KEY_FINE_TOKEN_TYPE = KEY_PREFIX + "token_embd.fine_type"
KEY_FINE_TOKEN_ROWS = KEY_PREFIX + "token_embd.fine_rows"
FINE_ROW_TYPES = ("q8_0", "f16")  # the block types fine rows may take (their values are checked finite at load)
