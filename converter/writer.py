"""Write the GGUF file: declare every tensor, write the header, then stream the weights in.

Nothing is held twice: each tensor is read from the memory-mapped checkpoint a chunk of rows
at a time, packed, written and dropped. The file is written to a hidden temporary name beside
the target and renamed at the end, so a failed or interrupted run leaves no .gguf behind.
"""
from __future__ import annotations

import contextlib
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import gguf
import numpy as np
from gguf import GGUFValueType

from edgegemma import formats as F
from edgegemma.formats import ARCH, QuantType

from .checkpoint import Checkpoint, TensorSource, open_checkpoint
from . import gptq
from .errors import ConversionError
from .exact_rows import exact_token_ids, exact_token_rows
from .metadata import add_metadata
from .quantize import error_sums, pack, relative_rms, unpack
from .recipes import RECIPES, Recipe, storage_type
from .vocab import read_vocab


@dataclass
class TensorReport:
    name: str
    type: QuantType
    shape: tuple[int, ...]  # numpy order (rows, cols)
    rel_rms_error: float
    note: str | None = None
    weighted_error: float | None = None  # sqrt(Σ ΔW H ΔWᵀ / Σ W H Wᵀ), H = E[x xᵀ]: the relative output error on calibration inputs


class _Writer(gguf.GGUFWriter):
    """gguf.GGUFWriter, with long metadata arrays packed in one go.

    The stock writer packs arrays item by item: the 262,144-token vocabulary and the 4.7 MB
    tokenizer.model took 10 s of every conversion. For byte strings, lists of bytes/str, of
    floats and of ints this writes the same bytes (GGUF: ARRAY, item type, count, items) at once.
    """

    _FAST_ITEMS = {bytes: GGUFValueType.STRING, str: GGUFValueType.STRING, float: GGUFValueType.FLOAT32, int: GGUFValueType.INT32}

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype != GGUFValueType.ARRAY or sub_type is not None or not val or self.endianess != gguf.GGUFEndian.LITTLE:
            return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)
        if isinstance(val, (bytes, bytearray)):
            item_type, items = GGUFValueType.UINT8, bytes(val)
        else:
            kind = type(val[0])
            item_type = self._FAST_ITEMS.get(kind)
            if item_type is None or not all(type(v) is kind for v in val):
                return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)
            if item_type == GGUFValueType.STRING:
                encoded = [v.encode("utf-8") if kind is str else v for v in val]
                items = b"".join(struct.pack("<Q", len(v)) + v for v in encoded)
            else:
                items = np.asarray(val, dtype="<f4" if kind is float else "<i4").tobytes()
        head = struct.pack("<I", vtype) if add_vtype else b""
        return head + struct.pack("<IQ", item_type, len(val)) + items


# --quantizer: how block scales are chosen. "imatrix" is "search" weighted by calibration statistics;
# "gptq" adds GPTQ's error compensation across each row's columns (converter.gptq).
QUANTIZERS = ("ggml", "search", "imatrix", "gptq")
CALIBRATED = frozenset({"imatrix", "gptq"})
# GPTQ needs a second moment it can trust: at least this many calibration rows behind it
# (four per dimension of the hidden state, which every linear layer's input derives from).
GPTQ_MIN_ROWS = 3072
BLOCK_TYPES = frozenset({"q8_0", "q4_0"})


def default_quantizer(recipe: Recipe, types: list[QuantType]) -> str:
    """gptq when the file has block-quantized tensors, else ggml (float types have no scales to choose)."""
    return "gptq" if any(qt.name in BLOCK_TYPES for qt in types) else "ggml"


class _Stream:
    """One tensor's bytes, produced chunk by chunk when the writer asks for them.

    gguf.GGUFWriter.write_tensor_data(t) only uses t.nbytes and t.tofile(fout) (t.byteswap
    for big-endian output, which we never write), so handing it this object streams the
    tensor into place with the writer's own alignment and order bookkeeping.
    """

    def __init__(self, chunks: Iterator[np.ndarray], qt: QuantType, nbytes: int, rule: str = "ggml",
                 moment: np.ndarray | None = None, gptq_factor: np.ndarray | None = None,
                 gptq_order: np.ndarray | None = None, lookup: bool = False):
        self.chunks, self.qt, self.nbytes = chunks, qt, nbytes
        self.rule, self.moment, self.gptq_factor, self.gptq_order = rule, moment, gptq_factor, gptq_order
        self.lookup = lookup
        self.importance = None if moment is None else np.ascontiguousarray(np.diagonal(moment))
        self.err_sq = self.ref_sq = 0.0
        self.werr_sq = self.wref_sq = 0.0  # Σ ΔW H ΔWᵀ and Σ W H Wᵀ: the output error over the calibration inputs

    def tofile(self, fout: BinaryIO) -> None:
        written = 0
        for chunk in self.chunks:
            if self.gptq_factor is not None:
                packed = gptq.pack(chunk, self.qt, self.gptq_factor, self.importance, self.gptq_order)
            else:
                packed = pack(chunk, self.qt, self.rule, self.importance, self.lookup)
            fout.write(memoryview(np.ascontiguousarray(packed)).cast("B"))
            written += packed.nbytes
            e, r = error_sums(chunk, packed, self.qt)
            self.err_sq += e
            self.ref_sq += r
            if self.moment is not None:
                diff = chunk - unpack(packed, self.qt).reshape(chunk.shape)
                self.werr_sq += float(np.sum((diff @ self.moment) * diff))
                self.wref_sq += float(np.sum((chunk @ self.moment) * chunk))
        if written != self.nbytes:
            raise RuntimeError(f"wrote {written} bytes for a tensor declared as {self.nbytes}")


def _byte_shape(shape: tuple[int, ...], qt: QuantType) -> tuple[int, ...]:
    return (*shape[:-1], qt.row_bytes(shape[-1]))


def _check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise ConversionError(f"{out}: is a folder; give the path of the .gguf file to write")
    if out.exists() and not force:
        raise ConversionError(f"{out} already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise ConversionError(f"{out.parent}: no such folder for the output")


def _chunks(ckpt: Checkpoint, src: TensorSource, qt: QuantType) -> Iterator[np.ndarray]:
    """The tensor's chunks, refusing values f16 cannot hold rather than writing them as inf."""
    f16_max = float(np.finfo(np.float16).max)
    for chunk in ckpt.read(src):
        if qt.name == "f16" and chunk.size and (peak := float(np.abs(chunk).max())) > f16_max:
            raise ConversionError(f"tensor {src.name}: values up to {peak:.4g} overflow f16; use bf16 or f32")
        yield chunk


def convert(
    src: str | Path, out: str | Path, recipe_name: str, *, force: bool = False,
    report: Callable[[str], None] = print, quantizer: str | None = None,
) -> list[TensorReport]:
    """Convert the sentence-transformers folder `src` into the GGUF file `out` with a recipe.

    quantizer: "ggml" (ggml's scales, gguf.quants' bytes), "search" (searched scales), "imatrix"
    (searched, weighted by calibration statistics, see converter.calibrate) or "gptq" (imatrix's
    scales plus GPTQ's error compensation, see converter.gptq); None picks default_quantizer
    (gptq for files with Q4_0/Q8_0 tensors).

    Raises ConversionError for anything wrong with the input or the output path; on any
    failure (KeyboardInterrupt included) the temporary file is removed and `out` is untouched.
    """
    recipe: Recipe | None = RECIPES.get(recipe_name)
    if recipe is None:
        raise ConversionError(f"unknown --type {recipe_name!r}; valid types: {', '.join(RECIPES)}")
    src, out = Path(src), Path(out)
    _check_output(out, force)
    started = time.perf_counter()

    ckpt = open_checkpoint(src)
    vocab = read_vocab(src, ckpt.hparams.vocab_size)
    ckpt.trim_vocab(len(vocab.tokens))
    plan = [(t, *storage_type(recipe, t.name, t.shape)) for t in ckpt.tensors]
    if quantizer is None:
        quantizer = default_quantizer(recipe, [qt for _, qt, _ in plan])
    if quantizer not in QUANTIZERS:
        raise ConversionError(f"unknown --quantizer {quantizer!r}; valid: {', '.join(QUANTIZERS)}")
    calibration = None
    if quantizer in CALIBRATED and any(qt.name in BLOCK_TYPES for _, qt, _ in plan):
        from .calibrate import statistics

        calibration = statistics(src, report)
    rule = "ggml" if quantizer == "ggml" else "search"
    exact_rows = None
    table, table_type, _ = next(p for p in plan if p[0].name == F.tensor_name(F.TOKEN_EMBD))
    if rule != "ggml" and table_type.name == "q4_0":
        from .calibrate import calibration_texts

        ids = exact_token_ids(ckpt, vocab, calibration_texts())
        exact_rows = ids, exact_token_rows(ckpt, table, ids)
        report(f"token_embd.weight: {len(ids)} most used rows kept exact beside the 4-bit table")

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = _Writer(tmp, ARCH)
    reports: list[TensorReport] = []
    try:
        add_metadata(writer, ckpt, vocab, recipe, quantizer, exact_rows)
        for t, qt, _ in plan:
            byte_shape = _byte_shape(t.shape, qt)
            writer.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qt.ggml_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        width = max(len(t.name) for t in ckpt.tensors)
        for i, (t, qt, note) in enumerate(plan):
            calibrated = calibration is not None and qt.name in BLOCK_TYPES and t.name in calibration
            moment = calibration.moment(t.name) if calibrated else None
            factor = None
            order = None
            if calibrated and quantizer == "gptq" and calibration.rows(t.name) >= GPTQ_MIN_ROWS:
                order = gptq.activation_order(moment)
                factor = gptq.inverse_factor(moment[np.ix_(order, order)])
            stream = _Stream(_chunks(ckpt, t, qt), qt, int(np.prod(_byte_shape(t.shape, qt))), rule, moment, factor, order,
                             lookup=t.name == F.tensor_name(F.TOKEN_EMBD))
            writer.write_tensor_data(stream)  # type: ignore[arg-type]  # see _Stream
            err = relative_rms(stream.err_sq, stream.ref_sq)
            werr = relative_rms(stream.werr_sq, stream.wref_sq) if moment is not None else None
            reports.append(TensorReport(t.name, qt, t.shape, err, note, werr))
            dims = "{" + ", ".join(map(str, reversed(t.shape))) + "}"  # GGUF order, as llama.cpp prints it
            report(f"[{i + 1:3d}/{len(plan)}] {t.name:<{width}}  {qt.name:<4}  {dims:<14}  rel.rms.err {err:.2e}"
                   + (f"  out.err {werr:.2e}" if werr is not None else "") + (f"  ({note})" if note else ""))
        writer.close()
        os.replace(tmp, out)
    except BaseException as e:
        with contextlib.suppress(OSError):
            writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, no permission: the user's problem to fix, not a bug
            raise ConversionError(f"writing {out}: {e.strerror or e}") from None
        raise
    worst = max(reports, key=lambda r: r.rel_rms_error)
    report(f"wrote {out}: {out.stat().st_size / 2**20:.1f} MiB, {len(reports)} tensors, recipe {recipe.name}, quantizer {quantizer}, "
           f"largest error {worst.rel_rms_error:.2e} ({worst.name}), {time.perf_counter() - started:.1f} s")
    return reports
