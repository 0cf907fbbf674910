"""Matmul throughput of each kernel design, per weight type and batch size, on EmbeddingGemma's shapes.

    python bench/kernels.py                  # all types, n in 1 16 512 4096
    python bench/kernels.py --types q8_0 q4_0 --n 1 16 --seconds 0.5

One "layer" is the seven matmuls of an EmbeddingGemma block (q 768->768, k and v 768->256, o 768->768,
gate and up 768->1152, down 1152->768: 8.4 MFLOP per token); GFLOP/s = 2*n*k*rows summed over them, divided
by the best time of repeated runs. The machine is noisy (and shared): each design runs back to back for a
while, in three passes over the designs, best time kept. Back to back matters: Numba's and OpenBLAS's thread
pools slow each other down when their calls alternate (see kernels/__init__.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # before numpy loads OpenBLAS: see kernels/__init__.py
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gguf  # noqa: E402

from kernels import numba_backend, numpy_backend  # noqa: E402
from kernels.blocks import BLOCK_FORMATS  # noqa: E402

LAYER = [(768, 768), (256, 768), (256, 768), (768, 768), (1152, 768), (1152, 768), (768, 1152)]  # (rows, k)

def _blas_ceiling(x, w, qtype, _cache={}):
    """Not a design: numpy's BLAS on a float32 copy of W made beforehand, the ceiling the tile designs approach."""
    key = id(w)
    if key not in _cache:
        _cache[key] = numpy_backend.dequantize(w, qtype)
    return x @ _cache[key].T


DESIGNS = {
    "BLAS on f32 W": _blas_ceiling,
    "numpy tile+BLAS": numpy_backend.matmul,
    "numba tile+BLAS": numba_backend.matmul_tiled,
    "numba direct": numba_backend.matmul_direct,
}
for _name in ("matmul_int8",):
    if hasattr(numba_backend, _name):
        DESIGNS["numba int8"] = getattr(numba_backend, _name)
DESIGNS["numba matmul()"] = numba_backend.matmul  # what the runtime calls: the pick per case


def stored_layer(qtype, rng):
    out = []
    for rows, k in LAYER:
        w = (rng.standard_normal((rows, k)) * 0.05).astype(np.float32)
        raw = np.ascontiguousarray(gguf.quants.quantize(w, qtype)).view(np.uint8).reshape(rows, -1)
        raw.flags.writeable = False
        out.append(raw)
    return out


def bench(types, ns, seconds):
    rng = np.random.default_rng(0)
    names = {BLOCK_FORMATS[t][0].lower(): t for t in BLOCK_FORMATS}
    print(f"{'type':6} {'n':>5}  " + "  ".join(f"{d:>16}" for d in DESIGNS) + "   GFLOP/s (best of runs)")
    for tname in types:
        qtype = names[tname]
        layer = stored_layer(qtype, rng)
        for n in ns:
            xs = {k: rng.standard_normal((n, k)).astype(np.float32) for k in (768, 1152)}
            flops = sum(2 * n * rows * k for rows, k in LAYER)
            best = {d: float("inf") for d in DESIGNS}
            for _ in range(3):  # three passes over the designs; within a pass, one design runs back to back
                for d, f in DESIGNS.items():
                    deadline = time.perf_counter() + seconds / 3
                    for rep in range(1000):
                        t0 = time.perf_counter()
                        for w, (rows, k) in zip(layer, LAYER):
                            f(xs[k], w, qtype)
                        if rep:  # the first run of a pass only wakes the design's threads up
                            best[d] = min(best[d], time.perf_counter() - t0)
                        if rep >= 2 and time.perf_counter() > deadline:
                            break
            print(f"{tname:6} {n:5d}  " + "  ".join(f"{flops / best[d] / 1e9:16.1f}" for d in DESIGNS), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--types", nargs="+", default=["f32", "f16", "bf16", "q8_0", "q4_0"])
    p.add_argument("--n", nargs="+", type=int, default=[1, 16, 512, 4096])
    p.add_argument("--seconds", type=float, default=1.0, help="time budget per design and case")
    args = p.parse_args()
    print(f"numba threads {numba_backend.numba.get_num_threads()}, numpy {np.__version__}")
    bench(args.types, args.n, args.seconds)


if __name__ == "__main__":
    main()
