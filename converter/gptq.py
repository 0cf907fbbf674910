"""GPTQ inside ggml's blocks: quantize a weight's columns in order and push each column's error
onto the columns not yet quantized, where the inputs' correlations let them absorb it.

Rounding each weight to its nearest level minimises ‖ΔW‖; what the model feels is ‖ΔW·x‖ over
its real inputs x. With H = E[x xᵀ] (converter.calibrate), GPTQ (Frantar et al., 2022) takes the
columns one at a time: quantize column j, then correct the remaining columns by the error times
row j of the upper Cholesky factor U of H⁻¹, which is the least-squares optimal update for the
output error. Columns go in decreasing E[x²] (activation order): those whose errors cost most
first, while the most columns remain to absorb them. The blocks stay ggml's: each block's scale is
chosen up front by the importance-weighted search of converter.quantize, so every block is a plain
Q4_0 / Q8_0 block llama.cpp reads.

Rows are independent given H, so the writer's chunks of rows can be quantized one by one.
"""
from __future__ import annotations

import numpy as np

from edgegemma.formats import QuantType

from . import quantize as Q

DAMPING = 0.01  # of the mean diagonal, added to H's diagonal: keeps H⁻¹ well conditioned (GPTQ's default)



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


def pack(x: np.ndarray, qt: QuantType, factor: np.ndarray, importance: np.ndarray | None, order: np.ndarray) -> np.ndarray:
    """float32 rows (rows, n) -> their bytes in block type `qt`, columns quantized in GPTQ order.

    order: the sequence in which the columns are taken (activation_order). factor: inverse_factor(H)
    with H's rows and columns in that order. importance: E[x²] per column, weighting each block's
    scale search as the imatrix quantizer does. The columns of a block are no longer reached
    together, so every block's scale is fixed up front from the original weights ("static groups").
    """
    search, levels, packer = Q.BLOCK_RULES[qt.ggml_type]
    w = np.array(x, np.float32).reshape(-1, x.shape[-1])
    rows, n = w.shape
    size = qt.block_size
    blocks = w.reshape(-1, size)
    tiled = None if importance is None else np.broadcast_to(importance, w.shape).reshape(blocks.shape)
    scales = Q._f16(search(blocks, Q.block_weights(blocks, tiled))).reshape(rows, n // size)
    w = np.ascontiguousarray(w[:, order])  # updated in place as errors are pushed forward
    column_scale = scales[:, order // size]
    u = factor.astype(np.float32)
    stored = np.empty_like(w)  # each column as it was when quantized: what the packer packs
    for start in range(0, n, size):  # GPTQ's lazy batches: 32 columns, then one update of the rest
        end = start + size
        errors = np.empty((rows, size), np.float32)
        for j in range(size):
            col = start + j
            d = column_scale[:, col:col + 1]
            stored[:, col] = w[:, col]
            q = levels(w[:, col:col + 1], d)[:, 0] * d[:, 0]
            errors[:, j] = (w[:, col] - q) / u[col, col]
            w[:, col + 1:end] -= np.outer(errors[:, j], u[col, col + 1:end])
        w[:, end:] -= errors @ u[start:end, end:]
    unpermuted = np.empty_like(stored)
    unpermuted[:, order] = stored
    packed = packer(unpermuted.reshape(-1, size), scales.reshape(-1, 1))
    return packed.reshape(*x.shape[:-1], qt.row_bytes(n))


def activation_order(moment: np.ndarray) -> np.ndarray:
    """Columns by decreasing E[x²]: the ones whose errors cost most are quantized first, while
    the most columns remain to absorb their error (GPTQ's act-order)."""
    return np.argsort(-np.diagonal(moment), kind="stable")
