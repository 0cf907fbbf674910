"""The numpy kernels: the test oracle, and the path where Numba does not exist (Pyodide).

Per type there is only a block decoder, `decode(raw, out)`: uint8 rows (r, row_bytes) -> float32 (r, k),
bit-exact with `gguf.quants.dequantize`. The matmul around it is generic: decode a tile of weight rows into a
small reusable float32 scratch and let BLAS multiply the whole batch of activations by it, so no float32 copy
of the weight ever exists. Accumulation is BLAS's float32.
"""
from __future__ import annotations

import numpy as np

from .blocks import BF16, F16, F32, Q4_0, Q8_0, activations, block_format, row_indices, weight_bytes

# A tile of weight rows is dequantized into at most this many float32 values (4 MiB) at a time.
TILE_VALUES = 1 << 20


def _f16_scales(blocks: np.ndarray) -> np.ndarray:
    """The f16 scale d that starts each block, as float32 of shape (..., n_blocks, 1)."""
    return blocks[..., :2].view(np.float16).astype(np.float32)


def _decode_f32(raw, out):
    out[...] = raw.view(np.float32)


def _decode_f16(raw, out):
    out[...] = raw.view(np.float16)


def _decode_bf16(raw, out):
    bits = out.view(np.uint32)
    bits[...] = raw.view(np.uint16)
    bits <<= 16


def _decode_q8_0(raw, out):
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 34, 34)
    np.multiply(_f16_scales(blocks), blocks[..., 2:].view(np.int8), out=out.reshape(blocks.shape[0], blocks.shape[1], 32))


def _decode_q4_0(raw, out):
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 18, 18)
    qs = blocks[..., 2:]
    q = np.empty(blocks.shape[:2] + (32,), np.int8)
    np.bitwise_and(qs, 0x0F, out=q[..., :16].view(np.uint8))  # x[j]      in the low nibble of byte j
    np.right_shift(qs, 4, out=q[..., 16:].view(np.uint8))  # x[j + 16] in its high nibble
    q -= 8
    np.multiply(_f16_scales(blocks), q, out=out.reshape(blocks.shape[0], blocks.shape[1], 32))


DECODERS = {F32: _decode_f32, F16: _decode_f16, BF16: _decode_bf16, Q8_0: _decode_q8_0, Q4_0: _decode_q4_0}


def dequantize(w, qtype) -> np.ndarray:
    """The whole weight as float32 (rows, k). For small tensors (norm vectors) and tests."""
    w, rows, k = weight_bytes(w, qtype)
    out = np.empty((rows, k), np.float32)
    DECODERS[int(qtype)](w, out)
    return out


def dequantize_rows(w, qtype, row_ids) -> np.ndarray:
    """Only the rows `row_ids` of the weight, as float32 (len(row_ids), k): the embedding lookup."""
    w, rows, k = weight_bytes(w, qtype)
    ids = row_indices(row_ids, rows)
    out = np.empty((ids.size, k), np.float32)
    DECODERS[int(qtype)](w[ids], out)
    return out


def matmul(x, w, qtype) -> np.ndarray:
    """y = x @ W.T for float32 activations x (n, k) and a stored weight W (rows, row_bytes): float32 (n, rows)."""
    w, rows, k = weight_bytes(w, qtype)
    x = activations(x, k, block_format(qtype)[0])
    if int(qtype) == F32:
        return x @ w.view(np.float32).T  # the stored rows are already float32: BLAS reads them in place
    y = np.empty((x.shape[0], rows), np.float32)
    tile_rows = max(1, min(rows, TILE_VALUES // k))
    scratch = np.empty((tile_rows, k), np.float32)
    decode = DECODERS[int(qtype)]
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        tile = scratch[: r1 - r0]
        decode(w[r0:r1], tile)
        np.matmul(x, tile.T, out=y[:, r0:r1])
    return y
