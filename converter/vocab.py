"""The SentencePiece vocabulary in llama.cpp's `tokenizer.ggml.*` keys.

This follows convert_hf_to_gguf.py (TextModel._create_vocab_sentencepiece and
_set_vocab_sentencepiece, then Gemma3Model.set_vocab) step for step, so llama.cpp tokenizes
our files exactly as it tokenizes its own:
  1. one entry per id up to config.json's vocab_size: the piece's bytes, its score, its type
     (UNKNOWN / CONTROL / UNUSED / BYTE from the SentencePiece model, else NORMAL); ids the
     model does not have are "[PAD<i>]", UNUSED, score -10000;
  2. added_tokens.json entries (id < vocab): USER_DEFINED, score -1000;
  3. tokenizer_config.json's added_tokens_decoder (id < vocab): CONTROL if marked special or if
     it looks special the way llama.cpp judges it (<pad>, <mask>, <unusedN>, <|...|>), otherwise
     USER_DEFINED with '▁' written as ' '; score -1000;
  4. bos/eos/unk/pad ids and add_bos/add_eos from gguf.SpecialVocab; add_space_prefix false.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
from gguf import TokenType

from .errors import ConversionError


@dataclass(frozen=True)
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    model_bytes: bytes  # tokenizer.model as is, for edgegemma's own tokenizer


def looks_special(text: str) -> bool:
    """llama.cpp's does_token_look_special: added tokens some checkpoints forget to mark special."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def read_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    path = folder / "tokenizer.model"
    model_bytes = path.read_bytes()
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(model_bytes)
    except Exception as e:
        raise ConversionError(f"tokenizer.model: not a SentencePiece model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None

    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [int(TokenType.UNUSED)] * n
    for i in range(min(n, sp.vocab_size())):
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode(), sp.GetScore(i), int(kind)

    added = folder / "added_tokens.json"
    if added.is_file():
        for text, i in json.loads(added.read_text(encoding="utf-8")).items():
            if i < n:
                tokens[i], scores[i], types[i] = text.encode(), -1000.0, int(TokenType.USER_DEFINED)

    config = folder / "tokenizer_config.json"
    if config.is_file():
        decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        for key, entry in decoder.items():
            i, text = int(key), entry["content"]
            if i >= n:
                continue
            if entry.get("special") or looks_special(text):
                types[i] = int(TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")  # pre-normalize user-defined spaces
                types[i] = int(TokenType.USER_DEFINED)
            tokens[i], scores[i] = text.encode(), -1000.0
    return Vocab(tokens, scores, types, model_bytes)


def add_vocab(writer: gguf.GGUFWriter, folder: Path, vocab: Vocab) -> None:
    """Write the tokenizer.ggml.* keys, as llama.cpp's converter does for Gemma 3."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    gguf.SpecialVocab(folder, n_vocab=len(vocab.tokens)).add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)
