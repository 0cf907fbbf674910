"""CPU profiles: every system restricted to the same instruction set, so that a table measured on one machine says
how the systems compare on a smaller CPU (bench/README.md, "CPU profiles").

    native   each system as it starts on this machine
    avx2     a Haswell-class laptop: AVX2, FMA, F16C, BMI2; no AVX-512, no VNNI, no AMX
    avx512   an AVX-512 machine without AMX (Ice Lake server's set plus BF16, as an AMD Zen 4): VNNI and BF16

A profile is data: the x86 features it allows (LLVM's names), and for each library the switch that holds it to them.
The host must have every feature a profile allows, or the profile is refused (it cannot be emulated by a switch).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# LLVM's feature names, from `gcc -march=<cpu> -Q --help=target` (its enabled ISA flags) with x86-64's base added.
# Tuning-only names (no instruction behind them) are left out: what matters is which instructions may be emitted.
_X86_64 = {"64bit", "cmov", "cx8", "fxsr", "mmx", "sse", "sse2"}
HASWELL = _X86_64 | {
    "avx", "avx2", "bmi", "bmi2", "crc32", "cx16", "f16c", "fma", "fsgsbase", "invpcid", "lzcnt", "movbe", "pclmul",
    "popcnt", "rdrnd", "sahf", "sse3", "sse4.1", "sse4.2", "ssse3", "xsave", "xsaveopt"}
# gcc's icelake-server without the system-only sgx / pconfig / wbnoinvd, plus avx512bf16 (Cooper Lake's, Zen 4's).
AVX512_NO_AMX = HASWELL | {
    "adx", "aes", "avx512bf16", "avx512bitalg", "avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512ifma",
    "avx512vbmi", "avx512vbmi2", "avx512vl", "avx512vnni", "avx512vpopcntdq", "clflushopt", "clwb", "gfni", "pku",
    "prfchw", "rdpid", "rdseed", "sha", "vaes", "vpclmulqdq", "xsavec", "xsaves"}


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    features: frozenset = frozenset()  # LLVM feature names allowed; empty for native (no restriction)
    numba_cpu: str = ""  # NUMBA_CPU_NAME (scheduling model); the features decide the instructions
    numba_tuning: str = ""  # tuning flags appended to NUMBA_CPU_FEATURES, as edgegemma sets them natively
    numpy_disable: str = ""  # NPY_DISABLE_CPU_FEATURES: numpy's own dispatched loops above the profile
    openblas: str = ""  # OPENBLAS_CORETYPE (numpy's OpenBLAS is a DYNAMIC_ARCH build)
    aten: str = ""  # ATEN_CPU_CAPABILITY: PyTorch's own vectorised kernels
    onednn: str = ""  # ONEDNN_MAX_CPU_ISA: PyTorch's oneDNN (bf16 and some fp32 matmuls)
    mkl: str = ""  # MKL_ENABLE_INSTRUCTIONS: PyTorch's MKL (fp32 matmuls); Intel CPUs only, MKL's rule
    llama_max: frozenset = field(default_factory=frozenset)  # llama.cpp build flags allowed (its system info names)

    @property
    def native(self) -> bool:
        return self.name == "native"


PROFILES = {
    "native": Profile("native", "every system as it starts on this machine"),
    "avx2": Profile(
        "avx2", "Haswell-class: AVX2, FMA, F16C; no AVX-512, VNNI or AMX", frozenset(HASWELL), numba_cpu="haswell",
        numpy_disable="X86_V4 AVX512_ICL AVX512_SPR", openblas="Haswell", aten="avx2", onednn="AVX2", mkl="AVX2",
        llama_max=frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"})),
    "avx512": Profile(
        "avx512", "AVX-512 with VNNI and BF16, no AMX (Ice Lake server + BF16, as Zen 4)", frozenset(AVX512_NO_AMX),
        numba_cpu="icelake-server", numba_tuning="-prefer-256-bit,+fast-dpwssd", numpy_disable="AVX512_SPR",
        openblas="SkylakeX", aten="avx512", onednn="AVX512_CORE_BF16", mkl="AVX512_E3",
        llama_max=frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "AVX512_VBMI",
                             "AVX512_VNNI", "AVX512_BF16"})),
}


def host_features() -> dict[str, bool]:
    """Every feature LLVM knows for this host's architecture -> whether the host has it."""
    import llvmlite.binding as llvm

    return {f[1:]: f[0] == "+" for f in llvm.get_host_cpu_features().flatten().split(",") if f}


def refusal(profile: Profile, host: dict[str, bool] | None = None) -> str | None:
    """Why this machine cannot run the profile (a feature it allows that the CPU lacks), or None."""
    if profile.native:
        return None
    host = host_features() if host is None else host
    if "avx2" not in host:
        return f"--cpu {profile.name} is an x86 profile and this CPU is not x86-64 (LLVM knows none of its features)"
    missing = sorted(f for f in profile.features if f in host and not host[f])
    if missing:
        return (f"--cpu {profile.name}: this CPU lacks {', '.join(missing)}, so it cannot run the {profile.name} "
                "profile (a switch can only take instructions away); run it on a machine that has them")
    return None


def numba_features(profile: Profile, host: dict[str, bool] | None = None) -> str:
    """NUMBA_CPU_FEATURES: every feature LLVM knows, + if the profile allows it, - otherwise (so nothing of the host's
    leaks into the target), then the profile's tuning flags."""
    host = host_features() if host is None else host
    flags = [("+" if f in profile.features else "-") + f for f in sorted(host)]
    return ",".join(flags + ([profile.numba_tuning] if profile.numba_tuning else []))


def edgegemma_env(profile: Profile) -> dict[str, str]:
    """Numba's target (what edgegemma's kernels are compiled for and decide their designs by) and numpy's switches."""
    if profile.native:
        return {}
    return {"NUMBA_CPU_NAME": profile.numba_cpu, "NUMBA_CPU_FEATURES": numba_features(profile), **numpy_env(profile)}


def numpy_env(profile: Profile) -> dict[str, str]:
    """numpy's own SIMD loops (it ignores names the CPU lacks) and its OpenBLAS's kernels (a DYNAMIC_ARCH build)."""
    if profile.native:
        return {}
    return {"NPY_DISABLE_CPU_FEATURES": profile.numpy_disable, "OPENBLAS_CORETYPE": profile.openblas}


def torch_env(profile: Profile) -> dict[str, str]:
    if profile.native:
        return {}
    return {"ATEN_CPU_CAPABILITY": profile.aten, "ONEDNN_MAX_CPU_ISA": profile.onednn,
            "MKL_ENABLE_INSTRUCTIONS": profile.mkl, **numpy_env(profile)}


def env_for(profile: Profile, family: str) -> dict[str, str]:
    """The environment that restricts one family of systems to the profile (llama.cpp: see llama_for)."""
    if family == "edgegemma":
        return edgegemma_env(profile)
    if family == "st":
        return torch_env(profile)
    return {}


def restrictions(profile: Profile) -> dict[str, str]:
    """What each family is restricted by, in words, for the report."""
    if profile.native:
        return {}
    return {
        "edgegemma": f"NUMBA_CPU_NAME={profile.numba_cpu}, NUMBA_CPU_FEATURES=+{' +'.join(sorted(profile.features))} "
                     f"(everything else -){', ' + profile.numba_tuning if profile.numba_tuning else ''}; numpy: "
                     f"NPY_DISABLE_CPU_FEATURES={profile.numpy_disable!r}, OPENBLAS_CORETYPE={profile.openblas}",
        "st": f"ATEN_CPU_CAPABILITY={profile.aten}, ONEDNN_MAX_CPU_ISA={profile.onednn}, "
              f"MKL_ENABLE_INSTRUCTIONS={profile.mkl} (MKL documents it for Intel processors only)",
    }


# Set by a profile, so cleared from every child's environment first: a native row is not restricted by a leftover.
PROFILE_VARIABLES = ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE",
                     "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


# --- llama.cpp: one CPU backend compiled for the build machine, no run-time switch --------------------------------

def llama_build_dir(profile: Profile) -> Path:
    """Where bench/llama_build.sh puts llama-cpp-python compiled for a profile (pip --target)."""
    home = os.environ.get("EDGEGEMMA_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "edgegemma") / "llama-cpp" / profile.name


def llama_isa(env: dict[str, str]) -> set[str] | str:
    """The instruction sets the llama.cpp that `env` imports was compiled with (its system info), or why unknown."""
    code = "import llama_cpp; llama_cpp.llama_backend_init(); print(llama_cpp.llama_print_system_info().decode())"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot ask llama.cpp for its build: {e}"
    if done.returncode:
        return f"cannot ask llama.cpp for its build (exit {done.returncode}): {done.stderr.strip()[-200:]}"
    flags = set()
    for part in done.stdout.replace("\n", "|").split("|"):
        name, _, value = part.partition("=")
        name = name.split(":")[-1].strip()
        if value.strip() == "1" and name in LLAMA_ISA_FLAGS:
            flags.add(name)
    return flags


# llama.cpp's system-info names that are CPU instruction sets (not REPACK, OPENMP, LLAMAFILE ...).
LLAMA_ISA_FLAGS = {"SSE3", "SSSE3", "AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "AVX512_VBMI",
                   "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "MATMUL_INT8",
                   "SVE", "SME"}


def llama_for(profile: Profile) -> tuple[dict[str, str] | None, str]:
    """(environment that runs a llama.cpp build within the profile, a note on it), or (None, why none can).

    A build qualifies when every instruction set it was compiled with is one the profile allows: the profile's own
    build from bench/llama_build.sh when there is one, else the installed one (a build for an older CPU than the host's
    often qualifies: llama-cpp-python compiles for the machine it is installed on)."""
    if profile.native:
        return {}, ""
    base = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    folder = llama_build_dir(profile)
    candidates = ([(f"{folder}", {"PYTHONPATH": str(folder)})] if (folder / "llama_cpp").is_dir() else [])
    candidates.append(("the installed llama-cpp-python", {}))
    reasons = []
    for where, env in candidates:
        isa = llama_isa({**base, **env})
        if isinstance(isa, str):
            reasons.append(f"{where}: {isa}")
            continue
        beyond = sorted(isa - profile.llama_max)
        if beyond:
            reasons.append(f"{where} is compiled with {', '.join(beyond)}, beyond the profile")
            continue
        unused = sorted(profile.llama_max - isa)
        note = (f"{where}, compiled with {' '.join(sorted(isa))} (restricted by its build: llama.cpp has no "
                "run-time switch)" + (f"; it does not use {' '.join(unused)}, which the profile allows" if unused else ""))
        return env, note
    return None, ("llama.cpp cannot be restricted at run time (one CPU backend, compiled for its build machine): "
                  + "; ".join(reasons) + f". Build one: bench/llama_build.sh {profile.name}")
