"""The forward pass on a tiny random model, against an independent float64 implementation."""
from __future__ import annotations

import numpy as np
import pytest

import edgegemma
from edgegemma import kernels
from hf_forward import HFReference

TEXTS = [
    "short",
    "a somewhat longer sentence, long enough to cross the tiny model's sliding window several times over",
    "<bos> literal special tokens <eos> inside",
    "",
    "the the the the the the the the the the the the the the the the the the the the the the the the",
]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint, tiny_gguf):
    return edgegemma.load(tiny_gguf("f32")), HFReference(tiny_checkpoint)


def test_matches_independent_forward(tiny):
    model, reference = tiny
    config = model.config
    ids = model.tokenize(TEXTS)
    # The long text must reach past the sliding window, or the mask goes untested.
    assert max(map(len, ids)) > 2 * config.attention_radius + 2
    ours = model.encode(TEXTS)
    theirs = np.stack([reference.embed(i) for i in ids])
    cos = np.sum(ours * theirs, axis=1)
    assert cos.min() >= 0.99999, cos


def test_packed_batch_equals_one_at_a_time(tiny):
    model, _ = tiny
    batched = model.encode(TEXTS, batch_size=len(TEXTS))
    alone = np.stack([model.encode(t) for t in TEXTS])
    np.testing.assert_allclose(batched, alone, atol=2e-6)


# Texts of kernels.LONG_SEQUENCE tokens or more (48 with AMX tiles), which take other kernels than short
# ones; within the tiny model's 256 positions.
LONG_TEXTS = ["a long text about the tiny model " * 34, "pool the mean of every token " * 40]


def long_texts(model) -> list[str]:
    lengths = [len(ids) for ids in model.tokenize(LONG_TEXTS)]
    assert all(max(kernels.LONG_SEQUENCE, 130) <= n <= model.config.max_position_embeddings for n in lengths), lengths
    return LONG_TEXTS


def test_long_texts_match_independent_forward(tiny):
    model, reference = tiny
    texts = long_texts(model)
    ours = model.encode(texts)
    theirs = np.stack([reference.embed(i) for i in model.tokenize(texts)])
    cos = np.sum(ours * theirs, axis=1)
    assert cos.min() >= 0.99999, cos


@pytest.mark.parametrize("recipe", ["f32", "q8_0"])
def test_long_and_short_texts_batched_equal_alone(recipe, tiny_gguf):
    """Long texts go through the layers apart from short ones: in one batch, each gets what it gets alone."""
    model = edgegemma.load(tiny_gguf(recipe))
    texts = [*TEXTS[:2], *long_texts(model), *TEXTS[2:]]
    batched = model.encode(texts, batch_size=len(texts))
    alone = np.stack([model.encode(t) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=2e-6)


def test_chunks_of_tokens_give_the_same_embeddings(tiny, monkeypatch):
    model, _ = tiny
    whole = model.encode(TEXTS, batch_size=len(TEXTS))
    monkeypatch.setattr(kernels, "MATMUL_ROWS", 7)  # chunks that cut through sequences
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=len(TEXTS)), whole, atol=2e-6)


def test_trace_names_every_step(tiny):
    model, _ = tiny
    seen = model.trace("hello world")
    layers = model.config.num_hidden_layers
    block = lambda i: [f"blk.{i}.attn_norm", f"blk.{i}.attn_out_in", f"blk.{i}.ffn_norm", f"blk.{i}.ffn_down_in", f"blk.{i}"]
    assert list(seen) == ["embeddings", *[n for i in range(layers) for n in block(i)], "output_norm", "pooled", "dense_2", "dense"]
    assert seen["embeddings"].shape == (len(model.tokenize(["hello world"])[0]), model.config.hidden_size)


@pytest.mark.parametrize("recipe", ["f16", "bf16", "q8_0", "q4_0", "mixed", "e4_q8"])
def test_every_recipe_runs_close_to_f32(recipe, tiny, tiny_gguf):
    model, _ = tiny
    quantized = edgegemma.load(tiny_gguf(recipe))
    cos = np.sum(model.encode(TEXTS) * quantized.encode(TEXTS), axis=1)
    # Random toy weights have no structure for quantization to keep, so this bar is loose; the
    # real model's bars are in test_reference.py.
    assert cos.min() >= {"f16": 0.9999, "bf16": 0.999, "q8_0": 0.999}.get(recipe, 0.95), cos
