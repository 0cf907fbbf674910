"""Scalar helpers that compiled kernels call: float bit casts, IEEE half -> float32, a vectorizable exp, a float max
through integers, and the atomic task counter. Each is an LLVM instruction or a few, and each has a plain Python
stand-in for NUMBA_DISABLE_JIT runs.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .cpu import ARCH, target_has
from .jit import FAST, inner

# The CPU converts halves itself (vcvtph2ps with F16C, fcvt on every ARMv8); elsewhere LLVM would call a library
# routine Numba does not provide (generic x86-64: "Symbol not found: __extendhfsf2"), so integer arithmetic does it.
HARDWARE_HALF = ARCH == "aarch64" or target_has("f16c")

if numba.config.DISABLE_JIT:

    def f32_from_bits(u):
        return np.uint32(int(u) & 0xFFFFFFFF).view(np.float32)

    def half_from_bits(h):
        return np.float32(np.uint16(h).view(np.float16))

    def bits_of(f):
        return np.float32(f).view(np.int32)

    def claim(counter):
        task = counter[0]
        counter[0] += 1
        return task

else:

    @intrinsic
    def f32_from_bits(typingctx, u):
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
    def bits_of(typingctx, f):
        """The bit pattern of the float32 f as an int32 (an LLVM bitcast: free)."""
        if f != types.float32:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.int32(f), codegen

    @intrinsic
    def half_from_bits(typingctx, h):
        """The IEEE half with bit pattern h (uint16) as float32, by the CPU's own conversion (vcvtph2ps on x86
        with F16C, fcvt on ARM): exact for every half, except that a signalling NaN comes out quiet."""
        if not isinstance(h, types.Integer) or h.bitwidth != 16:
            return None

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

        return types.float32(h), codegen

    @intrinsic
    def claim(typingctx, counter):
        """counter[0] += 1, atomically; returns the value before. How threads share out a kernel's tasks."""
        if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
            return None

        def codegen(context, builder, signature, args):
            array = context.make_array(signature.args[0])(context, builder, args[0])
            return builder.atomic_rmw("add", array.data, ir.Constant(ir.IntType(64), 1), "monotonic")

        return types.int64(counter), codegen


@inner()
def f16_to_f32(h):
    """IEEE half (bit pattern h) -> float32: the CPU's conversion where it has one (faster), else integer
    arithmetic. Both exact, subnormals and infinities included; NaN payloads kept, signalling NaNs quieted."""
    if HARDWARE_HALF:
        return half_from_bits(h)
    magnitude = np.uint32(h) & np.uint32(0x7FFF)
    if magnitude < np.uint32(0x0400):  # zero or subnormal: m * 2^-24
        v = np.float32(magnitude) * np.float32(5.9604644775390625e-08)
    elif magnitude < np.uint32(0x7C00):  # normal: rebias the exponent by 127 - 15 = 112
        v = f32_from_bits((magnitude << np.uint32(13)) + np.uint32(112 << 23))
    else:  # inf / nan, payload kept
        v = f32_from_bits((magnitude << np.uint32(13)) | np.uint32(0x7F800000))
    return -v if np.uint32(h) & np.uint32(0x8000) else v


@inner(fastmath=FAST, inline="always")
def exp(x):
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
    return p * f32_from_bits(np.uint32(np.int32(n) + np.int32(127)) << np.uint32(23))


@inner(fastmath=FAST)
def max_of(s):
    """The largest of the (non-NaN) float32s in s, through integers: for b the bits of a float, b ^ (0x7FFFFFFF if
    b < 0) orders as the float does, and LLVM vectorizes an integer max (not a float one)."""
    top = np.int64(-(1 << 31))
    for j in range(s.size):
        b = np.int64(bits_of(s[j]))
        top = max(top, b ^ ((b >> 31) & 0x7FFFFFFF))
    return f32_from_bits(top ^ ((top >> 31) & 0x7FFFFFFF))

