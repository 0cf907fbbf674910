"""Our packers against gguf.quants (llama.cpp's own Python port of ggml-quants.c), byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
import gguf.quants
from gguf import GGMLQuantizationType as T

from converter import quantize as Q
from edgegemma.formats import QUANT_TYPES, QUANT_TYPES_BY_NAME

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # gguf.quants on inf/denormal blocks


def ggml_bytes(x: np.ndarray, ggml_type: T) -> np.ndarray:
    """gguf.quants' answer as uint8 rows."""
    return gguf.quants.quantize(x, ggml_type).view(np.uint8).reshape(*x.shape[:-1], -1)


def edge_blocks() -> np.ndarray:
    """One 32-value block per row, each an awkward case for a block quantizer."""
    rng = np.random.default_rng(1)
    tiny = np.finfo(np.float32).smallest_subnormal
    rows = [
        np.zeros(32),  # all zeros: d = 0, inverse 0
        np.r_[1e4, 1e-3 * rng.standard_normal(31)],  # one huge value, the rest crushed to 0
        np.r_[np.zeros(31), 3.0e38],  # near f32 max: d overflows f16 to inf
        np.r_[-7.0, rng.uniform(-6, 6, 31)],  # negative max
        np.r_[5.0, -5.0, rng.uniform(-4, 4, 30)],  # tie in |x|: the first one sets Q4_0's sign
        np.r_[-5.0, 5.0, rng.uniform(-4, 4, 30)],
        np.full(32, 2.5),  # all equal
        np.r_[127.0, np.arange(-15, 16) + 0.5],  # d = 1: x/d exactly k + 0.5, roundf's ties (away from zero)
        np.r_[-8.0, np.arange(-15, 16) * 0.5],  # d = 1 for Q4_0: x/d + 8.5 on integer boundaries
        np.r_[tiny * np.arange(1, 33)],  # denormals only
        np.r_[1e-39, tiny, -tiny, np.zeros(29)],  # denormal max: 1/d overflows
        np.r_[1.0, tiny * 5, 1e-30 * rng.standard_normal(30)],  # denormals beside normal values
        np.r_[65504.0 * 127, rng.standard_normal(31)],  # d exactly at f16 max
        1e-6 * rng.standard_normal(32),  # small enough that d is f16-subnormal
        np.r_[8.0, np.arange(-7, 8) * 1.0, np.arange(-8, 8) * 0.5, 0.0][:32],  # exact grid points
    ]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_blocks_bit_identical_on_random_data(name):
    qt = QUANT_TYPES_BY_NAME[name]
    rng = np.random.default_rng(0)
    for shape, scale in [((1, 32), 1.0), ((7, 64), 0.02), ((64, 768), 1.0), ((3, 5, 96), 100.0)]:
        x = (scale * rng.standard_normal(shape)).astype(np.float32)
        np.testing.assert_array_equal(Q.pack(x, qt), ggml_bytes(x, qt.ggml_type))
    heavy = rng.standard_t(2, size=(256, 256)).astype(np.float32)  # outliers in many blocks
    np.testing.assert_array_equal(Q.pack(heavy, qt), ggml_bytes(heavy, qt.ggml_type))


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_blocks_bit_identical_on_edge_blocks(name):
    qt = QUANT_TYPES_BY_NAME[name]
    blocks = edge_blocks()
    ours, theirs = Q.pack(blocks, qt), ggml_bytes(blocks, qt.ggml_type)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.tobytes() == b.tobytes(), f"{name} edge block {i}: {blocks[i][:4]}..."


def test_scales_and_packers_are_separate_steps():
    rng = np.random.default_rng(2)
    blocks = rng.standard_normal((100, 32)).astype(np.float32)
    for scales, packer, t in ((Q.ggml_scales_q8_0, Q.pack_q8_0, T.Q8_0), (Q.ggml_scales_q4_0, Q.pack_q4_0, T.Q4_0)):
        d = scales(blocks)
        assert d.shape == (100, 1) and d.dtype == np.float32
        np.testing.assert_array_equal(packer(blocks, d), ggml_bytes(blocks, t))


def test_packers_clip_when_a_scale_does_not_cover_the_block():
    """A scale search may pick a scale smaller than ggml's; values beyond it saturate, never wrap."""
    blocks = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    q8 = Q.unpack(Q.pack_q8_0(blocks, np.full((2, 1), 0.5 / 127, np.float32)), QUANT_TYPES[T.Q8_0])
    assert np.abs(q8).max() <= 0.5 + 1e-6 and q8[0, 0] < 0 and q8[1, -1] > 0
    q4 = Q.unpack(Q.pack_q4_0(blocks, np.full((2, 1), -0.05, np.float32)), QUANT_TYPES[T.Q4_0])
    np.testing.assert_allclose([q4.min(), q4.max()], [-0.35, 0.4], rtol=1e-3)  # q in 0..15, (q - 8)·(−0.05)


def test_q4_0_layout_low_nibble_first_half():
    """Byte j holds x[j] (low nibble) and x[j+16] (high nibble); value (q − 8)·d."""
    x = np.r_[np.full(16, -8.0), np.full(16, 7.0)].astype(np.float32)[None, :]
    packed = Q.pack(x, QUANT_TYPES[T.Q4_0])[0]
    assert np.frombuffer(packed[:2].tobytes(), np.float16)[0] == 1.0  # d = -8 / -8
    assert set(packed[2:]) == {0xF0}  # low: -8 -> q 0; high: 7 -> q 15


FLOAT_EDGES = np.array([
    0.0, -0.0, 1.0, -1.0, 1 / 3, 65504.0, 65519.0, 6.1e-5, 5.96e-8, 2.98e-8, 1e-45,
    3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan,
    # bf16 round-to-nearest-even ties: low 16 bits exactly 0x8000, with even and odd kept bits
    np.array([0x3F808000], np.uint32).view(np.float32)[0], np.array([0x3F818000], np.uint32).view(np.float32)[0],
    np.array([0x3F807FFF], np.uint32).view(np.float32)[0], np.array([0x7F7FFFFF], np.uint32).view(np.float32)[0],
    np.array([0x7FC00001], np.uint32).view(np.float32)[0], np.array([0x7F800001], np.uint32).view(np.float32)[0],
], dtype=np.float32)


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_floats_bit_identical(name):
    qt = QUANT_TYPES_BY_NAME[name]
    rng = np.random.default_rng(3)
    x = np.concatenate([FLOAT_EDGES, rng.standard_normal(1000).astype(np.float32) * 10.0 ** rng.integers(-40, 38, 1000)])
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):
        ours = Q.pack(x, qt)
        theirs = ggml_bytes(x, qt.ggml_type)
    np.testing.assert_array_equal(ours, theirs)
    if name == "f16":
        np.testing.assert_array_equal(ours.view(np.float16), x.astype(np.float16))


def test_f32_is_the_bytes_themselves():
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    packed = Q.pack(x, QUANT_TYPES[T.F32])
    assert packed.shape == (3, 256)
    np.testing.assert_array_equal(packed.view(np.float32), x)


@pytest.mark.parametrize("name", list(QUANT_TYPES_BY_NAME))
def test_relative_rms_error(name):
    qt = QUANT_TYPES_BY_NAME[name]
    x = np.random.default_rng(5).standard_normal((16, 128)).astype(np.float32)
    packed = Q.pack(x, qt)
    back = gguf.quants.dequantize(ggml_bytes(x, qt.ggml_type), qt.ggml_type).reshape(x.shape)
    expected = np.linalg.norm((x - back).astype(np.float64)) / np.linalg.norm(x.astype(np.float64))
    err = Q.relative_rms_error(x, packed, qt)
    assert err == pytest.approx(expected, rel=1e-4, abs=1e-12)
    bound = {"f32": 0.0, "f16": 5e-4, "bf16": 4e-3, "q8_0": 1e-2, "q4_0": 0.12}[name]
    assert err <= bound
    assert Q.relative_rms_error(np.zeros((1, 32), np.float32), Q.pack(np.zeros((1, 32), np.float32), qt), qt) == 0.0


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="not a whole number of 32-value blocks"):
        Q.pack(np.zeros((2, 48), np.float32), QUANT_TYPES[T.Q4_0])
