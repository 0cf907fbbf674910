"""Recipes: which storage type each tensor gets. One table, one rule per recipe.

A rule maps a 2-D weight `(tensor kind, layer)` to a type; kinds are the templates in
edgegemma.formats (ATTN_Q is "blk.{bid}.attn_q"). Every 1-D tensor (the norms) stays F32 in
every recipe, as llama.cpp keeps them. `mixed` is the model card's e4_a8_f4_p4: embedding,
feed-forward and projection head in Q4_0, attention in Q8_0. `e4_q8` keeps only the embedding
table (two thirds of the weights, and the least sensitive: a lookup, not a product) in Q4_0 and
every transformer and dense weight in Q8_0: about the size of q4_0, close to q8_0's quality.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gguf import GGMLQuantizationType as T, LlamaFileType

from edgegemma import formats as F
from edgegemma.formats import QUANT_TYPES, QuantType

F32, F16, BF16, Q8_0, Q4_0 = (QUANT_TYPES[t] for t in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0))

Rule = Callable[[str, "int | None"], QuantType]


@dataclass(frozen=True)
class Recipe:
    name: str  # what users pass to --type
    file_type: LlamaFileType  # general.file_type, llama.cpp's label for the file as a whole
    rule: Rule  # (kind, layer) -> type, for 2-D weights
    description: str


def _every(qt: QuantType) -> Rule:
    return lambda kind, layer: qt


# e4_a8_f4_p4: embedding 4-bit, attention 8-bit, feed-forward 4-bit, projection head (dense_2/3) 4-bit.
MIXED_TYPES: dict[str, QuantType] = {
    F.TOKEN_EMBD: Q4_0,
    F.ATTN_Q: Q8_0, F.ATTN_K: Q8_0, F.ATTN_V: Q8_0, F.ATTN_OUT: Q8_0,
    F.FFN_GATE: Q4_0, F.FFN_UP: Q4_0, F.FFN_DOWN: Q4_0,
    F.DENSE_2: Q4_0, F.DENSE_3: Q4_0,
}


# e4_q8: embedding table 4-bit, everything else 8-bit.
E4_Q8_TYPES: dict[str, QuantType] = {kind: Q8_0 for kind in MIXED_TYPES} | {F.TOKEN_EMBD: Q4_0}


def _by_kind(name: str, types: dict[str, QuantType]) -> Rule:
    def rule(kind: str, layer: int | None) -> QuantType:
        try:
            return types[kind]
        except KeyError:
            raise ValueError(f"recipe {name} has no type for tensor kind {kind!r}") from None
    return rule


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("f32", LlamaFileType.ALL_F32, _every(F32), "everything float32 (lossless)"),
        Recipe("f16", LlamaFileType.MOSTLY_F16, _every(F16), "2-D weights float16"),
        Recipe("bf16", LlamaFileType.MOSTLY_BF16, _every(BF16), "2-D weights bfloat16"),
        Recipe("q8_0", LlamaFileType.MOSTLY_Q8_0, _every(Q8_0), "2-D weights Q8_0"),
        Recipe("q4_0", LlamaFileType.MOSTLY_Q4_0, _every(Q4_0), "2-D weights Q4_0"),
        Recipe("mixed", LlamaFileType.MOSTLY_Q4_0, _by_kind("mixed", MIXED_TYPES), "e4_a8_f4_p4: attention Q8_0, embedding/FFN/head Q4_0"),
        Recipe("e4_q8", LlamaFileType.MOSTLY_Q8_0, _by_kind("e4_q8", E4_Q8_TYPES), "embedding table Q4_0, every other weight Q8_0"),
    )
}


def storage_type(recipe: Recipe, name: str, shape: tuple[int, ...]) -> tuple[QuantType, str | None]:
    """The type tensor `name` of `shape` (numpy order) gets under `recipe`, and why it differs if it had to.

    1-D tensors are F32. A row that is not a whole number of the chosen type's blocks falls back
    to F16 (F32 in the f32 recipe), as llama.cpp's converter does, and the note says so.
    """
    if len(shape) == 1:
        return F32, None
    qt = recipe.rule(*F.tensor_kind(name))
    if shape[-1] % qt.block_size == 0:
        return qt, None
    fallback = F32 if recipe.name == "f32" else F16
    return fallback, f"row of {shape[-1]} is not a multiple of the {qt.name} block size {qt.block_size}: stored as {fallback.name}"
