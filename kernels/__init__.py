"""Kernels over ggml block formats (QUANT_TYPES: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K;
the converter writes the first five), and the few generic array ops a transformer needs besides. They know block
formats and array shapes, not models.

    matmul(x, w, qtype)               x (n, k) float32 @ W.T -> (n, rows) float32
    matmuls(x, [(w, qtype), ...])     [matmul(x, w, qtype) for each], sharing the work on x where it can
    MATMUL_ROWS                       rows of x to hand matmul at a time when a caller splits a large batch
    LONG_SEQUENCE                     from this length on, a sequence's rows may go to matmul(s) with
                                      long_batch=True (a faster design where there is one: Q8_0 / Q4_0
                                      products in bfloat16 on AMX tiles); 0: no such design
    pack(w, qtype)                    W as matmul reads it fastest (the same values): for a weight used many times
    dequantize_rows(w, qtype, ids)    rows `ids` of W as float32 (len(ids), k): embedding lookup
    dequantize(w, qtype)              all of W as float32 (rows, k): small tensors and tests
    rms_norm(x, weight, eps)          x / sqrt(mean(x^2, last axis) + eps) * weight
    gelu_tanh(x)                      0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    gelu_tanh_mul(x, y)               x = gelu_tanh(x) * y in place (a GeGLU), one pass
    add_rms_norm(x, y, weight, eps)   x += rms_norm(y, weight, eps) in place (a normed residual), one pass
    rms_norm_rope(x, w, eps, cos, sin) rms_norm, then x (tokens, heads, d) rotated, halves paired
                                      (x1 c - x2 s, x2 c + x1 s), one pass; into `out=` when given
    attention(q, k, v, scale, radius) softmax attention of one sequence, grouped heads, optional band |i-j|<=radius
    prepare(qtypes)                   get the compiled kernels for these weight types ready without waiting
                                      (kernels/warm_start.py): loaded from Numba's disk cache by a thread, or
                                      compiled by a background process, while the numpy kernels answer;
                                      when_ready(callback) runs once the compiled kernels take over

`w` is the weight as the GGUF file stores it: a C-contiguous uint8 array (rows, row_bytes), usually a read-only
memory map; `qtype` a GGML type id. Two backends give the same answers: "numpy" (the oracle; Pyodide) and
"numba" (compiled). The backend is chosen once, here, at import: EDGEGEMMA_BACKEND=numpy|numba, by default
numba where it is installed and numpy otherwise. Numba itself is imported only when first needed: until the
compiled kernels are ready (warm_start), the numpy ones answer.
"""
from __future__ import annotations

import importlib.util
import os
import sys

# OpenBLAS's threads spin for ~0.1 s after each BLAS call. Interleaved with Numba's parallel kernels on two cores
# that turned a 40 us BLAS call into 3-12 ms (most runs, measured here); OPENBLAS_THREAD_TIMEOUT=1 lets them sleep
# at once. OpenBLAS reads it when numpy loads it, so this only helps if nothing imported numpy before kernels:
# applications should set it before their first `import numpy` (edgegemma's __init__, the CLI). A value set wins.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy_backend's BLAS: robust on a busy machine

from .blocks import QUANT_TYPES, QUANT_TYPES_BY_NAME, QuantType, quant_type


def _choose_backend() -> str:
    """numba where it is installed (imported only when first needed: see warm_start), numpy otherwise."""
    wanted = os.environ.get("EDGEGEMMA_BACKEND", "").strip().lower()
    if wanted not in ("", "numba", "numpy"):
        raise ValueError(f"EDGEGEMMA_BACKEND={wanted!r} is not a backend (choose numba or numpy)")
    if wanted == "numpy":
        return "numpy"
    try:
        found = importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):  # an import hook that refuses it
        found = False
    if not found:
        if wanted == "numba":
            raise ImportError("EDGEGEMMA_BACKEND=numba but Numba is not installed; pip install numba")
        return "numpy"
    return "numba"


BACKEND = _choose_backend()
_API = ("matmul", "matmuls", "pack", "MATMUL_ROWS", "LONG_SEQUENCE", "dequantize_rows", "dequantize", "rms_norm",
        "gelu_tanh", "gelu_tanh_mul", "add_rms_norm", "rms_norm_rope", "attention")


def _bind(backend) -> None:
    """Make `backend`'s functions the ones this module hands out (callers look them up at each call)."""
    globals().update({name: getattr(backend, name) for name in _API})


from . import numpy_backend  # noqa: E402
from .warm_start import active_backend, install, prepare, when_ready  # noqa: E402  (it rebinds through _bind)

_bind(numpy_backend)
install()

__all__ = ["BACKEND", "QUANT_TYPES", "QUANT_TYPES_BY_NAME", "QuantType", "quant_type", "prepare", "when_ready",
           "active_backend", *_API]
