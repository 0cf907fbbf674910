"""Which tensors hurt most when quantized: swap one group into a type, keep the rest float, measure.

    python -m edgegemma.converter.sensitivity F32.gguf [--type q4_0] [--quantizer imatrix|search|ggml] [--texts 16]

For each group (one tensor kind across all layers; then all weights of four consecutive layers)
the group's weights are quantized and decoded back to float32 in memory, the float model runs
over held-out calibration texts, and the cosine with the float model's embeddings is reported
(1 − mean cosine, and the worst text). Importance for `imatrix` comes from the calibration cache
of the checkpoint given with --checkpoint (default: ~/.cache/edgegemma/embeddinggemma-300m).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T

from edgegemma import formats as F
from edgegemma.formats import QUANT_TYPES_BY_NAME

from .quantize import pack, unpack

KINDS = (F.TOKEN_EMBD, F.ATTN_Q, F.ATTN_K, F.ATTN_V, F.ATTN_OUT, F.FFN_GATE, F.FFN_UP, F.FFN_DOWN, "dense")
LAYER_FIELDS = {F.ATTN_Q: "attn_q", F.ATTN_K: "attn_k", F.ATTN_V: "attn_v", F.ATTN_OUT: "attn_output",
                F.FFN_GATE: "ffn_gate", F.FFN_UP: "ffn_up", F.FFN_DOWN: "ffn_down"}


def _quantized(weight, qt, rule, importance):
    """A float32 Weight holding what `qt` would store for `weight` (an F32 Weight)."""
    w = np.asarray(weight.data).view(np.float32).reshape(weight.shape)
    back = np.concatenate([unpack(pack(w[i:i + 8192], qt, rule, None if importance is None else importance.get(weight.name)), qt)
                           .reshape(-1, w.shape[1]) for i in range(0, w.shape[0], 8192)])
    return dataclasses.replace(weight, qtype=int(T.F32), data=back.astype(np.float32).view(np.uint8))


def perturbed(weights, names: set[str], qt, rule, importance):
    """`weights` with every tensor in `names` quantized and decoded back."""
    q = lambda w: _quantized(w, qt, rule, importance) if w.name in names else w
    layers = [dataclasses.replace(layer, **{f: q(getattr(layer, f)) for f in LAYER_FIELDS.values()}) for layer in weights.layers]
    return dataclasses.replace(weights, token_embd=q(weights.token_embd), layers=layers,
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
        out[f"layers {start}-{start + 3} (all weights)"] = {F.tensor_name(k, i) for k in LAYER_FIELDS for i in range(start, start + 4)}
    return out


def main(argv=None) -> int:
    import edgegemma

    from .calibrate import calibration_texts, importance

    p = argparse.ArgumentParser(prog="python -m edgegemma.converter.sensitivity", description=__doc__.splitlines()[0])
    p.add_argument("f32", help="an F32 GGUF of the checkpoint")
    p.add_argument("--checkpoint", default=str(Path.home() / ".cache/edgegemma/embeddinggemma-300m"))
    p.add_argument("--type", default="q4_0")
    p.add_argument("--quantizer", default="imatrix", choices=("ggml", "search", "imatrix"))
    p.add_argument("--texts", type=int, default=16, help="how many calibration texts (every other one) to embed")
    args = p.parse_args(argv)

    model = edgegemma.load(args.f32)
    texts = calibration_texts()[1::2][: args.texts]
    imp = importance(args.checkpoint) if args.quantizer == "imatrix" else None
    rule = "ggml" if args.quantizer == "ggml" else "search"
    qt = QUANT_TYPES_BY_NAME[args.type]
    base_weights = model.model.weights
    base = model.encode(texts, prompt_name="document")
    print(f"{len(texts)} held-out texts, {args.type} with {args.quantizer}; 1 - cosine with the float model")
    print(f"| group | 1 - mean cos | 1 - min cos |\n|---|---|---|")
    for label, names in groups(model.config.num_hidden_layers).items():
        started = time.perf_counter()
        model.model.weights = perturbed(base_weights, names, qt, rule, imp)
        cos = np.sum(model.encode(texts, prompt_name="document") * base, axis=1)
        model.model.weights = base_weights
        print(f"| {label} | {1 - cos.mean():.2e} | {1 - cos.min():.2e} |  ({time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
