"""Matmul throughput of each kernel design, per weight type and batch size, on EmbeddingGemma's shapes.

    python -m bench.kernel_designs                  # all types, n in 1 18 96 512 4096
    python -m bench.kernel_designs --types q8_0 q4_0 --n 1 16 --seconds 0.5

One "layer" is the seven matmuls of an EmbeddingGemma block (q 768->768, k and v 768->256, o 768->768,
gate and up 768->1152, down 1152->768: 8.4 MFLOP per token). Two figures per design, from the median of
repeated runs: GFLOP per wall-clock second, and GFLOP per CPU-second of the whole process (all its threads).
On a shared machine the first follows the CPU share the scheduler grants, which other people's jobs decide;
the second is what the design costs, and what a spinning thread pool inflates. The machine is noisy: designs
run in turn, three passes, each design back to back within a pass (Numba's and OpenBLAS's thread pools slow
each other down when their calls alternate; see kernels/__init__.py). Each figure comes from the CPU profile the
process compiles for: set NUMBA_CPU_NAME / NUMBA_CPU_FEATURES to measure another (kernels/cpu.py).

The BLAS columns use numpy's OpenBLAS with the thread count it has (OPENBLAS_NUM_THREADS, default: one per
core); "BLAS on f32 W" is not a design (it multiplies by a float32 copy of W made beforehand), only the
ceiling the tile design approaches.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # before numpy loads OpenBLAS: see kernels/__init__.py

from edgegemma.kernels import QUANT_TYPES_BY_NAME, amx_matmul, int_panels, numba_backend, numpy_backend  # noqa: E402

import numba  # noqa: E402  (after the kernels: they set Numba's CPU features before it starts)
import gguf  # noqa: E402
import numpy as np  # noqa: E402

LAYER = [(768, 768), (256, 768), (256, 768), (768, 768), (1152, 768), (1152, 768), (768, 1152)]  # (rows, k)


def _blas_ceiling(x, w, qtype, _cache={}):
    key = id(w)
    if key not in _cache:
        _cache[key] = numpy_backend.dequantize(w, qtype)
    return x @ _cache[key].T


def _packed(w, qtype, _cache={}):
    """W packed once for the integer design, as the model packs its weights at load (not timed)."""
    if id(w) not in _cache:
        _cache[id(w)] = int_panels.pack_int(w, qtype)
    return _cache[id(w)]


def _runtime(x, w, qtype, _cache={}):
    """What the model calls: matmul on kernels.pack(W), made once."""
    if id(w) not in _cache:
        _cache[id(w)] = numba_backend.pack(w, qtype)
    return numba_backend.matmul(x, _cache[id(w)], qtype)


DESIGNS = {
    "BLAS on f32 W": _blas_ceiling,
    "numpy tile+BLAS": numpy_backend.matmul,
    "numba dot": numba_backend.matmul_dot,
    "numba outer": numba_backend.matmul_outer,
    # int16 activations times the blocks' integers (Q8_0, Q4_0), the weights packed once: the vector-IR tile
    # where the target has AVX-512 VNNI or AVX2, the plain-loop tile elsewhere
    "numba int16": lambda x, w, qtype: numba_backend.matmul_int(x, _packed(w, qtype), qtype),
    # bfloat16 tile products (AMX; x and W rounded to bfloat16), what long texts' tokens take
    "numba tiles": lambda x, w, qtype: amx_matmul.matmuls(x, [_packed(w, qtype)], qtype)[0],
    "numba matmul()": _runtime,  # what the runtime calls: the pick per case
}


def stored_layer(qtype, rng):
    out = []
    for rows, k in LAYER:
        w = (rng.standard_normal((rows, k)) * 0.05).astype(np.float32)
        raw = np.ascontiguousarray(gguf.quants.quantize(w, qtype)).view(np.uint8).reshape(rows, -1)
        raw.flags.writeable = False
        out.append(raw)
    return out


def takes(design, f, qtype, x, w):
    """Whether the design runs this type on this machine (the integer one: Q8_0 and Q4_0)."""
    try:
        f(x, w, qtype)
        return True
    except (NotImplementedError, ValueError):
        return False


def bench(types, ns, seconds):
    rng = np.random.default_rng(0)
    names = {name: int(qt.ggml_type) for name, qt in QUANT_TYPES_BY_NAME.items()}
    print(f"{'type':6} {'n':>5}  " + "  ".join(f"{d:>16}" for d in DESIGNS) + "   GFLOP/s wall / per CPU-second")
    for tname in types:
        qtype = names[tname]
        layer = stored_layer(qtype, rng)
        for n in ns:
            xs = {k: rng.standard_normal((n, k)).astype(np.float32) for k in (768, 1152)}
            flops = sum(2 * n * rows * k for rows, k in LAYER)
            wall = {d: [] for d in DESIGNS}
            cpu = {d: [] for d in DESIGNS}
            for _ in range(3):  # three passes over the designs; within a pass, one design runs back to back
                for d, f in DESIGNS.items():
                    if not takes(d, f, qtype, xs[768][:1], layer[0]):
                        continue
                    deadline = time.perf_counter() + seconds / 3
                    for rep in range(1000):
                        t0, c0 = time.perf_counter(), time.process_time()
                        for w, (rows, k) in zip(layer, LAYER):
                            f(xs[k], w, qtype)
                        if rep:  # the first run of a pass only wakes the design's threads up
                            wall[d].append(time.perf_counter() - t0)
                            cpu[d].append(time.process_time() - c0)
                        if rep >= 2 and time.perf_counter() > deadline:
                            break
            cells = [f"{flops / np.median(wall[d]) / 1e9:7.1f}/{flops / np.median(cpu[d]) / 1e9:<7.1f}" if wall[d] else "-"
                     for d in DESIGNS]
            print(f"{tname:6} {n:5d}  " + "  ".join(f"{c:>16}" for c in cells), f"  load {os.getloadavg()[0]:.1f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="+", default=["f32", "f16", "bf16", "q8_0", "q4_0"])
    p.add_argument("--n", nargs="+", type=int, default=[1, 18, 96, 512, 4096])
    p.add_argument("--seconds", type=float, default=1.0, help="time budget per design and case")
    p.add_argument("--designs", nargs="+", choices=list(DESIGNS), metavar="DESIGN", help=f"only these of: {', '.join(DESIGNS)}")
    args = p.parse_args()
    for name in set(DESIGNS) - set(args.designs or DESIGNS):
        del DESIGNS[name]
    print(f"numba threads {numba.get_num_threads()}, target {os.environ.get('NUMBA_CPU_NAME', 'host')}, numpy {np.__version__}")
    bench(args.types, args.n, args.seconds)


if __name__ == "__main__":
    main()
