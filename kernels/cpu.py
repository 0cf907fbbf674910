"""What the compiled kernels may assume about the CPU: the features of the target Numba compiles for, which is
not always the host (a portable build sets NUMBA_CPU_NAME=generic or haswell). Imported before Numba, because
two settings here (thread spinning, 512-bit vectors) only take effect if made before Numba starts.

    target_has("avx512vnni")   whether the code Numba emits may use the feature
    ARCH                       "x86_64", "aarch64" or another machine name
"""
from __future__ import annotations

import os
import platform

# Numba's OpenMP threads spin this long after a parallel kernel before sleeping: long enough that the next kernel
# of a query finds them awake, short enough not to steal the cores (kernels/DESIGN.md, "Threads"). A user's value wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # libgomp: ~0.4 ms
os.environ.setdefault("KMP_BLOCKTIME", "1")  # Intel / LLVM OpenMP: milliseconds

ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())


def _host_features() -> set[str]:
    try:
        import llvmlite.binding as llvm

        return {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    except Exception:  # llvmlite cannot query this host: assume nothing optional
        return set()


def _target_features() -> set[str]:
    """The features Numba passes to LLVM, by Numba's own rule: NUMBA_CPU_FEATURES when set (even empty); none for
    NUMBA_CPU_NAME=generic; otherwise the host's (also when only a CPU name is set)."""
    features = os.environ.get("NUMBA_CPU_FEATURES")
    if features is not None:
        return {f.strip()[1:] for f in features.split(",") if f.strip().startswith("+")}
    if os.environ.get("NUMBA_CPU_NAME", "").strip().lower() == "generic":
        return set()
    return _host_features()


def _prefer_512_bit_vectors() -> None:
    """On AVX-512 hosts LLVM is tuned for 256-bit vectors ("prefer-256-bit"), which halves the float kernels' FMA
    width; and since LLVM 18 it splits vpdpwssd in two unless the CPU is tuned "fast-dpwssd". Both are undone
    through NUMBA_CPU_FEATURES (the host's features plus these), unless the user chose a target."""
    if "NUMBA_CPU_FEATURES" in os.environ or "NUMBA_CPU_NAME" in os.environ:
        return
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features().flatten()
    except Exception:
        return
    flags = features.split(",")
    if "+avx512f" in flags:
        extra = ",-prefer-256-bit"
        if "+avx512vnni" in flags and llvm.llvm_version_info >= (18,):
            extra += ",+fast-dpwssd"
        os.environ["NUMBA_CPU_FEATURES"] = features + extra


_prefer_512_bit_vectors()
_TARGET = _target_features()


def target_has(feature: str) -> bool:
    """Whether code compiled by Numba in this process may use `feature` (LLVM's name: "avx2", "avx512vnni",
    "f16c", "amx-tile", "dotprod" ...)."""
    return feature in _TARGET
