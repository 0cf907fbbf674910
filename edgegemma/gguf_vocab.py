"""A SentencePiece model rebuilt from a GGUF file's `tokenizer.ggml.*` arrays.

Files made by llama.cpp's converter (and Ollama's, Unsloth's) carry no tokenizer.model, only its
vocabulary: the pieces, their scores and types, the special ids. `tokenizer.ggml.model = "llama"`
names SentencePiece's BPE, which llama.cpp runs the way SentencePiece does: no normalization besides
spaces written as "▁", a dummy prefix only if `add_space_prefix` says so, and bytes for pieces the
vocabulary lacks when it has byte tokens. That is all a ModelProto needs to say for encoding, so one is
written here field by field (protobuf's wire format is a few lines; no protobuf dependency) and
sentencepiece loads it. The 262,144 pieces are assembled with numpy from the file's bytes, without
decoding a string.
"""
from __future__ import annotations

import numpy as np

from .gguf_file import ModelFileError, StringArray, shown
from .gguf_spec import Keys, TokenType

# SentencePiece's ModelProto (sentencepiece_model.proto): field numbers this file writes.
_MODEL_PIECES, _MODEL_TRAINER_SPEC, _MODEL_NORMALIZER_SPEC = 1, 2, 3
_PIECE_TEXT, _PIECE_SCORE, _PIECE_TYPE = 1, 2, 3
_TRAINER = {  # TrainerSpec
    "model_type": 3, "vocab_size": 4, "byte_fallback": 35,
    "unk_id": 40, "bos_id": 41, "eos_id": 42, "pad_id": 43,
    "unk_piece": 45, "bos_piece": 46, "eos_piece": 47, "pad_piece": 48,
}
_NORMALIZER = {"name": 1, "add_dummy_prefix": 3, "remove_extra_whitespaces": 4, "escape_whitespaces": 5}
_BPE = 2  # TrainerSpec.ModelType
_VARINT, _FIXED32, _BYTES = 0, 5, 2  # wire types
# SentencePiece's piece types are numbered as gguf.TokenType: NORMAL 1, UNKNOWN 2, CONTROL 3,
# USER_DEFINED 4, UNUSED 5, BYTE 6.
_PIECE_TYPES = frozenset(int(t) for t in TokenType)
_MAX_PIECE_BYTES = 1 << 21  # three varint bytes; a longer piece is a corrupt file


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32/int64 values are written as 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _message(fields: list[tuple[int, int | bool | str | bytes]]) -> bytes:
    """A protobuf message of integer (varint) and string fields, in the order given."""
    out = bytearray()
    for field, value in fields:
        if isinstance(value, (str, bytes)):
            data = value.encode() if isinstance(value, str) else value
            out += _key(field, _BYTES) + _varint(len(data)) + data
        else:
            out += _key(field, _VARINT) + _varint(int(value))
    return bytes(out)


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    return 1 + (values >= 1 << 7).astype(np.int64) + (values >= 1 << 14)


def _put_varints(out: np.ndarray, at: np.ndarray, values: np.ndarray, sizes: np.ndarray) -> None:
    """Write each values[i] as a varint of sizes[i] (1 to 3) bytes at out[at[i]:]."""
    for k in range(3):
        has = sizes > k
        byte = (values[has] >> (7 * k)) & 0x7F
        more = sizes[has] > k + 1
        out[at[has] + k] = byte | (more.astype(np.int64) << 7)


def _in_spans(size: int, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A bool mask of `size` positions, true inside the spans [starts[i], starts[i] + lengths[i]) (which do not
    overlap): +1 where a span starts, -1 where it ends, summed along. (Non-empty spans that do not overlap have
    distinct starts and distinct ends, so plain indexing adds each once.)"""
    edges = np.zeros(size + 1, np.int8)
    spans = lengths > 0
    starts = starts[spans]
    edges[starts] += 1
    edges[starts + lengths[spans]] -= 1
    return np.cumsum(edges[:-1], dtype=np.int8).view(np.bool_)


def _texts(strings: StringArray, types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pieces' texts as SentencePiece wrote them: (their bytes back to back in piece order, uint8; lengths).

    llama.cpp's converter writes user-defined pieces with "▁" as " " (Gemma's runs of spaces, "▁▁" …);
    SentencePiece matches them after its own " " -> "▁", so they get their "▁" back."""
    buf, starts, lengths = strings.raw()
    lengths = lengths.astype(np.int64)
    first, last = int(starts[0]), int(starts[-1] + lengths[-1])  # a string array lies in one piece of the file
    data = buf[first:last][_in_spans(last - first, starts - first, lengths)]
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    user = np.flatnonzero(types == TokenType.USER_DEFINED).tolist()
    fixed = [i for i in user if 0x20 in data[offsets[i]:offsets[i + 1]]]
    if fixed:
        parts, at = [], 0
        for i in fixed:
            text = data[offsets[i]:offsets[i + 1]].tobytes().replace(b" ", "\u2581".encode())
            parts += [data[at:offsets[i]], np.frombuffer(text, np.uint8)]
            at = offsets[i + 1]
            lengths[i] = len(text)
        data = np.concatenate(parts + [data[at:]])
    return data, lengths


def _pieces(data: np.ndarray, lengths: np.ndarray, scores: np.ndarray, types: np.ndarray) -> np.ndarray:
    """Every `pieces` entry of the ModelProto, back to back, as uint8: per piece
    0x0a len(entry) [0x0a len(text) text 0x15 score(float32) 0x18 type]; the texts are `data`, in order."""
    n = len(lengths)
    text_at_entry = 1 + _varint_sizes(lengths)  # key and length of the text, within the entry's body
    body = text_at_entry + lengths + 5 + 2  # + score (key + 4 bytes) + type (key + 1 byte)
    head = 1 + _varint_sizes(body)  # the entry's key and length
    size = head + body
    at = np.zeros(n, np.int64)
    np.cumsum(size[:-1], out=at[1:])
    out = np.empty(int(size.sum()), np.uint8)

    out[at] = _key(_MODEL_PIECES, _BYTES)[0]
    _put_varints(out, at + 1, body, head - 1)
    body_at = at + head
    out[body_at] = _key(_PIECE_TEXT, _BYTES)[0]
    _put_varints(out, body_at + 1, lengths, text_at_entry - 1)
    text_at = body_at + text_at_entry
    out[_in_spans(len(out), text_at, lengths)] = data
    score_at = text_at + lengths
    out[score_at] = _key(_PIECE_SCORE, _FIXED32)[0]
    out[(score_at + 1)[:, None] + np.arange(4)] = np.ascontiguousarray(scores, "<f4").view(np.uint8).reshape(n, 4)
    out[score_at + 5] = _key(_PIECE_TYPE, _VARINT)[0]
    out[score_at + 6] = types
    return out


def flag(meta: dict, key: str, default: bool, where: str) -> bool:
    """A boolean metadata value (GGUF BOOL, or an integer 0/1), `default` when absent."""
    value = meta.get(key, default)
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ModelFileError(f"{where}: metadata key {key} should be true or false")


def sentencepiece_model(meta: dict, where: str) -> bytes:
    """The serialized SentencePiece ModelProto that `meta`'s tokenizer.ggml.* keys describe; `where`
    (the file) starts every error message."""
    model = meta.get(Keys.Tokenizer.MODEL)
    if not isinstance(model, str) or model != "llama":
        raise ModelFileError(f"{where}: {Keys.Tokenizer.MODEL} is {shown(model)}; only SentencePiece vocabularies ('llama') are supported")
    tokens, scores, types = (meta.get(k) for k in (Keys.Tokenizer.LIST, Keys.Tokenizer.SCORES, Keys.Tokenizer.TOKEN_TYPE))
    if not isinstance(tokens, StringArray) or not len(tokens):
        raise ModelFileError(f"{where}: {Keys.Tokenizer.LIST} is missing or not a string array")
    n = len(tokens)
    for key, value in ((Keys.Tokenizer.SCORES, scores), (Keys.Tokenizer.TOKEN_TYPE, types)):
        if not isinstance(value, np.ndarray) or value.shape != (n,):
            raise ModelFileError(f"{where}: {key} should be a numeric array of {n} values, one per token")
    if scores.dtype.kind != "f":
        raise ModelFileError(f"{where}: {Keys.Tokenizer.SCORES} should hold floats, not {scores.dtype}")
    if types.dtype.kind not in "iu" or not np.isin(types, list(_PIECE_TYPES)).all():
        raise ModelFileError(f"{where}: {Keys.Tokenizer.TOKEN_TYPE} holds values that are not token types (1 to 6)")
    if int(tokens.raw()[2].max()) >= _MAX_PIECE_BYTES:
        raise ModelFileError(f"{where}: {Keys.Tokenizer.LIST} holds a token of {int(tokens.raw()[2].max()):,} bytes")

    def special(key: str) -> int:
        value = meta.get(key, -1)
        if not isinstance(value, int) or not -1 <= value < n:
            raise ModelFileError(f"{where}: {key} is {shown(value)}, not a token id below {n}")
        return value

    ids = {name: special(key) for name, key in (("unk", Keys.Tokenizer.UNK_ID), ("bos", Keys.Tokenizer.BOS_ID),
                                                  ("eos", Keys.Tokenizer.EOS_ID), ("pad", Keys.Tokenizer.PAD_ID))}
    # SentencePiece needs its unknown piece typed UNKNOWN; llama.cpp's converter marks Gemma's <unk> CONTROL
    # (tokenizer_config.json lists it as special), so the id decides.
    if ids["unk"] < 0:
        unknown = np.flatnonzero(types == TokenType.UNKNOWN)
        if not len(unknown):
            raise ModelFileError(f"{where}: the vocabulary has no unknown token (no {Keys.Tokenizer.UNK_ID}, no token of type UNKNOWN)")
        ids["unk"] = int(unknown[0])
    types = types.copy()
    types[ids["unk"]] = TokenType.UNKNOWN
    trainer = [(_TRAINER["model_type"], _BPE), (_TRAINER["vocab_size"], n),
               (_TRAINER["byte_fallback"], bool((types == TokenType.BYTE).any()))]
    for name, token_id in ids.items():
        trainer.append((_TRAINER[f"{name}_id"], token_id))
        if token_id >= 0:
            trainer.append((_TRAINER[f"{name}_piece"], tokens[token_id]))
    normalizer = [(_NORMALIZER["name"], "identity"),
                  (_NORMALIZER["add_dummy_prefix"], flag(meta, Keys.Tokenizer.ADD_PREFIX, True, where)),  # absent: llama.cpp's default
                  (_NORMALIZER["remove_extra_whitespaces"], flag(meta, Keys.Tokenizer.REMOVE_EXTRA_WS, False, where)),
                  (_NORMALIZER["escape_whitespaces"], True)]
    specs = b"".join(_key(field, _BYTES) + _varint(len(body)) + body
                     for field, body in ((_MODEL_TRAINER_SPEC, _message(trainer)), (_MODEL_NORMALIZER_SPEC, _message(normalizer))))
    return _pieces(*_texts(tokens, types), scores, types).tobytes() + specs
