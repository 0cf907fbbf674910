"""Shared fixtures: the real checkpoint and reference outputs (skipped when absent), a tiny
synthetic checkpoint of the same architecture, and GGUF files converted from either.

    hf_model_dir       the real sentence-transformers folder, from EDGEGEMMA_HF_MODEL
    reference_dir      sentence-transformers' reference outputs, from EDGEGEMMA_REFERENCE
    tiny_checkpoint    a toy EmbeddingGemma folder (make_tiny_checkpoint with its defaults)
    tiny_gguf(recipe)  that folder converted, once per session (tiny_gguf(recipe, "ggml"): another quantizer)
    real_gguf(recipe)  the real checkpoint converted, once per session, deleted at the end
    model_file, model  the tiny model's q8_0 file, and it loaded (module scope)

make_tiny_checkpoint(folder, **sizes) is a plain function too, for tests that need other sizes.
"""
from __future__ import annotations

import functools
import io
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests compare the compiled kernels with the numpy ones: a model loaded in the suite compiles what it needs before
# its first call rather than answering from numpy meanwhile (test_warm_start covers that behaviour itself).
os.environ.setdefault("EDGEGEMMA_COMPILE", "wait")

# --- the tiny checkpoint ---------------------------------------------------------------

_WORDS = (
    "the a an of to in on for with model text token embedding vector search query document title "
    "small tiny large fast slow cpu file block scale weight layer window attention mean pool dense "
    "gemma llama python numpy river mountain city music code test data value error check word"
).split()

# Gemma's first ids, then a few added tokens of each kind llama.cpp's converter distinguishes.
SPECIAL_PIECES = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"}
USER_PIECES = ["<mask>", "[multimodal]", "<unused0>", "<unused1>", "<start_of_turn>", "<end_of_turn>", "\u2581\u2581"]
SPECIAL_ADDED = {"<start_of_turn>", "<end_of_turn>"}  # marked special in tokenizer_config.json

PROMPTS = {  # the real model's first prompts, so tests can use the same names and texts
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "Clustering": "task: clustering | query: ",
    "STS": "task: sentence similarity | query: ",
}


def tiny_corpus(count: int, seed: int, number_every: int, endings: tuple[str, ...] = (".", "?", "!", ",", "")) -> list[str]:
    """Generated sentences of the tiny vocabulary's words, a number in every `number_every`-th."""
    rng = random.Random(seed)
    sentences = []
    for i in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        if i % number_every == 0:
            words.append(str(rng.randint(0, 99999)))
        sentences.append(" ".join(words) + rng.choice(endings))
    return sentences


def train_sentencepiece(sentences: list[str], vocab_size: int, model_type: str) -> bytes:
    """A real SentencePiece model with Gemma's settings (byte fallback, Gemma's special ids, no dummy prefix,
    identity normalisation), trained on `sentences`."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, character_coverage=1.0,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=USER_PIECES, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", num_threads=1, minloglevel=2,
    )
    return model.getvalue()


@functools.lru_cache(maxsize=None)
def tiny_sentencepiece(vocab_size: int = 384) -> bytes:
    """A real SentencePiece model (unigram), trained on generated text."""
    return train_sentencepiece(tiny_corpus(600, seed=0, number_every=7), vocab_size, "unigram")


def make_tiny_checkpoint(
    folder: str | Path, *, hidden_size: int = 64, num_attention_heads: int = 2, num_key_value_heads: int = 1,
    head_dim: int = 32, intermediate_size: int = 96, num_hidden_layers: int = 6, sliding_window: int = 8,
    dense_size: int = 256, max_position_embeddings: int = 256, vocab_size: int = 384, seed: int = 0,
) -> Path:
    """Write a sentence-transformers EmbeddingGemma folder at toy sizes, random weights; returns the folder.

    Same files and layout as the real checkpoint: config.json (Gemma3TextModel, sliding layers
    with every 6th full), model.safetensors with the real tensor names (no `model.` prefix),
    1_Pooling (mean), 2_Dense (hidden -> dense_size), 3_Dense (back), modules.json, prompts,
    a trained SentencePiece tokenizer.model and the tokenizer json files.
    """
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, q, kv, ffn = hidden_size, num_attention_heads * head_dim, num_key_value_heads * head_dim, intermediate_size

    def linear(n_out, n_in):
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm(n):  # Hugging Face stores w for x·(1 + w): small values around 0
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    tensors = {"embed_tokens.weight": (0.5 * rng.standard_normal((vocab_size, h))).astype(np.float32)}
    for i in range(num_hidden_layers):
        p = f"layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": norm(h),
            p + "self_attn.q_proj.weight": linear(q, h),
            p + "self_attn.k_proj.weight": linear(kv, h),
            p + "self_attn.v_proj.weight": linear(kv, h),
            p + "self_attn.q_norm.weight": norm(head_dim),
            p + "self_attn.k_norm.weight": norm(head_dim),
            p + "self_attn.o_proj.weight": linear(h, q),
            p + "post_attention_layernorm.weight": norm(h),
            p + "pre_feedforward_layernorm.weight": norm(h),
            p + "mlp.gate_proj.weight": linear(ffn, h),
            p + "mlp.up_proj.weight": linear(ffn, h),
            p + "mlp.down_proj.weight": linear(h, ffn),
            p + "post_feedforward_layernorm.weight": norm(h),
        }
    tensors["norm.weight"] = norm(h)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    pattern = 6
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(num_hidden_layers)]
    config = {
        "_sliding_window_pattern": pattern, "architectures": ["Gemma3TextModel"], "model_type": "gemma3_text",
        "attention_bias": False, "attention_dropout": 0.0, "attn_logit_softcapping": None,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "dtype": "float32",
        "final_logit_softcapping": None, "head_dim": head_dim, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": h, "initializer_range": 0.02, "intermediate_size": ffn, "layer_types": layer_types,
        "max_position_embeddings": max_position_embeddings, "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers, "num_key_value_heads": num_key_value_heads,
        "query_pre_attn_scalar": head_dim, "rms_norm_eps": 1e-6, "rope_local_base_freq": 10000.0,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": sliding_window,
        "use_bidirectional_attention": True, "use_cache": True, "vocab_size": vocab_size,
    }
    _write_json(folder / "config.json", config)
    _write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 4, "name": "4", "path": "4_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    _write_json(folder / "config_sentence_transformers.json", {
        "model_type": "SentenceTransformer", "prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": h, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True})
    for path, n_in, n_out in (("2_Dense", h, dense_size), ("3_Dense", dense_size, h)):
        _write_json(folder / path / "config.json", {
            "in_features": n_in, "out_features": n_out, "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity"})
        save_file({"linear.weight": linear(n_out, n_in)}, str(folder / path / "model.safetensors"))
    (folder / "4_Normalize").mkdir(exist_ok=True)

    sp_bytes = tiny_sentencepiece(vocab_size)
    (folder / "tokenizer.model").write_bytes(sp_bytes)
    _write_tokenizer_json(folder, sp_bytes, vocab_size)
    return folder


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")


def _write_tokenizer_json(folder: Path, sp_bytes: bytes, vocab_size: int) -> None:
    """tokenizer_config.json, added_tokens.json and a minimal tokenizer.json, shaped like Gemma's."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=sp_bytes)
    added = dict(SPECIAL_PIECES)
    added |= {sp.PieceToId(p): p for p in USER_PIECES}
    entry = lambda text, special: {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                                   "single_word": False, "special": special}
    decoder = {str(i): entry(t, i in SPECIAL_PIECES or t in SPECIAL_ADDED) for i, t in sorted(added.items())}
    _write_json(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": True, "added_tokens_decoder": decoder,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "model_max_length": 2048, "padding_side": "right",
        "tokenizer_class": "GemmaTokenizer"})
    # An id past the vocabulary, as the real <image_soft_token>: llama.cpp's converter skips it.
    _write_json(folder / "added_tokens.json", {"<image_soft_token>": vocab_size})
    _write_json(folder / "tokenizer.json", {
        "version": "1.0",
        "added_tokens": [{"id": i, **entry(t, i in SPECIAL_PIECES or t in SPECIAL_ADDED)} for i, t in sorted(added.items())]})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


# --- converted files -------------------------------------------------------------------

class Converted:
    """recipe -> GGUF path, converting on first request; remembers each conversion's report and time."""

    def __init__(self, src: Path, folder: Path):
        self.src, self.folder = src, folder
        self.paths: dict[str, Path] = {}
        self.reports: dict[str, list] = {}
        self.lines: dict[str, list[str]] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, recipe: str, quantizer: str | None = None) -> Path:
        """The file for `recipe`, with the converter's default quantizer or the one named (kept as "q4_0-ggml")."""
        key = recipe if quantizer is None else f"{recipe}-{quantizer}"
        if key not in self.paths:
            from edgegemma.converter import convert

            out = self.folder / f"{key}.gguf"
            lines: list[str] = []
            started = time.perf_counter()
            self.reports[key] = convert(self.src, out, recipe, force=True, report=lines.append, quantizer=quantizer)
            self.seconds[key] = time.perf_counter() - started
            self.lines[key], self.paths[key] = lines, out
        return self.paths[key]


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tmp_path_factory) -> Converted:
    return Converted(tiny_checkpoint, tmp_path_factory.mktemp("tiny-gguf"))


# --- the real checkpoint and the reference outputs -------------------------------------

@pytest.fixture(scope="module")
def model_file(tiny_gguf) -> Path:
    """The tiny model's q8_0 file, for tests of the API, CLI, server and adapters."""
    return tiny_gguf("q8_0")


@pytest.fixture(scope="module")
def model(model_file):
    import edgegemma

    return edgegemma.load(model_file)


@pytest.fixture(scope="session")
def hf_model_dir() -> Path:
    value = os.environ.get("EDGEGEMMA_HF_MODEL")
    if not value:
        pytest.skip("EDGEGEMMA_HF_MODEL not set: real-checkpoint tests skipped")
    folder = Path(value)
    if not (folder / "model.safetensors").is_file():
        pytest.fail(f"EDGEGEMMA_HF_MODEL={value} is not a sentence-transformers checkpoint folder (no model.safetensors)")
    return folder


@pytest.fixture(scope="session")
def real_gguf(hf_model_dir, tmp_path_factory) -> Converted:
    """The real checkpoint converted per recipe, once per session. These files are big (f32 is
    1.2 GB), so the folder is removed when the session ends rather than left to pytest's tmp rotation."""
    folder = tmp_path_factory.mktemp("real-gguf")
    yield Converted(hf_model_dir, folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    candidates = [os.environ.get("EDGEGEMMA_REFERENCE"), REPO.parent / "shared" / "reference", "/work/shared/reference"]
    for c in candidates:
        if c and (Path(c) / "token_ids.json").is_file():
            return Path(c)
    pytest.skip("reference outputs not found: set EDGEGEMMA_REFERENCE to the folder with token_ids.json")
