"""Calibration: what the inputs of each linear layer look like, from the float model.

The quantizers need, per weight tensor, statistics of the layer's input x over a calibration
set: `imatrix` weights each value's error by importance[column] = E[x_column²] (llama.cpp's
importance matrix), `gptq` uses the whole second moment H = E[x xᵀ] (converter.gptq). To get
them we convert the checkpoint to a temporary F32 GGUF, run edgegemma on the calibration texts
and read the inputs of the linear layers from the forward pass's trace:

    blk.N.attn_norm    -> attn_q, attn_k, attn_v      blk.N.ffn_norm    -> ffn_gate, ffn_up
    blk.N.attn_out_in  -> attn_output                 blk.N.ffn_down_in -> ffn_down
    pooled             -> dense_2                     dense_2           -> dense_3

The embedding table gets no statistics: a row is looked up, not multiplied, so every column
counts alike. Its blocks get the unweighted scale search.

The calibration texts (converter.calibration_texts, ~25,000 tokens) take three minutes of float
forward passes on two cores. The result (the second moments, ~340 MB) is cached
in the user's cache ($EDGEGEMMA_HOME/calibration/<key>.npz), keyed by the checkpoint's size, a
hash of its first and last megabytes and the calibration texts, so repeated conversions skip it.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgegemma import formats as F

from .calibration_texts import calibration_texts
from .progress import bar

CALIBRATION_VERSION = 5  # 2: full second moments, not only their diagonal; 3: span means for the dense head, the
# reference manual; 4: multilingual passages (3,200 tokens in 26 languages, up from 500 tokens); 5: summed in
# float32, stored as upper triangles

# Trace point -> the weights that take it as input.
INPUTS: dict[str, tuple[str, ...]] = {
    "blk.{bid}.attn_norm": (F.ATTN_Q, F.ATTN_K, F.ATTN_V),
    "blk.{bid}.attn_out_in": (F.ATTN_OUT,),
    "blk.{bid}.ffn_norm": (F.FFN_GATE, F.FFN_UP),
    "blk.{bid}.ffn_down_in": (F.FFN_DOWN,),
    "pooled": (F.DENSE_2,),
    "dense_2": (F.DENSE_3,),
}


class Statistics:
    """Running Σ xᵀx (the inputs' Gram matrix) and the row count, for every trace point in INPUTS.

    The sums are float32 upper triangles (pack_symmetric's order): half the memory of the matrices,
    which for the real model's 98 inputs would otherwise be 321 MB of the calibration's ~1.1 GB peak."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, int] = {}

    def __call__(self, name: str, value: np.ndarray) -> None:
        if not (name in INPUTS or (name.startswith("blk.") and name.count(".") == 2)):
            return
        v = np.ascontiguousarray(value, np.float32).reshape(-1, value.shape[-1])
        gram = v.T @ v  # numpy computes xᵀx as one symmetric product (BLAS syrk)
        if name in self.sums:
            add_upper(self.sums[name], gram)
        else:
            self.sums[name] = pack_symmetric(gram)
        self.rows[name] = self.rows.get(name, 0) + v.shape[0]

    def moments(self, n_layers: int) -> dict[str, np.ndarray]:
        """Trace point -> E[x xᵀ] over the calibration rows as its upper triangle (pack_symmetric);
        ROWS_KEY -> the row counts. Empties the running sums as it goes."""
        out = {}
        points = [p.format(bid=layer) for p in INPUTS if "{bid}" in p for layer in range(n_layers)]
        points += [p for p in INPUTS if "{bid}" not in p]
        for name in points:
            if name not in self.sums:
                raise RuntimeError(f"calibration: the forward pass reported no {name!r}")
            out[name] = self.sums.pop(name)
            out[name] /= self.rows[name]
        out[ROWS_KEY] = np.array([self.rows[name] for name in points], np.int64)
        return out


def pack_symmetric(m: np.ndarray) -> np.ndarray:
    """A symmetric (n, n) matrix as its upper triangle, row by row: n (n + 1) / 2 values."""
    return m[np.triu_indices(len(m))]


def add_upper(packed: np.ndarray, m: np.ndarray) -> None:
    """packed += pack_symmetric(m), a row at a time (no index arrays, which for 3072 columns take 75 MB)."""
    start = 0
    for i in range(len(m)):
        stop = start + len(m) - i
        packed[start:stop] += m[i, i:]
        start = stop


def unpack_symmetric(packed: np.ndarray) -> np.ndarray:
    """The (n, n) float32 matrix whose upper triangle is `packed` (pack_symmetric's order)."""
    n = int(round((np.sqrt(8 * len(packed) + 1) - 1) / 2))
    if n * (n + 1) // 2 != len(packed):
        raise ValueError(f"{len(packed)} values are not the upper triangle of a square matrix")
    m = np.empty((n, n), np.float32)
    upper = np.triu_indices(n)
    m[upper] = packed
    m.T[upper] = packed
    return m


ROWS_KEY = "rows"  # in the moments: how many input rows each point saw, in the order of the points


class Calibration:
    """What the calibration run measured, per weight tensor: the second moment E[x xᵀ] of its
    input (for the gptq quantizer), its diagonal E[x²] (the importance, for imatrix) and the
    number of input rows behind it. Reads an .npz lazily: one matrix at a time in memory.
    The moments are stored as upper triangles (Statistics.moments)."""

    def __init__(self, moments):
        self._moments = moments
        points = [k for k in moments.keys() if k != ROWS_KEY]  # a dict, or the cached .npz (np.load)
        self._rows = dict(zip(points, (int(r) for r in moments[ROWS_KEY])))
        self._point = {}
        for point, kinds in INPUTS.items():
            for name in points:
                if _matches(point, name):
                    layer = int(name.split(".")[1]) if "{bid}" in point else None
                    for kind in kinds:
                        self._point[F.tensor_name(kind, layer)] = name

    def __contains__(self, tensor: str) -> bool:
        return tensor in self._point

    def point(self, tensor: str) -> str:
        """The trace point whose values are `tensor`'s input."""
        return self._point[tensor]

    def moment(self, tensor: str) -> np.ndarray:
        """E[x xᵀ] of `tensor`'s input, float32 (n, n)."""
        return unpack_symmetric(np.asarray(self._moments[self._point[tensor]], np.float32))

    def importance(self, tensor: str) -> np.ndarray:
        return np.ascontiguousarray(np.diagonal(self.moment(tensor)))

    def rows(self, tensor: str) -> int:
        return self._rows[self._point[tensor]]

    def importances(self) -> dict[str, np.ndarray]:
        return {t: self.importance(t) for t in self._point}


def _matches(template: str, name: str) -> bool:
    if "{bid}" not in template:
        return template == name
    head, tail = template.split("{bid}")
    middle = name[len(head):len(name) - len(tail)] if name.startswith(head) and name.endswith(tail) else ""
    return middle.isdigit()


# The dense head's input is one mean-pooled vector per text: a few dozen rows, too few to estimate a
# 768 x 768 second moment. Means over windows of each text's final hidden states (lengths below,
# half-overlapping) stand in for more texts: each is what pooling gives for a text that long.
SPAN_LENGTHS = (8, 16, 32, 64, 128, 256, 512)


def span_means(x: np.ndarray, lengths: list[int]) -> np.ndarray:
    """Means of half-overlapping windows of each sequence's rows of x (packed back to back)."""
    means, start = [], 0
    csum = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0, dtype=np.float64)])
    for n in lengths:
        for span in SPAN_LENGTHS:
            if span >= n:
                break
            lo = np.arange(start, start + n - span + 1, span // 2)
            means.append((csum[lo + span] - csum[lo]) / span)
        start += n
    return np.concatenate(means).astype(np.float32) if means else np.empty((0, x.shape[1]), np.float32)


def collect(gguf_path: str | Path, texts: list[str], report: Callable[[str], None] = print,
            batch_tokens: int = 1024, progress: bool = False) -> dict[str, np.ndarray]:
    """Run the float model in `gguf_path` over `texts` (prompts in turn); the second moments per trace point.
    progress: a bar on stderr counting the tokens done, with an ETA."""
    import edgegemma
    from edgegemma.model import linear

    model = edgegemma.load(gguf_path)
    prompts = list(model.prompts.values()) or [""]
    ids = [model.tokenizer.encode(prompts[i % len(prompts)] + t) for i, t in enumerate(texts)]
    stats = Statistics()
    started, done = time.perf_counter(), 0
    batch: list[list[int]] = []

    def note(name: str, value: np.ndarray) -> None:
        stats(name, value)
        if name == "output_norm":  # more rows for the dense head: see SPAN_LENGTHS
            means = span_means(value, [len(s) for s in batch])
            stats("pooled", means)
            stats("dense_2", linear(means, model.model.weights.dense_2))

    with bar("calibration: float model over the texts", sum(map(len, ids)), "tok", progress) as tokens:
        for seq in sorted(ids, key=len) + [None]:  # None flushes the last batch
            if seq is not None and (not batch or sum(map(len, batch)) + len(seq) <= batch_tokens):
                batch.append(seq)
                continue
            model.model.forward(batch, trace=note)
            done += sum(map(len, batch))
            tokens.update(sum(map(len, batch)))
            batch = [seq] if seq is not None else []
    report(f"calibration: {len(texts)} texts, {done} tokens through the float model in {time.perf_counter() - started:.1f} s")
    return stats.moments(model.config.num_hidden_layers)


def cache_key(src: Path, texts: list[str]) -> str:
    """The checkpoint's weights file (size, first and last MiB), the calibration texts, and the kernels that run
    the float model: their last bits differ (numpy or Numba; AMX tiles where the CPU has them, which
    kernels.LONG_SEQUENCE tells), and through GPTQ's rounding so would a file converted with statistics
    from other kernels than a file converted afresh here (a tiny model's embeddings by 2e-5, when statistics
    from the float attention met the tiles')."""
    from edgegemma import kernels

    h = hashlib.sha256(f"v{CALIBRATION_VERSION} {kernels.BACKEND} {kernels.LONG_SEQUENCE}".encode())
    for f in sorted(Path(src).glob("**/model.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(src)}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    from edgegemma import cache

    return cache.home() / "calibration"


def statistics(src: str | Path, write_float_model: Callable[[Path], None], report: Callable[[str], None] = print,
               use_cache: bool = True, progress: bool = False) -> Calibration:
    """The calibration statistics of the checkpoint folder `src`, from the cache or computed now.

    write_float_model(path): writes `src` as an F32 GGUF file at `path`, the model the texts run through.
    Statistics computed now are read back from the cache, so that only one tensor's are in memory at a time."""
    src = Path(src)
    texts = calibration_texts()
    path = cache_dir() / f"{cache_key(src, texts)}.npz"
    if use_cache and path.is_file():
        report(f"calibration: using cached statistics {path}")
        return Calibration(np.load(path))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgegemma-calibrate-") as tmp:
        f32 = Path(tmp) / "f32.gguf"
        write_float_model(f32)
        report(f"calibration: float model written in {time.perf_counter() - started:.1f} s")
        result = collect(f32, texts, report, progress=progress)
    if not use_cache:
        return Calibration(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp_path, **result)
    os.replace(tmp_path, path)
    del result
    return Calibration(np.load(path))

