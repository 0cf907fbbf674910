"""The model's weights, as the file stores them: checked by name, shape and type, never expanded.

Matrices stay quantized: views into the memory map (`Weight.data`), and the layers' and the dense head's
also as the kernels read them fastest (`Weight.packed`: the same blocks, repacked where the kernels repack
them, then read from there and not from the map). Only the 1-D norm vectors, a few kilobytes each, are
decoded to float32 at load.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

import edgegemma.kernels as kernels

from . import formats as F
from .config import Config
from .gguf_file import GGUFFile, ModelFileError, TensorInfo


@dataclass
class Weight:
    """One matrix as stored: `data` is uint8 (out_features, bytes per row) in `qtype` blocks; `packed` is what
    kernels.matmul multiplies by (kernels.pack of data, or data itself; packed again when compiled kernels take
    over from the numpy ones: see kernels.prepare)."""

    name: str
    qtype: int
    shape: tuple[int, int]  # (out_features, in_features)
    data: np.ndarray
    packed: object  # kernels.pack(data), or data itself


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray  # (hidden,) RMSNorm before attention, Gemma's 1 + w folded in
    attn_q: Weight  # (heads * head_dim, hidden)
    attn_k: Weight  # (kv_heads * head_dim, hidden)
    attn_v: Weight  # (kv_heads * head_dim, hidden)
    attn_q_norm: np.ndarray  # (head_dim,)
    attn_k_norm: np.ndarray  # (head_dim,)
    attn_output: Weight  # (hidden, heads * head_dim)
    post_attention_norm: np.ndarray  # (hidden,)
    ffn_norm: np.ndarray  # (hidden,) before the feed-forward
    ffn_gate: Weight  # (ffn, hidden)
    ffn_up: Weight  # (ffn, hidden)
    ffn_down: Weight  # (hidden, ffn)
    post_ffw_norm: np.ndarray  # (hidden,)


@dataclass(frozen=True)
class Weights:
    token_embd: Weight  # (vocab, hidden)
    layers: list[LayerWeights]
    output_norm: np.ndarray  # (hidden,)
    dense_2: Weight  # (3072, hidden)
    dense_3: Weight  # (hidden, 3072)
    # Sorted unique row ids -> those rows of token_embd.data (copies, read from the file without mapping its
    # pages: see GGUFFile.read_rows); None: look the rows up in token_embd.data itself.
    read_token_rows: Callable[[np.ndarray], np.ndarray] | None = None
    # Rows of a 4-bit token table the file also stores exact (converter.exact_rows): sorted ids
    # (n,) and their float32 values (n, hidden), used in place of the blocks' rows.
    exact_token_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    exact_token_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # More rows of a 4-bit table, stored in a finer block type (Q8_0): sorted ids (n,) disjoint from the exact
    # ones, their type, and a reader of their bytes by position among them (sorted unique positions -> uint8
    # rows, copies read from the file like read_token_rows), used in place of the blocks' rows.
    fine_token_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fine_token_type: int = 0
    read_fine_token_rows: Callable[[np.ndarray], np.ndarray] | None = None


def load_weights(file: GGUFFile, config: Config) -> Weights:
    c = config
    kernels.prepare({info.ggml_type for info in file.tensors.values() if len(info.shape) == 2})
    q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim

    def matrix(kind: str, shape: tuple[int, int], layer: int | None = None, pack: bool = True) -> Weight:
        info = _tensor(file, kind, layer, shape)
        try:
            F.quant_type(info.ggml_type)
        except ValueError as err:
            raise ModelFileError(f"{file.path}: tensor {info.name}: {err}") from None
        packed = kernels.pack(info.data, info.ggml_type) if pack else info.data
        if packed is not info.data:
            file.release(info)  # read once, to pack
        return Weight(info.name, info.ggml_type, shape, info.data, packed)

    def vector(kind: str, size: int, layer: int | None = None) -> np.ndarray:
        info = _tensor(file, kind, layer, (size,))
        return kernels.dequantize(info.data, info.ggml_type).reshape(size)

    def layer(i: int) -> LayerWeights:
        return LayerWeights(
            attn_norm=vector(F.ATTN_NORM, c.hidden_size, i),
            attn_q=matrix(F.ATTN_Q, (q_dim, c.hidden_size), i),
            attn_k=matrix(F.ATTN_K, (kv_dim, c.hidden_size), i),
            attn_v=matrix(F.ATTN_V, (kv_dim, c.hidden_size), i),
            attn_q_norm=vector(F.ATTN_Q_NORM, c.head_dim, i),
            attn_k_norm=vector(F.ATTN_K_NORM, c.head_dim, i),
            attn_output=matrix(F.ATTN_OUT, (c.hidden_size, q_dim), i),
            post_attention_norm=vector(F.ATTN_POST_NORM, c.hidden_size, i),
            ffn_norm=vector(F.FFN_NORM, c.hidden_size, i),
            ffn_gate=matrix(F.FFN_GATE, (c.intermediate_size, c.hidden_size), i),
            ffn_up=matrix(F.FFN_UP, (c.intermediate_size, c.hidden_size), i),
            ffn_down=matrix(F.FFN_DOWN, (c.hidden_size, c.intermediate_size), i),
            post_ffw_norm=vector(F.FFN_POST_NORM, c.hidden_size, i),
        )

    token_embd = matrix(F.TOKEN_EMBD, (c.vocab_size, c.hidden_size), pack=False)  # only rows are looked up
    weights = Weights(
        token_embd=token_embd,
        layers=[layer(i) for i in range(c.num_hidden_layers)],
        output_norm=vector(F.OUTPUT_NORM, c.hidden_size),
        dense_2=matrix(F.DENSE_2, (c.dense_2_features, c.hidden_size)),
        dense_3=matrix(F.DENSE_3, (c.hidden_size, c.dense_2_features)),
        read_token_rows=partial(file.read_rows, file.tensors[token_embd.name]),
        **_exact_token_rows(file, c),
        **_fine_token_rows(file, c),
    )
    kernels.when_ready(partial(_repack, weights, file))
    return weights


def _repack(weights: Weights, file: GGUFFile) -> None:
    """The layers' and the dense head's matrices packed as the kernels now bound read them fastest."""
    matrices = [w for layer in weights.layers for w in vars(layer).values() if isinstance(w, Weight)]
    for w in matrices + [weights.dense_2, weights.dense_3]:
        packed = kernels.pack(w.data, w.qtype)
        if packed is not w.packed:
            w.packed = packed
            file.release(file.tensors[w.name])


def require_dense_head(file: GGUFFile) -> None:
    """Refuse a file without EmbeddingGemma's dense head (llama.cpp's conversions made without
    `--sentence-transformers-dense-modules`, the default before it existed): pooled vectors that skip it are
    not the model's embeddings."""
    missing = [name for name in (F.tensor_name(F.DENSE_2), F.tensor_name(F.DENSE_3)) if name not in file.tensors]
    if missing:
        raise ModelFileError(
            f"{file.path}: the file lacks the dense head ({' and '.join(missing)}) that EmbeddingGemma applies after pooling; "
            f"re-convert the checkpoint with `edgegemma convert CHECKPOINT -o FILE.gguf`, or with llama.cpp's "
            f"`convert_hf_to_gguf.py CHECKPOINT --sentence-transformers-dense-modules`")


def _exact_token_rows(file: GGUFFile, c: Config) -> dict[str, np.ndarray]:
    """The exact rows' ids and values from the metadata, checked and copied out of the map; none if absent."""
    ids, rows = file.metadata.get(F.KEY_EXACT_TOKEN_IDS), file.metadata.get(F.KEY_EXACT_TOKEN_ROWS)
    if ids is None and rows is None:
        return {}
    where = f"{file.path}: {F.KEY_EXACT_TOKEN_IDS} / {F.KEY_EXACT_TOKEN_ROWS}"
    if not (isinstance(ids, np.ndarray) and ids.dtype.kind in "iu" and isinstance(rows, np.ndarray) and rows.dtype == np.float32):
        raise ModelFileError(f"{where}: expected an integer array and a float32 array")
    ids = ids.astype(np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= c.vocab_size or np.any(np.diff(ids) <= 0)):
        raise ModelFileError(f"{where}: the ids are not sorted, unique token ids below {c.vocab_size}")
    if rows.size != len(ids) * c.hidden_size:
        raise ModelFileError(f"{where}: {rows.size} values for {len(ids)} rows of {c.hidden_size}")
    if not np.isfinite(rows).all():
        raise ModelFileError(f"{where}: the rows hold NaN or Inf")
    return {"exact_token_ids": ids, "exact_token_rows": rows.reshape(len(ids), c.hidden_size).copy()}


def _fine_token_rows(file: GGUFFile, c: Config) -> dict:
    """The finer rows' ids, type and reader from the metadata, checked (sizes, ids, finite values); none if absent.
    The rows stay in the file: each text's are read as it needs them."""
    keys = (F.KEY_FINE_TOKEN_IDS, F.KEY_FINE_TOKEN_TYPE, F.KEY_FINE_TOKEN_ROWS)
    ids, qtype, rows = (file.metadata.get(k) for k in keys)
    if ids is None and qtype is None and rows is None:
        return {}
    where = f"{file.path}: {' / '.join(keys)}"
    if not (isinstance(ids, np.ndarray) and ids.dtype.kind in "iu" and isinstance(qtype, int) and not isinstance(qtype, bool)
            and isinstance(rows, np.ndarray) and rows.dtype == np.uint8):
        raise ModelFileError(f"{where}: expected an integer array, a type id and a uint8 array")
    try:
        qt = F.quant_type(qtype)
    except ValueError:
        qt = None
    if qt is None or qt.name not in F.FINE_ROW_TYPES:
        raise ModelFileError(f"{where}: type id {qtype} is not one of {', '.join(F.FINE_ROW_TYPES)}")
    ids = ids.astype(np.int64)
    exact = file.metadata.get(F.KEY_EXACT_TOKEN_IDS)
    if len(ids) and (ids.min() < 0 or ids.max() >= c.vocab_size or np.any(np.diff(ids) <= 0)
                     or (isinstance(exact, np.ndarray) and np.isin(ids, exact).any())):
        raise ModelFileError(f"{where}: the ids are not sorted, unique token ids below {c.vocab_size} apart from "
                             f"{F.KEY_EXACT_TOKEN_IDS}")
    row_bytes = qt.row_bytes(c.hidden_size)
    if rows.size != len(ids) * row_bytes:
        raise ModelFileError(f"{where}: {rows.size:,} bytes for {len(ids):,} {qt.name} rows of {c.hidden_size} ({row_bytes} bytes each)")
    rows = rows.reshape(len(ids), row_bytes)
    # Q8_0: a float16 scale, then 32 int8, per block; F16: float16 values. Only the float16s can be NaN or Inf.
    halves = rows.reshape(len(ids), -1, qt.type_size)[:, :, :2] if qt.name == "q8_0" else rows
    if not np.isfinite(np.ascontiguousarray(halves).view(np.float16)).all():
        raise ModelFileError(f"{where}: the rows hold NaN or Inf")
    info = TensorInfo(F.KEY_FINE_TOKEN_ROWS, qt.ggml_type, (len(ids), c.hidden_size), rows)
    return {"fine_token_ids": ids, "fine_token_type": int(qt.ggml_type), "read_fine_token_rows": partial(file.read_rows, info)}


def _tensor(file: GGUFFile, kind: str, layer: int | None, shape: tuple[int, ...]):
    name = F.tensor_name(kind, layer)
    info = file.tensors.get(name)
    if info is None:
        raise ModelFileError(f"{file.path}: tensor {name} is missing")
    if info.shape != shape:
        raise ModelFileError(f"{file.path}: tensor {name} has shape {info.shape}, expected {shape}")
    return info
