"""Text -> token ids, exactly as the Hugging Face tokenizer the reference used.

SentencePiece does the work; two things are Hugging Face's and are added here: added tokens written
in the text (`<bos>`, `<start_of_turn>`, `<unused7>` …) become those tokens rather than their
characters, and a text longer than the model's context is cut with `<eos>` kept last.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import sentencepiece as spm
from gguf import TokenType


class Tokenizer:
    def __init__(self, model_proto: bytes, tokens: Sequence[str], token_types: np.ndarray,
                 bos_id: int, eos_id: int, max_length: int):
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(model_proto)
        self.bos_id, self.eos_id, self.max_length = bos_id, eos_id, max_length
        # The added tokens are those the vocabulary marks as control, user-defined or unknown
        # (llama.cpp's converter marks every entry of tokenizer_config's added_tokens that way, and
        # writes the user-defined ones with "▁" as " "; Hugging Face matches the original "▁").
        # (Vectorised, with plain ints in the loop: Gemma's vocabulary has 6,414 of them.)
        token_types = np.asarray(token_types)
        added = np.flatnonzero(np.isin(token_types, [TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN]))
        user_defined = (token_types[added] == TokenType.USER_DEFINED).tolist()
        self.added_tokens: dict[str, int] = {}
        for i, user in zip(added.tolist(), user_defined):
            text = tokens[i]
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

    def encode(self, text: str) -> list[int]:
        """`<bos>` + the text's tokens + `<eos>`, at most `max_length` ids (cut inside, `<eos>` kept)."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        ids = [self.bos_id]
        for piece, token_id in self._split_added(text):
            if token_id is not None:
                ids.append(token_id)
            else:
                ids.extend(self.sp.encode(piece))
        return ids[: self.max_length - 1] + [self.eos_id]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]
