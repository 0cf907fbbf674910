"""edgegemma: EmbeddingGemma-300m on a CPU, from a small memory-mapped GGUF file.

    import edgegemma
    model = edgegemma.load("embeddinggemma-300m-mixed.gguf")
    q = model.encode_query("Which planet is known as the Red Planet?")
    d = model.encode_document(["Mars, known for its reddish appearance, ..."])
    model.similarity(q, d)
"""
import os

# Before numpy loads: OpenBLAS's threads otherwise spin ~0.1 s after each call and starve Numba's
# kernels that run in between (a 40 us product measured at 3-12 ms on 2 cores). A user's value wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
# The numpy kernels (Pyodide, no Numba, or while the compiled ones build) call BLAS on one thread: OpenBLAS's
# threads collapse on a busy machine (a q4_0 query 11.2 s with two, 1.5 s with one, 2 cores under load 8.6).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .api import SentenceEncoder, load  # noqa: E402
from .gguf_file import ModelFileError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["load", "SentenceEncoder", "ModelFileError", "__version__"]
