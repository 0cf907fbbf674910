"""The embedding table's most used rows, kept exact beside a 4-bit table.

A Q4_0 table costs every token of every input ~9 % relative error in its row, and the rows that
occur in nearly every input pay it again and again: `<bos>` and `<eos>`, the prompt's tokens, the
chat markers, newlines, indentation, digits and common words. Those few hundred rows are written
as float32 under edgegemma's own metadata keys (F.KEY_EXACT_TOKEN_IDS / F.KEY_EXACT_TOKEN_ROWS,
~0.9 MB); the table itself stays plain Q4_0, so llama.cpp still loads the file (and uses the
4-bit rows). On the 205 reference texts, document mode, e4_q8 (table Q4_0, the rest Q8_0, gptq,
calibration v3): mean / min cosine 0.99900 / 0.99099 with the 4-bit rows alone, 0.99920 / 0.99607
with these rows exact; 128 frequent rows gave the same min, 512 a lower one (0.99563): the
frequency counts of ~21,000 calibration tokens say little past the first few hundred.

Which rows: the named control tokens (not the 6,000 `<unusedN>`), the tokens of every prompt of
the checkpoint, and the N_FREQUENT most frequent tokens of the calibration texts (never the
reference texts).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

import gguf
import numpy as np
from gguf import TokenType

from edgegemma.tokenizer import Tokenizer

from .checkpoint import Checkpoint, TensorSource
from .vocab import Vocab

N_FREQUENT = 256


def _tokenizer(ckpt: Checkpoint, vocab: Vocab) -> Tokenizer:
    special = gguf.SpecialVocab(ckpt.folder, n_vocab=len(vocab.tokens)).special_token_ids
    return Tokenizer(vocab.model_bytes, [t.decode("utf-8", "replace") for t in vocab.tokens], np.asarray(vocab.types),
                     bos_id=special.get("bos", 2), eos_id=special.get("eos", 1),
                     max_length=ckpt.hparams.max_position_embeddings)


def exact_token_ids(ckpt: Checkpoint, vocab: Vocab, texts: Iterable[str], n_frequent: int = N_FREQUENT) -> np.ndarray:
    """Sorted ids of the rows to keep exact: named control tokens, every prompt's tokens, the
    n_frequent most frequent tokens of `texts`."""
    tokenizer = _tokenizer(ckpt, vocab)
    ids = {i for i, (t, kind) in enumerate(zip(vocab.tokens, vocab.types))
           if kind == TokenType.CONTROL and not re.fullmatch(rb"<unused\d+>", t)}
    for prompt in ckpt.prompts.values():
        ids.update(tokenizer.encode(prompt))
    counts = Counter(i for text in texts for i in tokenizer.encode(text))
    ids.update(i for i, _ in counts.most_common(n_frequent))
    return np.array(sorted(ids), dtype=np.int32)


def exact_token_rows(ckpt: Checkpoint, table: TensorSource, ids: np.ndarray) -> np.ndarray:
    """The float32 rows `ids` (sorted) of the checkpoint's table, as the converter reads them (sanitized)."""
    rows = np.empty((len(ids), table.shape[1]), np.float32)
    start = 0
    for chunk in ckpt.read(table):
        stop = start + chunk.shape[0]
        inside = (ids >= start) & (ids < stop)
        rows[inside] = chunk[ids[inside] - start]
        start = stop
    return rows
