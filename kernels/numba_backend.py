"""The Numba kernels: the same functions as numpy_backend, compiled.

Per type there is only a row decoder (`_decode_q8_0(src, dst)` ...: one stored row -> float32, bit-exact with
gguf.quants) and one function mapping type ids to them (`_decode_row`). Everything else is generic: the matmul
designs take the type id and decode rows through `_decode_row`.

matmul, three designs (the numbers are in the comments above `matmul`): for Q8_0 and Q4_0 on CPUs with AVX-512
VNNI, "int" at every n (activations quantized once per matmul to int16 blocks, integer dot products with the
weight blocks' integers, which `pack` lays out in panels once, at load: vpdpwssd); otherwise below 40 tokens
"dot" (a task decodes 32 rows of W to float32 and multiplies a chunk of tokens by them, four rows by six tokens
at a time) and from 40 tokens on "outer" (32 decoded rows packed side by side, outer products with 12 tokens
at a time). Threads claim tasks from a shared counter until
none are left, so a thread the OS descheduled costs at most one task, not half the work; no BLAS, so no
second thread pool.

Integer activations: int8 (ggml's Q8_0 activation blocks, vpdpbusd) would be twice the float speed here but
fails the accuracy bars; int16 keeps them (the numbers are above the integer kernels).

attention: per block of 32 query positions, scores, softmax and mix with the outer-product tile (float32); on
CPUs with AMX tiles, sequences from amx.MIN_LENGTH tokens on take both products on the tiles instead
(bfloat16 in three terms: kernels/amx.py). Long sequences' Q8_0 / Q4_0 matmuls take the tiles too, in one
bfloat16 term (matmuls' long_batch).
"""
from __future__ import annotations

import os
import platform
import sys
from functools import partial

# How long Numba's OpenMP threads spin after a parallel kernel before they sleep. libgomp's default (300,000
# spins, ~28 ms here) steals the cores other threads need: a 16-token Q8_0 matmul after BLAS calls ran at 3.6
# GFLOP/s with spinning threads and 23 with OMP_WAIT_POLICY=PASSIVE. But sleeping at once costs every kernel a
# wake-up, ~30 us: at 170 kernels a query that was a fifth of the q4_0 query (18 tokens: median 43-48 ms
# passive, 29-35 ms spinning ~0.4 ms). Set before Numba starts its thread pool; values the user set win.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # libgomp (Linux): ~0.4 ms of spinning
os.environ.setdefault("KMP_BLOCKTIME", "1")  # Intel / LLVM OpenMP: milliseconds


def _allow_512_bit_vectors():
    """Let LLVM vectorize with 512-bit registers on AVX-512 CPUs.

    LLVM tunes Skylake-X and later Intel cores for 256-bit vectors ("prefer-256-bit"), so the loops below came
    out as ymm code: half the FMA width. Measured here (Xeon, AVX-512), the 4x6 micro-kernel with its data in
    L1: 58-68 GFLOP per CPU-second with ymm, 117-129 with zmm (OpenBLAS's sgemm: 103-110). Numba has one knob
    for this, NUMBA_CPU_FEATURES (read when it compiles, and part of its cache key): the host's features plus
    "-prefer-256-bit". It applies to every Numba function this process compiles; a value or CPU name the user
    set wins, and on a CPU without AVX-512 nothing changes."""
    if "NUMBA_CPU_FEATURES" in os.environ or "NUMBA_CPU_NAME" in os.environ:
        return
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
    except Exception:  # llvmlite cannot query this host: leave Numba's defaults
        return
    if "+avx512f" in features.split(","):
        os.environ["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit" + _keep_vpdpwssd(llvm, features)


def _keep_vpdpwssd(llvm, features: str) -> str:
    """",+fast-dpwssd" where LLVM would otherwise split the integer kernel's vpdpwssd in two. Since LLVM 18 the
    machine combiner turns each vpdpwssd into vpmaddwd + vpaddd on CPUs not tuned "fast-dpwssd" (Sapphire and
    Emerald Rapids among them), which put twice the instructions in the int16 kernel's inner loop: measured here,
    q4_0 n=512, 88 GFLOP per CPU-second split against 175 kept (one vpdpwssd: 32 multiply-adds, like two FMAs)."""
    if "+avx512vnni" in features.split(",") and llvm.llvm_version_info >= (18,):
        return ",+fast-dpwssd"
    return ""


_allow_512_bit_vectors()

import numpy as np
import numba
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from llvmlite import ir

from . import compiler_pages
from .blocks import BF16, F16, Q4_0, Q8_0, activations, block_format, check_in_place, row_indices, weight_bytes

# ---------------------------------------------------------------------------------------------------------------
# Compilation: explicit signatures, compiled once at import; cached on disk where a cache folder is writable.

_cache_ok = True


def _jit(signature, calls=(), **options):
    """numba.njit with `cache=True`, quietly without the disk cache when no folder is writable. Kernels release
    the GIL, and divide as numpy does (x / 0 is inf, not an exception: the check would stop LLVM vectorizing).

    Nothing is compiled or loaded here: a kernel's declared signatures are compiled (loaded from the disk cache,
    ~10 ms and ~1 MiB a function) the first time Python calls it through _compiled(kernel), so a process loads
    only the kernels its model uses (a Q4_0 file on a VNNI CPU: 15 functions, not the float designs or the
    int8 variants; see _compiled). `calls` names
    the kernels with signatures that this one calls: they are compiled first, through their declared signatures,
    because a kernel compiled only as a callee is not found in the disk cache when Python later calls it (a
    cache miss, and a compile, in every new process; test_kernels checks there is none)."""

    def wrap(func):
        global _cache_ok
        options.setdefault("nogil", True)
        options.setdefault("error_model", "numpy")
        kernel = None
        if _cache_ok:
            try:
                kernel = numba.njit(cache=True, **options)(func)
            except RuntimeError:  # "cannot cache function ...: no locator available": read-only install, no home
                _cache_ok = False
        if kernel is None:
            kernel = numba.njit(**options)(func)
        if signature is not None and not numba.config.DISABLE_JIT:
            kernel._declared = signature if isinstance(signature, (list, dict)) else [signature]
            kernel._calls = calls
            kernel._variants_done = set()
        return kernel

    return wrap


_target_loaded = False


def _load_target():
    """Load Numba's CPU target (its implementations of Python and numpy) once, before the first kernel compiles,
    without scipy's BLAS. Numba imports scipy.linalg.cython_blas while it loads them, to choose how compiled
    np.correlate takes inner products (numba.np.arraymath._check_blas); where scipy is installed that loaded
    scipy.linalg with its OpenBLAS and LAPACK, 17 MiB of the 290 a q4_0 process held after its first query
    (measured 2026-12-01), for BLAS no kernel here calls. The module is hidden for that one load only: np.dot
    in other compiled code still imports it when it compiles (numba.np.linalg.ensure_blas)."""
    global _target_loaded
    if _target_loaded:
        return
    _target_loaded = True
    blas = "scipy.linalg.cython_blas"
    if blas in sys.modules:  # already loaded by someone: nothing to save
        return
    sys.modules[blas] = None  # "import scipy.linalg.cython_blas" raises ImportError
    try:
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
    finally:
        if sys.modules.get(blas, False) is None:
            del sys.modules[blas]


def _compiled(kernel, variant=None):
    """`kernel` with its declared signatures compiled, once, and no others (a call with other types is an error,
    not a silent second compile). Signatures declared as a dict are variants (the integer design's int16 and
    int8 activations): only the one named is compiled, with its callees' same variant, so a process loads the
    variant it runs (the int8 one, a bench and test design, cost every q4_0 process 7 MiB). Once it is ready, the
    compiler's code leaves the resident set again (compiler_pages)."""
    if _compile_declared(kernel, variant):
        compiler_pages.release()
    return kernel


def _compile_declared(kernel, variant=None) -> bool:
    """_compiled's work: compile `kernel`'s declared signatures (or its variant) and its callees' if not done;
    whether anything was."""
    declared = getattr(kernel, "_declared", None)
    if isinstance(declared, dict):
        if variant in kernel._variants_done:
            return False
        _load_target()
        for callee in kernel._calls:
            _compile_declared(callee, variant)
        kernel.disable_compile(False)
        kernel.compile(declared[variant])
        kernel.disable_compile()  # calls convert to the compiled signatures (read-only arrays ...), as below
        kernel._variants_done.add(variant)
        return True
    if not declared:
        return False
    _load_target()
    for callee in kernel._calls:
        _compile_declared(callee)
    for signature in declared:
        kernel.compile(signature)
    kernel.disable_compile()
    kernel._declared = None
    return True


def _inner(**options):
    """_jit without a signature, for functions only compiled code calls: each is compiled as part of its callers
    (typed from their arguments), so it is never loaded from the cache on its own: the callers' cached code
    already holds it."""
    return _jit(None, **options)


u8_row = types.Array(types.uint8, 1, "C", readonly=True)  # one stored weight row
u8_rows = types.Array(types.uint8, 2, "C", readonly=True)  # a stored weight: memory-mapped, read-only
f32_row = types.float32[::1]
f32_rows = types.float32[:, ::1]
f32_rows_ro = types.Array(types.float32, 2, "C", readonly=True)
i64_vec = types.Array(types.int64, 1, "C", readonly=True)
i64_counter = types.int64[::1]
FAST = {"reassoc", "contract"}  # sums may be reordered (vectorized), a*b+c fused: the float32 error bound holds

# ---------------------------------------------------------------------------------------------------------------
# Bits -> float32.

_HARDWARE_HALF = platform.machine().lower() in ("aarch64", "arm64") or "+f16c" in os.environ.get("NUMBA_CPU_FEATURES", "")
if not _HARDWARE_HALF and platform.machine().lower() in ("x86_64", "amd64"):
    try:
        import llvmlite.binding as _llvm

        _HARDWARE_HALF = "+f16c" in _llvm.get_host_cpu_features().flatten().split(",")
    except Exception:
        pass

if numba.config.DISABLE_JIT:

    def _f32_from_bits(u):
        return np.uint32(u & 0xFFFFFFFF).view(np.float32)

    def _half_from_bits(h):
        return np.float32(np.uint16(h).view(np.float16))

    def _bits_of(f):
        return np.float32(f).view(np.int32)

    def _claim(counter):
        task = counter[0]
        counter[0] += 1
        return task

else:

    @intrinsic
    def _f32_from_bits(typingctx, u):
        """The float32 whose bit pattern is the low 32 bits of the integer u (an LLVM bitcast: free)."""
        if not isinstance(u, types.Integer):
            return None

        def codegen(context, builder, signature, args):
            bits = args[0]
            if u.bitwidth > 32:  # Numba widens uint32 arithmetic to 64 bits
                bits = builder.trunc(bits, ir.IntType(32))
            return builder.bitcast(bits, ir.FloatType())

        return types.float32(u), codegen

    @intrinsic
    def _bits_of(typingctx, f):
        """The bit pattern of the float32 f as an int32 (an LLVM bitcast: free)."""
        if f != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(f), codegen

    @intrinsic
    def _half_from_bits(typingctx, h):
        """The IEEE half with bit pattern h (uint16) as float32, by the CPU's own conversion (vcvtph2ps on x86
        with F16C, fcvt on ARM): exact for every half, except that a signalling NaN comes out quiet."""
        if not isinstance(h, types.Integer) or h.bitwidth != 16:
            return None

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(h), codegen

    @intrinsic
    def _claim(typingctx, counter):
        """counter[0] += 1, atomically; returns the value before. How threads share out a kernel's tasks."""
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            return builder.atomic_rmw("add", array.data, ir.Constant(ir.IntType(64), 1), "monotonic")

        return types.int64(counter), codegen


@_inner()
def _half(h):
    """IEEE half (bit pattern h) -> float32. Half-to-float is ~1.7x faster as the CPU's conversion instruction
    than as integer arithmetic (Q8_0 rows decoded: 4.3 Gvalues/s against 2.5); the integer path is kept for
    x86 CPUs without F16C, where LLVM would call a library routine Numba may not find. Both are exact,
    including subnormals and infinities; NaN payloads are kept, signalling NaNs quieted by the hardware."""
    if _HARDWARE_HALF:
        return _half_from_bits(h)
    magnitude = np.uint32(h) & np.uint32(0x7FFF)
    if magnitude < np.uint32(0x0400):  # zero or subnormal: m * 2^-24
        v = np.float32(magnitude) * np.float32(5.9604644775390625e-08)
    elif magnitude < np.uint32(0x7C00):  # normal: rebias the exponent by 127 - 15 = 112
        v = _f32_from_bits((magnitude << np.uint32(13)) + np.uint32(112 << 23))
    else:  # inf / nan, payload kept
        v = _f32_from_bits((magnitude << np.uint32(13)) | np.uint32(0x7F800000))
    return -v if np.uint32(h) & np.uint32(0x8000) else v


# ---------------------------------------------------------------------------------------------------------------
# The per-type part: decode one stored row into float32.

@_inner()
def _decode_f32(src, dst):
    """4 bytes per value, little-endian float32."""
    values = src.view(np.float32)
    for i in range(dst.size):
        dst[i] = values[i]


@_inner()
def _decode_f16(src, dst):
    """2 bytes per value, IEEE half."""
    halves = src.view(np.uint16)
    for i in range(dst.size):
        dst[i] = _half(halves[i])


@_inner()
def _decode_bf16(src, dst):
    """2 bytes per value: the upper half of a float32."""
    halves = src.view(np.uint16)
    for i in range(dst.size):
        dst[i] = _f32_from_bits(np.uint32(halves[i]) << np.uint32(16))


# In the block decoders the block length comes from the array sizes, not the constant 32: with a constant, LLVM
# unrolls the inner loop fully and then leaves it scalar (33 vcvtsi2ss + 33 vmulss per block); with a length it
# cannot see, the loop vectorizer turns it into a few 512-bit converts and multiplies. And each block is a slice
# indexed from 0: an index like `34 * b + 2 + i` may be negative as far as Numba knows, so it gets a wraparound
# check, and LLVM then loads byte by byte (Q8_0 rows: 0.77 Gvalues/s indexed so, 2.6 through slices).


@_inner()
def _decode_q8_0(src, dst):
    """34-byte blocks: f16 d, 32 int8 q; x[i] = d * q[i]."""
    n_blocks = src.size // 34
    block = dst.size // n_blocks if n_blocks else 32  # 32
    scales = src.view(np.uint16)  # d of block b is half b * 17
    q = src.view(np.int8)
    for b in range(n_blocks):
        d = _half(scales[17 * b])
        qb, xb = q[34 * b + 2:34 * b + 2 + block], dst[block * b:block * (b + 1)]
        for i in range(block):
            xb[i] = d * np.float32(qb[i])


@_inner()
def _decode_q4_0(src, dst):
    """18-byte blocks: f16 d, 16 bytes; byte j = q[j] | q[j+16] << 4; x[i] = (q[i] - 8) * d."""
    n_blocks = src.size // 18
    half = dst.size // n_blocks // 2 if n_blocks else 16  # 16
    scales = src.view(np.uint16)  # d of block b is half b * 9
    for b in range(n_blocks):
        d = _half(scales[9 * b])
        qb = src[18 * b + 2:18 * b + 2 + half]
        lo, hi = dst[2 * half * b:2 * half * b + half], dst[2 * half * b + half:2 * half * (b + 1)]
        for j in range(half):
            byte = qb[j]  # q - 8 in float32 is exact, so the product is gguf's to the bit
            lo[j] = d * (np.float32(np.uint8(byte & np.uint8(15))) - np.float32(8.0))
            hi[j] = d * (np.float32(np.uint8(byte >> np.uint8(4))) - np.float32(8.0))


# The same two block decoders written in LLVM vector IR, used where the CPU converts halves itself: one block is a
# load of its scale and its 16 or 32 bytes, a widening convert, a multiply and two vector stores. Numba's loops
# above spend more on each block's slices (bounds clamps, alias checks between them) than on its 32 values:
# into an L1-sized buffer, Q4_0 rows decode at 2.6 Gvalues/s through them and 6.2 through these (Q8_0: 3.2, 7.5),
# which halves the 18-token query's matmuls (one layer, q4_0: 4.75 -> 2.48 ms CPU). Bit-identical (the
# same single rounding of d * (q - 8) or d * q): the tests check these against gguf.quants, and the loops above
# in the suite's NUMBA_DISABLE_JIT run, where they stand in.

def _block_decoder(block_bytes: int):
    """codegen for every block of a Q8_0 (34-byte blocks) or Q4_0 (18-byte blocks) row: (src, dst) -> dst float32
    = d * q. Q4_0's q is (nibble - 8): low nibbles first, then high. (The integer design's int16 weights come
    from _panel_codegen, a whole panel at a time.)"""

    def codegen(context, builder, signature, args):
        src = context.make_array(signature.args[0])(context, builder, args[0])
        dst = context.make_array(signature.args[1])(context, builder, args[1])
        i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
        n_blocks = builder.udiv(builder.extract_value(src.shape, 0), ir.Constant(i64, block_bytes))
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            at = builder.gep(src.data, [builder.mul(b, ir.Constant(i64, block_bytes))])
            d = builder.load(builder.bitcast(at, i16.as_pointer()), align=1)
            d = builder.fpext(builder.bitcast(d, ir.HalfType()), f32)
            q = builder.gep(at, [ir.Constant(i64, 2)])
            if block_bytes == 34:  # Q8_0: the 32 bytes as they are
                values = builder.load(builder.bitcast(q, ir.VectorType(i8, 32).as_pointer()), align=1)
                parts = [builder.sext(values, ir.VectorType(i16, 32))]
            else:  # Q4_0: 16 bytes, low nibbles - 8, then high nibbles - 8
                v8, v16 = ir.VectorType(i8, 16), ir.VectorType(i16, 16)
                nibbles = builder.load(builder.bitcast(q, v8.as_pointer()), align=1)
                halves = (builder.and_(nibbles, ir.Constant(v8, [15] * 16)), builder.lshr(nibbles, ir.Constant(v8, [4] * 16)))
                parts = [builder.sub(builder.zext(h, v16), ir.Constant(v16, [8] * 16)) for h in halves]
            out = builder.gep(dst.data, [builder.mul(b, ir.Constant(i64, 32))])
            for index, part in enumerate(parts):
                width = part.type.count
                target = builder.gep(out, [ir.Constant(i64, width * index)])
                vf = ir.VectorType(f32, width)  # q is exact in float32, so d * q is gguf's value to the bit
                splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), d, ir.Constant(i32, 0)),
                                               ir.Constant(vf, ir.Undefined), ir.Constant(ir.VectorType(i32, width), [0] * width))
                part = builder.fmul(builder.sitofp(part, vf), splat)
                builder.store(part, builder.bitcast(target, part.type.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


if numba.config.DISABLE_JIT or not _HARDWARE_HALF:
    _decode_q8_0_blocks, _decode_q4_0_blocks = _decode_q8_0, _decode_q4_0
else:

    @intrinsic
    def _decode_q8_0_blocks(typingctx, src, dst):
        """_decode_q8_0 in vector IR (32 values a block; the caller passes whole rows)."""
        return types.void(src, dst), _block_decoder(34)

    @intrinsic
    def _decode_q4_0_blocks(typingctx, src, dst):
        """_decode_q4_0 in vector IR (32 values a block; the caller passes whole rows)."""
        return types.void(src, dst), _block_decoder(18)


@_inner()
def _decode_row(qtype, src, dst):
    """The one place a type id picks its decoder: once per row of W, so the branch costs nothing measurable."""
    if qtype == Q8_0:
        _decode_q8_0_blocks(src, dst)
    elif qtype == Q4_0:
        _decode_q4_0_blocks(src, dst)
    elif qtype == BF16:
        _decode_bf16(src, dst)
    elif qtype == F16:
        _decode_f16(src, dst)
    else:
        _decode_f32(src, dst)


# ---------------------------------------------------------------------------------------------------------------
# The float micro-kernels: y[yt + a, yc + b] = sum_{i < k} x[t + a, xo + i] * w[r + b, wo + i], for a block of
# tokens a and rows b. The offsets let attention use them on windows of its keys and values.

@_inner(fastmath=FAST)
def _dot_4x6(x, t, xo, w, r, wo, k, y, yt, yc):
    """Four rows of W times six tokens: 24 running sums, each a vector over i, so ten loads feed 24 FMAs
    (LLVM keeps the sums in 24 zmm registers; 4x4 left the load ports the bottleneck at 8 loads per 16 FMAs)."""
    x0, x1, x2, x3, x4, x5 = x[t, xo:xo + k], x[t + 1, xo:xo + k], x[t + 2, xo:xo + k], x[t + 3, xo:xo + k], x[t + 4, xo:xo + k], x[t + 5, xo:xo + k]
    w0, w1, w2, w3 = w[r, wo:wo + k], w[r + 1, wo:wo + k], w[r + 2, wo:wo + k], w[r + 3, wo:wo + k]
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
    a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = np.float32(0.0)
    for i in range(k):
        u0, u1, u2, u3 = w0[i], w1[i], w2[i], w3[i]
        v = x0[i]
        a00 += v * u0
        a01 += v * u1
        a02 += v * u2
        a03 += v * u3
        v = x1[i]
        a10 += v * u0
        a11 += v * u1
        a12 += v * u2
        a13 += v * u3
        v = x2[i]
        a20 += v * u0
        a21 += v * u1
        a22 += v * u2
        a23 += v * u3
        v = x3[i]
        a30 += v * u0
        a31 += v * u1
        a32 += v * u2
        a33 += v * u3
        v = x4[i]
        a40 += v * u0
        a41 += v * u1
        a42 += v * u2
        a43 += v * u3
        v = x5[i]
        a50 += v * u0
        a51 += v * u1
        a52 += v * u2
        a53 += v * u3
    c = yc
    y[yt, c], y[yt, c + 1], y[yt, c + 2], y[yt, c + 3] = a00, a01, a02, a03
    y[yt + 1, c], y[yt + 1, c + 1], y[yt + 1, c + 2], y[yt + 1, c + 3] = a10, a11, a12, a13
    y[yt + 2, c], y[yt + 2, c + 1], y[yt + 2, c + 2], y[yt + 2, c + 3] = a20, a21, a22, a23
    y[yt + 3, c], y[yt + 3, c + 1], y[yt + 3, c + 2], y[yt + 3, c + 3] = a30, a31, a32, a33
    y[yt + 4, c], y[yt + 4, c + 1], y[yt + 4, c + 2], y[yt + 4, c + 3] = a40, a41, a42, a43
    y[yt + 5, c], y[yt + 5, c + 1], y[yt + 5, c + 2], y[yt + 5, c + 3] = a50, a51, a52, a53


@_inner(fastmath=FAST)
def _dot_4x1(x, t, xo, w, r, wo, k, y, yt, yc):
    """Four rows of W times one token: the tokens left over after the blocks of six."""
    x0 = x[t, xo:xo + k]
    w0, w1, w2, w3 = w[r, wo:wo + k], w[r + 1, wo:wo + k], w[r + 2, wo:wo + k], w[r + 3, wo:wo + k]
    a0 = a1 = a2 = a3 = np.float32(0.0)
    for i in range(k):
        v = x0[i]
        a0 += v * w0[i]
        a1 += v * w1[i]
        a2 += v * w2[i]
        a3 += v * w3[i]
    y[yt, yc], y[yt, yc + 1], y[yt, yc + 2], y[yt, yc + 3] = a0, a1, a2, a3


@_inner(fastmath=FAST)
def _dot_1x1(x, t, xo, w, r, wo, k, y, yt, yc):
    """One row of W times one token: the rows left over after the groups of four."""
    x0, w0 = x[t, xo:xo + k], w[r, wo:wo + k]
    a = np.float32(0.0)
    for i in range(k):
        a += x0[i] * w0[i]
    y[yt, yc] = a


@_inner()
def _multiply(x, t0, t1, xo, w, r0, r1, wo, k, y, yt0, yc0):
    """y[yt0 + t - t0, yc0 + r - r0] = x[t, xo:xo + k] . w[r, wo:wo + k] for tokens t in [t0, t1) and rows r in
    [r0, r1). Six tokens (18 KiB at k=768: in L1) meet each group of four rows in turn."""
    t = t0
    while t < t1:
        six = t + 6 <= t1
        r = r0
        while r + 4 <= r1:
            if six:
                _dot_4x6(x, t, xo, w, r, wo, k, y, yt0 + t - t0, yc0 + r - r0)
            else:
                for tt in range(t, t1):
                    _dot_4x1(x, tt, xo, w, r, wo, k, y, yt0 + tt - t0, yc0 + r - r0)
            r += 4
        while r < r1:
            for tt in range(t, min(t + 6, t1)):
                _dot_1x1(x, tt, xo, w, r, wo, k, y, yt0 + tt - t0, yc0 + r - r0)
            r += 1
        t = t + 6 if six else t1


# ---------------------------------------------------------------------------------------------------------------
# The outer-product micro-kernel, for larger batches: y[yt + a, yc:yc + NR] = x[t0 + a, :k] @ P for a < m, where
# P (k, NR) is a panel of NR decoded rows of W stored transposed ("packed": the NR values of one column of W
# side by side). Each step broadcasts one value of each of m tokens and multiplies it by the panel's two
# vectors: 2m FMAs on registers, no horizontal sums, results stored as whole vectors. LLVM's loop vectorizer
# cannot produce this from scalar loops (it vectorizes the dot-product form above, which ends every 4x6 block
# in 24 horizontal sums and scalar stores), so the loop is written directly in LLVM vector IR; LLVM still picks
# the instructions (vfmadd231ps zmm with a broadcast operand here; smaller vectors on other CPUs).

def _host_has(feature: str) -> bool:
    """Whether Numba compiles for a CPU with this feature: NUMBA_CPU_FEATURES where set (as Numba reads it),
    else the host's."""
    if os.environ.get("NUMBA_CPU_FEATURES"):
        return f"+{feature}" in os.environ["NUMBA_CPU_FEATURES"].split(",")
    return _host_features_have(feature)


def _host_features_have(feature: str) -> bool:
    try:
        import llvmlite.binding as llvm

        return f"+{feature}" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:
        return False


_WIDE = _host_has("avx512f")
LANES = 16 if _WIDE else 8  # float32 lanes of one vector register
NR = 2 * LANES  # rows of W per packed panel: two vectors
MR = 12 if _WIDE else 6  # tokens per micro-tile: 2 * MR accumulators + 3 fit in 32 (16) vector registers


if numba.config.DISABLE_JIT:

    def _outer_tile(m, x, t0, packed, k, y, yt, yc):
        y[yt:yt + m, yc:yc + NR] = x[t0:t0 + m, :k] @ packed[:k * NR].reshape(k, NR)

else:

    def _outer_tile_codegen(context, builder, signature, args):
        x_type, _, packed_type, _, y_type, _, _ = signature.args[1:]
        m, x, t0, packed, k, y, yt, yc = args
        xa = context.make_array(x_type)(context, builder, x)
        pa = context.make_array(packed_type)(context, builder, packed)
        ya = context.make_array(y_type)(context, builder, y)
        f32, i64, i8p = ir.FloatType(), ir.IntType(64), ir.IntType(8).as_pointer()
        vec = ir.VectorType(f32, LANES)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32")
        zero, undef = ir.Constant(vec, [0.0] * LANES), ir.Constant(vec, ir.Undefined)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        x_stride, y_stride = builder.extract_value(xa.strides, 0), builder.extract_value(ya.strides, 0)

        def row(data, stride, index):  # float* to the start of row `index`
            return builder.bitcast(builder.gep(builder.bitcast(data, i8p), [builder.mul(index, stride)]), f32.as_pointer())

        done = builder.append_basic_block("outer.done")
        switch = builder.switch(m, done)
        for mr in range(1, MR + 1):  # one unrolled body per micro-tile height, picked by m
            block = builder.append_basic_block(f"outer.m{mr}")
            switch.add_case(ir.Constant(m.type, mr), block)
            builder.position_at_end(block)
            x_rows = [row(xa.data, x_stride, builder.add(t0, ir.Constant(i64, a))) for a in range(mr)]
            sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(mr)]  # registers after mem2reg
            with cgutils.for_range(builder, k) as loop:
                i = loop.index
                at = builder.gep(pa.data, [builder.mul(i, ir.Constant(i64, NR))])
                p0 = builder.load(builder.bitcast(at, vec.as_pointer()), align=4)
                p1 = builder.load(builder.bitcast(builder.gep(at, [ir.Constant(i64, LANES)]), vec.as_pointer()), align=4)
                for a in range(mr):
                    v = builder.load(builder.gep(x_rows[a], [i]))
                    v = builder.shuffle_vector(builder.insert_element(undef, v, ir.Constant(ir.IntType(32), 0)), undef, splat_mask)
                    builder.store(builder.call(fma, [v, p0, builder.load(sums[a][0])]), sums[a][0])
                    builder.store(builder.call(fma, [v, p1, builder.load(sums[a][1])]), sums[a][1])
            for a in range(mr):
                out = builder.gep(row(ya.data, y_stride, builder.add(yt, ir.Constant(i64, a))), [yc])
                builder.store(builder.load(sums[a][0]), builder.bitcast(out, vec.as_pointer()), align=4)
                out = builder.gep(out, [ir.Constant(i64, LANES)])
                builder.store(builder.load(sums[a][1]), builder.bitcast(out, vec.as_pointer()), align=4)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    @intrinsic
    def _outer_tile(typingctx, m, x, t0, packed, k, y, yt, yc):
        """y[yt + a, yc:yc + NR] = x[t0 + a, :k] @ packed.reshape(k, NR) for a < m <= MR; no bounds checks."""
        arrays_ok = all(isinstance(a, types.Array) and a.dtype == types.float32 for a in (x, packed, y))
        if not (arrays_ok and x.ndim == 2 and y.ndim == 2 and packed.ndim == 1 and packed.layout == "C"):
            return None
        return types.void(m, x, t0, packed, k, y, yt, yc), _outer_tile_codegen


if numba.config.DISABLE_JIT:

    def _transpose_blocks(rows, packed, n_blocks):
        for i in range(n_blocks * LANES):
            packed[i * NR:(i + 1) * NR] = rows[:, i]

else:

    def _transpose_codegen(context, builder, signature, args):
        rows_type, packed_type, _ = signature.args
        rows = context.make_array(rows_type)(context, builder, args[0])
        packed = context.make_array(packed_type)(context, builder, args[1])
        f32, i32, i64, i8p = ir.FloatType(), ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
        vec = ir.VectorType(f32, LANES)
        stride = builder.extract_value(rows.strides, 0)
        # zip(a, b) = a0 b0 a1 b1 ...: its low and high halves. Applied log2(LANES) times to vectors i and
        # i + LANES / 2, the "perfect shuffle" turns LANES rows into LANES columns.
        zip_low = ir.Constant(ir.VectorType(i32, LANES), [j // 2 + (j % 2) * LANES for j in range(LANES)])
        zip_high = ir.Constant(ir.VectorType(i32, LANES), [LANES // 2 + j // 2 + (j % 2) * LANES for j in range(LANES)])
        with cgutils.for_range(builder, args[2]) as loop:
            i0 = builder.mul(loop.index, ir.Constant(i64, LANES))
            for g in range(NR // LANES):
                v = []
                for a in range(LANES):
                    row = builder.gep(builder.bitcast(rows.data, i8p), [builder.mul(ir.Constant(i64, g * LANES + a), stride)])
                    at = builder.gep(builder.bitcast(row, f32.as_pointer()), [i0])
                    v.append(builder.load(builder.bitcast(at, vec.as_pointer()), align=4))
                for _ in range(LANES.bit_length() - 1):
                    half = LANES // 2
                    v = [builder.shuffle_vector(v[i // 2], v[i // 2 + half], zip_low if i % 2 == 0 else zip_high) for i in range(LANES)]
                for c in range(LANES):
                    column = builder.add(i0, ir.Constant(i64, c))
                    at = builder.gep(packed.data, [builder.add(builder.mul(column, ir.Constant(i64, NR)), ir.Constant(i64, g * LANES))])
                    builder.store(v[c], builder.bitcast(at, vec.as_pointer()), align=4)
        return context.get_dummy_value()

    @intrinsic
    def _transpose_blocks(typingctx, rows, packed, n_blocks):
        """packed[i * NR + j] = rows[j, i] for i < n_blocks * LANES, LANES x LANES blocks at a time."""
        return types.void(rows, packed, n_blocks), _transpose_codegen


@_inner()
def _pack(rows, packed):
    """packed[i * NR + j] = rows[j, i]: NR decoded rows of W side by side. In LANES x LANES blocks transposed in
    registers (zip shuffles), then the last columns one by one: a 32x768 panel in 4.2 us, against 13.5 column
    by column and 60 row by row (whose stores, 128 bytes apart, miss L1)."""
    k = rows.shape[1]
    n_blocks = k // LANES
    _transpose_blocks(rows, packed, n_blocks)
    for i in range(n_blocks * LANES, k):
        column = packed[i * NR:(i + 1) * NR]
        for j in range(NR):
            column[j] = rows[j, i]


# ---------------------------------------------------------------------------------------------------------------
# The generic part: every kernel takes the type id as its first argument and hands it to _decode_row once per
# row of W. (Closures over a type id, one kernel set per type, missed Numba's disk cache in every new process as
# soon as one compiled function called another: the callee's dispatcher pickles into the caller's cache key
# with a per-process uuid.)

PANEL_ROWS = 32  # rows of W a dot-design task decodes: 96 KiB of float32 at k=768, in L2 while tokens stream by
TASK_TOKENS = 264  # tokens per dot-design task at most (a multiple of six); their rows of x: 0.8 MiB at k=768


@_jit(types.void(types.int64, u8_rows, i64_vec, f32_rows), parallel=True)
def _decode_rows(qtype, w, ids, out):
    """out[i] = row ids[i] of W, dequantized."""
    for i in prange(ids.size):
        _decode_row(qtype, w[ids[i]], out[i])


@_jit(types.void(types.int64, u8_rows, types.int64, f32_rows))
def _decode_tile(qtype, w, r0, out):
    """out[i] = row r0 + i of W, dequantized (serial)."""
    for i in range(out.shape[0]):
        _decode_row(qtype, w[r0 + i], out[i])


@_jit(types.void(types.int64, f32_rows_ro, u8_rows, f32_rows, i64_counter, types.int64, types.int64))
def _dot_worker(qtype, x, w, y, counter, chunk, n_tasks):
    """Claim tasks (token chunk c, row panel p) until none are left: decode the panel, multiply the chunk."""
    n, k = x.shape
    rows = w.shape[0]
    n_panels = (rows + PANEL_ROWS - 1) // PANEL_ROWS
    panel = np.empty((PANEL_ROWS, k), np.float32)
    while True:
        task = _claim(counter)
        if task >= n_tasks:
            break
        c, p = task // n_panels, task % n_panels  # chunk-major: threads at work share the same rows of x
        r0 = p * PANEL_ROWS
        nr = min(PANEL_ROWS, rows - r0)
        for j in range(nr):
            _decode_row(qtype, w[r0 + j], panel[j])
        t0 = c * chunk
        _multiply(x, t0, min(n, t0 + chunk), 0, panel, 0, nr, 0, k, y, t0, r0)


@_jit(types.void(types.int64, f32_rows_ro, u8_rows, f32_rows, types.int64, types.int64, types.int64),
      parallel=True, calls=(_dot_worker,))
def _dot_parallel(qtype, x, w, y, chunk, n_tasks, n_workers):
    """n_workers threads share the tasks through one counter."""
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _dot_worker(qtype, x, w, y, counter, chunk, n_tasks)


@_jit(types.void(types.int64, f32_rows_ro, u8_rows, f32_rows, i64_counter, types.int64, types.int64))
def _outer_worker(qtype, x, w, y, counter, group, n_tasks):
    """Claim tasks of `group` panels of NR rows until none are left: decode and pack them, then multiply every
    token by them, MR tokens at a time against each panel in turn, so that each token's row of x comes from
    memory once per task and from L1 for the other panels."""
    n, k = x.shape
    rows = w.shape[0]
    decoded = np.zeros((NR, k), np.float32)
    packed = np.empty((group, k * NR), np.float32)
    spill = np.empty((MR, NR), np.float32)  # a last, partial panel's results before they go to y
    while True:
        task = _claim(counter)
        if task >= n_tasks:
            break
        first = task * group * NR
        panels = min(group, (rows - first + NR - 1) // NR)
        for q in range(panels):
            r0 = first + q * NR
            nr = min(NR, rows - r0)
            for j in range(nr):
                _decode_row(qtype, w[r0 + j], decoded[j])
            decoded[nr:] = np.float32(0.0)
            _pack(decoded, packed[q])
        for t in range(0, n, MR):
            m = min(MR, n - t)
            for q in range(panels):
                r0 = first + q * NR
                nr = min(NR, rows - r0)
                if nr == NR:
                    _outer_tile(m, x, t, packed[q], k, y, t, r0)
                else:
                    _outer_tile(m, x, t, packed[q], k, spill, 0, 0)
                    y[t:t + m, r0:r0 + nr] = spill[:m, :nr]


@_jit(types.void(types.int64, f32_rows_ro, u8_rows, f32_rows, types.int64, types.int64, types.int64),
      parallel=True, calls=(_outer_worker,))
def _outer_parallel(qtype, x, w, y, group, n_tasks, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _outer_worker(qtype, x, w, y, counter, group, n_tasks)


# ---------------------------------------------------------------------------------------------------------------
# The integer path, for Q8_0 and Q4_0 weights on CPUs with AVX-512 VNNI: multiply-adds on the blocks' own
# integers, as ggml does, instead of decoding them to float32. Two widths of activation:
#
#   activations: each row of x, once per matmul, in blocks of 32 values: dx = max|x| / L, qx = rint(x / dx)
#                (int8 with L = 127, or int16 with L = 32767), and per block cx = -offset * sum(qx)
#   weights:     each block's integers as unsigned bytes u = q + offset (Q4_0: the nibble itself, offset 8;
#                Q8_0: q + 128, offset 128), packed once (pack, _pack_panels) like the outer design's panels
#                (the values of 32 rows side by side): for int8 activations 4 bytes of each row at a time,
#                [k / 4][32 rows][4 x u8]; for int16 activations 2, [k / 2][32 rows][2 x u8], which the tile
#                widens to int16 as it loads them, or for Q4_0 [k / 2][16 rows][2 x u8] with rows r and r + 16
#                in one byte's two nibbles; the blocks' float16 scales [block][32 rows] beside them
#   product:     sum_i u_i qx_i + cx = sum_i q_i qx_i exactly, in int32 (vpdpbusd: u8 x s8, four products a
#                lane; vpdpwssd: s16 x s16, two), then y += (dw * dx) * that sum in float32, block by block.
#
# Per block of 32 values and 16 rows the int8 kernel issues 8 vpdpbusd, the int16 kernel 16 vpdpwssd, and both
# a convert, a multiply and an FMA, where the float kernel issues 32 FMAs after decoding each weight to float.
# The price is the rounding of the activations: per value up to half a step, 1/254 (int8) or 1/65534 (int16)
# of its block's largest |x|; the tests bound the error so.
#
# Why int16 (matmul's INT_BITS), measured on this Xeon (Emerald Rapids) while another job shared it. Speed,
# python bench/kernels.py, one layer, GFLOP per CPU-second, designs back to back in one run:
#                       dot   outer   int8   int16
#     q4_0 n=18          71     61     76     59
#     q4_0 n=512         74     93    185    141
#     q4_0 n=4096        93    121    188    147
#     q8_0 n=512        108     99    200    130
#     q8_0 n=4096       102    135    262    177
# Accuracy, the 205 reference texts in document mode against sentence-transformers (files from the ggml
# quantizer), cosine mean / min:
#     q8_0   float 0.999875 / 0.999243   int8 0.999667 / 0.998101   int16 0.999875 / 0.999242
#     q4_0   float 0.968480 / 0.844444   int8 0.968269 / 0.845219   int16 0.968481 / 0.844447
# and against the float path: int8 min 0.99901 (q8_0) and 0.99926 (q4_0), int16 0.9999999 (both). int8 fails
# the Q8_0 bar (mean 0.9997) and the numba-vs-numpy agreement (0.99999) for both types, like llama.cpp's own
# int8 activations (0.99967 on Q8_0); int16 changes nothing measurable and is ~1.2-1.4x the outer design. On
# this core vpdpwssd (32 multiply-adds) and the float FMA (16) both issue twice a cycle: a loop of 12
# independent ones ran 7.5 G instructions/s on one core either way (2026-12-01), so the int16 tile's ceiling is
# ~480 GOP/s a core; in cache it runs ~305-320 (its other instructions, the Q4_0 nibbles' unpacking and each
# block's convert-scale-add, share the same two ports). End to end, when int16 came in: python -m bench.run
# --quick, best of two runs each, synthetic / reference tokens per second: q4_0 482 / 471 with the outer design,
# 587 / 506 with int16; q8_0 467 / 469 -> 562 / 537.
#
# int8 for Q4_0 weights only, measured again (2026-12-01, this 2-core Xeon, quiet): one layer q4_0 with int8
# panels built straight from the blocks as int16's are, GFLOP/s wall, int8 / int16: n=1 31 / 22, n=18 278 / 197,
# n=512 530 / 365; the 205 reference texts 22.6 s / 30.6 s (int8 panels then still built through scratch rows, so
# the end-to-end gain is understated); cosine against the reference 0.98858 /
# 0.96489 against 0.98878 / 0.96206 (the gptq file), so the 4-bit weights' error hides it. Not kept: numba and
# numpy then disagree at min cosine 0.99935 even with numpy rounding its activations to the same int8 blocks,
# because a rounding step of 1/254 of a block's max turns the backends' float32-order differences (~1e-7) into
# whole steps somewhere in 24 layers; the backends must agree to 0.99999 (test_reference), as int16 does.
#
# AMX, tried and not kept: the same int16 sums on AMX tiles (tdpbssd / tdpbsud on the activations' high and low
# bytes, x = 256 hi + lo) are exact too, and the tile products alone ran at ~540 int8 GMAC/s here. But each block
# of 32 values has its own pair of scales, so every block's sums must leave the tiles (tilestored) and be scaled in
# vector registers: per 32 rows x 16 tokens x 32 values, 4 tile stores and 32 vector rows of convert-multiply-add.
# One layer's matmuls alone: 1.2-1.4x this design per CPU-second; end to end (q4_0, 8 synthetic documents, one
# thread, alternating runs): 10-25 % slower in 4 of 5 pairs. A bf16 variant (activations and weights split into two
# bf16 each, three tile products, no per-block stores) stalled on its operands streaming from L2 and on converting
# every weight to bf16 pairs per call.
#
# LLVM does not emit either instruction from loops (see the module docstring), so the tile is written in vector
# IR calling llvm.x86.avx512.vpdpbusd.512 / vpdpwssd.512. It exists only where the CPU has AVX-512 VNNI (and
# BW); elsewhere (ARM, older x86, NUMBA_DISABLE_JIT) INT_DOT is False and matmul takes the float designs.

INT_DOT = _WIDE and _host_has("avx512vnni") and _host_has("avx512bw") and not numba.config.DISABLE_JIT
QB = 32  # values per block, of the weights and of the quantized activations
INT_MR = 6  # tokens per integer micro-tile: 12 int32 block sums + 12 float sums + 2 weight vectors in 32 zmm
Q8_0_OFFSET, Q4_0_OFFSET = 128, 8  # the panels' bytes u = q + offset: unsigned (Q4_0's nibbles as stored)
INT_OFFSET = {Q8_0: Q8_0_OFFSET, Q4_0: Q4_0_OFFSET}
LEVELS = {8: 127.0, 16: 32767.0}  # activation bits -> largest |qx|

i8_rows = types.int8[:, ::1]
i16_rows = types.int16[:, ::1]
i32_rows = types.int32[:, ::1]
i32_rows_ro = types.Array(types.int32, 2, "C", readonly=True)
_int_rows = {8: i8_rows, 16: i16_rows}
_int_rows_ro = {bits: types.Array(t.dtype, 2, "C", readonly=True) for bits, t in _int_rows.items()}


@_jit({bits: types.void(f32_rows_ro, types.float32, types.int32, q, f32_rows, i32_rows, types.int64, types.int64)
       for bits, q in _int_rows.items()}, fastmath=FAST)
def _quantize_rows(x, levels, offset, qx, dx, cx, t0, t1):
    """For rows t0 <= t < t1 and each block b of 32 values: dx = max|x| / levels, qx = rint(x / dx) in
    -levels..levels (0 for an all-zero block), cx = -offset * sum(qx); dx and cx in groups of INT_MR tokens
    (see quantize_activations)."""
    n_blocks = dx.shape[1] // INT_MR
    block = x.shape[1] // n_blocks if n_blocks else QB  # 32, from the sizes: see the block decoders' comment
    for t in range(t0, t1):
        g, a = t // INT_MR, t % INT_MR
        dg, cg = dx[g], cx[g]
        for b in range(n_blocks):
            xb, qb = x[t, block * b:block * (b + 1)], qx[t, block * b:block * (b + 1)]
            top = np.int32(0)  # max |x| through the bits: for |x| they order as the floats do (see _max)
            for i in range(block):
                top = max(top, _bits_of(xb[i]) & np.int32(0x7FFFFFFF))
            amax = _f32_from_bits(top)
            inverse = levels / amax if amax > np.float32(0.0) else np.float32(0.0)
            total = np.int32(0)
            for i in range(block):
                v = np.int32(np.rint(xb[i] * inverse))
                qb[i] = v
                total += v
            dg[b * INT_MR + a] = amax / levels
            cg[b * INT_MR + a] = -offset * total


@_jit({bits: types.void(f32_rows_ro, types.float32, types.int32, q, f32_rows, i32_rows, types.int64)
       for bits, q in _int_rows.items()}, parallel=True, calls=(_quantize_rows,))
def _quantize_parallel(x, levels, offset, qx, dx, cx, rows_per_task):
    n_tasks = (x.shape[0] + rows_per_task - 1) // rows_per_task
    for task in prange(n_tasks):
        t0 = np.int64(task) * rows_per_task
        _quantize_rows(x, levels, offset, qx, dx, cx, t0, min(x.shape[0], t0 + rows_per_task))


@_inner()
def _block_integers(qtype, src, dst, scales, stride):
    """One stored Q8_0 / Q4_0 row as bytes q + INT_OFFSET in 0..255 (dst: k values) and its block scales
    (scales[b * stride], float32)."""
    halves = src.view(np.uint16)
    if qtype == Q8_0:
        n_blocks = src.size // 34
        block = dst.size // n_blocks if n_blocks else QB
        signed = src.view(np.int8)
        for b in range(n_blocks):
            scales[b * stride] = _half(halves[17 * b])
            qb, ub = signed[34 * b + 2:34 * b + 2 + block], dst[block * b:block * (b + 1)]
            for i in range(block):
                ub[i] = np.int32(qb[i]) + Q8_0_OFFSET
    else:
        n_blocks = src.size // 18
        half = dst.size // n_blocks // 2 if n_blocks else QB // 2
        for b in range(n_blocks):
            scales[b * stride] = _half(halves[9 * b])
            qb = src[18 * b + 2:18 * b + 2 + half]
            lo, hi = dst[2 * half * b:2 * half * b + half], dst[2 * half * b + half:2 * half * (b + 1)]
            for j in range(half):
                lo[j] = np.int32(qb[j] & np.uint8(15)) + (Q4_0_OFFSET - 8)
                hi[j] = np.int32(qb[j] >> np.uint8(4)) + (Q4_0_OFFSET - 8)


@_inner()
def _scratch_rows(qtype, w, r0, nr, integers, scales):
    """Rows r0 .. r0 + nr of W as bytes q + INT_OFFSET in integers (NR, k), their block scales in scales [block][row];
    the rest of the NR rows zero."""
    for j in range(nr):
        _block_integers(qtype, w[r0 + j], integers[j], scales[j:], NR)
    integers[nr:] = 0
    for j in range(nr, NR):
        scales[j::NR] = np.float32(0.0)


@_inner()
def _panel_rows(qtype, w, r0, nr, integers, packed, scales):
    """The int8 design's panel of rows r0 .. r0 + nr of W (the rest of NR zero): `packed` holds their bytes
    q + INT_OFFSET, 4 of each row side by side ([block][4-byte step][row]), `scales` their block scales
    [block][row]. Through the scratch rows `integers` (NR, k), then _pack."""
    _scratch_rows(qtype, w, r0, nr, integers, scales)
    _pack(integers.view(np.float32), packed)  # moves them 4 bytes at a time


@_inner()
def _pair_rows(qtype, w, r0, nr, integers, packed, scales):
    """The int16 design's panel, as _panel_rows but 2 bytes of each row side by side ([block][2-byte step][row]):
    the tile widens each byte to an int16 and multiplies the pair with 2 int16 activations (vpdpwssd). For
    panels of fewer than NR rows; a whole one comes from _panel_codegen."""
    _scratch_rows(qtype, w, r0, nr, integers, scales)
    pairs, steps = integers.view(np.uint16), packed.view(np.uint16)
    for i in range(pairs.shape[1]):
        for j in range(NR):
            steps[i * NR + j] = pairs[j, i]


def _pair_panel(qtype, w, r0, nr, integers, packed, scales):
    """_pair_rows, or for a whole panel of Q8_0 / Q4_0 the same bytes from _panel_codegen."""
    _pair_rows(qtype, w, r0, nr, integers, packed, scales)


# A whole int16-design panel straight from the blocks, 16 rows at a time: each row's block of q is 8 (Q4_0)
# or 16 (Q8_0) 16-bit words, the words of 16 rows are transposed in registers (zips within 128-bit lanes, as
# in _transpose_codegen), and a column of words, as bytes q + offset, is one 2-byte step of the panel for 16 rows
# (Q4_0: its low nibbles one step, its high ones another). Through scratch rows (then a vector-IR row unpacker)
# and _pack, a 32-row panel took ~7 us; at 20 tokens that was half a matmul.
# The panel holds bytes, which the tile widens to int16 as it loads them, not int16s: half the bytes to store,
# and a 32-row panel at k=768 (24 KiB) stays in L1 while the tiles read it. Measured (2026-12-01, q4_0, one
# layer's q, k, v, gate and up, weights in cache, 3 alternating runs): n=1 113-116 us against 145-151 with int16
# panels, n=18 295-299 against 332-366, n=72 880-888 against 1003-1026; bench/kernels, GFLOP/s wall, q4_0
# n=18 / 256 / 2048: 269 / 418 / 423 against 225 / 372 / 418, q8_0 238 / 432 / 421 against 197 / 361 / 387.
# The int32 sums are exact either way, so the embeddings are the same bits. With int16 panels, packing was a
# quarter of a small matmul (n=18: 371 us against 270 with the packing skipped, the tiles reading stale panels),
# and cutting its instructions did not move that (the scale inserts, or the subtraction of 8 and a widening,
# gone: within the runs' spread); the bytes it stored did.

def _panel_codegen(block_bytes: int):
    """codegen for (w, r0, packed, scales): rows r0 .. r0 + NR of a Q8_0 (34-byte blocks) or Q4_0 (18) weight
    -> the panel and scales _pair_rows makes of them at INT_OFFSET, the same bytes."""
    words = (block_bytes - 2) // 2

    def codegen(context, builder, signature, args):
        wa, _, pa, sa = (context.make_array(t)(context, builder, a) if isinstance(t, types.Array) else None
                         for t, a in zip(signature.args, args))
        r0 = args[1]
        i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
        i8p = i8.as_pointer()

        def c64(v):
            return ir.Constant(i64, v)

        def mask(indices):
            indices = list(indices)
            return ir.Constant(ir.VectorType(i32, len(indices)), indices)

        n = 2 * words  # i16 lanes of two rows side by side
        zip_low = mask(8 * L + j // 2 + (j % 2) * n for L in range(n // 8) for j in range(8))
        zip_high = mask(8 * L + 4 + j // 2 + (j % 2) * n for L in range(n // 8) for j in range(8))
        v8 = ir.VectorType(i8, 32)
        low_bits, four, high_bit = (ir.Constant(v8, [c] * 32) for c in (15, 4, Q8_0_OFFSET))  # q + 128 = q ^ 128
        stride = builder.extract_value(wa.strides, 0)
        rows = [builder.gep(wa.data, [builder.mul(builder.add(r0, c64(a)), stride)]) for a in range(NR)]
        n_blocks = builder.udiv(builder.extract_value(wa.shape, 1), c64(block_bytes))
        with cgutils.for_range(builder, n_blocks) as loop:
            b = loop.index
            panel = builder.gep(builder.bitcast(pa.data, i8p), [builder.mul(b, c64(QB * NR))])
            for g in range(NR // 16):
                at = [builder.gep(rows[16 * g + a], [builder.mul(b, c64(block_bytes))]) for a in range(16)]
                halves = ir.Constant(ir.VectorType(i16, 16), ir.Undefined)
                for a in range(16):
                    d = builder.load(builder.bitcast(at[a], i16.as_pointer()), align=1)
                    halves = builder.insert_element(halves, d, ir.Constant(i32, a))
                d = builder.fpext(builder.bitcast(halves, ir.VectorType(ir.HalfType(), 16)), ir.VectorType(f32, 16))
                target = builder.gep(sa.data, [builder.add(builder.mul(b, c64(NR)), c64(16 * g))])
                builder.store(d, builder.bitcast(target, d.type.as_pointer()), align=4)
                vq = ir.VectorType(i16, words)
                q = [builder.load(builder.bitcast(builder.gep(x, [c64(2)]), vq.as_pointer()), align=1) for x in at]
                u = [builder.shuffle_vector(q[i], q[i + 8], mask(range(n))) for i in range(8)]  # rows i, i + 8
                for _ in range(3):
                    u = [builder.shuffle_vector(u[i // 2], u[i // 2 + 4], zip_low if i % 2 == 0 else zip_high) for i in range(8)]
                if words == 8:  # u[c]: word c of rows 0..15
                    columns = u
                else:  # u[c]'s lanes: word c and c + 8 of rows 0..7, then of rows 8..15
                    columns = ([builder.shuffle_vector(c, c, mask([*range(8), *range(16, 24)])) for c in u]
                               + [builder.shuffle_vector(c, c, mask([*range(8, 16), *range(24, 32)])) for c in u])

                def put(step, pairs):  # the step's pair of bytes of each of the 16 rows
                    target = builder.gep(panel, [c64(2 * (step * NR + 16 * g))])
                    builder.store(pairs, builder.bitcast(target, v8.as_pointer()), align=2)

                for c, column in enumerate(columns):
                    pairs = builder.bitcast(column, v8)
                    if words == 16:  # Q8_0: q + 128
                        put(c, builder.xor(pairs, high_bit))
                    else:  # Q4_0: the nibbles (q + 8); low ones are values 0..15 of the block, high ones 16..31
                        put(c, builder.and_(pairs, low_bits))
                        put(c + 8, builder.lshr(pairs, four))
        return context.get_dummy_value()

    return codegen


if INT_DOT and _HARDWARE_HALF:

    @intrinsic
    def _q8_0_panel(typingctx, w, r0, packed, scales):
        """NR rows of a Q8_0 weight as an int16-design panel and its scales (see _panel_codegen); no bounds checks."""
        return types.void(w, r0, packed, scales), _panel_codegen(34)

    @intrinsic
    def _q4_0_panel(typingctx, w, r0, packed, scales):
        """NR rows of a Q4_0 weight as an int16-design panel and its scales (see _panel_codegen); no bounds checks."""
        return types.void(w, r0, packed, scales), _panel_codegen(18)

    @overload(_pair_panel, jit_options={"nogil": True, "error_model": "numpy"})
    def _pair_panel_ir(qtype, w, r0, nr, integers, packed, scales):
        def impl(qtype, w, r0, nr, integers, packed, scales):
            if nr < NR:
                _pair_rows(qtype, w, r0, nr, integers, packed, scales)
            elif qtype == Q8_0:
                _q8_0_panel(w, r0, packed, scales)
            else:
                _q4_0_panel(w, r0, packed, scales)

        return impl


if INT_DOT:

    def _int_tile_codegen(context, builder, signature, args, nibbles=False):
        """The tile's IR: byte panels, or with `nibbles` (int16 qx) two rows a byte (see _pack_panels)."""
        m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc = args
        qx_a, dx_a, cx_a = (context.make_array(signature.args[i])(context, builder, args[i]) for i in (1, 2, 3))
        pa = context.make_array(signature.args[5])(context, builder, packed)
        sa = context.make_array(signature.args[6])(context, builder, scales)
        ya = context.make_array(signature.args[8])(context, builder, y)
        width = signature.args[1].dtype.bitwidth // 8  # bytes per activation value: 1 or 2
        per_lane = 4 // width  # values one int32 lane multiplies and adds
        i8, i32, i64, f32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
        i8p = i8.as_pointer()
        vi, vf = ir.VectorType(i32, 16), ir.VectorType(f32, 16)
        v32_i8, v32_i16 = ir.VectorType(i8, 32), ir.VectorType(ir.IntType(16), 32)
        low_nibble, four = ir.Constant(v32_i16, [15] * 32), ir.Constant(v32_i16, [4] * 32)
        name = "llvm.x86.avx512.vpdpbusd.512" if width == 1 else "llvm.x86.avx512.vpdpwssd.512"
        dot = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vi, [vi, vi, vi]), name)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vf, [vf, vf, vf]), "llvm.fma.v16f32")
        splat_mask = ir.Constant(ir.VectorType(i32, 16), [0] * 16)

        def splat(value, vec):
            undef = ir.Constant(vec, ir.Undefined)
            return builder.shuffle_vector(builder.insert_element(undef, value, ir.Constant(i32, 0)), undef, splat_mask)

        def row(array, index, element):  # pointer to the start of row `index`
            stride = builder.extract_value(array.strides, 0)
            at = builder.gep(builder.bitcast(array.data, i8p), [builder.mul(index, stride)])
            return builder.bitcast(at, element.as_pointer())

        def c64(v):
            return ir.Constant(i64, v)

        def load(base, offset, vector):  # the vector at byte `offset` from the i8 pointer base
            return builder.load(builder.bitcast(builder.gep(base, [c64(offset)]), vector.as_pointer()), align=1)

        nv = NR // 16  # int32 vectors across a panel's rows
        done = builder.append_basic_block("int.done")
        switch = builder.switch(m, done)
        for mr in range(1, INT_MR + 1):
            block = builder.append_basic_block(f"int.m{mr}")
            switch.add_case(ir.Constant(m.type, mr), block)
            builder.position_at_end(block)
            # One pointer to the tile's dx and cx, [block][token], not one per token: with 18 row pointers
            # (qx, dx, cx) LLVM walked the rows by adding strides and moved vectors to and from the stack
            # (30 stack moves and 16 address computations a block, against none and 7 now), next to the 192
            # vpdpwssd a block that share their ports. Tile alone, in cache: q4_0 255 -> 305 GOP/s a core,
            # q8_0 297 -> 320; bench/kernels int16 (2 alternating runs, wall): q4_0 n=18 / 256 / 2048
            # 314-322 / 416-417 / 385-410 -> 350-357 / 458 / 441, q8_0 292-307 / 412-426 / 387-418 -> 343-345 /
            # 452-463 / 431-445. 8 or 12 tokens a tile then spill vectors (12: 229-266 GOP/s a core).
            q_rows = [row(qx_a, builder.add(t0, c64(a)), i8) for a in range(mr)]
            group = builder.udiv(t0, c64(INT_MR))  # t0 is a group's first token (see quantize_activations)
            d_group, c_group = row(dx_a, group, f32), row(cx_a, group, i32)
            sums = [[cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * 16)) for _ in range(nv)] for _ in range(mr)]
            with cgutils.for_range(builder, n_blocks) as loop:
                b = loop.index
                block_bytes = QB * NR // 2 if nibbles else QB * NR  # a byte a value, or half a byte
                panel = builder.gep(builder.bitcast(pa.data, i8p), [builder.mul(b, c64(block_bytes))])
                at_block = builder.mul(b, c64(INT_MR))  # the block's dx and cx: [block][token]
                acc = [[splat(builder.load(builder.gep(c_group, [builder.add(at_block, c64(a))])), vi)] * nv for a in range(mr)]
                for s in range(QB // per_lane):  # per_lane values of the block a step
                    if width == 1:  # 4 bytes of each of 16 rows
                        wv = [load(panel, 4 * (s * NR + 16 * v), vi) for v in range(nv)]
                    elif nibbles:  # 2 bytes of each of 16 rows, rows r + 16 in their high nibbles
                        both = builder.zext(load(panel, 32 * s, v32_i8), v32_i16)
                        wv = [builder.bitcast(builder.and_(both, low_nibble), vi),
                              builder.bitcast(builder.lshr(both, four), vi)]
                    else:  # 2 bytes of each of 16 rows, widened to int16 pairs
                        wv = [builder.bitcast(builder.zext(load(panel, 2 * (s * NR + 16 * v), v32_i8), v32_i16), vi)
                              for v in range(nv)]
                    for a in range(mr):
                        at = builder.gep(q_rows[a], [builder.add(builder.mul(b, c64(QB * width)), c64(4 * s))])
                        xv = splat(builder.load(builder.bitcast(at, i32.as_pointer()), align=1), vi)
                        acc[a] = [builder.call(dot, [acc[a][v], wv[v], xv]) for v in range(nv)]
                scales_b = builder.gep(sa.data, [builder.mul(b, c64(NR))])  # the block's NR weight scales, float16 bits
                vh = ir.VectorType(ir.HalfType(), 16)
                dw = [builder.fpext(builder.load(builder.bitcast(builder.gep(scales_b, [c64(16 * v)]), vh.as_pointer()), align=2), vf)
                      for v in range(nv)]
                for a in range(mr):
                    d = splat(builder.load(builder.gep(d_group, [builder.add(at_block, c64(a))])), vf)
                    for v in range(nv):
                        total = builder.sitofp(acc[a][v], vf)
                        builder.store(builder.call(fma, [total, builder.fmul(dw[v], d), builder.load(sums[a][v])]), sums[a][v])
            for a in range(mr):
                out = builder.gep(row(ya, builder.add(yt, c64(a)), f32), [yc])
                for v in range(nv):
                    builder.store(builder.load(sums[a][v]), builder.bitcast(builder.gep(out, [c64(16 * v)]), vf.as_pointer()), align=4)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    @intrinsic
    def _int_tile(typingctx, m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc):
        """y[yt + a, yc:yc + NR] = sum over blocks b of (scales[b] * dx_b) * (packed block b . qx[t0 + a] block b
        + cx_b), dx_b and cx_b token t0 + a's for block b, for a < m <= INT_MR: one panel (see _pack_panels), int8
        qx with 4 bytes of each row a step, int16 qx with 2; dx and cx in quantize_activations' groups of tokens
        (t0 a multiple of INT_MR); scales float16 bits [block][row]; no bounds checks."""
        if not (isinstance(qx, types.Array) and qx.dtype in (types.int8, types.int16)):
            return None
        return types.void(m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc), _int_tile_codegen

    @intrinsic
    def _int_tile_nibbles(typingctx, m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc):
        """_int_tile for int16 qx and a nibble panel: each byte holds the values of rows r (low) and r + 16.
        (There are no nibble panels for int8 qx; given one, this is _int_tile.)"""
        if not (isinstance(qx, types.Array) and qx.dtype in (types.int8, types.int16)):
            return None
        return types.void(m, qx, dx, cx, t0, packed, scales, n_blocks, y, yt, yc), partial(_int_tile_codegen, nibbles=qx.dtype == types.int16)



# Packing, once per weight: the model packs each Q8_0 / Q4_0 matrix when it loads (pack), so a matmul's tasks
# only read panels. Each task used to pack its 32 rows itself, every call: at a query's 18 tokens that was a
# tenth of the matmuls (all 24 layers' matmuls, 9 alternating runs: 19.2-19.4 ms packing per call against
# 17.2-17.4 with byte panels packed at load, 2026-12-01). llama.cpp's CPU backend repacks Q4_0 at load the same way.
# The panels take what the blocks took: Q8_0's bytes q + 128 one a value; Q4_0's nibbles two rows a byte (row r's
# value in the low nibble, row r + 16's in the high one), which the tile splits with an and and a shift; the
# scales stay float16. The file's pages of a packed weight are then never read.
PACK_INT8, PACK_PAIRS, PACK_NIBBLES = 0, 1, 2  # panel layouts: int8 design; int16 design, bytes or nibbles


@_inner()
def _nibble_pairs(pairs, panel):
    """A byte panel of the int16 design ([2-byte step][NR rows][2]) -> its nibble panel ([step][16 rows][2]):
    the bytes of rows r and r + 16 in one, r's in the low nibble (values 0..15 of Q4_0 blocks fit)."""
    for s in range(pairs.size // (2 * NR)):
        low, high = pairs[2 * NR * s:2 * NR * s + NR], pairs[2 * NR * s + NR:2 * NR * (s + 1)]
        out = panel[NR * s:NR * (s + 1)]
        for i in range(NR):
            out[i] = low[i] | (high[i] << np.uint8(4))


@_jit(types.void(types.int64, u8_rows, types.int64, types.uint8[:, ::1], f32_rows), parallel=True)
def _pack_panels(qtype, w, layout, panels, scales):
    """Every NR rows of W as one panel of `layout` (rows past the end zero) and their block scales [block][row]."""
    k = scales.shape[1] // NR * QB
    for p in prange(panels.shape[0]):
        integers = np.zeros((NR, k), np.uint8)  # scratch rows
        r0 = p * NR
        nr = min(NR, w.shape[0] - r0)
        if layout == PACK_INT8:
            _panel_rows(qtype, w, r0, nr, integers, panels[p].view(np.float32), scales[p])
        elif layout == PACK_PAIRS:
            _pair_panel(qtype, w, r0, nr, integers, panels[p], scales[p])
        else:
            pairs = np.empty(k * NR, np.uint8)
            _pair_panel(qtype, w, r0, nr, integers, pairs, scales[p])
            _nibble_pairs(pairs, panels[p])


class PackedWeight:
    """A Q8_0 or Q4_0 weight packed for the integer design (see pack): `panels` uint8 (panels, bytes), one per NR
    rows; `scales` float16 bits (panels, blocks * NR)."""

    __slots__ = ("qtype", "bits", "rows", "k", "layout", "panels", "scales", "launches")

    def __init__(self, qtype, bits, rows, k, layout, panels, scales):
        self.qtype, self.bits, self.rows, self.k, self.layout = qtype, bits, rows, k, layout
        self.panels, self.scales = panels, scales
        self.launches: dict = {}  # the calls it leads (see _launch_plan)

    @property
    def nbytes(self) -> int:
        return self.panels.nbytes + self.scales.nbytes

    def __repr__(self) -> str:
        return f"PackedWeight({block_format(self.qtype)[0]}, ({self.rows}, {self.k}), int{self.bits} activations)"


def _aligned(shape, dtype, alignment=64) -> np.ndarray:
    """np.empty(shape, dtype) starting on a cache line: numpy's large arrays start 16 bytes past a page, and
    the tile's 32-byte loads from a panel then split across two cache lines one time in two (2026-12-01, q8_0:
    bench/kernels ~10 % slower than panels packed into Numba's aligned scratch)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _pack_int(w, qtype, bits) -> PackedWeight:
    if not INT_DOT:  # (its panel functions compile only where the integer tile exists)
        raise NotImplementedError("the integer matmul needs a CPU with AVX-512 VNNI (and Numba compiling)")
    if int(qtype) not in INT_OFFSET:
        raise ValueError(f"the integer matmul takes Q8_0 and Q4_0 weights, not {block_format(qtype)[0]}")
    w, rows, k = weight_bytes(w, qtype)
    qtype = int(qtype)
    layout = PACK_INT8 if bits == 8 else PACK_NIBBLES if qtype == Q4_0 else PACK_PAIRS
    n_panels = -(-rows // NR)
    panels = _aligned((n_panels, k * NR // 2 if layout == PACK_NIBBLES else k * NR), np.uint8)
    scales = np.empty((n_panels, k // QB * NR), np.float32)
    if n_panels:
        _compiled(_pack_panels)(qtype, _read_only(w), layout, panels, scales)
    half = _aligned(scales.shape, np.uint16)
    half[:] = scales.astype(np.float16).view(np.uint16)  # exact: they were float16
    return PackedWeight(qtype, bits, rows, k, layout, panels, half)


SHARED = 3  # weights one integer call multiplies the same activations by (q, k and v); fewer: padded with empty ones
_u8_panels = types.UniTuple(types.uint8[:, ::1], SHARED)
_u16_scales = types.UniTuple(types.uint16[:, ::1], SHARED)
_f32_outputs = types.UniTuple(f32_rows, SHARED)


@_inner()
def _task_panels(task_starts, task, group):
    """Integer-design task `task` -> (j, p0): it multiplies weight j's `group` panels from panel p0 on."""
    j = 0
    while task >= task_starts[j + 1]:
        j += 1
    return j, (task - task_starts[j]) * group


if INT_DOT:  # (elsewhere there is no _int_tile, so these two are not compiled)

    @_jit({bits: types.void(q, f32_rows_ro, i32_rows_ro, _u8_panels, _u16_scales, _f32_outputs, i64_vec, i64_counter,
                            types.int64, types.boolean) for bits, q in _int_rows_ro.items()})
    def _int_worker(qx, dx, cx, panels, scales, ys, task_starts, counter, group, nibbles):
        """Claim tasks until none are left; tasks task_starts[j] .. task_starts[j + 1] are weight j's, `group`
        panels each (see _pack_panels); every token times them, INT_MR tokens a tile, into ys[j]."""
        n = qx.shape[0]
        n_blocks = dx.shape[1] // INT_MR
        spill = np.empty((INT_MR, NR), np.float32)
        end = task_starts[SHARED]
        while True:
            task = _claim(counter)
            if task >= end:
                break
            # No software prefetch: the tasks' panels lie in order, and the hardware's prefetchers follow. When
            # each task packed its rows from the blocks, prefetching the next two tasks' rows gained 2-3 ms a
            # query; over packed panels it cost 1-2 ms (2026-12-01, q4_0, 18 tokens, all 24 layers' matmuls, 3
            # alternating runs: 14.0-15.0 ms with, 12.7-13.0 without).
            j, p0 = _task_panels(task_starts, task, group)
            y = ys[j]
            rows = y.shape[1]
            p1 = min(panels[j].shape[0], p0 + group)
            # A panel at a time, every token against it: the panel (12 KiB Q4_0, 24 Q8_0 at k=768) stays in L1
            # while the activations stream from L2. Tokens outer, the task's 4 panels took turns in L1 and
            # came from L2 each tile: bench/kernels int16, 2 alternating runs, q4_0 n=256 429-457 GFLOP/s
            # against 446-472 now, n=2048 377-399 against 422-443, q8_0 n=2048 384-388 against 425-446;
            # the 205 reference texts' matmuls (q4_0) 11.3-11.5 s against 10.8-10.9.
            for p in range(p0, p1):
                r0 = p * NR
                nr = min(NR, rows - r0)
                for t in range(0, n, INT_MR):
                    m = min(INT_MR, n - t)
                    out, ot, oc = (y, t, r0) if nr == NR else (spill, 0, 0)
                    if nibbles:
                        _int_tile_nibbles(m, qx, dx, cx, t, panels[j][p], scales[j][p], n_blocks, out, ot, oc)
                    else:
                        _int_tile(m, qx, dx, cx, t, panels[j][p], scales[j][p], n_blocks, out, ot, oc)
                    if nr < NR:
                        y[t:t + m, r0:r0 + nr] = spill[:m, :nr]

    @_jit({bits: types.void(q, f32_rows_ro, i32_rows_ro, _u8_panels, _u16_scales, _f32_outputs, i64_vec, types.int64,
                            types.boolean, types.int64) for bits, q in _int_rows_ro.items()}, parallel=True, calls=(_int_worker,))
    def _int_parallel(qx, dx, cx, panels, scales, ys, task_starts, group, nibbles, n_workers):
        counter = np.zeros(1, np.int64)
        for _ in prange(n_workers):
            _int_worker(qx, dx, cx, panels, scales, ys, task_starts, counter, group, nibbles)


QUANTIZE_ROWS = 8 * INT_MR  # rows of x a parallel activation-quantizing task takes: whole groups


def quantize_activations(x, bits, offset=0):
    """x (n, k) float32 -> (qx (n, k) int8 or int16, dx float32, cx int32) as the integer matmul reads them
    (see the comment above _quantize_rows). dx and cx come in groups of INT_MR tokens, a tile's, one row a
    group: (groups, k / 32 * INT_MR), [block][token]; activation_rows gives them as rows."""
    n, k = x.shape
    groups = -(-n // INT_MR)
    qx = np.empty((n, k), np.int8 if bits == 8 else np.int16)
    dx = np.empty((groups, k // QB * INT_MR), np.float32)
    cx = np.empty((groups, k // QB * INT_MR), np.int32)
    levels, offset = np.float32(LEVELS[bits]), np.int32(offset)
    if n >= 2 * QUANTIZE_ROWS and numba.get_num_threads() > 1:
        _compiled(_quantize_parallel, bits)(x, levels, offset, qx, dx, cx, QUANTIZE_ROWS)
    else:
        _compiled(_quantize_rows, bits)(x, levels, offset, qx, dx, cx, 0, n)
    return qx, dx, cx


def activation_rows(grouped, n):
    """quantize_activations' dx or cx as rows, (n, k / 32)."""
    groups = grouped.shape[0]
    return grouped.reshape(groups, -1, INT_MR).transpose(0, 2, 1).reshape(groups * INT_MR, -1)[:n]


def _read_only(a: np.ndarray) -> np.ndarray:
    """`a` as the kernels' read-only type (weights from a file are already; a tuple of them must be one type)."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


class _Launch:
    """What a call of the integer design over one group of packed weights passes its kernel besides x: the
    same every call, so built once (~8 us of Python a call, 96 calls a query)."""

    __slots__ = ("others", "k", "rows", "n_panels", "panels", "scales", "task_starts", "group", "nibbles", "threads")


def _launch_plan(packed, qtype, bits) -> _Launch:
    """The launch over `packed` (1 to SHARED weights), kept by the first weight: the plan holds the others, so
    the ids in its key stay theirs for as long as it exists. (Numba's thread count is part of the key: it can
    change between calls.)"""
    key = (tuple(id(w) for w in packed[1:]), qtype, bits, numba.get_num_threads())
    plan = packed[0].launches.get(key)
    if plan is not None:
        return plan
    for w in packed:
        if (w.qtype, w.bits) != (qtype, bits):
            raise ValueError(f"a weight packed as {block_format(w.qtype)[0]} for int{w.bits} activations, "
                             f"multiplied as {block_format(qtype)[0]} with int{bits}")
    k = packed[0].k
    if any(w.k != k for w in packed):
        raise ValueError(f"weights sharing activations need rows of one length; got {[w.k for w in packed]} values")
    plan = _Launch()
    plan.others, plan.k, plan.rows = packed[1:], k, [w.rows for w in packed]
    plan.n_panels = sum(w.panels.shape[0] for w in packed)
    plan.threads = _threads(plan.n_panels)
    plan.group = max(1, min(4, plan.n_panels // (4 * plan.threads)))  # up to 4 panels a task, leaving 4 tasks a thread
    padding = SHARED - len(packed)
    plan.panels = tuple(w.panels for w in packed) + (np.empty((0, packed[0].panels.shape[1]), np.uint8),) * padding
    plan.scales = tuple(w.scales for w in packed) + (np.empty((0, packed[0].scales.shape[1]), np.uint16),) * padding
    starts = [0]
    for p in plan.panels:
        starts.append(starts[-1] - (-p.shape[0] // plan.group))
    plan.task_starts = np.array(starts, np.int64)
    plan.nibbles = packed[0].layout == PACK_NIBBLES
    packed[0].launches[key] = plan
    return plan


def matmul_int_shared(x, weights, qtype, bits=16) -> list[np.ndarray]:
    """Design "int": activations quantized once to int8 or int16 blocks, then integer dot products against the
    weight blocks' integers (AVX-512 VNNI), a task multiplying every token by up to 4 panels of NR rows. Q8_0
    and Q4_0 only; weights packed by pack (a stored weight is packed first, each call). Up to SHARED weights of
    one type share the quantized x and one parallel launch: [x @ W.T for W in weights]."""
    if not INT_DOT:
        raise NotImplementedError("the integer matmul needs a CPU with AVX-512 VNNI (and Numba compiling)")
    if int(qtype) not in INT_OFFSET:
        raise ValueError(f"the integer matmul takes Q8_0 and Q4_0 weights, not {block_format(qtype)[0]}")
    if not 1 <= len(weights) <= SHARED:
        raise ValueError(f"the integer matmul takes 1 to {SHARED} weights at once, not {len(weights)}")
    packed = [w if isinstance(w, PackedWeight) else _pack_int(w, qtype, bits) for w in weights]
    plan = _launch_plan(packed, int(qtype), bits)
    x = activations(x, plan.k, block_format(qtype)[0])
    n = x.shape[0]
    ys = [np.empty((n, rows), np.float32) for rows in plan.rows]
    if n == 0 or plan.n_panels == 0:
        return ys
    qx, dx, cx = quantize_activations(x, bits, INT_OFFSET[int(qtype)])
    outputs = tuple(ys) + (np.empty((n, 0), np.float32),) * (SHARED - len(ys))
    if plan.threads > 1:
        _compiled(_int_parallel, bits)(qx, dx, cx, plan.panels, plan.scales, outputs, plan.task_starts, plan.group,
                                       plan.nibbles, plan.threads)
    else:
        _compiled(_int_worker, bits)(qx, dx, cx, plan.panels, plan.scales, outputs, plan.task_starts,
                                     np.zeros(1, np.int64), plan.group, plan.nibbles)
    return ys


def matmul_int(x, w, qtype, bits=16) -> np.ndarray:
    """matmul_int_shared with one weight."""
    return matmul_int_shared(x, [w], qtype, bits)[0]


def matmul_int8(x, w, qtype) -> np.ndarray:
    return matmul_int(x, w, qtype, 8)


def matmul_int16(x, w, qtype) -> np.ndarray:
    return matmul_int(x, w, qtype, 16)


# ---------------------------------------------------------------------------------------------------------------
# The public functions: same signatures as numpy_backend.

# Why these designs, and no BLAS: python bench/kernels.py, one layer's seven matmuls, GFLOP/s wall / per
# CPU-second, on this 2-core machine while other people's jobs ran on it (load 4-5), all in one run:
#                        BLAS on f32 W   numpy tile+BLAS      numba dot     numba outer
#   q4_0 n=18 (a query)     2.0/3.4          0.8/1.2         40.4/59.7      33.2/51.8
#   q4_0 n=512              34/51             25/38            45/84          56/106
#   q4_0 n=4096             55/86             57/91            42/63          53/88
#   q8_0 n=512              30/44             27/40            49/70          75/113
#   q8_0 n=4096             67/99             76/118           48/76          60/102
# numpy's OpenBLAS runs two threads that yield-spin inside every GEMM: when the machine is busy they burn the
# CPU share the other one needs, and a small product collapses (n=18: 0.8 GFLOP/s). With one BLAS thread it
# is robust, and at n=4096 still ~15 % ahead of the outer kernel per CPU-second; below ~500 tokens it is not
# ahead at all. On a shared machine the wall figures follow the CPU share (each session's threads share one
# scheduler group), so what counts is work per CPU-second and spinning only briefly: these kernels claim tasks from
# a counter and their idle threads sleep after ~0.4 ms (GOMP_SPINCOUNT). The dot design wins below ~40 tokens,
# where the outer design's packing is not yet paid back (n=18, q4_0: 2.5 ms CPU a layer against 3.9).


def dequantize(w, qtype) -> np.ndarray:
    """The whole weight as float32 (rows, k). For small tensors (norm vectors) and tests."""
    w, rows, k = weight_bytes(w, qtype)
    out = np.empty((rows, k), np.float32)
    _compiled(_decode_tile)(int(qtype), w, 0, out)
    return out


def dequantize_rows(w, qtype, row_ids) -> np.ndarray:
    """Only the rows `row_ids` of the weight, as float32 (len(row_ids), k): the embedding lookup."""
    w, rows, k = weight_bytes(w, qtype)
    ids = row_indices(row_ids, rows)
    out = np.empty((ids.size, k), np.float32)
    _compiled(_decode_rows)(int(qtype), w, ids, out)
    return out


def _threads(n_tasks: int) -> int:
    return max(1, min(numba.get_num_threads(), n_tasks))


def matmul_dot(x, w, qtype) -> np.ndarray:
    """Design "dot": tasks of (32 rows, up to 264 tokens), decoded rows times tokens by the 4x6 dot kernel."""
    w, rows, k = weight_bytes(w, qtype)
    x = activations(x, k, block_format(qtype)[0])
    n = x.shape[0]
    y = np.empty((n, rows), np.float32)
    if n == 0 or rows == 0:
        return y
    n_chunks = -(-n // TASK_TOKENS)
    chunk = -(-n // n_chunks)
    chunk += -chunk % 6  # whole blocks of six tokens
    n_tasks = n_chunks * -(-rows // PANEL_ROWS)
    threads = _threads(n_tasks)
    if threads > 1:
        _compiled(_dot_parallel)(int(qtype), x, w, y, chunk, n_tasks, threads)
    else:
        _compiled(_dot_worker)(int(qtype), x, w, y, np.zeros(1, np.int64), chunk, n_tasks)
    return y


def matmul_outer(x, w, qtype) -> np.ndarray:
    """Design "outer": tasks of NR rows, decoded and packed once, times every token by the outer-product kernel."""
    w, rows, k = weight_bytes(w, qtype)
    x = activations(x, k, block_format(qtype)[0])
    n = x.shape[0]
    y = np.empty((n, rows), np.float32)
    if n == 0 or rows == 0:
        return y
    n_panels = -(-rows // NR)
    threads = _threads(n_panels)
    group = max(1, min(4, n_panels // (4 * threads)))  # up to 4 panels a task, while leaving 4 tasks a thread
    n_tasks = -(-n_panels // group)
    if threads > 1:
        _compiled(_outer_parallel)(int(qtype), x, w, y, group, n_tasks, threads)
    else:
        _compiled(_outer_worker)(int(qtype), x, w, y, np.zeros(1, np.int64), group, n_tasks)
    return y


OUTER_MIN_N = 40  # from this many tokens on, the outer design (the numbers are above)
INT_TYPES = frozenset(INT_OFFSET) if INT_DOT else frozenset()  # the types the integer design takes here
INT_BITS = 16  # the integer design's activations: int16 (int8 fails the accuracy bars; the numbers are above)


def matmul(x, w, qtype, long_batch=False) -> np.ndarray:
    """y = x @ W.T for float32 activations x (n, k) and a stored weight W (rows, row_bytes), or what pack made of
    it: float32 (n, rows). long_batch: see matmuls."""
    if long_batch and amx.takes_matmul([w]):
        return amx.matmuls(x, [w], qtype)[0]
    n = np.shape(x)[0] if np.ndim(x) == 2 else 0
    # The integer design at every n: each row's result then depends on that row alone, so a text's
    # embedding does not change with what it is batched with (the dot design below 40 tokens would
    # differ from it by the activation rounding, ~1e-5). At n=18 the two run alike (the numbers above).
    if isinstance(w, PackedWeight):
        return matmul_int(x, w, qtype, w.bits)
    if int(qtype) in INT_TYPES:
        return matmul_int(x, w, qtype, INT_BITS)
    if n < OUTER_MIN_N:
        return matmul_dot(x, w, qtype)
    return matmul_outer(x, w, qtype)


# Rows of x a caller that splits its batch (to bound its memory) should hand matmul at a time. One layer alone,
# weights and x hot in cache, the integer design is faster on more rows (q4_0: 222 GFLOP/s wall at 256, 274 at
# 2,048); a whole forward pass is faster in steps that keep its norms, quantizing and matmuls in L2 (2,048
# tokens, min of 3 runs: q4_0 2.00 s in 256-row steps against 2.46 in one step, f32 2.81 against 3.12).
# 512 rather than 256 since the AMX tiles' matmul, which makes its weight tiles once per call (2026-12-01, q4_0,
# alternating runs, s: 205 reference texts, tiles 14.3-14.5 against 15.3-15.5 at 256; 64 synthetic documents
# 7.6-7.7 against 8.4-8.9; without the tiles' matmul 15.0-15.9 against 15.6-16.9, and 9.2-9.7 against
# 9.7-10.1); 1,024 was slower (synthetic 13.6 s: x and the weight tiles no longer fit in L2). Again with the
# one-term tiles (2026-12-02, 64 synthetic documents, 2 alternating runs): 512 4.3-4.9 s, 256 5.1-5.3, 1,024 7.6-9.5.
MATMUL_ROWS = 512


def matmuls(x, weights, long_batch=False) -> list[np.ndarray]:
    """[x @ W.T for (W, qtype) in weights]: weights of one integer type share one activation quantizing and one
    parallel launch (three kernels fewer a layer: ~50 us each of Python and thread wake-up, at 18 tokens).

    long_batch: x belongs to sequences of at least LONG_SEQUENCE tokens each, so packed Q8_0 / Q4_0 weights may
    take the AMX tiles where the CPU has them (amx.matmuls: x and W rounded to bfloat16, one layer ~3x the
    integer design at 512 tokens, ~1.2x at 48). A row's result then depends on the flag and that row alone: callers that want a text's
    embedding independent of its batch decide the flag by the text's own length."""
    types_ = {int(qtype) for _, qtype in weights}
    if len(types_) == 1 and types_ <= INT_TYPES and 1 <= len(weights) <= SHARED:
        packed = [w for w, _ in weights]
        if long_batch and amx.takes_matmul(packed):
            return amx.matmuls(x, packed, types_.pop())
        return matmul_int_shared(x, packed, types_.pop(), INT_BITS)
    return [matmul(x, w, qtype, long_batch) for w, qtype in weights]


def pack(w, qtype):
    """W as matmul reads it fastest, for callers that multiply by it again and again (a model, at load): Q8_0
    and Q4_0 weights where the integer design runs packed into its panels (a PackedWeight, the size of the
    blocks; see _pack_panels), any other weight as it is."""
    if int(qtype) in INT_TYPES:
        return _pack_int(w, qtype, INT_BITS)
    return w


# ---------------------------------------------------------------------------------------------------------------
# The elementwise and attention kernels: one pass over the data each, where numpy makes three to eight (rms_norm,
# gelu_tanh and attention's softmax took 27 of 92 CPU-seconds of a q4_0 run over the 205 reference texts).

ELEMENTWISE_CHUNK = 1 << 15  # values per parallel task; below two tasks' worth a kernel runs on the calling thread

f32_vec_ro = types.Array(types.float32, 1, "C", readonly=True)
f32_3d = types.float32[:, :, ::1]
f32_3d_ro = types.Array(types.float32, 3, "C", readonly=True)


@_inner(fastmath=FAST, inline="always")
def _exp(x):
    """e^x in float32, in a form LLVM vectorizes (it cannot vectorize a call to expf): x = n ln2 + r with
    |r| <= ln2 / 2, e^r by Cephes' expf polynomial, 2^n written straight into the exponent bits. Within 2 ulp
    of np.exp on [-87.3, 88]; outside, the argument is clamped (e^-87.3 ~ 1e-38 stands in for 0)."""
    x = min(max(x, np.float32(-87.33)), np.float32(88.0))
    n = np.floor(x * np.float32(1.4426950408889634) + np.float32(0.5))
    r = (x - n * np.float32(0.693359375)) + n * np.float32(2.12194440e-4)  # Cody-Waite: ln2 in two parts
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * (r * r) + r + np.float32(1.0)
    return p * _f32_from_bits(np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23))


@_inner(fastmath=FAST, inline="always")
def _gelu(v):
    """gelu_tanh(v) = 0.5 v (1 + tanh(z)) = v / (1 + e^(-2z)): one exp, and no cancellation for very negative v."""
    z = np.float32(np.sqrt(2.0 / np.pi)) * (v + np.float32(0.044715) * v * v * v)
    return v / (np.float32(1.0) + _exp(np.float32(-2.0) * z))


@_inner(fastmath=FAST, inline="always")
def _rms_scale(row, eps):
    """1 / sqrt(mean(row^2) + eps): what RMSNorm multiplies a row by (before its weight)."""
    total = np.float32(0.0)
    for i in range(row.size):
        total += row[i] * row[i]
    return np.float32(1.0) / np.sqrt(total / np.float32(row.size) + eps)


@_jit(types.void(f32_rows_ro, f32_vec_ro, types.float32, f32_rows, types.int64, types.int64), fastmath=FAST)
def _rms_norm_rows(x, weight, eps, out, r0, r1):
    for r in range(r0, r1):
        row, dst = x[r], out[r]
        scale = _rms_scale(row, eps)
        for i in range(row.size):
            dst[i] = row[i] * scale * weight[i]


@_jit(types.void(f32_rows, f32_rows_ro, f32_vec_ro, types.float32, types.int64, types.int64), fastmath=FAST)
def _add_rms_norm_rows(x, y, weight, eps, r0, r1):
    for r in range(r0, r1):
        row, dst = y[r], x[r]
        scale = _rms_scale(row, eps)
        for i in range(row.size):
            dst[i] += row[i] * scale * weight[i]


@_jit(types.void(f32_rows, f32_rows_ro, f32_vec_ro, types.float32, types.int64), parallel=True,
      calls=(_add_rms_norm_rows,))
def _add_rms_norm_parallel(x, y, weight, eps, rows_per_task):
    n_tasks = (x.shape[0] + rows_per_task - 1) // rows_per_task
    for task in prange(n_tasks):
        r0 = np.int64(task) * rows_per_task
        _add_rms_norm_rows(x, y, weight, eps, r0, min(x.shape[0], r0 + rows_per_task))


@_jit(types.void(f32_rows_ro, f32_vec_ro, types.float32, f32_rows, types.int64), parallel=True, calls=(_rms_norm_rows,))
def _rms_norm_parallel(x, weight, eps, out, rows_per_task):
    n_tasks = (x.shape[0] + rows_per_task - 1) // rows_per_task
    for task in prange(n_tasks):
        r0 = np.int64(task) * rows_per_task
        _rms_norm_rows(x, weight, eps, out, r0, min(x.shape[0], r0 + rows_per_task))


@_jit(types.void(f32_row, f32_row, types.int64, types.int64), fastmath=FAST)
def _gelu_tanh_range(x, out, i0, i1):
    src, dst = x[i0:i1], out[i0:i1]
    for i in range(src.size):
        dst[i] = _gelu(src[i])


@_jit(types.void(f32_row, f32_row), parallel=True, calls=(_gelu_tanh_range,))
def _gelu_tanh_parallel(x, out):
    n_tasks = (x.size + ELEMENTWISE_CHUNK - 1) // ELEMENTWISE_CHUNK
    for task in prange(n_tasks):
        i0 = np.int64(task) * ELEMENTWISE_CHUNK
        _gelu_tanh_range(x, out, i0, min(x.size, i0 + ELEMENTWISE_CHUNK))


# In place, x[i] = f(x[i]) over one array: given x as both source and destination, LLVM's vectorized loop finds
# them overlapping at run time and takes its scalar loop (gelu_tanh over 2048 x 1152: 0.85 -> 7.9 ms).
@_jit(types.void(f32_row, f32_vec_ro, types.int64, types.int64), fastmath=FAST)
def _gelu_tanh_mul_range(x, y, i0, i1):
    dst, other = x[i0:i1], y[i0:i1]
    for i in range(dst.size):
        dst[i] = _gelu(dst[i]) * other[i]


@_jit(types.void(f32_row, f32_vec_ro), parallel=True, calls=(_gelu_tanh_mul_range,))
def _gelu_tanh_mul_parallel(x, y):
    n_tasks = (x.size + ELEMENTWISE_CHUNK - 1) // ELEMENTWISE_CHUNK
    for task in prange(n_tasks):
        i0 = np.int64(task) * ELEMENTWISE_CHUNK
        _gelu_tanh_mul_range(x, y, i0, min(x.size, i0 + ELEMENTWISE_CHUNK))


@_jit(types.void(f32_3d_ro, f32_vec_ro, types.float32, f32_rows_ro, f32_rows_ro, f32_3d, types.int64, types.int64),
      fastmath=FAST)
def _rms_norm_rope_rows(x, weight, eps, cos, sin, out, t0, t1):
    half = cos.shape[1]
    w1, w2 = weight[:half], weight[half:2 * half]
    for t in range(t0, t1):
        c, s = cos[t], sin[t]
        for h in range(x.shape[1]):
            scale = _rms_scale(x[t, h], eps)
            x1, x2 = x[t, h, :half], x[t, h, half:2 * half]
            o1, o2 = out[t, h, :half], out[t, h, half:2 * half]
            for i in range(half):
                a, b = x1[i] * scale * w1[i], x2[i] * scale * w2[i]
                o1[i] = a * c[i] - b * s[i]
                o2[i] = b * c[i] + a * s[i]


@_jit(types.void(f32_3d_ro, f32_vec_ro, types.float32, f32_rows_ro, f32_rows_ro, f32_3d, types.int64), parallel=True,
      calls=(_rms_norm_rope_rows,))
def _rms_norm_rope_parallel(x, weight, eps, cos, sin, out, rows_per_task):
    n_tasks = (x.shape[0] + rows_per_task - 1) // rows_per_task
    for task in prange(n_tasks):
        t0 = np.int64(task) * rows_per_task
        _rms_norm_rope_rows(x, weight, eps, cos, sin, out, t0, min(x.shape[0], t0 + rows_per_task))


def rms_norm(x, weight, eps) -> np.ndarray:
    """x / sqrt(mean(x^2 over the last axis) + eps) * weight."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    d = weight.shape[0]
    rows = x.reshape(-1, d)
    out = np.empty_like(rows)
    per_task = max(1, ELEMENTWISE_CHUNK // d)
    if rows.shape[0] >= 2 * per_task and numba.get_num_threads() > 1:
        _compiled(_rms_norm_parallel)(rows, weight, np.float32(eps), out, per_task)
    else:
        _compiled(_rms_norm_rows)(rows, weight, np.float32(eps), out, 0, rows.shape[0])
    return out.reshape(x.shape)


def gelu_tanh(x) -> np.ndarray:
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), elementwise."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    flat, flat_out = x.reshape(-1), out.reshape(-1)
    if flat.size >= 2 * ELEMENTWISE_CHUNK and numba.get_num_threads() > 1:
        _compiled(_gelu_tanh_parallel)(flat, flat_out)
    else:
        _compiled(_gelu_tanh_range)(flat, flat_out, 0, flat.size)
    return out


def gelu_tanh_mul(x, y) -> np.ndarray:
    """x = gelu_tanh(x) * y, in place (x: a writable float32 C array; y: its shape), one pass; returns x."""
    check_in_place(x, y)
    flat, other = x.reshape(-1), np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
    if flat.size >= 2 * ELEMENTWISE_CHUNK and numba.get_num_threads() > 1:
        _compiled(_gelu_tanh_mul_parallel)(flat, other)
    else:
        _compiled(_gelu_tanh_mul_range)(flat, other, 0, flat.size)
    return x


def add_rms_norm(x, y, weight, eps) -> np.ndarray:
    """x += rms_norm(y, weight, eps), in place (x: a writable float32 C array; y: its shape), one pass; returns x."""
    check_in_place(x, y)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    d = weight.shape[0]
    rows, normed = x.reshape(-1, d), np.ascontiguousarray(y, dtype=np.float32).reshape(-1, d)
    per_task = max(1, ELEMENTWISE_CHUNK // d)
    if rows.shape[0] >= 2 * per_task and numba.get_num_threads() > 1:
        _compiled(_add_rms_norm_parallel)(rows, normed, weight, np.float32(eps), per_task)
    else:
        _compiled(_add_rms_norm_rows)(rows, normed, weight, np.float32(eps), 0, rows.shape[0])
    return x


def rms_norm_rope(x, weight, eps, cos, sin, out=None) -> np.ndarray:
    """rms_norm over the last axis of x (tokens, heads, d), then each head rotated by angles with cos and sin
    (tokens, d / 2), its halves paired: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). One pass, into `out`
    (x's shape) when given."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    cos, sin = np.ascontiguousarray(cos, dtype=np.float32), np.ascontiguousarray(sin, dtype=np.float32)
    if out is None:
        out = np.empty_like(x)
    check_in_place(out, x)
    per_task = max(1, ELEMENTWISE_CHUNK // max(1, x.shape[1] * x.shape[2]))
    if x.shape[0] >= 2 * per_task and numba.get_num_threads() > 1:
        _compiled(_rms_norm_rope_parallel)(x, weight, np.float32(eps), cos, sin, out, per_task)
    else:
        _compiled(_rms_norm_rope_rows)(x, weight, np.float32(eps), cos, sin, out, 0, x.shape[0])
    return out


ATTENTION_BLOCK = 32  # query positions per attention task: with 3 heads a group, 96 rows = 8 micro-tiles


@_inner(fastmath=FAST)
def _max(s):
    """The largest of the (non-NaN) float32s in s, through integers: for b the bits of a float, b ^ (0x7FFFFFFF if
    b < 0) orders as the float does, and LLVM vectorizes an integer max but left the float max a chain of scalar
    vmaxss (0.22 ns a value against 1.6: it was 70 % of the softmax)."""
    top = np.int64(-(1 << 31))
    for j in range(s.size):
        b = np.int64(_bits_of(s[j]))
        top = max(top, b ^ ((b >> 31) & 0x7FFFFFFF))
    return _f32_from_bits(top ^ ((top >> 31) & 0x7FFFFFFF))


@_inner(fastmath=FAST)
def _softmax_unscaled(s):
    """s = e^(s - max s), in place; returns 1 / sum(s), the factor that would make it a softmax (attention
    applies it to the output row, d values, instead of to the row of scores, one per key)."""
    top = _max(s)
    total = np.float32(0.0)
    for j in range(s.size):
        e = _exp(s[j] - top)
        s[j] = e
        total += e
    return np.float32(1.0) / total


@_inner()
def _attention_task(task, n_blocks, length, radius):
    """Attention task -> (key/value head h, its positions start .. stop, the keys lo .. hi they can see)."""
    h, block = task // n_blocks, task % n_blocks
    start = block * ATTENTION_BLOCK
    stop = min(length, start + ATTENTION_BLOCK)
    lo, hi = (0, length) if radius < 0 else (max(0, start - radius), min(length, stop + radius))
    return h, start, stop, lo, hi


@_inner(fastmath=FAST)
def _gather_queries(q, h, group, start, stop, scale, queries):
    """A task's rows of queries: (position, head of h's group) pairs, the scale folded in."""
    for p in range(start, stop):
        for g in range(group):
            src, dst = q[p, h * group + g], queries[(p - start) * group + g]
            for i in range(src.size):
                dst[i] = src[i] * scale


@_inner(fastmath=FAST)
def _softmax_rows(scores, n_rows, start, group, lo, hi, radius, first, width, inverse):
    """Each row's softmax (_softmax_unscaled, 1 / sum into inverse) over the keys its position can see, the rest
    of its `width` columns 0; column j holds key first + j."""
    for row in range(n_rows):
        pos = start + row // group
        a, b = (lo, hi) if radius < 0 else (max(lo, pos - radius), min(hi, pos + radius + 1))
        a, b = a - first, b - first
        inverse[row] = _softmax_unscaled(scores[row, a:b])
        scores[row, :a] = np.float32(0.0)
        scores[row, b:width] = np.float32(0.0)


@_inner(fastmath=FAST)
def _scatter_outputs(mixed, inverse, out, h, group, start, stop):
    """A task's rows of weights times values, each times its 1 / sum, into out's (position, head) rows."""
    for p in range(start, stop):
        for g in range(group):
            row = (p - start) * group + g
            src, dst, scale_row = mixed[row], out[p, h * group + g], inverse[row]
            for i in range(dst.size):
                dst[i] = src[i] * scale_row


@_jit(types.void(f32_3d_ro, f32_3d_ro, f32_3d, f32_3d))
def _pack_keys_values(k, v, keys, values):
    """keys[h, p] = keys p*NR ... p*NR + NR - 1 of head h packed as the outer kernel reads W (the NR keys' i-th
    features side by side), values[h, c] = features c*NR ... of every key, NR floats a key; zeros beyond.
    Zeroing only the padding and transposing whole panels in registers: 17 us at 256 keys, d=256, against 44
    with everything zeroed first and keys written feature by feature (128-byte strided stores)."""
    length, n_kv, d = k.shape
    whole = length // NR  # panels of NR keys: transposed in registers (_pack), the rest key by key
    keys[:, whole:] = np.float32(0.0)  # only what no key fills
    if d % NR:
        values[:] = np.float32(0.0)
    else:
        values[:, :, length * NR:] = np.float32(0.0)
    for h in range(n_kv):
        for p in range(whole):
            _pack(k[p * NR:(p + 1) * NR, h], keys[h, p])
        for j in range(whole * NR, length):
            src, dst = k[j, h], keys[h, j // NR]
            for i in range(d):
                dst[i * NR + j % NR] = src[i]
        for j in range(length):
            for c in range(values.shape[1]):
                f1 = min(d, (c + 1) * NR)
                src, dst = v[j, h, c * NR:f1], values[h, c, j * NR:j * NR + f1 - c * NR]
                for f in range(src.size):
                    dst[f] = src[f]


@_jit(types.void(f32_3d_ro, f32_3d_ro, f32_3d_ro, types.float32, types.int64, f32_3d, i64_counter, types.int64),
      fastmath=FAST)
def _attention_worker(q, keys, values, scale, radius, out, counter, n_tasks):
    """Claim tasks (key/value head h, block of query positions) until none are left. For one task: its queries
    (positions x the heads sharing h) times the keys they can see, softmax per row, times the values; both
    products by the outer-product kernel, the packed keys and values standing in for W. The softmax's division
    by its sum is applied to the output row (d values) instead of the scores (one per key)."""
    length, n_heads, d = q.shape
    n_kv = keys.shape[0]
    group = n_heads // n_kv
    n_blocks = (length + ATTENTION_BLOCK - 1) // ATTENTION_BLOCK
    reach = length if radius < 0 else min(length, ATTENTION_BLOCK + 2 * radius)
    rows = ATTENTION_BLOCK * group
    queries = np.empty((rows, d), np.float32)
    scores = np.empty((rows, min(keys.shape[1], reach // NR + 2) * NR), np.float32)
    mixed = np.empty((rows, values.shape[1] * NR), np.float32)
    inverse = np.empty(rows, np.float32)  # each row's 1 / sum of its softmax's exponentials
    while True:
        task = _claim(counter)
        if task >= n_tasks:
            break
        h, start, stop, lo, hi = _attention_task(task, n_blocks, length, radius)
        p0, p1 = lo // NR, (hi + NR - 1) // NR  # the panels of keys holding [lo, hi)
        n_rows, width = (stop - start) * group, (p1 - p0) * NR
        _gather_queries(q, h, group, start, stop, scale, queries)
        for p in range(p0, p1):
            for t in range(0, n_rows, MR):
                _outer_tile(min(MR, n_rows - t), queries, t, keys[h, p], d, scores, t, (p - p0) * NR)
        _softmax_rows(scores, n_rows, start, group, lo, hi, radius, p0 * NR, width, inverse)
        for c in range(values.shape[1]):
            panel = values[h, c, p0 * NR * NR:]
            for t in range(0, n_rows, MR):
                _outer_tile(min(MR, n_rows - t), scores, t, panel, width, mixed, t, c * NR)
        _scatter_outputs(mixed, inverse, out, h, group, start, stop)


@_jit(types.void(f32_3d_ro, f32_3d_ro, f32_3d_ro, types.float32, types.int64, f32_3d, types.int64, types.int64),
      parallel=True, calls=(_attention_worker,))
def _attention_parallel(q, keys, values, scale, radius, out, n_tasks, n_workers):
    counter = np.zeros(1, np.int64)
    for _ in prange(n_workers):
        _attention_worker(q, keys, values, scale, radius, out, counter, n_tasks)


def attention(q, k, v, scale, radius, out=None) -> np.ndarray:
    """Bidirectional softmax attention of one sequence: q (L, heads, d), k and v (L, kv_heads, d); query heads
    share key/value heads in equal groups. softmax(scale q.k) over the keys, times the values; with a radius,
    position i sees position j only when |i - j| <= radius. Into `out` (q's shape) when given, which may be q
    itself: a task copies its queries before it writes their rows, and no other task reads them."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    k, v = np.ascontiguousarray(k, dtype=np.float32), np.ascontiguousarray(v, dtype=np.float32)
    length, _, d = q.shape
    if out is None:
        out = np.empty_like(q)
    check_in_place(out, q)
    if length == 0:
        return out
    radius = -1 if radius is None else int(radius)
    if amx.takes(length, d):  # ~2x faster from 256 tokens on (the numbers are in amx)
        return amx.attention(q, k, v, scale, radius, out)
    n_kv = k.shape[1]
    keys = np.empty((n_kv, -(-length // NR), d * NR), np.float32)
    values = np.empty((n_kv, -(-d // NR), keys.shape[1] * NR * NR), np.float32)
    _compiled(_pack_keys_values)(k, v, keys, values)
    n_tasks = n_kv * -(-length // ATTENTION_BLOCK)
    threads = _threads(n_tasks)
    if threads > 1:
        _compiled(_attention_parallel)(q, keys, values, np.float32(scale), radius, out, n_tasks, threads)
    else:
        _compiled(_attention_worker)(q, keys, values, np.float32(scale), radius, out, np.zeros(1, np.int64), n_tasks)
    return out


from . import amx  # noqa: E402 (it builds on this module's kernels)

# Sequences from this many tokens on take the AMX tiles' matmul where the CPU has them, when the caller says so
# (matmuls' long_batch; attention chooses by each sequence's length, from amx.MIN_LENGTH). 0 where there are no
# tiles: one design.
LONG_SEQUENCE = amx.LONG_SEQUENCE if amx.AVAILABLE else 0
