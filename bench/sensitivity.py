"""Which tensors hurt most when quantized: swap one group into a type, keep the rest float, measure.

    python -m bench.sensitivity F32.gguf [--type q4_0] [--quantizer imatrix|search|ggml] [--texts 16]

For each group (one tensor kind across all layers; then all weights of four consecutive layers)
the group's weights are quantized and decoded back to float32 in memory, the float model runs
over every other calibration text, and the cosine with the float model's embeddings is reported
(1 − mean cosine, and the worst text). Importance for `imatrix` comes from the calibration
statistics of the checkpoint given with --checkpoint (default: EDGEGEMMA_HF_MODEL, else
~/.cache/edgegemma/embeddinggemma-300m), computed once and cached as the converter does.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from gguf import GGMLQuantizationType as T

from edgegemma import formats as F
from edgegemma import kernels
from edgegemma.converter.calibration_texts import calibration_texts
from edgegemma.converter.quantize import pack, unpack
from edgegemma.formats import QUANT_TYPES_BY_NAME, QuantType

KINDS = (F.TOKEN_EMBD, F.ATTN_Q, F.ATTN_K, F.ATTN_V, F.ATTN_OUT, F.FFN_GATE, F.FFN_UP, F.FFN_DOWN, "dense")
LAYER_FIELDS = {F.ATTN_Q: "attn_q", F.ATTN_K: "attn_k", F.ATTN_V: "attn_v", F.ATTN_OUT: "attn_output",
                F.FFN_GATE: "ffn_gate", F.FFN_UP: "ffn_up", F.FFN_DOWN: "ffn_down"}
ROWS = 8192  # rows quantized at a time


def quantized(weight, qt: QuantType, rule: str, importance: dict[str, np.ndarray] | None):
    """A float32 Weight holding what `qt` would store for `weight` (an F32 Weight), packed for the kernels."""
    w = np.asarray(weight.data).view(np.float32).reshape(weight.shape)
    lookup = weight.name == F.tensor_name(F.TOKEN_EMBD)  # the converter packs the table as rows to look up
    imp = None if importance is None or lookup else importance.get(weight.name)
    back = np.concatenate([unpack(pack(w[i:i + ROWS], qt, rule, imp, lookup), qt).reshape(-1, w.shape[1])
                           for i in range(0, w.shape[0], ROWS)])
    data = back.astype(np.float32).view(np.uint8)
    return dataclasses.replace(weight, qtype=int(T.F32), data=data, packed=kernels.pack(data, T.F32))


def perturbed(weights, names: set[str], qt: QuantType, rule: str, importance):
    """`weights` with every tensor in `names` quantized and decoded back."""
    q = lambda w: quantized(w, qt, rule, importance) if w.name in names else w
    layers = [dataclasses.replace(layer, **{f: q(getattr(layer, f)) for f in LAYER_FIELDS.values()}) for layer in weights.layers]
    table = q(weights.token_embd)
    # A table read from the file row by row would bypass the quantized copy: look rows up in it instead.
    read_rows = weights.read_token_rows if table is weights.token_embd else None
    return dataclasses.replace(weights, token_embd=table, layers=layers, read_token_rows=read_rows,
                               dense_2=q(weights.dense_2), dense_3=q(weights.dense_3))


def groups(n_layers: int) -> dict[str, set[str]]:
    out = {}
    for kind in KINDS:
        if kind == "dense":
            out["dense_2+dense_3"] = {F.tensor_name(F.DENSE_2), F.tensor_name(F.DENSE_3)}
        elif kind == F.TOKEN_EMBD:
            out["token_embd"] = {F.tensor_name(kind)}
        else:
            out[kind.replace("blk.{bid}.", "") + " (all layers)"] = {F.tensor_name(kind, i) for i in range(n_layers)}
    for start in range(0, n_layers, 4):
        stop = min(n_layers, start + 4)
        out[f"layers {start}-{stop - 1} (all weights)"] = {F.tensor_name(k, i) for k in LAYER_FIELDS for i in range(start, stop)}
    return out


def measure(model, texts: list[str], qt: QuantType, rule: str, importance=None) -> Iterator[tuple[str, float, float, float]]:
    """(group label, 1 − mean cosine, 1 − min cosine, seconds) against the float model on `texts`, group by group."""
    base_weights = model.model.weights
    base = model.encode(texts, prompt_name="document")
    try:
        for label, names in groups(model.config.num_hidden_layers).items():
            started = time.perf_counter()
            model.model.weights = perturbed(base_weights, names, qt, rule, importance)
            cos = np.sum(model.encode(texts, prompt_name="document") * base, axis=1)
            model.model.weights = base_weights
            yield label, float(1 - cos.mean()), float(1 - cos.min()), time.perf_counter() - started
    finally:
        model.model.weights = base_weights


def main(argv=None) -> int:
    import edgegemma

    default_checkpoint = os.environ.get("EDGEGEMMA_HF_MODEL") or str(Path.home() / ".cache/edgegemma/embeddinggemma-300m")
    p = argparse.ArgumentParser(prog="python -m bench.sensitivity", description=__doc__.splitlines()[0])
    p.add_argument("f32", help="an F32 GGUF of the checkpoint")
    p.add_argument("--checkpoint", default=default_checkpoint, help="its checkpoint folder (imatrix's statistics)")
    p.add_argument("--type", default="q4_0", choices=("q8_0", "q4_0"))
    p.add_argument("--quantizer", default="imatrix", choices=("ggml", "search", "imatrix"))
    p.add_argument("--texts", type=int, default=16, help="how many calibration texts (every other one) to embed")
    args = p.parse_args(argv)

    model = edgegemma.load(args.f32)
    texts = calibration_texts()[1::2][: args.texts]
    importance = None
    if args.quantizer == "imatrix":
        from edgegemma.converter.pipeline import calibration

        importance = calibration(args.checkpoint).importances()
    rule = "ggml" if args.quantizer == "ggml" else "search"
    print(f"{len(texts)} calibration texts, {args.type} with {args.quantizer}; 1 - cosine with the float model")
    print("| group | 1 - mean cos | 1 - min cos | s |\n|---|---|---|---|")
    for label, mean_err, min_err, seconds in measure(model, texts, QUANT_TYPES_BY_NAME[args.type], rule, importance):
        print(f"| {label} | {mean_err:.2e} | {min_err:.2e} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
