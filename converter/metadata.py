"""The file's metadata: llama.cpp's keys for the model, then edgegemma's own.

The llama.cpp part is what convert_hf_to_gguf.py writes for EmbeddingGemma (Gemma3Model's
hyperparameters, EmbeddingGemma's original sliding window, pooling type and dense sizes).
"""
from __future__ import annotations

import gguf
import numpy as np

from edgegemma import __version__
from edgegemma import formats as F

from .checkpoint import Checkpoint
from .recipes import Recipe
from .vocab import Vocab, add_vocab

CONVERTER_VERSION = __version__


def add_metadata(writer: gguf.GGUFWriter, ckpt: Checkpoint, vocab: Vocab, recipe: Recipe, quantizer: str = "ggml",
                 exact_rows: tuple[np.ndarray, np.ndarray] | None = None,
                 fine_rows: tuple[np.ndarray, int, bytes] | None = None) -> None:
    """exact_rows: (ids, float32 rows) of the token table to keep exact; fine_rows: (ids, ggml type, the rows'
    bytes in that type) of more rows stored finer than the table; see converter.exact_rows."""
    hp = ckpt.hparams
    w = writer
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(ckpt.folder.resolve().name)
    w.add_file_type(recipe.file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_context_length(hp.max_position_embeddings)
    w.add_embedding_length(hp.hidden_size)
    w.add_block_count(hp.num_hidden_layers)
    w.add_feed_forward_length(hp.intermediate_size)
    w.add_head_count(hp.num_attention_heads)
    w.add_head_count_kv(hp.num_key_value_heads)
    w.add_key_length(hp.head_dim)
    w.add_value_length(hp.head_dim)
    w.add_layer_norm_rms_eps(hp.rms_norm_eps)
    w.add_rope_freq_base(hp.rope_theta)  # full-attention layers
    w.add_rope_freq_base_swa(hp.rope_local_base_freq)  # sliding-window layers
    w.add_sliding_window(hp.sliding_window)  # config.json's own value, not transformers' adjusted one
    w.add_sliding_window_pattern(hp.sliding_window_pattern)
    w.add_causal_attention(False)
    w.add_pooling_type(ckpt.pooling)
    for d in ckpt.dense:
        w.add_dense_features_dims(d.name, d.in_features, d.out_features)

    add_vocab(w, ckpt.folder, vocab)

    w.add_array(F.KEY_TOKENIZER_MODEL, vocab.model_bytes)  # bytes -> uint8 array
    w.add_array(F.KEY_PROMPT_NAMES, list(ckpt.prompts))
    w.add_array(F.KEY_PROMPT_TEXTS, list(ckpt.prompts.values()))
    w.add_string(F.KEY_RECIPE, recipe.name)
    w.add_string(F.KEY_QUANTIZER, quantizer)  # ggml, search, imatrix or gptq: how the blocks were filled
    w.add_string(F.KEY_CONVERTER_VERSION, CONVERTER_VERSION)
    if exact_rows is not None:
        ids, rows = exact_rows
        w.add_array(F.KEY_EXACT_TOKEN_IDS, [int(i) for i in ids])  # python ints -> int32 array
        w.add_array(F.KEY_EXACT_TOKEN_ROWS, np.asarray(rows, np.float32).ravel().tolist())  # floats -> float32 array
    if fine_rows is not None and len(fine_rows[0]):
        ids, qtype, data = fine_rows
        w.add_array(F.KEY_FINE_TOKEN_IDS, [int(i) for i in ids])  # int32 array
        w.add_uint32(F.KEY_FINE_TOKEN_TYPE, int(qtype))
        w.add_array(F.KEY_FINE_TOKEN_ROWS, bytes(data))  # bytes -> uint8 array, written in one piece
