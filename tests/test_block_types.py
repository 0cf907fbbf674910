"""The block types edgegemma reads but does not write (llama.cpp's quantizer makes them): Q4_1, Q5_0, Q5_1 and
the K-quants Q4_K, Q5_K, Q6_K.

Decoding is held bit for bit to gguf.quants.dequantize (the independent implementation) on random blocks, which
take every bit pattern (NaN and Inf scales included), on hand-made edge blocks, and on the tensors of the files
llama.cpp's quantizer made (when tests/foreign.py has cached them); matmul (numpy, and both Numba designs) to a
float64 product of the decoded weight. A type outside the table is refused naming the type and the tensor.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from edgegemma.kernels import blocks, numpy_backend

from test_kernels import BACKENDS, NO_JIT, assert_matmul_close, numba_backend, reference

import foreign

NEW_TYPES = [T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]
K_QUANTS = {T.Q4_K, T.Q5_K, T.Q6_K}
# Byte offsets of each block's f16 words (d, and the min where there is one): the random blocks of the matmul
# tests get finite scales there, so that the products are numbers.
F16_WORDS = {T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
SPECIAL_HALVES = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0xBC00, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00]
# (rows, k): the model's widths (Q4_K and kin need k a multiple of 256, so not 1152).
SHAPES = [(37, 256), (9, 512)] if NO_JIT else [(301, 768), (70, 3072)]
NS = [1, 5, 17] if NO_JIT else [1, 3, 17, 100]


def random_blocks(qtype, rows: int, k: int, seed: int, finite: bool = False) -> np.ndarray:
    """Random bytes as a stored weight (rows, row_bytes), read-only; finite: every f16 word a modest number."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, k // block_size, type_size), dtype=np.uint8)
    if finite:
        for at in F16_WORDS[qtype]:
            raw[..., at:at + 2] = rng.uniform(-0.05, 0.05, raw.shape[:2] + (1,)).astype(np.float16).view(np.uint8)
    raw = raw.reshape(rows, -1)
    raw.flags.writeable = False
    return raw


def assert_bits_equal(got: np.ndarray, expected: np.ndarray) -> None:
    """The same bits in every value, signed zeros and infinities included; NaN where gguf gives NaN (which NaN a
    NaN scale makes depends on the order the compiler puts an addition's operands in, not on the decoder)."""
    assert got.dtype == np.float32 and got.shape == expected.shape
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(np.where(nan, 0, got.view(np.uint32)), np.where(nan, 0, expected.view(np.uint32)))


# --- decoding: bit for bit ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda t: t.name)
def test_random_blocks_decode_bit_exact(backend, qtype):
    rows, k = SHAPES[0]
    raw = random_blocks(qtype, rows, k, seed=int(qtype))
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / Inf scales are part of the test
        assert_bits_equal(backend.dequantize(raw, qtype), reference(raw, qtype))
        ids = [rows - 1, 0, 3, 3]
        assert_bits_equal(backend.dequantize_rows(raw, qtype, ids), reference(raw, qtype)[ids])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda t: t.name)
def test_edge_blocks_decode_bit_exact(backend, qtype):
    """Every f16 word a special half (zeros, subnormals, the largest, infinities, NaN), with the quant bytes all
    0x00, all 0xFF and alternating: the lowest and highest q of every field and every scale."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rows = []
    for fill in (0x00, 0xFF, 0x5A, 0xA5):
        for half in SPECIAL_HALVES:
            block = np.full(type_size, fill, np.uint8)
            for at in F16_WORDS[qtype]:
                block[at:at + 2] = np.array([half], np.uint16).view(np.uint8)
            rows.append(block)
    raw = np.stack(rows)
    with np.errstate(invalid="ignore", over="ignore"):
        assert_bits_equal(backend.dequantize(raw, qtype), reference(raw, qtype))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q5_0, T.Q5_1], ids=lambda t: t.name)
def test_quantized_weights_decode_bit_exact(backend, qtype):
    """Blocks as gguf.quants quantizes real-looking weights (it writes these three types, not the K-quants)."""
    rows, k = SHAPES[0]
    values = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)
    raw = np.ascontiguousarray(gguf.quants.quantize(values, qtype)).view(np.uint8).reshape(rows, -1)
    assert_bits_equal(backend.dequantize(raw, qtype), reference(raw, qtype))


def _quantized_files() -> list:
    """The files llama.cpp's quantizer made, where tests/foreign.py has cached them."""
    return sorted(foreign.CACHE.glob("llama.cpp-quantize-*/*/*.gguf"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_llama_cpp_files_tensors_decode_bit_exact(backend):
    """From each file llama.cpp's quantizer made, one tensor of each block type of ours it holds (rows spread over
    the tensor; all the rows of small ones)."""
    files = _quantized_files()
    if not files:
        pytest.skip(f"no files of llama.cpp's quantizer cached under {foreign.CACHE} (test_foreign_gguf makes them)")
    from edgegemma.gguf_file import GGUFFile

    seen = set()
    for path in files:
        for tensor in GGUFFile(path).tensors.values():
            qtype = T(tensor.ggml_type)
            if qtype not in NEW_TYPES or (path.name, qtype) in seen:
                continue
            seen.add((path.name, qtype))
            data = tensor.data
            step = max(1, data.shape[0] // (16 if NO_JIT else 512))
            raw = np.ascontiguousarray(data[::step])
            assert_bits_equal(backend.dequantize(raw, qtype), reference(raw, qtype))
    assert {q for _, q in seen} >= {T.Q6_K}, seen  # every such file stores its token table in Q6_K


# --- matmul: the generic decoded paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows,k", SHAPES)
def test_matmul_matches_float64(backend, qtype, rows, k):
    raw = random_blocks(qtype, rows, k, seed=k + int(qtype), finite=True)
    w_float = reference(raw, qtype)
    rng = np.random.default_rng(3)
    for n in NS:
        x = rng.standard_normal((n, k)).astype(np.float32)
        assert_matmul_close(backend.matmul(x, raw, qtype), x, w_float, tol=2e-6)


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
@pytest.mark.parametrize("design", ["matmul_dot", "matmul_outer"])
@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda t: t.name)
def test_every_numba_design_takes_the_type(design, qtype):
    """matmul picks a design by n; each takes these types through decode_row, at every n."""
    rows, k = SHAPES[0]
    raw = random_blocks(qtype, rows, k, seed=5, finite=True)
    w_float = reference(raw, qtype)
    rng = np.random.default_rng(5)
    for n in NS:
        x = rng.standard_normal((n, k)).astype(np.float32)
        assert_matmul_close(getattr(numba_backend, design)(x, raw, qtype), x, w_float, tol=2e-6)


@pytest.mark.skipif(numba_backend is None, reason="numba not installed")
@pytest.mark.parametrize("qtype", NEW_TYPES, ids=lambda t: t.name)
def test_numba_equals_numpy_and_takes_the_float_design(qtype):
    """These types never reach the integer or tile designs (their blocks are not Q8_0 / Q4_0's): pack leaves them
    as stored, the kernels a process compiles for them are the float designs', and the two backends agree."""
    assert int(qtype) not in numba_backend.INT_TYPES
    rows, k = SHAPES[0]
    raw = random_blocks(qtype, rows, k, seed=6, finite=True)
    assert numba_backend.pack(raw, qtype) is raw
    needed = numba_backend.kernels_for([qtype])
    assert all(kernel in needed for kernel in float_matmul_kernels())
    x = np.random.default_rng(7).standard_normal((NS[-1], k)).astype(np.float32)
    a, b = numba_backend.matmul(x, raw, qtype), numpy_backend.matmul(x, raw, qtype)
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())
    a, b = numba_backend.matmul(x, raw, qtype, long_batch=True), numpy_backend.matmul(x, raw, qtype, long_batch=True)
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * np.abs(b).max())


def float_matmul_kernels():
    from edgegemma.kernels import float_matmul

    return float_matmul.KERNELS


# --- the table -----------------------------------------------------------------------------------------------------


def test_table_sizes_are_ggmls_and_read_only_types_are_not_written():
    for qtype in NEW_TYPES:
        qt = blocks.QUANT_TYPES[qtype]
        assert (qt.block_size, qt.type_size) == GGML_QUANT_SIZES[qtype]
        assert not qt.written and qtype not in blocks.WRITTEN_TYPES
    assert set(blocks.WRITTEN_TYPES) == {T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0}


@pytest.mark.parametrize("qtype", [T.Q2_K, T.Q3_K, T.IQ2_XS, T.IQ4_NL, T.Q8_1], ids=lambda t: t.name)
def test_other_types_are_refused_by_name(qtype):
    with pytest.raises(ValueError, match=rf"tensor type {qtype.name} is not supported \(supported: .*q4_k.*q6_k"):
        blocks.quant_type(qtype)


def test_file_with_an_unread_type_is_refused_naming_type_and_tensor(tiny_gguf, tmp_path):
    """A file whose feed-forward weight is IQ4_NL (32-value blocks, a type some community files use): one line
    that names the file, the tensor and the type, at load."""
    import edgegemma
    from edgegemma.gguf_file import ModelFileError

    source = tiny_gguf("f32")
    reader = gguf.GGUFReader(source)
    target = "blk.0.ffn_up.weight"
    dest = tmp_path / "iq4_nl.gguf"
    writer = gguf.GGUFWriter(dest, reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == gguf.Keys.General.ARCHITECTURE:
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        if t.name == target:
            block_size, type_size = GGML_QUANT_SIZES[T.IQ4_NL]
            data = np.zeros((shape[0], shape[1] // block_size * type_size), np.uint8)
            writer.add_tensor(t.name, data, raw_dtype=T.IQ4_NL)  # the byte shape: gguf works out the values
        else:
            writer.add_tensor(t.name, np.asarray(t.data), raw_shape=shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError) as err:
        edgegemma.load(dest)
    message = str(err.value)
    assert "\n" not in message and str(dest) in message and target in message and "IQ4_NL" in message, message

