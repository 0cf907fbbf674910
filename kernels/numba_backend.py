"""The Numba backend: numpy_backend's functions, compiled. This module only picks a design for each call; the
designs live one to a module (kernels/DESIGN.md has the measurements behind each choice):

    decode          stored rows -> float32, per block type          dequantize, dequantize_rows
    float_matmul    "dot" (n < OUTER_MIN_N) and "outer" (larger n)   any block type
    int_matmul      int16 activations times the blocks' integers     Q8_0 / Q4_0 where the target has AVX-512 VNNI or AVX2
    amx_matmul      bfloat16 AMX tiles, for long sequences           Q8_0 / Q4_0 on CPUs with AMX
    self_attention  float32, or AMX tiles from amx_attention.MIN_LENGTH tokens
    elementwise     norms, GeGLU, RoPE
"""
from __future__ import annotations

from . import cpu  # noqa: F401  (first: it sets what Numba reads when it starts)

import numpy as np

from . import amx_attention, amx_matmul, self_attention, decode, elementwise, float_matmul, int_matmul, int_panels
from .self_attention import attention
from .decode import dequantize, dequantize_rows
from .elementwise import add_rms_norm, gelu_tanh, gelu_tanh_mul, rms_norm, rms_norm_rope
from .float_matmul import matmul_dot, matmul_outer
from .int_matmul import SHARED, matmul_int, matmul_int_shared
from .int_panels import PackedWeight, pack_int
from .int_tile import VECTOR

OUTER_MIN_N = 40  # from this many tokens on, the outer design (its packing is paid back)
INT_TYPES = VECTOR.qtypes if VECTOR else frozenset()  # the types the integer design takes on this target
# Rows of x a caller that splits its batch (to bound its memory) should hand matmul at a time: a forward pass is
# fastest in steps whose norms, activations and matmuls stay in L2.
MATMUL_ROWS = 512
# Sequences from this many tokens on may take the tiles' matmul (matmuls' long_batch); 0: no such design here.
LONG_SEQUENCE = amx_matmul.LONG_SEQUENCE if amx_matmul.AVAILABLE else 0


def matmul(x, w, qtype, long_batch=False) -> np.ndarray:
    """y = x @ W.T for float32 activations x (n, k) and a stored weight W (rows, row_bytes), or what pack made of
    it: float32 (n, rows). long_batch: see matmuls."""
    if long_batch and amx_matmul.takes_matmul([w]):
        return amx_matmul.matmuls(x, [w], qtype)[0]
    # The integer design at every n, so each row's result depends on that row alone: a text's embedding does not
    # change with what it is batched with.
    if isinstance(w, PackedWeight) or int(qtype) in INT_TYPES:
        return matmul_int(x, w, qtype)
    n = np.shape(x)[0] if np.ndim(x) == 2 else 0
    return (matmul_dot if n < OUTER_MIN_N else matmul_outer)(x, w, qtype)


def matmuls(x, weights, long_batch=False) -> list[np.ndarray]:
    """[x @ W.T for (W, qtype) in weights]: weights of one integer type share one activation quantizing and one
    parallel launch. long_batch: x belongs to sequences of at least LONG_SEQUENCE tokens each, so packed weights
    may take the AMX tiles (x and W rounded to bfloat16). A row's result depends on the flag and that row alone:
    callers that want a text's embedding independent of its batch decide the flag by the text's own length."""
    types_ = {int(qtype) for _, qtype in weights}
    if len(types_) == 1 and types_ <= INT_TYPES and 1 <= len(weights) <= SHARED:
        packed = [w for w, _ in weights]
        if long_batch and amx_matmul.takes_matmul(packed):
            return amx_matmul.matmuls(x, packed, types_.pop())
        return matmul_int_shared(x, packed, types_.pop())
    return [matmul(x, w, qtype, long_batch) for w, qtype in weights]


def pack(w, qtype):
    """W as matmul reads it fastest, for callers that multiply by it again and again (a model, at load): Q8_0 and
    Q4_0 weights where the integer design runs packed into its panels (as many bytes as the blocks), any other
    weight as it is."""
    if int(qtype) in INT_TYPES:
        return pack_int(w, qtype)
    return w


def kernels_for(qtypes) -> list:
    """The compiled kernels this module's functions launch for weights of these types on this target: what a
    process must compile (or load from the disk cache) to run a model stored in them."""
    types_ = {int(t) for t in qtypes}
    needed = [*decode.KERNELS, *elementwise.KERNELS, *self_attention.KERNELS]
    if types_ - INT_TYPES:
        needed += float_matmul.KERNELS
    if types_ & INT_TYPES:
        needed += int_panels.KERNELS + int_matmul.KERNELS
        needed += amx_matmul.KERNELS if amx_matmul.AVAILABLE else ()
    needed += amx_attention.KERNELS if amx_attention.AVAILABLE else ()
    return needed


__all__ = ["matmul", "matmuls", "pack", "MATMUL_ROWS", "LONG_SEQUENCE", "dequantize", "dequantize_rows", "rms_norm",
           "gelu_tanh", "gelu_tanh_mul", "add_rms_norm", "rms_norm_rope", "attention", "matmul_dot", "matmul_outer",
           "matmul_int", "matmul_int_shared", "INT_TYPES", "OUTER_MIN_N"]
