"""kernels/: bit-exact against gguf.quants, matmul against float64, Numba against numpy, backend selection.

The whole file also runs with NUMBA_DISABLE_JIT=1 (test_suite_passes_without_jit), at smaller sizes since the
Numba kernels then run as plain Python.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from edgegemma import kernels
from edgegemma.kernels import blocks, numpy_backend

try:
    from edgegemma.kernels import amx_attention, amx_matmul, float_matmul, int_matmul, int_panels, int_tile, jit, numba_backend
except ImportError:  # Numba not installed: the numpy backend is still tested
    numba_backend = None

ROOT = Path(__file__).resolve().parents[1]
NO_JIT = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0]
BACKENDS = [pytest.param(numpy_backend, id="numpy"), pytest.param(numba_backend, id="numba", marks=pytest.mark.skipif(numba_backend is None, reason="numba not installed"))]
# (rows, k): the model's widths; rows deliberately not multiples of any tile or thread chunk.
SHAPES = [(37, 64), (29, 128)] if NO_JIT else [(301, 768), (97, 1152), (70, 3072)]
NS = [1, 5, 16, 17] if NO_JIT else [1, 3, 16, 17, 100]


def stored(values: np.ndarray, qtype) -> np.ndarray:
    """values quantized by gguf.quants as a GGUF file stores them: read-only uint8 (rows, row_bytes)."""
    raw = np.ascontiguousarray(gguf.quants.quantize(values, qtype)).view(np.uint8).reshape(values.shape[0], -1)
    raw.flags.writeable = False
    return raw


def reference(raw: np.ndarray, qtype) -> np.ndarray:
    """gguf.quants' dequantization: the independent implementation."""
    return gguf.quants.dequantize(raw, qtype).astype(np.float32, copy=False).reshape(raw.shape[0], -1)


def weights(rows: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32)


def assert_matmul_close(y, x, w_float, tol):
    """|y - x @ W.T| <= tol * (|x| @ |W|.T), elementwise, against a float64 product: the standard bound for a
    float32 dot product with relative error tol per term, whatever the summation order."""
    x64, w64 = x.astype(np.float64), w_float.astype(np.float64)
    ref = x64 @ w64.T
    scale = np.abs(x64) @ np.abs(w64).T
    assert y.dtype == np.float32 and y.shape == ref.shape
    err = np.abs(y - ref) / (scale + 1e-300)
    assert err.max() <= tol, f"worst error {err.max():.3g} of the |x|·|W| scale exceeds {tol:g}"


def takes_int(backend, qtype):
    """Whether numba's matmul takes its integer design (int16 activations) for this type here."""
    return backend is not None and backend is numba_backend and int(qtype) in numba_backend.INT_TYPES


def quantized_activations(x):
    """numpy's version of the integer design's activations: per block of 32 values, dx = max|x| / L and
    qx = rint(x * (L / max|x|)) in float32 arithmetic, L = 32767 (int16). qx as float64 (n, k)."""
    levels = np.float32(32767.0)
    blocks = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(blocks).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax > 0, levels / amax, np.float32(0.0)).astype(np.float32)
    qx = np.rint(blocks * inverse)
    return qx.reshape(x.shape).astype(np.float64), (amax / levels)[..., 0]


def assert_int_matmul_close(y, x, w_float):
    """What quantizing the activations may change: each value of x moves by at most half a step, dx / 2, so
    y moves from x @ W.T by at most sum over blocks of dx / 2 * sum |w| over the block; plus float32 rounding."""
    _, dx = quantized_activations(x)
    rows = w_float.shape[0]
    w_abs = np.abs(w_float.astype(np.float64)).reshape(rows, -1, 32).sum(axis=2)
    bound = (dx.astype(np.float64) / 2) @ w_abs.T
    x64, w64 = x.astype(np.float64), w_float.astype(np.float64)
    err = np.abs(y - x64 @ w64.T) - bound - 2e-6 * (np.abs(x64) @ np.abs(w64).T)
    assert y.dtype == np.float32 and err.max() <= 0, f"error beyond the activation-quantization bound by {err.max():.3g}"


def assert_matmul_as_designed(y, backend, qtype, x, w_float):
    """Float designs: the float32 bound; numba's integer design: the bound its activation quantization allows."""
    if takes_int(backend, qtype):
        assert_int_matmul_close(y, x, w_float)
    else:
        assert_matmul_close(y, x, w_float, tol=2e-6)


# --- bit-exact decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,k", SHAPES)
def test_dequantize_is_bit_exact(backend, qtype, rows, k):
    raw = stored(weights(rows, k), qtype)
    got = backend.dequantize(raw, qtype)
    assert got.dtype == np.float32 and got.shape == (rows, k)
    np.testing.assert_array_equal(got.view(np.uint32), reference(raw, qtype).view(np.uint32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", [T.F16, T.BF16, T.Q8_0, T.Q4_0], ids=lambda t: t.name)
def test_dequantize_edge_values(backend, qtype):
    """Zeros, signed zeros, subnormal halves, the largest half, infinities: the bit tricks must hold everywhere."""
    special = np.array([0.0, -0.0, 6e-8, -6e-8, 3e-5, -1e-6, 65504.0, -65504.0, 1.0, -2.5, 1e-3, 7.0], np.float32)
    values = np.tile(special, 64 // special.size + 1)[:64].reshape(1, 64) * np.array([[1.0], [1e-4]], np.float32)
    if qtype in (T.F16, T.BF16):
        values = np.concatenate([values, np.array([[np.inf, -np.inf] + [1.0] * 62], np.float32)])
    raw = stored(values, qtype)
    np.testing.assert_array_equal(backend.dequantize(raw, qtype).view(np.uint32), reference(raw, qtype).view(np.uint32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_rows_picks_the_rows(backend, qtype):
    rows, k = SHAPES[0]
    raw = stored(weights(rows, k, seed=1), qtype)
    full = reference(raw, qtype)
    for ids in ([rows - 1, 0, 5, 5, 2], np.array([3], np.int32), [], np.arange(rows)[::-3]):
        got = backend.dequantize_rows(raw, qtype, ids)
        assert got.shape == (len(ids), k) and got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), full[np.asarray(ids, np.int64)].view(np.uint32))
    with pytest.raises(IndexError, match=str(rows)):
        backend.dequantize_rows(raw, qtype, [0, rows])


# --- matmul ------------------------------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["one-tile", "small-tiles"])
def tiles(request, monkeypatch):
    """Run matmul with the normal task sizes and with ones so small that tiles (numpy) end mid-way through the
    rows and token chunks (numba) end mid-way through the tokens."""
    if request.param:
        monkeypatch.setattr(numpy_backend, "TILE_VALUES", 7 * SHAPES[0][1])
        if numba_backend is not None:
            monkeypatch.setattr(float_matmul, "TASK_TOKENS", 7)
    return request.param


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,k", SHAPES)
def test_matmul_matches_float64(backend, qtype, rows, k, tiles):
    raw = stored(weights(rows, k, seed=2), qtype)
    w_float = reference(raw, qtype)
    rng = np.random.default_rng(3)
    for n in NS:
        x = rng.standard_normal((n, k)).astype(np.float32)
        assert_matmul_as_designed(backend.matmul(x, raw, qtype), backend, qtype, x, w_float)


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
@pytest.mark.parametrize("design", ["matmul_dot", "matmul_outer"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_every_numba_design_matches_float64(design, qtype):
    """matmul picks a design by n; each must be right at every n, not only where it is picked."""
    rows, k = SHAPES[1]
    raw = stored(weights(rows, k, seed=4), qtype)
    w_float = reference(raw, qtype)
    rng = np.random.default_rng(5)
    for n in NS:
        x = rng.standard_normal((n, k)).astype(np.float32)
        assert_matmul_close(getattr(numba_backend, design)(x, raw, qtype), x, w_float, tol=2e-6)


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_numba_equals_numpy(qtype):
    rows, k = SHAPES[0]
    raw = stored(weights(rows, k, seed=6), qtype)
    np.testing.assert_array_equal(numba_backend.dequantize(raw, qtype), numpy_backend.dequantize(raw, qtype))
    ids = [4, 1, rows - 1]
    np.testing.assert_array_equal(numba_backend.dequantize_rows(raw, qtype, ids), numpy_backend.dequantize_rows(raw, qtype, ids))
    x = np.random.default_rng(7).standard_normal((NS[-1], k)).astype(np.float32)
    a, b = numba_backend.matmul(x, raw, qtype), numpy_backend.matmul(x, raw, qtype)
    if not takes_int(numba_backend, qtype):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())
    else:  # numpy's float32 product stands in for the exact one
        assert_int_matmul_close(a, x, numpy_backend.dequantize(raw, qtype))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())


# --- the integer design: vector IR with AVX-512 VNNI or AVX2, plain loops elsewhere (and without JIT) ------------

needs_int = pytest.mark.skipif(numba_backend is None, reason="numba not installed")
INT_NS = [1, 7, 40] if NO_JIT else [1, 7, 40, 300]
INT_SHAPES = [(37, 64), (29, 128)] if NO_JIT else [(301, 768), (97, 1152), (70, 3072)]  # rows past whole panels


@needs_int
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0], ids=lambda t: t.name)
def test_quantized_activations_match_numpy(qtype):
    x = np.random.default_rng(10).standard_normal((31 if NO_JIT else 301, 1152)).astype(np.float32)  # last group part-full
    x[3, 64:96] = 0.0  # an all-zero block: scale 0, integers 0
    x[5] *= 1e4
    offset = int_panels.INT_OFFSET[qtype]  # the panels hold q + offset, which cx takes off again
    qx, dx, cx = int_matmul.quantize_activations(x, offset)
    dx, cx = (int_matmul.activation_rows(a, len(x)) for a in (dx, cx))  # from the tiles' groups of tokens
    want_q, want_d = quantized_activations(x)
    np.testing.assert_array_equal(qx, want_q)
    np.testing.assert_allclose(dx, want_d, rtol=1e-7, atol=0)
    np.testing.assert_array_equal(cx, -offset * want_q.reshape(len(x), -1, 32).sum(axis=2))


@needs_int
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0], ids=lambda t: t.name)
@pytest.mark.parametrize("rows,k", INT_SHAPES)
def test_int_matmul_against_numpy(qtype, rows, k):
    """Twice: against the exact product of the quantized activations (only float32 rounding may differ), and
    against the numpy oracle within what quantizing the activations can change. On a VNNI or AVX2 target this is
    the vector-IR tile; elsewhere, and in the NUMBA_DISABLE_JIT run, the plain-loop tile with the same arithmetic."""
    raw = stored(weights(rows, k, seed=11), qtype)
    w_float = numpy_backend.dequantize(raw, qtype)
    rng = np.random.default_rng(12)
    for n in INT_NS:
        x = rng.standard_normal((n, k)).astype(np.float32)
        x[0, :32] *= 50.0  # a block with an outlier, as Gemma's activations have
        y = numba_backend.matmul_int(x, raw, qtype)
        qx, dx = quantized_activations(x)
        exact = (qx * np.repeat(dx, 32, axis=1)).astype(np.float32)
        assert_matmul_close(y, exact, w_float, tol=2e-6)
        assert_int_matmul_close(y, x, numpy_backend.dequantize(raw, qtype))
        np.testing.assert_allclose(y, numpy_backend.matmul(x, raw, qtype), rtol=0, atol=1e-4 * np.abs(y).max())


needs_tiles = pytest.mark.skipif(numba_backend is None or not amx_matmul.AVAILABLE,
                                 reason="needs Numba and a CPU with AMX tiles that Linux lends")


@needs_tiles
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0], ids=lambda t: t.name)
@pytest.mark.parametrize("rows,k", INT_SHAPES)
def test_tile_matmul_within_its_error_bound(qtype, rows, k):
    """The tiles' matmul (long batches) against float64, value by value: each product of an activation and a
    weight, both rounded to bfloat16 (2^-9 each), is within 2^-8 + 2^-18 of its value, and float32 sums add
    k * 2^-24 of the rounded products, so |error| <= (2^-8 + 2^-18 + k * 2^-24 (1 + 2^-8)) * sum |x| |w|.
    Weights packed as the model packs them, several sharing the activations."""
    raw = [stored(weights(rows, k, seed=16 + i), qtype) for i in range(2)]
    packed = [numba_backend.pack(w, qtype) for w in raw]
    assert amx_matmul.takes_matmul(packed)
    rng = np.random.default_rng(17)
    for n in INT_NS:
        x = rng.standard_normal((n, k)).astype(np.float32)
        x[0, :32] *= 50.0
        got = numba_backend.matmuls(x, [(w, qtype) for w in packed], long_batch=True)
        for y, w in zip(got, raw):
            w_float = numpy_backend.dequantize(w, qtype).astype(np.float64)
            assert y.dtype == np.float32 and y.shape == (n, rows) and y.flags.c_contiguous
            bound = (2.0 ** -8 + 2.0 ** -18 + k * 2.0 ** -24 * (1 + 2.0 ** -8)) * (np.abs(x.astype(np.float64)) @ np.abs(w_float).T)
            error = np.abs(y - x.astype(np.float64) @ w_float.T)
            assert (error <= bound).all(), f"n={n}: error {error.max():.3g} where the bound is {bound.min():.3g} or more"
            # The numpy oracle rounds the same operands: only the float32 sums' order differs.
            oracle = numpy_backend.matmul(x, w, qtype, long_batch=True)
            x_b, w_b = (numpy_backend.round_to_bf16(a).astype(np.float64) for a in (x, w_float))
            sums = 2 * k * 2.0 ** -24 * (np.abs(x_b) @ np.abs(w_b).T)
            assert (np.abs(y - oracle) <= sums).all(), f"n={n}: {np.abs(y - oracle).max():.3g} from the oracle"
        single = numba_backend.matmul(x, packed[0], qtype, long_batch=True)
        np.testing.assert_array_equal(single, got[0])  # a row's result does not depend on its company


@needs_int
def test_long_batch_takes_the_tiles_only_for_packed_weights():
    raw = stored(weights(40, 64, seed=18), T.Q8_0)
    x = np.random.default_rng(19).standard_normal((5, 64)).astype(np.float32)
    packed = int_panels.pack_int(raw, T.Q8_0)
    assert amx_matmul.takes_matmul([packed]) == amx_matmul.AVAILABLE
    assert not amx_matmul.takes_matmul([raw])
    np.testing.assert_array_equal(numba_backend.matmul(x, raw, T.Q8_0, long_batch=True), numba_backend.matmul(x, raw, T.Q8_0))
    assert numba_backend.LONG_SEQUENCE == (amx_matmul.LONG_SEQUENCE if amx_matmul.AVAILABLE else 0)
    refusal = (ValueError, "packed for the integer design") if amx_matmul.AVAILABLE else (NotImplementedError, "AMX")
    with pytest.raises(refusal[0], match=refusal[1]):
        amx_matmul.matmuls(x, [raw], T.Q8_0)


@needs_int
def test_int_matmul_takes_only_its_types():
    with pytest.raises(ValueError, match="Q8_0 and Q4_0 weights, not F16"):
        numba_backend.matmul_int(np.ones((2, 64), np.float32), weights(3, 64).astype(np.float16), T.F16)


@needs_int
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0], ids=lambda t: t.name)
@pytest.mark.parametrize("rows,k", INT_SHAPES)
def test_pack_takes_the_blocks_bytes(qtype, rows, k):
    """A packed weight holds what its blocks held, in panels of NR rows (Q4_0: two rows' nibbles a byte, the
    scales float16): no float32, and no more memory than the stored rows, padded to whole panels."""
    raw = stored(weights(rows, k, seed=14), qtype)
    packed = int_panels.pack_int(raw, qtype)
    assert isinstance(packed, int_panels.PackedWeight) and (packed.rows, packed.k) == (rows, k)
    assert packed.panels.dtype == np.uint8 and packed.scales.dtype == np.uint16
    assert packed.nbytes == -(-rows // int_panels.NR) * int_panels.NR * raw.shape[1]


@needs_int
def test_packed_weights_multiply_only_as_packed():
    raw = stored(weights(70, 768, seed=15), T.Q8_0)
    x = np.ones((3, 768), np.float32)
    with pytest.raises(ValueError, match="packed as Q8_0, multiplied as Q4_0"):
        numba_backend.matmul(x, int_panels.pack_int(raw, T.Q8_0), T.Q4_0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pack_leaves_what_its_matmul_reads_as_stored(backend):
    """numpy reads every weight as stored, and numba the types without an integer design here."""
    raw = stored(weights(70, 768, seed=16), T.F16)
    assert backend.pack(raw, T.F16) is raw
    if backend is numpy_backend:
        q = stored(weights(70, 768, seed=16), T.Q4_0)
        assert backend.pack(q, T.Q4_0) is q


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmuls_equal_one_matmul_each(backend):
    """Weights sharing activations (q, k, v; gate, up) give each weight's own product, bit for bit, whether the
    backend shares the work on x (one type) or not (mixed types)."""
    k = SHAPES[0][1]
    x = np.random.default_rng(21).standard_normal((19, k)).astype(np.float32)
    for qtypes in ([T.Q4_0] * 3, [T.Q8_0] * 2, [T.Q8_0, T.Q4_0, T.F16]):
        ws = [(stored(weights(rows, k, seed=22 + i), qt), qt) for i, (rows, qt) in enumerate(zip((301, 97, 64), qtypes))]
        got = backend.matmuls(x, ws)
        assert len(got) == len(ws)
        for y, (w, qt) in zip(got, ws):
            np.testing.assert_array_equal(y, backend.matmul(x, w, qt))
        packed = [(backend.pack(w, qt), qt) for w, qt in ws]  # as a model calls it: packed once, then call after call
        for rows_of_x in (x, x[:3]):
            for y, z in zip(backend.matmuls(rows_of_x, ws), backend.matmuls(rows_of_x, packed)):
                np.testing.assert_array_equal(y, z)


@needs_int
def test_shared_int_matmul_needs_one_row_length():
    ws = [stored(weights(32, 64), T.Q8_0), stored(weights(32, 128), T.Q8_0)]
    with pytest.raises(ValueError, match="rows of one length"):
        numba_backend.matmul_int_shared(np.ones((2, 64), np.float32), ws, T.Q8_0)


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0], ids=lambda t: t.name)
def test_float_fallback_equals_numpy(qtype, monkeypatch):
    """Where the target has no vector tile, matmul takes the float designs: the same answers as numpy to float32 rounding."""
    monkeypatch.setattr(numba_backend, "INT_TYPES", frozenset())
    rows, k = SHAPES[0]
    raw = stored(weights(rows, k, seed=13), qtype)
    for n in (1, 7, 40, 300) if not NO_JIT else (1, 5, 40):
        x = np.random.default_rng(n).standard_normal((n, k)).astype(np.float32)
        a, b = numba_backend.matmul(x, raw, qtype), numpy_backend.matmul(x, raw, qtype)
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())


FEATURE_PROBE = """
    import numpy as np, gguf
    from edgegemma.kernels import numba_backend as nb, numpy_backend
    rng = np.random.default_rng(0)
    worst = 0.0
    for qtype in (8, 2):
        raw = gguf.quants.quantize(rng.standard_normal((70, 768)).astype(np.float32), qtype)
        x = rng.standard_normal((300, 768)).astype(np.float32)
        a, b = nb.matmul(x, raw, qtype), numpy_backend.matmul(x, raw, qtype)
        worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
    print(bool(nb.INT_TYPES), sorted(nb.INT_TYPES), worst)
"""


def _features_without(*removed: str) -> str:
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    for feature in removed:
        features = features.replace(f"+{feature}", f"-{feature}")
    return features


@pytest.mark.skipif(numba_backend is None or NO_JIT or int_tile.VECTOR is None,
                    reason="needs a host with the vector tile to take it away from")
def test_without_the_vector_tile_matmul_is_the_float_one(tmp_path):
    """The same host compiling for an x86 CPU without AVX-512 VNNI and AVX2 (NUMBA_CPU_FEATURES, as on a
    pre-2013 machine): no integer design, and matmul agrees with numpy to float32 rounding."""
    features = _features_without("avx512vnni", "avx2")
    done = run_python(FEATURE_PROBE, {"NUMBA_CPU_FEATURES": features, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["False", "[]"] and float(done.stdout.split()[-1]) <= 2e-6, done.stdout


@pytest.mark.skipif(numba_backend is None or NO_JIT or int_tile.VECTOR is None or int_tile.VECTOR.name != "vpdpwssd",
                    reason="needs an AVX-512 VNNI host to compile the AVX2 tile beside it")
def test_avx2_tile_on_a_vnni_host(tmp_path):
    """An AVX-512 VNNI host compiling for AVX2 alone takes the AVX2 tile, with the same answers to the
    activations' int16 rounding (on an AVX2 host, test_int_matmul_against_numpy runs that tile directly)."""
    features = _features_without(*(f for f in ("avx512f", "avx512vnni", "avx512bw", "avx512vl", "avx512dq", "avx512cd",
                                                "avx512bf16", "avx512vbmi", "avx512vbmi2", "avx512bitalg",
                                                "avx512vpopcntdq", "avx512ifma", "avx512fp16", "amx-tile",
                                                "amx-int8", "amx-bf16", "avxvnni")))
    done = run_python(FEATURE_PROBE, {"NUMBA_CPU_FEATURES": features, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "True" and float(done.stdout.split()[-1]) <= 1e-4, done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_takes_float_views_and_memmaps(backend, tmp_path):
    """A float32/float16 tensor as GGUFReader hands it out, and a read-only np.memmap, are read in place."""
    w = weights(40, 64, seed=8)
    x = np.random.default_rng(9).standard_normal((3, 64)).astype(np.float32)
    assert_matmul_close(backend.matmul(x, w, T.F32), x, w, tol=2e-6)
    assert_matmul_close(backend.matmul(x, w.astype(np.float16), T.F16), x, w.astype(np.float16).astype(np.float32), tol=2e-6)
    path = tmp_path / "w.bin"
    stored(w, T.Q8_0).tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(40, 68))
    assert_matmul_as_designed(backend.matmul(x, mm, T.Q8_0), backend, T.Q8_0, x, reference(np.asarray(mm), T.Q8_0))


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
def test_every_half_decodes_as_numpy_does():
    """All 65,536 halves through the F16 decoder, bit for bit; signalling NaNs may come out quiet (the hardware
    conversion quiets them), but must stay NaN with the same sign."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    raw = bits.view(np.uint8).reshape(64, -1)
    got, want = numba_backend.dequantize(raw, T.F16).reshape(-1), bits.view(np.float16).astype(np.float32)
    signalling = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x03FF) != 0) & ((bits & 0x0200) == 0)
    np.testing.assert_array_equal(got[~signalling].view(np.uint32), want[~signalling].view(np.uint32))
    assert np.isnan(got[signalling]).all() and (np.signbit(got[signalling]) == np.signbit(want[signalling])).all()


# --- the array ops: rms_norm (alone, added, rotated), gelu_tanh, attention -----------------------------------------


def attention_float64(q, k, v, scale, radius):
    """Textbook attention in float64 over the whole (L, L) score matrix, the band as a mask."""
    length, n_heads, _ = q.shape
    group = n_heads // k.shape[1]
    out = np.empty(q.shape, np.float64)
    far = np.abs(np.arange(length)[:, None] - np.arange(length)[None, :]) > (length if radius is None else radius)
    for h in range(n_heads):
        scores = (q[:, h].astype(np.float64) @ k[:, h // group].astype(np.float64).T) * scale
        scores[far] = -np.inf
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        out[:, h] = (weights / weights.sum(axis=1, keepdims=True)) @ v[:, h // group].astype(np.float64)
    return out


ATTENTION_CASES = [(1, 3, 1, 16, None), (70, 3, 1, 64, None), (70, 3, 1, 64, 5), (300, 4, 2, 32, 40), (37, 2, 2, 16, 0)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length,n_heads,n_kv,d,radius", ATTENTION_CASES if not NO_JIT else ATTENTION_CASES[:3])
def test_attention_matches_float64(backend, length, n_heads, n_kv, d, radius, monkeypatch):
    if backend is numba_backend:  # the float design (the tiles' own test is below)
        monkeypatch.setattr(amx_attention, "MIN_LENGTH", 1 << 62)
    rng = np.random.default_rng(length + d)
    q, k, v = (rng.standard_normal((length, h, d)).astype(np.float32) * 2 for h in (n_heads, n_kv, n_kv))
    got = backend.attention(q, k, v, d ** -0.5, radius)
    assert got.dtype == np.float32 and got.shape == q.shape
    np.testing.assert_allclose(got, attention_float64(q, k, v, d ** -0.5, radius), rtol=0, atol=2e-6 * np.abs(v).max())
    # Written over the queries themselves (the model's way to save a buffer): the same answer.
    in_place = q.copy()
    assert backend.attention(in_place, k, v, d ** -0.5, radius, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, got)


AMX_CASES = [(1, 3, 1, 32, None), (70, 3, 1, 64, 5), (300, 4, 2, 32, 40), (37, 2, 2, 64, 0), (600, 3, 1, 256, 512),
             (250, 3, 1, 256, None)]


@needs_tiles
@pytest.mark.parametrize("length,n_heads,n_kv,d,radius", AMX_CASES)
def test_amx_attention_within_its_error_bound(length, n_heads, n_kv, d, radius, monkeypatch):
    """The tiles' design (kernels/amx_attention.py) against float64, held to the bound its three-term bfloat16
    products give: each product within 3 * 2^-16 of its value (plus float32 sums), so every score s within
    delta = (3 * 2^-16 + d * 2^-24) * scale * max sum |q| |k|, which moves the softmax's weights by a factor
    within e^(+-2 delta), and the weights times the values add 3 * 2^-16 max |v|. A wrong tile layout is off by
    the size of the values."""
    monkeypatch.setattr(amx_attention, "MIN_LENGTH", 0)
    rng = np.random.default_rng(length + d)
    q, k, v = (rng.standard_normal((length, h, d)).astype(np.float32) * 2 for h in (n_heads, n_kv, n_kv))
    scale = d ** -0.5
    got = numba_backend.attention(q, k, v, scale, radius)
    group = n_heads // n_kv
    sums = max((np.abs(q[:, h].astype(np.float64)) @ np.abs(k[:, h // group].astype(np.float64)).T).max() for h in range(n_heads))
    delta = (3 * 2.0 ** -16 + d * 2.0 ** -24) * scale * sums
    bound = (np.expm1(2 * delta) + 3 * 2.0 ** -16 + 2e-6) * np.abs(v).max()
    error = np.abs(got - attention_float64(q, k, v, scale, radius)).max()
    assert error <= bound, f"error {error:.3g} above the design's bound {bound:.3g}"
    in_place = q.copy()
    assert numba_backend.attention(in_place, k, v, scale, radius, out=in_place) is in_place
    np.testing.assert_array_equal(in_place, got)


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
def test_attention_takes_the_tiles_for_long_sequences():
    amx = amx_attention
    assert amx.takes(amx.MIN_LENGTH, 256) == amx.AVAILABLE
    assert not amx.takes(amx.MIN_LENGTH - 1, 256) and not amx.takes(4 * amx.MIN_LENGTH, 48)
    if amx.AVAILABLE:
        rng = np.random.default_rng(3)
        q, k, v = (rng.standard_normal((amx.MIN_LENGTH, h, 64)).astype(np.float32) for h in (3, 1, 1))
        want = amx.attention(q, k, v, 0.125, 40, np.empty_like(q))
        np.testing.assert_array_equal(numba_backend.attention(q, k, v, 0.125, 40), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_output_is_checked(backend):
    q, k = np.ones((5, 2, 16), np.float32), np.ones((5, 1, 16), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        backend.attention(q, k, k, 0.25, None, out=q[:4])
    read_only = q.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writable C-contiguous float32"):
        backend.attention(q, k, k, 0.25, None, out=read_only)


@pytest.mark.parametrize("backend", BACKENDS)
def test_elementwise_ops_match_float64(backend):
    rng = np.random.default_rng(11)
    n = 40 if NO_JIT else 3000  # large enough that the Numba kernels split the work between threads
    x = (rng.standard_normal((n, 3, 64)) * 3).astype(np.float32)
    x[0, 0] = 0.0  # an all-zero row: eps keeps it finite
    weight = rng.standard_normal(64).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-6) * weight
    np.testing.assert_allclose(backend.rms_norm(x, weight, 1e-6), want, rtol=2e-6, atol=1e-6)

    y = np.concatenate([x.reshape(-1), np.float32([-1e4, -60.0, -9.0, 1e-30, 0.0, 9.0, 1e4])])
    y64 = y.astype(np.float64)
    want = 0.5 * y64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (y64 + 0.044715 * y64 ** 3)))
    got = backend.gelu_tanh(y)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_array_less(np.abs(got - want), 1e-6 * np.maximum(1.0, np.abs(y64)))
    other = rng.standard_normal(y.shape).astype(np.float32)
    in_place = y.copy()
    assert backend.gelu_tanh_mul(in_place, other) is in_place
    np.testing.assert_array_less(np.abs(in_place - want * other), 1e-6 * np.maximum(1.0, np.abs(y64 * other)))
    with pytest.raises(ValueError, match="do not match"):
        backend.gelu_tanh_mul(y.copy(), other[:-1])
    with pytest.raises(ValueError, match="writable C-contiguous float32"):
        backend.gelu_tanh_mul(y.astype(np.float64), other)

    normed = x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-6) * weight
    residual = rng.standard_normal(x.shape).astype(np.float32)
    added = residual.copy()
    assert backend.add_rms_norm(added, x, weight, 1e-6) is added
    np.testing.assert_allclose(added, residual + normed, rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        backend.add_rms_norm(added, x[:-1], weight, 1e-6)

    angles = rng.uniform(0, 100, (n, 32))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    c, s_ = cos[:, None].astype(np.float64), sin[:, None].astype(np.float64)
    want = np.concatenate([normed[..., :32] * c - normed[..., 32:] * s_, normed[..., 32:] * c + normed[..., :32] * s_], axis=-1)
    got = backend.rms_norm_rope(x, weight, 1e-6, cos, sin)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(normed).max())
    into = np.full_like(x, np.nan)  # into a given buffer (the model's q and k): every value written
    assert backend.rms_norm_rope(x, weight, 1e-6, cos, sin, out=into) is into
    np.testing.assert_array_equal(into, got)
    with pytest.raises(ValueError, match="writable C-contiguous float32"):
        backend.rms_norm_rope(x, weight, 1e-6, cos, sin, out=into[:, :, ::2])


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
def test_numba_ops_equal_numpy():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((50, 3, 64)).astype(np.float32)
    weight = rng.standard_normal(64).astype(np.float32)
    cos, sin = rng.standard_normal((50, 32)).astype(np.float32), rng.standard_normal((50, 32)).astype(np.float32)
    for name, args in [("rms_norm", (x, weight, 1e-6)), ("gelu_tanh", (x,)), ("gelu_tanh_mul", (x, x[::-1].copy())),
                       ("add_rms_norm", (x[::-1].copy(), x, weight, 1e-6)), ("rms_norm_rope", (x, weight, 1e-6, cos, sin)),
                       ("attention", (x, x[:, :1], x[:, 1:2], 0.125, 7))]:
        fresh = lambda: [a.copy() if isinstance(a, np.ndarray) else a for a in args]  # in-place ops write their x
        a, b = getattr(numba_backend, name)(*fresh()), getattr(numpy_backend, name)(*fresh())
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max(), err_msg=name)


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_type_is_named(backend):
    raw = stored(weights(4, 256), T.Q8_0)
    x = np.zeros((1, 256), np.float32)
    for bad, label in [(T.Q2_K, "Q2_K"), (int(T.IQ4_NL), "IQ4_NL"), (999, "999")]:
        for call in (lambda: backend.matmul(x, raw, bad), lambda: backend.dequantize(raw, bad), lambda: backend.dequantize_rows(raw, bad, [0])):
            with pytest.raises(ValueError, match=label) as err:
                call()
            assert "f32, f16, bf16, q8_0, q4_0" in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shape_mismatch_names_both_sizes(backend):
    raw = stored(weights(4, 768), T.Q4_0)
    with pytest.raises(ValueError, match=r"k=1152.*k=768"):
        backend.matmul(np.zeros((2, 1152), np.float32), raw, T.Q4_0)
    with pytest.raises(ValueError, match="34-byte blocks"):
        backend.matmul(np.zeros((2, 768), np.float32), raw, T.Q8_0)  # Q4_0 rows (432 bytes) read as Q8_0
    with pytest.raises(ValueError, match="2-D"):
        backend.matmul(np.zeros(768, np.float32), raw, T.Q4_0)


# --- backend selection, in fresh interpreters ---------------------------------------------------------------------


def run_python(code: str, env: dict | None = None, path_first: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("EDGEGEMMA_BACKEND",)}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (path_first, str(ROOT), full_env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=600)


SMOKE = """
    import numpy as np, gguf
    from edgegemma import kernels
    w = gguf.quants.quantize(np.ones((3, 64), np.float32), gguf.GGMLQuantizationType.Q4_0)
    y = kernels.matmul(np.ones((2, 64), np.float32), w, 2)
    assert np.allclose(y, 64.0), y
    print(kernels.BACKEND)
"""


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
@pytest.mark.parametrize("env,expected", [({}, "numba"), ({"EDGEGEMMA_BACKEND": "numba"}, "numba"), ({"EDGEGEMMA_BACKEND": "numpy"}, "numpy")])
def test_backend_is_selectable(env, expected):
    done = run_python(SMOKE, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected]


def test_numpy_backend_without_numba(tmp_path):
    """With `import numba` failing, kernels falls back to numpy quietly, unless numba was asked for by name."""
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text("raise ImportError('numba is switched off for this test')\n")
    done = run_python(SMOKE, path_first=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["numpy"]
    done = run_python(SMOKE, {"EDGEGEMMA_BACKEND": "numba"}, path_first=str(tmp_path))
    assert done.returncode != 0 and "ImportError: EDGEGEMMA_BACKEND=numba but Numba cannot be imported" in done.stderr


def test_unknown_backend_is_refused():
    done = run_python(SMOKE, {"EDGEGEMMA_BACKEND": "cuda"})
    assert done.returncode != 0 and "EDGEGEMMA_BACKEND='cuda'" in done.stderr


# --- Numba's compile cache -----------------------------------------------------------------------------------------

CACHE_PROBE = """
    import numpy as np, gguf
    import sys
    from edgegemma.kernels import amx_attention, jit, numba_backend as nb
    import numba
    for qtype in (0, 1, 30, 8, 2):
        w = gguf.quants.quantize(np.ones((3, 64), np.float32), qtype)
        nb.matmul_dot(np.ones((2, 64), np.float32), w, qtype)
        nb.matmul_outer(np.ones((40, 64), np.float32), w, qtype)
        nb.dequantize_rows(w, qtype, [1])
        nb.matmul(np.ones((2, 64), np.float32), nb.pack(w, qtype), qtype)  # the integer design, packed, where it runs
        wide = gguf.quants.quantize(np.ones((70, 64), np.float32), qtype)  # the tiles', where they run: 1 and 3 panels
        nb.matmul(np.ones((2, 64), np.float32), nb.pack(w, qtype), qtype, long_batch=True)
        nb.matmul(np.ones((2, 64), np.float32), nb.pack(wide, qtype), qtype, long_batch=True)
    x = np.ones((40, 2, 64), np.float32)
    nb.rms_norm(x, np.ones(64, np.float32), 1e-6), nb.gelu_tanh(x), nb.gelu_tanh_mul(x.copy(), x)
    nb.add_rms_norm(x.copy(), x, np.ones(64, np.float32), 1e-6), nb.rms_norm_rope(x, np.ones(64, np.float32), 1e-6, x[:, 0, :32], x[:, 0, :32])
    long = np.ones((amx_attention.MIN_LENGTH, 2, 64), np.float32)  # the tiles' design, where it runs
    nb.attention(x, x[:, :1], x[:, :1], 0.1, 3), nb.attention(long, long[:, :1], long[:, :1], 0.1, 3)
    nb.matmul_dot(np.ones((2, 64), np.float32), w, qtype)  # the serial paths too: one task, one thread
    numba.set_num_threads(1)
    nb.matmul_outer(np.ones((40, 64), np.float32), w, qtype), nb.attention(x, x[:, :1], x[:, :1], 0.1, 3)
    nb.attention(long, long[:, :1], long[:, :1], 0.1, 3)
    hits = misses = 0
    modules = [m for name, m in sys.modules.items() if name.startswith("edgegemma.kernels.")]
    for kernel in [getattr(module, name) for module in modules for name in dir(module)]:
        if not isinstance(kernel, numba.core.registry.CPUDispatcher):
            continue
        hits += sum(kernel.stats.cache_hits.values())
        misses += sum(kernel.stats.cache_misses.values())
    print(hits, misses, jit.cache_enabled())
"""


SCIPY_PROBE = """
    import sys, numpy as np, gguf, numba
    from edgegemma import kernels
    w = gguf.quants.quantize(np.ones((3, 64), np.float32), 2)
    kernels.matmul(np.ones((2, 64), np.float32), kernels.pack(w, 2), 2)
    print("scipy.linalg.cython_blas" in sys.modules)
    @numba.njit
    def dot(a):
        return np.dot(a, a)
    print(dot(np.ones(3)), "scipy.linalg.cython_blas" in sys.modules)
"""


@pytest.mark.skipif(numba_backend is None or NO_JIT or importlib.util.find_spec("scipy") is None,
                    reason="needs Numba compiling and scipy installed")
def test_kernels_load_numba_without_scipy_blas():
    """Numba would import scipy's BLAS (17 MiB) as it loads its target, for calls no kernel makes: the kernels
    keep it out, and np.dot in other compiled code still finds it."""
    done = run_python(SCIPY_PROBE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "3.0", "True"]


LLVM_PROBE = """
    import numpy as np, gguf
    from edgegemma import kernels
    from edgegemma.kernels import numba_backend  # Numba and LLVM, imported (kernels alone leave them for later)
    def llvm_kib():
        kib, inside = 0, False
        for line in open("/proc/self/smaps", encoding="ascii", errors="replace"):
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                inside = len(fields) >= 6 and "libllvmlite" in fields[5]
            elif inside and fields[0] == "Rss:":
                kib += int(fields[1])
        return kib
    after_import = llvm_kib()
    w = gguf.quants.quantize(np.ones((3, 64), np.float32), 2)
    y = kernels.matmul(np.ones((2, 64), np.float32), kernels.pack(w, 2), 2)  # compiles, or loads from the cache
    assert np.allclose(y, 64.0), y
    kernels.numba_backend.matmul_outer(np.ones((40, 64), np.float32), w, 2)  # another kernel, compiled after a release
    y = kernels.matmul(np.ones((2, 64), np.float32), kernels.pack(w, 2), 2)
    assert np.allclose(y, 64.0), y
    print(after_import, llvm_kib())
"""


@pytest.mark.skipif(numba_backend is None or NO_JIT or not sys.platform.startswith("linux"),
                    reason="needs Numba compiling, on Linux (reads /proc/self/smaps)")
def test_llvm_leaves_the_resident_set_once_kernels_are_compiled():
    """LLVM's code and data (libllvmlite.so, ~69 MiB resident after a q4_0 model's first query) are dropped from
    the resident set after each kernel compiles or loads; kernels compiled later still work."""
    done = run_python(LLVM_PROBE)
    assert done.returncode == 0, done.stderr
    after_import, after_compiling = (int(v) for v in done.stdout.split())
    print(f"\nlibllvmlite resident: {after_import / 1024:.1f} MiB after import, {after_compiling / 1024:.1f} after compiling")
    # Compiling only adds to what the import brought in (LLVM's static initialisers), unless it is released;
    # what stays is the pages the loader relocated (1.9 MiB here).
    assert after_compiling < min(8 * 1024, after_import / 4)


@pytest.mark.skipif(numba_backend is None or NO_JIT, reason="needs Numba compiling")
def test_compiled_kernels_come_from_the_cache_next_time(tmp_path):
    """Parallel kernels have had cache trouble in Numba: the second process must compile nothing."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path)}
    first = run_python(CACHE_PROBE, env)
    assert first.returncode == 0, first.stderr
    second = run_python(CACHE_PROBE, env)
    assert second.returncode == 0, second.stderr
    hits, misses, cache_ok = second.stdout.split()
    assert int(misses) == 0 and int(hits) > 0 and cache_ok == "True", second.stdout


@pytest.mark.skipif(numba_backend is None or NO_JIT, reason="needs Numba compiling")
def test_no_writable_cache_folder_is_quiet():
    """Where Numba finds no cache folder at all (read-only install, no home), the kernels compile in memory."""
    # Numba tries its cache locators in turn and gives up when none has a usable folder; take them all away.
    code = "import numba.core.caching as c\ngetattr(c, 'CacheImpl', getattr(c, '_CacheImpl', None))._locator_classes = []\n"
    code += textwrap.dedent(CACHE_PROBE)
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[2] == "False" and "Warning" not in done.stderr


@pytest.mark.skipif(NO_JIT or numba_backend is None, reason="this is the outer run")
def test_suite_passes_without_jit():
    """The Numba kernels are plain Python under NUMBA_DISABLE_JIT=1 and must give the same answers."""
    env = {k: v for k, v in os.environ.items() if k != "EDGEGEMMA_BACKEND"}
    env.update(NUMBA_DISABLE_JIT="1", PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(Path(__file__))],
        env=env, capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_round_to_bf16_is_nearest_with_ties_to_even():
    """The rounding the tiles' matmul and its oracle share: to the nearest bfloat16 (float32's top 16 bits)."""
    rng = np.random.default_rng(23)
    a = (rng.standard_normal(10_000) * np.exp2(rng.integers(-60, 60, 10_000))).astype(np.float32)
    r = numpy_backend.round_to_bf16(a)
    assert r.dtype == np.float32 and not (r.view(np.uint32) & 0xFFFF).any()  # bfloat16 values
    step = np.exp2(np.floor(np.log2(np.abs(a.astype(np.float64)))) - 7)  # a bfloat16's spacing at |a|
    assert (np.abs(r.astype(np.float64) - a) <= step / 2).all()  # the nearest: within half a step
    ties = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8)], np.float32)  # halfway: to the even one
    np.testing.assert_array_equal(numpy_backend.round_to_bf16(ties), np.array([1, 1 + 2.0 ** -6, -1], np.float32))


@pytest.mark.skipif(NO_JIT or numba_backend is None or not sys.platform.startswith("linux"), reason="the outer run, compiling")
def test_a_portable_target_compiles_and_agrees(tmp_path):
    """NUMBA_CPU_NAME=generic (what a portable build or a shared cache uses): every design decision follows the
    compile target, not the host, so the kernels compile (no host-only instruction or half-float library call)
    and give numpy's answers."""
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEGEMMA_BACKEND", "NUMBA_CPU_FEATURES")}
    env.update(NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "numba_equals_numpy or every_half or int_matmul_against_numpy or attention_matches or elementwise"],
        env=env, capture_output=True, text=True, timeout=1500, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
