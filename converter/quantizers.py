"""The quantizers users choose with --quantizer, and one output tensor quantized by them.

How block scales are chosen: "ggml" is ggml's rule (gguf.quants' bytes), "search" the scale search of
converter.quantize, "imatrix" that search weighted by calibration statistics, and "gptq" adds GPTQ's
error compensation across each row's columns (converter.gptq). A QuantizedTensor reads its source
from the checkpoint a chunk of rows at a time, packs each chunk as its quantizer says, and keeps the
sums that measure the error it introduced.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Mapping

import numpy as np

from edgegemma import formats as F
from edgegemma.formats import QuantType

from . import gptq
from .calibrate import Calibration
from .checkpoint import Checkpoint, TensorSource
from .errors import ConversionError
from .quantize import error_sums, pack, relative_rms, unpack

QUANTIZERS = ("ggml", "search", "imatrix", "gptq")
CALIBRATED = frozenset({"imatrix", "gptq"})
# GPTQ needs a second moment it can trust: at least this many calibration rows behind it
# (four per dimension of the hidden state, which every linear layer's input derives from).
GPTQ_MIN_ROWS = 3072
BLOCK_TYPES = frozenset({"q8_0", "q4_0"})


def default_quantizer(types: Mapping[str, QuantType]) -> str:
    """The quantizer a file gets unless the user names one, from its tensors' types (name -> type).

    gptq where Q4_0 weights are multiplied (q4_0, mixed): rounding alone costs them the most, and
    the calibration pays for itself. search where the blocks are Q8_0 weights and at most a Q4_0
    lookup table (q8_0, e4_q8): the scale search alone is near-lossless there and needs no
    calibration (the table gets none in any case), a conversion of seconds instead of minutes
    and a fraction of the memory. ggml for float files, which have no scales to choose."""
    table = F.tensor_name(F.TOKEN_EMBD)
    if any(qt.name == "q4_0" and name != table for name, qt in types.items()):
        return "gptq"
    return "search" if any(qt.name in BLOCK_TYPES for qt in types.values()) else "ggml"


def byte_shape(shape: tuple[int, ...], qt: QuantType) -> tuple[int, ...]:
    """A tensor of `shape` (numpy order) stored in `qt`, as rows of bytes."""
    return (*shape[:-1], qt.row_bytes(shape[-1]))


@dataclass
class TensorReport:
    name: str
    type: QuantType
    shape: tuple[int, ...]  # numpy order (rows, cols)
    rel_rms_error: float
    note: str | None = None
    weighted_error: float | None = None  # sqrt(Σ ΔW H ΔWᵀ / Σ W H Wᵀ), H = E[x xᵀ]: the relative output error on calibration inputs


class GptqFactors:
    """GPTQ's column order and inverse factor for a tensor's input, computed once for the tensors that
    share it (q, k and v; gate and up, written one after the other) and kept until another input's."""

    def __init__(self, calibration: Calibration | None):
        self.calibration, self.point, self.value = calibration, None, None

    def __call__(self, tensor: str, moment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        point = self.calibration.point(tensor)
        if point != self.point:
            order = gptq.activation_order(moment)
            self.point, self.value = point, (order, gptq.inverse_factor(moment[np.ix_(order, order)]))
        return self.value


class QuantizedTensor:
    """One tensor's bytes, produced chunk by chunk when the writer asks for them.

    gguf.GGUFWriter.write_tensor_data(t) only uses t.nbytes and t.tofile(fout) (t.byteswap
    for big-endian output, which we never write), so handing it this object streams the
    tensor into place with the writer's own alignment and order bookkeeping. The statistics
    a calibrated quantizer needs are fetched only then, so one tensor's are in memory at a time.
    done(n) is called after each chunk of n values is written (a progress bar's update).
    """

    def __init__(self, ckpt: Checkpoint, source: TensorSource, qt: QuantType, quantizer: str = "ggml",
                 calibration: Calibration | None = None, factors: GptqFactors | None = None,
                 done: Callable[[int], object] = lambda values: None):
        self.ckpt, self.source, self.qt, self.calibration, self.done = ckpt, source, qt, calibration, done
        self.factors = factors or GptqFactors(calibration)
        self.name, self.byte_shape = source.name, byte_shape(source.shape, qt)
        self.nbytes = int(np.prod(self.byte_shape))
        self.rule = "ggml" if quantizer == "ggml" else "search"
        self.lookup = source.name == F.tensor_name(F.TOKEN_EMBD)  # a table whose rows are read, not multiplied
        self.calibrated = calibration is not None and qt.name in BLOCK_TYPES and source.name in calibration
        self.gptq = self.calibrated and quantizer == "gptq" and calibration.rows(source.name) >= GPTQ_MIN_ROWS
        self.err_sq = self.ref_sq = 0.0
        self.werr_sq = self.wref_sq = 0.0  # Σ ΔW H ΔWᵀ and Σ W H Wᵀ: the output error over the calibration inputs

    def chunks(self) -> Iterator[np.ndarray]:
        """The source's float32 chunks, refusing values f16 cannot hold rather than writing them as inf."""
        f16_max = float(np.finfo(np.float16).max)
        for chunk in self.ckpt.read(self.source):
            if self.qt.name == "f16" and chunk.size and (peak := float(np.abs(chunk).max())) > f16_max:
                raise ConversionError(f"tensor {self.source.name}: values up to {peak:.4g} overflow f16; use bf16 or f32")
            yield chunk

    def tofile(self, fout: BinaryIO) -> None:
        moment = self.calibration.moment(self.name) if self.calibrated else None  # H = E[x xᵀ] of the input
        importance = None if moment is None else np.ascontiguousarray(np.diagonal(moment))
        if self.gptq:
            order, factor = self.factors(self.name, moment)
        written = 0
        for chunk in self.chunks():
            if self.gptq:
                packed = gptq.pack(chunk, self.qt, factor, importance, order)
            else:
                packed = pack(chunk, self.qt, self.rule, importance, self.lookup)
            fout.write(memoryview(np.ascontiguousarray(packed)).cast("B"))
            written += packed.nbytes
            self.done(chunk.size)
            e, r = error_sums(chunk, packed, self.qt)
            self.err_sq += e
            self.ref_sq += r
            if moment is not None:
                diff = chunk - unpack(packed, self.qt).reshape(chunk.shape)
                self.werr_sq += float(np.sum((diff @ moment) * diff))
                self.wref_sq += float(np.sum((chunk @ moment) * chunk))
        if written != self.nbytes:
            raise RuntimeError(f"wrote {written} bytes for a tensor declared as {self.nbytes}")

    def report(self, note: str | None) -> TensorReport:
        werr = relative_rms(self.werr_sq, self.wref_sq) if self.calibrated else None
        return TensorReport(self.name, self.qt, self.source.shape, relative_rms(self.err_sq, self.ref_sq), note, werr)
