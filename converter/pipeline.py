"""One conversion, step by step: read the checkpoint, calibrate, quantize, write.

    read       converter.checkpoint, converter.vocab: the folder checked, tensors under llama.cpp's names
    plan       converter.recipes: each tensor's storage type; the quantizer that fills its blocks
    calibrate  converter.calibrate: the float model's inputs to every linear layer (imatrix, gptq only)
    quantize   converter.quantizers: each tensor packed a chunk at a time as the writer asks for it
    write      converter.writer: the GGUF file, atomically

This module is the only one that knows the order; the others know nothing of their callers.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgegemma import formats as F

from . import calibrate
from .calibration_texts import calibration_texts
from .checkpoint import Checkpoint, TensorSource, open_checkpoint
from .errors import ConversionError
from .exact_rows import (FINE_ROW_RECIPES, FINE_ROW_TYPE, exact_token_ids, exact_token_rows, fine_token_ids,
                         fine_token_rows)
from .metadata import add_metadata
from .progress import bar
from .quantizers import (BLOCK_TYPES, CALIBRATED, QUANTIZERS, GptqFactors, QuantizedTensor, TensorReport,
                         default_quantizer)
from .recipes import RECIPES, Recipe, storage_type
from .vocab import Vocab, read_vocab
from .writer import check_output, write_gguf

Report = Callable[[str], None]


def calibration(src: str | Path, report: Report = print, use_cache: bool = True,
                progress: bool = False) -> calibrate.Calibration:
    """The calibration statistics of the checkpoint folder `src` (cached, or computed from its float model)."""
    def write_float_model(path: Path) -> None:
        convert(src, path, "f32", quantizer="ggml", report=lambda line: None, progress=progress)

    return calibrate.statistics(src, write_float_model, report, use_cache, progress)


def _exact_rows(ckpt: Checkpoint, vocab: Vocab, table: TensorSource, report: Report) -> tuple[np.ndarray, np.ndarray]:
    ids = exact_token_ids(ckpt, vocab, calibration_texts())
    report(f"token_embd.weight: {len(ids)} most used rows kept exact beside the 4-bit table")
    return ids, exact_token_rows(ckpt, table, ids)


def _fine_rows(ckpt: Checkpoint, table: TensorSource, exact_ids: np.ndarray, report: Report) -> tuple[np.ndarray, int, bytes]:
    ids = fine_token_ids(table.shape[0], exact_ids)
    data = fine_token_rows(ckpt, table, ids)
    report(f"token_embd.weight: {len(ids):,} more rows of the most used tokens in {FINE_ROW_TYPE.name} beside the 4-bit table "
           f"({len(data) / 2**20:.1f} MiB)")
    return ids, int(FINE_ROW_TYPE.ggml_type), data


def convert(
    src: str | Path, out: str | Path, recipe_name: str, *, force: bool = False,
    report: Report = print, quantizer: str | None = None, progress: bool = False,
) -> list[TensorReport]:
    """Convert the sentence-transformers folder `src` into the GGUF file `out` with a recipe.

    quantizer: "ggml" (ggml's scales, gguf.quants' bytes), "search" (searched scales), "imatrix"
    (searched, weighted by calibration statistics, see converter.calibrate) or "gptq" (imatrix's
    scales plus GPTQ's error compensation, see converter.gptq); None picks default_quantizer
    (gptq for q4_0 and mixed, search for q8_0 and e4_q8, ggml for float files).
    progress: bars on stderr (edgegemma.progress) for the reading, the calibration and the writing,
    which counts the weights quantized; report gets the lines either way.

    Raises ConversionError for anything wrong with the input or the output path; on any
    failure (KeyboardInterrupt included) the temporary file is removed and `out` is untouched.
    """
    recipe: Recipe | None = RECIPES.get(recipe_name)
    if recipe is None:
        raise ConversionError(f"unknown --type {recipe_name!r}; valid types: {', '.join(RECIPES)}")
    if quantizer is not None and quantizer not in QUANTIZERS:
        raise ConversionError(f"unknown --quantizer {quantizer!r}; valid: {', '.join(QUANTIZERS)}")
    src, out = Path(src), Path(out)
    check_output(out, force)
    started = time.perf_counter()

    # read: the folder is checked from its headers at once, the vocabulary and the exact rows take seconds
    ckpt = open_checkpoint(src)
    with bar(f"reading {src.name}", 2, "step", progress) as steps:
        vocab = read_vocab(src, ckpt.hparams.vocab_size)
        ckpt.trim_vocab(len(vocab.tokens))
        steps.update()
        # plan
        plan = [(t, *storage_type(recipe, t.name, t.shape)) for t in ckpt.tensors]
        quantizer = quantizer or default_quantizer({t.name: qt for t, qt, _ in plan})
        table, table_type, _ = next(p for p in plan if p[0].name == F.tensor_name(F.TOKEN_EMBD))
        exact_rows = _exact_rows(ckpt, vocab, table, report) if quantizer != "ggml" and table_type.name == "q4_0" else None
        fine_rows = (_fine_rows(ckpt, table, exact_rows[0], report)
                     if exact_rows is not None and recipe.name in FINE_ROW_RECIPES else None)
        steps.update()
    # calibrate
    blocks = any(qt.name in BLOCK_TYPES for _, qt, _ in plan)
    stats = calibration(src, report, progress=progress) if quantizer in CALIBRATED and blocks else None
    # quantize and write
    reports: list[TensorReport] = []
    width = max(len(t.name) for t in ckpt.tensors)

    def written(i: int, tensor: QuantizedTensor) -> None:
        t, qt, note = plan[i]
        r = tensor.report(note)
        reports.append(r)
        dims = "{" + ", ".join(map(str, reversed(t.shape))) + "}"  # GGUF order, as llama.cpp prints it
        report(f"[{i + 1:3d}/{len(plan)}] {t.name:<{width}}  {qt.name:<4}  {dims:<14}  rel.rms.err {r.rel_rms_error:.2e}"
               + (f"  out.err {r.weighted_error:.2e}" if r.weighted_error is not None else "") + (f"  ({note})" if note else ""))

    values = sum(int(np.prod(t.shape)) for t in ckpt.tensors)
    with bar(f"writing {out.name} ({recipe.name}, {quantizer})", values, "weights", progress) as weights_done:
        factors = GptqFactors(stats)
        tensors = [QuantizedTensor(ckpt, t, qt, quantizer, stats, factors, weights_done.update) for t, qt, _ in plan]
        write_gguf(out, lambda writer: add_metadata(writer, ckpt, vocab, recipe, quantizer, exact_rows, fine_rows), tensors, written)
    worst = max(reports, key=lambda r: r.rel_rms_error)
    report(f"wrote {out}: {out.stat().st_size / 2**20:.1f} MiB, {len(reports)} tensors, recipe {recipe.name}, quantizer {quantizer}, "
           f"largest error {worst.rel_rms_error:.2e} ({worst.name}), {time.perf_counter() - started:.1f} s")
    return reports
