"""GPTQ inside ggml blocks (converter.gptq): valid blocks, and less output error than rounding alone."""
from __future__ import annotations

import numpy as np
import pytest
import gguf.quants
from gguf import GGMLQuantizationType as T

from edgegemma.converter import gptq
from edgegemma.converter import quantize as Q
from edgegemma.formats import QUANT_TYPES

BLOCK_TYPES = [QUANT_TYPES[T.Q4_0], QUANT_TYPES[T.Q8_0]]


def correlated_inputs(n_rows: int, n: int, sample: int = 0) -> np.ndarray:
    """Inputs like a layer's: correlated columns, a few of them (outlier features) far larger.
    The structure is fixed; `sample` draws different rows from the same distribution."""
    structure = np.random.default_rng(0)
    mixing, outliers = structure.standard_normal((n // 4, n)), structure.choice(n, 3, replace=False)
    rng = np.random.default_rng(1000 + sample)
    x = rng.standard_normal((n_rows, n // 4)) @ mixing + 0.3 * rng.standard_normal((n_rows, n))
    x[:, outliers] *= 20
    return x.astype(np.float32)


def output_error(w: np.ndarray, packed: np.ndarray, qt, x: np.ndarray) -> float:
    """‖(W − Ŵ) xᵀ‖ / ‖W xᵀ‖ over the inputs x, Ŵ read back by gguf.quants."""
    back = Q.unpack(packed, qt).reshape(w.shape)
    return float(np.linalg.norm((w - back) @ x.T) / np.linalg.norm(w @ x.T))


@pytest.mark.parametrize("qt", BLOCK_TYPES, ids=lambda qt: qt.name)
def test_gptq_beats_rounding_on_the_inputs_it_saw_and_on_new_ones(qt):
    rng = np.random.default_rng(1)
    n = 256
    w = rng.standard_normal((96, n)).astype(np.float32)
    seen, unseen = correlated_inputs(4096, n, sample=1), correlated_inputs(1024, n, sample=2)
    moment = seen.T.astype(np.float64) @ seen / len(seen)
    importance = np.diagonal(moment).astype(np.float32)
    order = gptq.activation_order(moment)
    ours = gptq.pack(w, qt, gptq.inverse_factor(moment[np.ix_(order, order)]), importance, order)
    rounded = Q.pack(w, qt, "search", importance)
    assert ours.shape == rounded.shape == (96, qt.row_bytes(n))
    for x in (seen, unseen):
        assert output_error(w, ours, qt, x) < 0.6 * output_error(w, rounded, qt, x)  # at least 40 % less


@pytest.mark.parametrize("qt", BLOCK_TYPES, ids=lambda qt: qt.name)
def test_gptq_blocks_are_plain_ggml_blocks(qt):
    """Whatever GPTQ did to the values, each block is what ggml's packer makes of some values with
    the block's own f16 scale: repacking the decoded block with its scale gives the same bytes."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 128)).astype(np.float32)
    x = correlated_inputs(1024, 128)
    moment = x.T.astype(np.float64) @ x / len(x)
    order = gptq.activation_order(moment)
    packed = gptq.pack(w, qt, gptq.inverse_factor(moment[np.ix_(order, order)]), None, order)
    blocks = packed.reshape(-1, qt.type_size)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    decoded = gguf.quants.dequantize(blocks, qt.ggml_type).reshape(-1, qt.block_size)
    packer = Q.pack_q4_0 if qt.ggml_type == T.Q4_0 else Q.pack_q8_0
    np.testing.assert_array_equal(packer(decoded, scales), blocks)


def test_inverse_factor_is_the_cholesky_factor_of_the_damped_inverse():
    x = correlated_inputs(2000, 64)
    h = x.T.astype(np.float64) @ x / len(x)
    h[:, 5] = h[5, :] = 0  # a column no input used
    u = gptq.inverse_factor(h)
    assert np.allclose(u, np.triu(u))
    damped = h.copy()
    damped[5, 5] = 1
    damped[np.diag_indices_from(damped)] += gptq.DAMPING * np.mean(np.diagonal(damped))
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(damped), rtol=1e-6, atol=1e-9)
