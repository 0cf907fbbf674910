"""The systems measured, as data, and how each one is built and called inside a worker process.

An id names a system: `edgegemma:<type>:<backend>`, `llama.cpp:<type>`, `st:<dtype>:bs<batch>`.
Each builder returns an Encoder: `documents(texts)` and `query(text)` give float32 rows, and nothing
is imported until the worker builds its one system (so cold start includes the system's own imports).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable

from .profiles import PROFILE_VARIABLES
from .workloads import DOCUMENT_PROMPT, QUERY_PROMPT

# Files edgegemma's converter makes, then files llama.cpp's quantizer makes from edgegemma's f16 (K-quants, with
# the 32-value types it falls back to where a row is not whole super-blocks): both runtimes read the same file.
OUR_TYPES = ("f32", "q8_0", "q4_0", "mixed")
LLAMA_QUANTIZED = ("q4_k_m", "q5_k_m", "q6_k")
TYPES = OUR_TYPES + LLAMA_QUANTIZED
BACKENDS = ("numba", "numpy")
ST_CONFIGS = (("fp32", 1), ("fp32", 32), ("bf16", 1), ("bf16", 32))
THREADS = 2


@dataclass(frozen=True)
class System:
    id: str
    family: str  # "edgegemma" | "llama.cpp" | "st"
    qtype: str | None = None  # GGUF file (edgegemma, llama.cpp)
    backend: str | None = None  # edgegemma: numba | numpy
    dtype: str | None = None  # st: fp32 | bf16
    batch: int = 32  # texts per encode call (st: batch_size; llama.cpp: texts per embed call)
    env: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_peer(self) -> bool:
        return self.family != "edgegemma"


def all_systems(types=TYPES, llama_per_call: int = 8, eg_batch: int = 32) -> list[System]:
    # llama.cpp's quantized files against the compiled kernels only: numpy's rows are the Pyodide path's figures,
    # which the other types give already.
    out = [System(f"edgegemma:{t}:{b}", "edgegemma", qtype=t, backend=b, batch=eg_batch, env={"EDGEGEMMA_BACKEND": b})
           for t in types for b in BACKENDS if t in OUR_TYPES or b == "numba"]
    out += [System(f"llama.cpp:{t}", "llama.cpp", qtype=t, batch=llama_per_call) for t in types]
    out += [System(f"st:{d}:bs{n}", "st", dtype=d, batch=n) for d, n in ST_CONFIGS]
    return out


def available(family: str) -> str | None:
    """None when the family can run here, else why not (peers are optional: the `bench` extra)."""
    needs = {"edgegemma": ["edgegemma"], "llama.cpp": ["llama_cpp"], "st": ["torch", "sentence_transformers"]}[family]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


# --- inside the worker ------------------------------------------------------------------------

class Encoder:
    """documents(texts), query(text); settle(): after the first vector, reach the steady state a long-running
    service runs in (edgegemma: the compiled kernels bound, rather than once the numpy ones cost as much)."""

    def __init__(self, documents: Callable, query: Callable, settle: Callable = lambda: None):
        self.documents, self.query, self.settle = documents, query, settle


def build(system: System, gguf_path: str | None, hf_model: str | None, options: dict) -> Encoder:
    return {"edgegemma": _edgegemma, "llama.cpp": _llama, "st": _sentence_transformers}[system.family](
        system, gguf_path, hf_model, options)


def _edgegemma(system: System, path, _hf, _options) -> Encoder:
    import edgegemma
    from edgegemma import kernels

    if kernels.BACKEND != system.backend:
        raise RuntimeError(f"{system.id}: kernels chose backend {kernels.BACKEND!r}")
    model = edgegemma.load(path)
    return Encoder(lambda texts: model.encode_document(texts, batch_size=system.batch),
                   lambda text: model.encode_query(text), model.warm_up)


def _llama(system: System, path, _hf, options) -> Encoder:
    """llama.cpp's fastest setup here: flash attention, 2,048-token batches, mean pooling, several texts
    per embed() call (it packs them into one decode up to n_batch tokens), longest texts first, and
    Q4_0 weights repacked for its AVX-512 GEMM (see llama_weight_buffers). Special-token strings in a text are
    read as special tokens, as the reference's tokenizer does."""
    import numpy as np
    from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

    llama_weight_buffers(options.get("llama_repack"))
    llm = Llama(model_path=path, embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048, n_threads=THREADS,
                n_threads_batch=THREADS, flash_attn=True, pooling_type=LLAMA_POOLING_TYPE_MEAN, verbose=False)
    # embed() tokenizes with special=False, so `<eos>` written in a text stays literal pieces; the reference
    # (Hugging Face's tokenizer) and edgegemma read it as the special token. Same input for every system.
    plain_tokenize = llm.tokenize
    llm.tokenize = lambda text, add_bos=True, special=False: plain_tokenize(text, add_bos=add_bos, special=True)

    def documents(texts):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), llm.n_embd()), np.float32)
        for start in range(0, len(order), system.batch):
            chunk = order[start:start + system.batch]
            out[chunk] = llm.embed([DOCUMENT_PROMPT + texts[i] for i in chunk], normalize=True)
        return out

    return Encoder(documents, lambda text: np.asarray(llm.embed(QUERY_PROMPT + text, normalize=True), np.float32))


def llama_repack_pattern(path) -> str | None:
    """A regex of the block weights llama.cpp may repack (its CPU_REPACK buffer: Q4_0 here), or None."""
    import gguf

    from edgegemma.gguf_file import GGUFFile  # gguf.GGUFReader takes a minute over the 262k-token vocabulary

    kinds = sorted({name.split(".", 2)[2] for name, t in GGUFFile(path).tensors.items()
                    if name.startswith("blk.") and t.ggml_type == gguf.GGMLQuantizationType.Q4_0})
    return r"^blk\.\d+\.(" + "|".join(k.replace(".", r"\.") for k in kinds) + ")$" if kinds else None


_KEEP: list = []  # ctypes objects llama.cpp holds pointers to


def llama_weight_buffers(repack: str | None) -> None:
    """Keep llama.cpp off its AMX weight buffers, which die with SIGILL (`tilezero`) on this VM although the
    CPU reports amx_int8 and tiles work here (our own AMX test ran once the process had asked Linux for the tile
    state, arch_prctl ARCH_REQ_XCOMP_PERM; asking first does not save llama.cpp 0.3.36), while keeping the
    AVX-512 repacked Q4_0 path it would otherwise use.

    llama-cpp-python has no switch for either: model params are patched, with `use_extra_bufts=False`
    (no AMX, no repack) and the tensors matching `repack` sent to the CPU_REPACK buffer type by name
    (`--override-tensor` in llama.cpp's CLI). Only Q4_0 tensors: CPU_REPACK in this build crashes on Q8_0.
    """
    import ctypes

    import llama_cpp
    import llama_cpp.llama_cpp as L

    overrides = None
    if repack:
        libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
        ggml, base = ctypes.CDLL(os.path.join(libdir, "libggml.so")), ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))
        ggml.ggml_backend_dev_by_type.restype, ggml.ggml_backend_dev_by_type.argtypes = ctypes.c_void_p, [ctypes.c_int]
        ggml.ggml_backend_reg_by_name.restype, ggml.ggml_backend_reg_by_name.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
        base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
        base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        base.ggml_backend_buft_name.restype, base.ggml_backend_buft_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        L.llama_backend_init()
        reg, dev = ggml.ggml_backend_reg_by_name(b"CPU"), ggml.ggml_backend_dev_by_type(0)  # 0: CPU device
        address = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
        bufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(address)(dev)
        by_name, i = {}, 0
        while bufts[i]:
            by_name[base.ggml_backend_buft_name(bufts[i]).decode()] = bufts[i]
            i += 1
        if "CPU_REPACK" in by_name:
            class Override(ctypes.Structure):  # struct llama_model_tensor_buft_override
                _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

            overrides = (Override * 2)(Override(repack.encode(), by_name["CPU_REPACK"]), Override(None, None))
            _KEEP.append(overrides)
    default = L.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        if overrides is not None:
            p.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p).value
        return p

    L.llama_model_default_params = params


def _sentence_transformers(system: System, _path, hf_model, _options) -> Encoder:
    """sentence-transformers on PyTorch (CPU), its own prompts (document = `title: none | text: `)."""
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(hf_model, device="cpu", local_files_only=True)
    if system.dtype == "bf16":
        model.to(torch.bfloat16)  # every module, the Dense projections too; outputs come back as float32

    def rows(x):
        return np.asarray(x, np.float32)

    return Encoder(lambda texts: rows(model.encode_document(texts, batch_size=system.batch)),
                   lambda text: rows(model.encode_query(text)))


def child_env(system: System) -> dict:
    """Every system at the same thread count, whatever library it threads with, and the CPU profile's switches only
    (system.env): none of them inherited from the shell, which would restrict a row the table calls native."""
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_VARIABLES}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[var] = str(THREADS)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(system.env)
    return env
