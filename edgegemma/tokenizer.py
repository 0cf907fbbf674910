"""Text -> token ids, exactly as the Hugging Face tokenizer the reference used.

SentencePiece does the work; two things are Hugging Face's and are added here: added tokens written
in the text (`<bos>`, `<start_of_turn>`, `<unused7>` …) become those tokens rather than their
characters, and a text longer than the model's context is cut with `<eos>` kept last.

The SentencePiece model is the checkpoint's own tokenizer.model when the file carries it (edgegemma's
files), otherwise one rebuilt from the file's `tokenizer.ggml.*` arrays (llama.cpp's files: gguf_vocab).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import sentencepiece as spm

from . import formats as F
from .gguf_file import ModelFileError, StringArray, shown
from .gguf_spec import Keys, TokenType
from .gguf_vocab import flag, sentencepiece_model
from .text import clean

FROM_MODEL = "sentencepiece model"  # Tokenizer.source: the checkpoint's tokenizer.model, stored in the file
FROM_ARRAYS = "gguf arrays"  # rebuilt from tokenizer.ggml.tokens / scores / token_type


def tokenizer_source(meta: dict) -> str:
    """Where a file's tokenizer comes from: FROM_MODEL or FROM_ARRAYS."""
    return FROM_MODEL if F.KEY_TOKENIZER_MODEL in meta else FROM_ARRAYS


class Tokenizer:
    def __init__(self, model_proto: bytes, tokens: Sequence[str], token_types: np.ndarray,
                 bos_id: int, eos_id: int, max_length: int, add_bos: bool = True, add_eos: bool = True,
                 source: str = FROM_MODEL):
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(model_proto)
        self.bos_id, self.eos_id, self.max_length = bos_id, eos_id, max_length
        self.add_bos, self.add_eos, self.source = add_bos, add_eos, source
        # The added tokens are those the vocabulary marks as control, user-defined or unknown
        # (llama.cpp's converter marks every entry of tokenizer_config's added_tokens that way, and
        # writes the user-defined ones with "▁" as " "; Hugging Face matches the original "▁").
        # (Vectorised, with plain ints in the loop: Gemma's vocabulary has 6,414 of them.)
        token_types = np.asarray(token_types)
        added = np.flatnonzero(np.isin(token_types, [TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN]))
        user_defined = (token_types[added] == TokenType.USER_DEFINED).tolist()
        texts = tokens.texts(added) if isinstance(tokens, StringArray) else [tokens[i] for i in added.tolist()]
        self.added_tokens: dict[str, int] = {}
        for i, user, text in zip(added.tolist(), user_defined, texts):
            if user:
                text = text.replace(" ", "\u2581")
            if text:
                self.added_tokens[text] = i
        # Hugging Face finds added tokens leftmost-longest. Candidates start at one of a few characters;
        # for each, the lengths to try, longest first.
        self._lengths_by_first: dict[str, list[int]] = {}
        for text in self.added_tokens:
            self._lengths_by_first.setdefault(text[0], set()).add(len(text))
        self._lengths_by_first = {c: sorted(ls, reverse=True) for c, ls in self._lengths_by_first.items()}
        self._candidates = re.compile("[" + re.escape("".join(self._lengths_by_first)) + "]") if self.added_tokens else None

    def _split_added(self, text: str):
        """Yield (text piece, None) and (None, added-token id) in order."""
        start = 0
        if self._candidates is not None:
            for m in self._candidates.finditer(text):
                pos = m.start()
                if pos < start:
                    continue
                for length in self._lengths_by_first[text[pos]]:
                    token_id = self.added_tokens.get(text[pos:pos + length])
                    if token_id is not None:
                        if pos > start:
                            yield text[start:pos], None
                        yield None, token_id
                        start = pos + length
                        break
        if start < len(text):
            yield text[start:], None

    @classmethod
    def from_gguf(cls, meta: dict, where: str, max_length: int) -> "Tokenizer":
        """The tokenizer a GGUF file's metadata describes; `where` (the file) starts every error message."""
        tokens, types = meta.get(Keys.Tokenizer.LIST), meta.get(Keys.Tokenizer.TOKEN_TYPE)
        if not isinstance(tokens, StringArray) or not isinstance(types, np.ndarray) or types.shape != (len(tokens),):
            raise ModelFileError(f"{where}: no vocabulary ({Keys.Tokenizer.LIST} and {Keys.Tokenizer.TOKEN_TYPE}, one type per token)")
        special = {}
        for key in (Keys.Tokenizer.BOS_ID, Keys.Tokenizer.EOS_ID):
            value = meta.get(key)
            if not isinstance(value, int) or not 0 <= value < len(tokens):
                raise ModelFileError(f"{where}: {key} is {'missing' if value is None else shown(value)}, expected a token id below {len(tokens):,}")
            special[key] = value
        source = tokenizer_source(meta)
        if source == FROM_MODEL:
            proto = meta[F.KEY_TOKENIZER_MODEL]
            if not isinstance(proto, np.ndarray) or proto.dtype != np.uint8:
                raise ModelFileError(f"{where}: {F.KEY_TOKENIZER_MODEL} should be a uint8 array")
            proto, what = proto.tobytes(), f"the SentencePiece model in {F.KEY_TOKENIZER_MODEL}"
        else:
            proto, what = sentencepiece_model(meta, where), f"the vocabulary in {Keys.Tokenizer.LIST}"
        try:
            tokenizer = cls(proto, tokens, types, bos_id=special[Keys.Tokenizer.BOS_ID], eos_id=special[Keys.Tokenizer.EOS_ID],
                            max_length=max_length, source=source,
                            # Absent keys: EmbeddingGemma's own tokenizer_config (both true), which the model was trained with.
                            add_bos=flag(meta, Keys.Tokenizer.ADD_BOS, True, where),
                            add_eos=flag(meta, Keys.Tokenizer.ADD_EOS, True, where))
        except RuntimeError as err:  # sentencepiece's complaint about a corrupt model
            lines = str(err).strip().splitlines() or ["no message"]
            raise ModelFileError(f"{where}: {what} is corrupt ({lines[-1]})") from None
        except UnicodeDecodeError:  # ... when the complaint quotes the model's own broken bytes
            raise ModelFileError(f"{where}: {what} is corrupt (sentencepiece cannot read it)") from None
        # Every id the SentencePiece model can produce must be a row of the embedding table (one per token).
        if tokenizer.sp.GetPieceSize() > len(tokens):
            raise ModelFileError(f"{where}: {what} has {tokenizer.sp.GetPieceSize():,} pieces, more than the "
                                 f"{len(tokens):,} tokens of {Keys.Tokenizer.LIST}")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        """`<bos>` + the text's tokens + `<eos>`, at most `max_length` ids (cut inside, `<eos>` kept); without
        either when the file says not to add it."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        text = clean(text)  # lone surrogates: U+FFFD (edgegemma.text)
        ids = [self.bos_id] if self.add_bos else []
        for piece, token_id in self._split_added(text):
            if token_id is not None:
                ids.append(token_id)
            else:
                ids.extend(self.sp.encode(piece))
        if not self.add_eos:
            return ids[: self.max_length]
        return ids[: self.max_length - 1] + [self.eos_id]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]
