"""The numpy kernels: the test oracle, and the path where Numba does not exist (Pyodide).

Per type there is only a block decoder, `decode(raw, out)`: uint8 rows (r, row_bytes) -> float32 (r, k),
bit-exact with `gguf.quants.dequantize`. The matmul around it is generic: decode a tile of weight rows into a
small reusable float32 scratch and let BLAS multiply the whole batch of activations by it, so no float32 copy
of the weight ever exists. Accumulation is BLAS's float32.
"""
from __future__ import annotations

import numpy as np

from .blocks import (BF16, F16, F32, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, activations, check_in_place,
                     quant_type, row_indices, weight_bytes)

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


# The integers are first cast into `out`, then scaled there: one multiply of int8 by float32 (numpy casts each
# buffer of q on the way) took 0.63 ns a value, the cast and an in-place float multiply 0.51 (Q8_0; Q4_0 1.14 ->
# 1.03), with the same bits.
def _decode_q8_0(raw, out):
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 34, 34)
    values = out.reshape(blocks.shape[0], blocks.shape[1], 32)
    values[...] = blocks[..., 2:].view(np.int8)
    values *= _f16_scales(blocks)


def _f16_at(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The f16 word at byte `offset` of each block, as float32 of shape (..., n_blocks, 1)."""
    return blocks[..., offset:offset + 2].view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray, q: np.ndarray) -> None:
    """q[..., j] = low nibble of qs[..., j], q[..., j + n] = its high nibble (n = qs.shape[-1]): uint8 into q."""
    n = qs.shape[-1]
    np.bitwise_and(qs, 0x0F, out=q[..., :n])
    np.right_shift(qs, 4, out=q[..., n:])


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """Bit j of each block's 4-byte little-endian qh, shifted to 16 (the 5th bit of q[j]): uint8 (..., 32)."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << 4


def _decode_q4_0(raw, out):
    # The nibbles are split, and 8 taken off (in uint8, wrapping to the int8 q - 8), over whole rows, scale bytes
    # too: contiguous, so numpy's loops run long; only the casts into `out` skip the scales. 0.73 ms for a
    # 1152 x 768 tile against 1.22 for splitting each block's 16 bytes, with the same bits.
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 18, 18)
    values = out.reshape(blocks.shape[0], blocks.shape[1], 32)
    for half, nibbles in ((values[..., :16], raw & np.uint8(0x0F)), (values[..., 16:], raw >> np.uint8(4))):
        nibbles -= np.uint8(8)
        half[...] = nibbles.view(np.int8).reshape(blocks.shape)[..., 2:]
    values *= _f16_scales(blocks)


def _decode_q4_1(raw, out):
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 20, 20)
    q = np.empty(blocks.shape[:2] + (32,), np.uint8)
    _nibbles(blocks[..., 4:], q)
    values = out.reshape(q.shape)
    values[...] = q
    values *= _f16_at(blocks, 0)  # d * q, rounded, then + m: gguf's two roundings
    values += _f16_at(blocks, 2)


def _decode_q5_0(raw, out):
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 22, 22)
    q = np.empty(blocks.shape[:2] + (32,), np.uint8)
    _nibbles(blocks[..., 6:], q)
    q |= _fifth_bits(blocks[..., 2:6])
    values = out.reshape(q.shape)
    values[...] = q.view(np.int8)
    values -= 16  # exact
    values *= _f16_at(blocks, 0)


def _decode_q5_1(raw, out):
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 24, 24)
    q = np.empty(blocks.shape[:2] + (32,), np.uint8)
    _nibbles(blocks[..., 8:], q)
    q |= _fifth_bits(blocks[..., 4:8])
    values = out.reshape(q.shape)
    values[...] = q
    values *= _f16_at(blocks, 0)
    values += _f16_at(blocks, 2)


def _k_scales_mins(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's 12 scale bytes -> the eight 6-bit scales and mins as float32 (..., 8): sub-blocks 0-3 in
    the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); 4-7 in the nibbles of bytes 8-11, their top bits in
    the top 2 bits of bytes 0-3 and 4-7."""
    lo, mid, hi = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = np.concatenate([lo & 0x3F, (hi & 0x0F) | ((lo >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([mid & 0x3F, (hi >> 4) | ((mid >> 2) & 0x30)], axis=-1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _decode_k_quant(raw, out, block_bytes: int, qh_at: int | None):
    """Q4_K (qh_at None) and Q5_K: value = (d * sc) * q - (dmin * m) per 32-value sub-block."""
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // block_bytes, block_bytes)
    sc, mn = _k_scales_mins(blocks[..., 4:16])
    scale = _f16_at(blocks, 0) * sc  # (..., 8): rounded to float32 first, as gguf does
    low = _f16_at(blocks, 2) * mn
    qs = blocks[..., block_bytes - 128:].reshape(blocks.shape[:2] + (4, 32))
    q = np.empty(blocks.shape[:2] + (4, 2, 32), np.uint8)  # sub-block 2 g + h: nibble h of bytes 32 g ..
    np.bitwise_and(qs, 0x0F, out=q[..., 0, :])
    np.right_shift(qs, 4, out=q[..., 1, :])
    q = q.reshape(blocks.shape[:2] + (8, 32))
    if qh_at is not None:  # bit s of qh[l]: the 5th bit of sub-block s's q[l]
        qh = blocks[..., None, qh_at:qh_at + 32] >> np.arange(8, dtype=np.uint8)[:, None]
        q |= (qh & 1) << 4
    values = out.reshape(q.shape)
    values[...] = q
    values *= scale[..., None]
    values -= low[..., None]


def _decode_q4_k(raw, out):
    _decode_k_quant(raw, out, 144, None)


def _decode_q5_k(raw, out):
    _decode_k_quant(raw, out, 176, 16)


def _decode_q6_k(raw, out):
    """value = (d * sc) * (q - 32), one int8 scale per 16 values."""
    blocks = raw.reshape(raw.shape[0], raw.shape[1] // 210, 210)
    lead = blocks.shape[:2]
    ql = blocks[..., :128].reshape(lead + (2, 1, 64))  # half g: bytes 64 g ..
    qh = blocks[..., 128:192].reshape(lead + (2, 1, 32))
    q = np.empty(lead + (2, 2, 64), np.uint8)  # (g, nibble, 64 values)
    np.bitwise_and(ql[..., 0, :], 0x0F, out=q[..., 0, :])
    np.right_shift(ql[..., 0, :], 4, out=q[..., 1, :])
    q = q.reshape(lead + (2, 4, 32))  # (g, s, l): value 128 g + 32 s + l
    q |= ((qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3) << 4
    values = out.reshape(lead + (16, 16))
    values[...] = q.reshape(lead + (16, 16)).view(np.int8)
    values -= 32  # exact
    values *= (_f16_at(blocks, 208) * blocks[..., 192:208].view(np.int8))[..., None]


DECODERS = {F32: _decode_f32, F16: _decode_f16, BF16: _decode_bf16, Q8_0: _decode_q8_0, Q4_0: _decode_q4_0,
            Q4_1: _decode_q4_1, Q5_0: _decode_q5_0, Q5_1: _decode_q5_1, Q4_K: _decode_q4_k, Q5_K: _decode_q5_k,
            Q6_K: _decode_q6_k}


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


# long_batch: the numba backend's AMX tiles take long batches' Q8_0 / Q4_0 products in bfloat16 (x and W each
# rounded to nearest, float32 sums: kernels/amx.py). Here the same rounding, so that this backend stays the
# oracle of that arithmetic too. Its own callers never ask for it (LONG_SEQUENCE is 0): here it costs time and
# buys nothing.
BF16_TYPES = frozenset({Q8_0, Q4_0})


def round_to_bf16(a) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32: a new array."""
    bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def matmul(x, w, qtype, long_batch=False) -> np.ndarray:
    """y = x @ W.T for float32 activations x (n, k) and a stored weight W (rows, row_bytes): float32 (n, rows).
    long_batch: Q8_0 / Q4_0 products in bfloat16, as the numba backend's tiles take them (see above)."""
    w, rows, k = weight_bytes(w, qtype)
    x = activations(x, k, quant_type(qtype).label)
    in_bf16 = long_batch and int(qtype) in BF16_TYPES
    if in_bf16:
        x = round_to_bf16(x)
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
        if in_bf16:
            tile[...] = round_to_bf16(tile)
        np.matmul(x, tile.T, out=y[:, r0:r1])
    return y


# Rows of x a caller that splits its batch should hand matmul at a time: each call decodes every weight tile
# once, so the more rows share it the better (8 synthetic documents, ~2,048 tokens, in 256-row steps: 5.1-5.4 s,
# against 3.8 s in one).
MATMUL_ROWS = 4096
LONG_SEQUENCE = 0  # one design for every length here (long_batch only mirrors the numba backend's tiles)


def matmuls(x, weights, long_batch=False) -> list[np.ndarray]:
    """[x @ W.T for (W, qtype) in weights] (the numba backend shares the work on x between them)."""
    return [matmul(x, w, qtype, long_batch) for w, qtype in weights]


def pack(w, qtype):
    """W as matmul reads it fastest: here the stored blocks themselves (the numba backend repacks some)."""
    return w


# --- the elementwise and attention kernels -----------------------------------------------------------------------
# In place where numpy allows, so a large batch makes two or three passes over memory instead of eight.


def rms_norm(x, weight, eps) -> np.ndarray:
    """x / sqrt(mean(x^2 over the last axis) + eps) * weight."""
    mean_square = np.mean(np.square(x, dtype=np.float32), axis=-1, keepdims=True)
    mean_square += np.float32(eps)
    out = x / np.sqrt(mean_square)
    out *= weight
    return out


def gelu_tanh(x) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), elementwise."""
    t = np.multiply(x, x, dtype=np.float32)
    t *= x
    t *= np.float32(0.044715)
    t += x
    t *= np.float32(np.sqrt(2.0 / np.pi))
    np.tanh(t, out=t)
    t += np.float32(1.0)
    t *= x
    t *= np.float32(0.5)
    return t


def gelu_tanh_mul(x, y) -> np.ndarray:
    """x = gelu_tanh(x) * y, in place (x: a writable float32 C array; y: its shape); returns x."""
    check_in_place(x, y)
    t = gelu_tanh(x)
    np.multiply(t, y, out=x)
    return x


def add_rms_norm(x, y, weight, eps) -> np.ndarray:
    """x += rms_norm(y, weight, eps), in place (x: a writable float32 C array; y: its shape); returns x."""
    check_in_place(x, y)
    x += rms_norm(y, weight, eps)
    return x


def rms_norm_rope(x, weight, eps, cos, sin, out=None) -> np.ndarray:
    """rms_norm over the last axis of x (tokens, heads, d), then each head rotated by angles with cos and sin
    (tokens, d / 2): its halves pair up, (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). Into `out` when given."""
    if out is None:
        out = np.empty(np.shape(x), np.float32)
    check_in_place(out, x)
    x = rms_norm(x, weight, eps)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    np.subtract(x1 * c, x2 * s, out=out[..., :half])
    np.add(x2 * c, x1 * s, out=out[..., half:])
    return out


def attention(q, k, v, scale, radius, out=None, block: int = 256) -> np.ndarray:
    """Bidirectional softmax attention of one sequence: q (L, heads, d), k and v (L, kv_heads, d); query heads
    share key/value heads in equal groups. softmax(scale q.k) over the keys, times the values; with a radius,
    position i sees position j only when |i - j| <= radius.

    Queries go in blocks, each against just the keys it can see, so memory stays at block x window. Into `out`
    (q's shape) when given, which may be q itself: a block's queries are used up before its rows are written."""
    length, n_heads, d = q.shape
    group = n_heads // k.shape[1]  # query heads sharing one key/value head
    if out is None:
        out = np.empty_like(q)
    check_in_place(out, q)
    for kv_head in range(k.shape[1]):
        heads = slice(kv_head * group, (kv_head + 1) * group)
        keys, values = k[:, kv_head], v[:, kv_head]
        for start in range(0, length, block):
            stop = min(length, start + block)
            lo, hi = (max(0, start - radius), min(length, stop + radius)) if radius is not None else (0, length)
            # Rows are (query position, head) pairs: one matrix product for the whole group.
            queries = q[start:stop, heads].reshape(-1, d)
            scores = queries @ keys[lo:hi].T
            scores *= np.float32(scale)
            if radius is not None:
                pos_q = np.repeat(np.arange(start, stop), group)[:, None]
                pos_k = np.arange(lo, hi)[None, :]
                scores[np.abs(pos_q - pos_k) > radius] = -np.inf
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=1, keepdims=True)
            out[start:stop, heads] = (scores @ values[lo:hi]).reshape(stop - start, group, d)
    return out
