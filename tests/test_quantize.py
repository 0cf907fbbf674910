"""Our packers against gguf.quants (llama.cpp's own Python port of ggml-quants.c), byte for byte."""
from __future__ import annotations

import numpy as np
import pytest
import gguf.quants
from gguf import GGMLQuantizationType as T

from edgegemma.converter import quantize as Q
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


@pytest.mark.parametrize("name", [name for name, qt in QUANT_TYPES_BY_NAME.items() if qt.written])
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


# --- the `search` quantizer -----------------------------------------------------------------

def weighted_sq_error(x: np.ndarray, packed: np.ndarray, qt, importance=None) -> float:
    """Σ w·(x − deq)² with the search's own weights, deq read back by gguf.quants."""
    blocks = x.reshape(-1, qt.block_size)
    imp = None if importance is None else np.broadcast_to(importance, x.shape).reshape(blocks.shape)
    w = Q.block_weights(blocks, imp)
    back = gguf.quants.dequantize(packed, qt.ggml_type).reshape(blocks.shape)
    return float(np.sum(w * np.square(blocks - back), dtype=np.float64))


def search_cases():
    rng = np.random.default_rng(6)
    yield "normal", rng.standard_normal((64, 256)).astype(np.float32), None
    yield "outliers", rng.standard_t(2, size=(64, 256)).astype(np.float32), None
    spiky = rng.standard_normal((64, 256)).astype(np.float32)
    spiky[rng.random(spiky.shape) < 0.01] *= 40  # a few huge values, as real weight matrices have
    yield "spikes", spiky, None
    yield "importance", rng.standard_normal((64, 256)).astype(np.float32), rng.lognormal(0, 2, 256).astype(np.float32)
    yield "edge blocks", np.repeat(edge_blocks(), 2, axis=1)[:, :32].copy(), None


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_search_never_worse_than_ggml_per_block(name):
    qt = QUANT_TYPES_BY_NAME[name]
    for label, x, imp in search_cases():
        ours, theirs = Q.pack(x, qt, "search", imp), ggml_bytes(x, qt.ggml_type)
        for b in range(x.size // 32):  # block by block: the search keeps ggml's scale where it is best
            row, col = divmod(b * 32, x.shape[1])
            xb = x[row:row + 1, col:col + 32]
            ib = None if imp is None else imp[col:col + 32]
            sl = lambda p: p.reshape(-1, qt.type_size)[b:b + 1]
            e_ours, e_ggml = weighted_sq_error(xb, sl(ours), qt, ib), weighted_sq_error(xb, sl(theirs), qt, ib)
            assert e_ours <= e_ggml * (1 + 1e-6) or not np.isfinite(e_ggml), (label, b, e_ours, e_ggml)


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_search_lowers_the_error_on_realistic_data(name):
    qt = QUANT_TYPES_BY_NAME[name]
    for label, x, imp in list(search_cases())[:4]:
        ours, theirs = Q.pack(x, qt, "search", imp), ggml_bytes(x, qt.ggml_type)
        gain = 1 - weighted_sq_error(x, ours, qt, imp) / weighted_sq_error(x, theirs, qt, imp)
        assert gain > 0.01, (label, gain)  # measured: 2 % (heavy tails) to 54 % (with importance) less
        assert Q.relative_rms_error(x, ours, qt) <= 1.02 * Q.relative_rms_error(x, theirs, qt), label


def test_importance_moves_the_error_to_unimportant_columns():
    qt = QUANT_TYPES_BY_NAME["q4_0"]
    x = np.random.default_rng(7).standard_normal((256, 64)).astype(np.float32)
    imp = np.where(np.arange(64) % 32 < 4, 100.0, 1.0).astype(np.float32)  # 4 columns of every block matter
    plain, weighted = Q.pack(x, qt, "search"), Q.pack(x, qt, "search", imp)
    err = lambda p: np.square(x - Q.unpack(p, qt).reshape(x.shape))
    important = np.arange(64) % 32 < 4
    assert err(weighted)[:, important].sum() < 0.8 * err(plain)[:, important].sum()


@pytest.mark.parametrize("name", ["q8_0", "q4_0"])
def test_search_blocks_are_plain_ggml_blocks(name):
    """The same bytes per block, decodable by gguf.quants; only the scale (and so the levels) differ."""
    qt = QUANT_TYPES_BY_NAME[name]
    x = np.random.default_rng(8).standard_normal((8, 128)).astype(np.float32)
    packed = Q.pack(x, qt, "search")
    assert packed.shape == Q.pack(x, qt).shape == (8, qt.row_bytes(128)) and packed.dtype == np.uint8
    back = gguf.quants.dequantize(packed, qt.ggml_type).reshape(x.shape)
    assert np.linalg.norm(back - x) / np.linalg.norm(x) <= {"q8_0": 1e-2, "q4_0": 0.12}[name]


def test_ggml_quantizer_is_still_bit_identical():
    rng = np.random.default_rng(9)
    for name in ("q8_0", "q4_0"):
        qt = QUANT_TYPES_BY_NAME[name]
        x = rng.standard_t(3, size=(32, 256)).astype(np.float32)
        np.testing.assert_array_equal(Q.pack(x, qt, "ggml"), ggml_bytes(x, qt.ggml_type))
        np.testing.assert_array_equal(Q.pack(x, qt, "ggml", np.ones(256, np.float32)), ggml_bytes(x, qt.ggml_type))


def test_search_leaves_float_types_alone():
    x = np.random.default_rng(10).standard_normal((4, 64)).astype(np.float32)
    for name in ("f32", "f16", "bf16"):
        qt = QUANT_TYPES_BY_NAME[name]
        np.testing.assert_array_equal(Q.pack(x, qt, "search", np.ones(64, np.float32)), Q.pack(x, qt))


def test_bad_quantizer_or_importance_named():
    qt = QUANT_TYPES_BY_NAME["q4_0"]
    x = np.zeros((2, 64), np.float32)
    with pytest.raises(ValueError, match="unknown quantizer 'awq'"):
        Q.pack(x, qt, "awq")
    with pytest.raises(ValueError, match=r"importance has shape \(32,\), expected \(64,\)"):
        Q.pack(x, qt, "search", np.ones(32, np.float32))


@pytest.mark.skipif(Q._search_compiled is None, reason="Numba not installed: only the numpy search runs")
def test_numba_search_matches_the_numpy_search():
    """The compiled loop and the numpy oracle search the same candidates; their errors agree to 1 %."""
    x = np.random.default_rng(11).standard_t(4, size=(128, 256)).astype(np.float32)
    blocks = x.reshape(-1, 32)
    w = Q.block_weights(blocks, None)
    for targets, lo, hi, ggml, levels in ((Q._Q4_0_TARGETS, -8, 7, Q.ggml_scales_q4_0, Q.q4_0_levels),
                                          (Q._Q8_0_TARGETS, -127, 127, Q.ggml_scales_q8_0, Q.q8_0_levels)):
        fast = Q._search_fast(blocks, w, targets, lo, hi, ggml(blocks), levels)
        slow = Q._search(blocks, w, targets, lo, hi, ggml(blocks), levels)
        e_fast, e_slow = (Q.weighted_error(blocks, w, d, levels).sum() for d in (fast, slow))
        assert abs(e_fast - e_slow) <= 0.01 * e_slow


@pytest.mark.parametrize("qt", [QUANT_TYPES[T.Q8_0], QUANT_TYPES[T.Q4_0]], ids=lambda qt: qt.name)
def test_lookup_tables_get_the_least_plain_squared_error(qt):
    """An embedding table is read, not multiplied: its search minimises Σ(x − q·d)², block by block
    never worse than ggml's rule and, over a table, clearly better."""
    x = np.random.default_rng(7).standard_normal((64, 256)).astype(np.float32)
    sq = lambda packed: np.square(Q.unpack(packed, qt).reshape(x.shape) - x).reshape(-1, 32).sum(axis=1)
    ours, ggml = sq(Q.pack(x, qt, "search", lookup=True)), sq(Q.pack(x, qt, "ggml"))
    assert np.all(ours <= ggml * (1 + 1e-6))
    assert ours.sum() < 0.97 * ggml.sum()
    with pytest.raises(ValueError, match="lookup table has no importance"):
        Q.pack(x, qt, "search", np.ones(256, np.float32), lookup=True)
