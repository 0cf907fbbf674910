"""GPTQ inside ggml's blocks: quantize a weight's columns in order and push each column's error
onto the columns not yet quantized, where the inputs' correlations let them absorb it.

Rounding each weight to its nearest level minimises ‖ΔW‖; what the model feels is ‖ΔW·x‖ over
its real inputs x. With H = E[x xᵀ] (converter.calibrate), GPTQ (Frantar et al., 2022) takes the
columns one at a time: quantize column j, then correct the remaining columns by the error times
row j of the upper Cholesky factor U of H⁻¹, which is the least-squares optimal update for the
output error. The blocks stay ggml's: a block's scale is chosen (by the importance-weighted
search of converter.quantize) when the sweep reaches its first column, from the weights as the
earlier corrections left them, so every block is a plain Q4_0 / Q8_0 block llama.cpp reads.

Rows are independent given H, so the writer's chunks of rows can be quantized one by one.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from edgegemma.formats import QuantType

from . import quantize as Q

DAMPING = 0.01  # of the mean diagonal, added to H's diagonal: keeps H⁻¹ well conditioned (GPTQ's default)

# block type -> (scale search, levels as the packer stores them, packer)
_BLOCKS = {
    T.Q8_0: (Q.search_scales_q8_0, Q.q8_0_levels, Q.pack_q8_0),
    T.Q4_0: (Q.search_scales_q4_0, Q.q4_0_levels, Q.pack_q4_0),
}


def inverse_factor(moment: np.ndarray) -> np.ndarray:
    """U, upper triangular with H⁻¹ = Uᵀ U, for the damped second moment H (float64 throughout)."""
    h = np.array(moment, np.float64)
    dead = np.diagonal(h) <= 0  # a column no input ever used: any value is as good, its error costs nothing
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += DAMPING * np.mean(np.diagonal(h))
    lower = np.linalg.cholesky(h)
    inv_lower = np.linalg.solve(lower, np.eye(len(h)))
    h_inv = inv_lower.T @ inv_lower
    return np.linalg.cholesky(h_inv).T


def pack(x: np.ndarray, qt: QuantType, factor: np.ndarray | None, importance: np.ndarray | None = None,
         order: np.ndarray | None = None) -> np.ndarray:
    """float32 rows (rows, n) -> their bytes in block type `qt`, columns quantized in GPTQ order.

    factor: inverse_factor(H) for the n input columns, in `order` if one is given (None: plain
    importance-weighted rounding). importance: E[x²] per column, weighting each block's scale search
    as the imatrix quantizer does. order: the sequence in which to take the columns; with one, every
    block's scale is fixed up front from the original weights ("static groups"), as blocks are no
    longer reached whole.
    """
    search, levels, packer = _BLOCKS[qt.ggml_type]
    w = np.array(x, np.float32).reshape(-1, x.shape[-1])  # updated in place as errors are pushed forward
    rows, n = w.shape
    size = qt.block_size
    block_scales = lambda cols: Q._f16(search(np.ascontiguousarray(w[:, cols]), Q.block_weights(
        w[:, cols], None if importance is None else np.broadcast_to(importance[cols], (rows, size)))))
    if order is not None:
        scales = np.concatenate([block_scales(slice(b, b + size)) for b in range(0, n, size)], axis=1)
        w = np.ascontiguousarray(w[:, order])
        column_scale = scales[:, order // size]
    else:
        scales = np.empty((rows, n // size), np.float32)
    u = factor.astype(np.float32)
    stored = np.empty_like(w)  # each column as it was when quantized: what the packer packs
    for start in range(0, n, size):
        end = start + size
        if order is None:
            scales[:, start // size] = block_scales(slice(start, end))[:, 0]
            d = np.repeat(scales[:, start // size:start // size + 1], size, axis=1)
        else:
            d = column_scale[:, start:end]
        errors = np.empty((rows, size), np.float32)
        for j in range(size):
            col = start + j
            stored[:, col] = w[:, col]
            q = levels(w[:, col:col + 1], d[:, j:j + 1])[:, 0] * d[:, j]
            errors[:, j] = (w[:, col] - q) / u[col, col]
            w[:, col + 1:end] -= np.outer(errors[:, j], u[col, col + 1:end])
        w[:, end:] -= errors @ u[start:end, end:]
    if order is not None:
        unpermuted = np.empty_like(stored)
        unpermuted[:, order] = stored
        stored = unpermuted
    packed = packer(stored.reshape(-1, size), scales.reshape(-1, 1))
    return packed.reshape(*x.shape[:-1], qt.row_bytes(n))


def activation_order(moment: np.ndarray) -> np.ndarray:
    """Columns by decreasing E[x²]: the ones whose errors cost most are quantized first, while
    the most columns remain to absorb their error (GPTQ's act-order)."""
    return np.argsort(-np.diagonal(moment), kind="stable")
