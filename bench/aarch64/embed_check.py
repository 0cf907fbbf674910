"""numba against numpy on reference texts, each backend in its own process: `python embed_check.py MODEL REFERENCE N`.

Run by bench/aarch64/run.sh inside the emulated arm64 root (it works on any machine). Prints each backend's cosine
to sentence-transformers' reference embeddings, the cosine between the two backends (the bar: min >= 0.999999),
and the threading layer Numba chose; exits 1 when the bar is missed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BAR = 0.999999

# One backend in a fresh process (EDGEGEMMA_BACKEND is read at import). argv: model, texts.json, out.npy.
_EMBED = """
import json, sys, time
import numpy as np
import edgegemma
from edgegemma import kernels
model_path, texts_path, out_path = sys.argv[1:4]
texts = json.load(open(texts_path, encoding="utf-8"))
t0 = time.perf_counter()
model = edgegemma.load(model_path)
emb = model.encode_document(texts, batch_size=8)
seconds = time.perf_counter() - t0
np.save(out_path, np.asarray(emb, np.float32))
layer = None
if kernels.BACKEND == "numba":
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel ran
        layer = "none launched"
print(json.dumps({"backend": kernels.BACKEND, "seconds": seconds, "threading_layer": layer,
                  "threads": __import__("numba").config.NUMBA_NUM_THREADS if kernels.BACKEND == "numba" else None}))
"""


def _workloads():
    """bench/workloads.py by its path: the root's Python has edgegemma installed but not the repository on its path."""
    spec = importlib.util.spec_from_file_location("workloads", Path(__file__).resolve().parents[1] / "workloads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def main(model: str, reference: str, n: int) -> int:
    W = _workloads()
    _, texts, rows = W.reference_texts(Path(reference), n)
    expected = np.load(Path(reference) / "emb_document_fp32.npy")[rows]
    tmp = Path(tempfile.mkdtemp(prefix="edgegemma-arm-"))
    (tmp / "texts.json").write_text(json.dumps([W.DOCUMENT_PROMPT + t for t in texts]))
    out = {}
    for backend in ("numba", "numpy"):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _EMBED, model, str(tmp / "texts.json"), str(tmp / f"{backend}.npy")],
                              env={**os.environ, "EDGEGEMMA_BACKEND": backend}, capture_output=True, text=True)
        if done.returncode:
            print(f"{backend}: exit {done.returncode}: {done.stderr.strip()[-800:]}")
            return 1
        info = json.loads(done.stdout.strip().splitlines()[-1])
        emb = np.load(tmp / f"{backend}.npy")
        ref = cosines(emb, expected)
        out[backend] = emb
        print(f"{backend}: {len(texts)} texts in {info['seconds']:.1f} s (process {time.perf_counter() - t0:.1f} s); "
              f"cosine to the reference mean {ref.mean():.6f} min {ref.min():.6f}"
              + (f"; threading layer {info['threading_layer']}, {info['threads']} threads" if backend == "numba" else ""))
    agree = cosines(out["numba"], out["numpy"])
    ok = agree.min() >= BAR
    print(f"numba vs numpy: cosine mean {agree.mean():.9f} min {agree.min():.9f} (1 - min = {1 - agree.min():.1e}) "
          f"[{'pass' if ok else 'FAIL'}: min >= {BAR}]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 12))
