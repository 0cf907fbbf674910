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

Finer rows, for languages and scripts besides English (issue 27). Those ~280 rows, chosen from mostly English
text, leave other scripts on 4-bit rows. e4_q8 (FINE_ROW_RECIPES) therefore also stores the rows of the
ranked tokens of converter.token_ranking (their frequency across the tuning part of
bench.quality.families: 9 script families, code, long and repetitive texts, each source and language
weighing alike) in Q8_0 (~0.4 % row error against Q4_0's ~9 %) under F.KEY_FINE_TOKEN_*: 820 bytes a row
with its id, so 12.3 MiB buys 15,824 rows, which is what the 240 MiB budget leaves beside the 227 MiB file.
The tokenizer's own piece order is no frequency: its first 16,000 ids cover 33 % of the tokens of those
texts; the ranking's 16,000 (counted on the tuning part) cover 74-91 % of each family's tokens in the checking
part (code 78 %, Indic 74 %, CJK 77 %), 80-99 % in the tuning part. Their Q8_0 scale search (380,000
blocks) lengthens a conversion by an amount not yet measured apart from the machine's load.
"""
from __future__ import annotations

import base64
import re
import zlib
from collections import Counter
from typing import Iterable

import gguf
import numpy as np
from gguf import TokenType

from edgegemma import formats as F
from edgegemma.tokenizer import Tokenizer

from . import token_ranking
from .checkpoint import Checkpoint, TensorSource
from .quantize import pack
from .vocab import Vocab

N_FREQUENT = 256
FINE_ROW_RECIPES = ("e4_q8",)  # recipes whose 4-bit table also stores the ranked rows in FINE_ROW_TYPE
FINE_ROW_TYPE = F.QUANT_TYPES_BY_NAME["q8_0"]


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


def ranked_token_ids() -> np.ndarray:
    """The ids converter.token_ranking stores (sorted): the tokens most used across languages and kinds of text."""
    raw = zlib.decompress(base64.b64decode("".join(token_ranking.DATA)))
    ids, value, shift = [], 0, 0
    for byte in raw:  # LEB128 differences
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            ids.append(value)
            value, shift = 0, 0
    out = np.cumsum(np.array(ids, np.int64))
    assert len(out) == token_ranking.COUNT, "converter/token_ranking.py is damaged"
    return out


def fine_token_ids(vocab_size: int, exact_ids: np.ndarray) -> np.ndarray:
    """Sorted ids of the rows to store in FINE_ROW_TYPE: the ranked ids the table has, less the exact ones."""
    ids = ranked_token_ids()
    return ids[(ids < vocab_size) & ~np.isin(ids, exact_ids)].astype(np.int32)


def fine_token_rows(ckpt: Checkpoint, table: TensorSource, ids: np.ndarray) -> bytes:
    """The rows `ids` (sorted) of the checkpoint's table in FINE_ROW_TYPE, scales searched as for the table itself."""
    return pack(exact_token_rows(ckpt, table, ids), FINE_ROW_TYPE, "search", lookup=True).tobytes()
