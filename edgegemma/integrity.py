"""What a model file's structure does not say: that its numbers are sound and its bytes are the ones written.

At load (cheap): the tensors the model reads have types the kernels know, and the norm vectors, decoded at load
anyway, are finite. At every encode: the vectors are finite, else the call fails naming the file, so a corrupt
weight never comes back as a vector. On request (`edgegemma info --verify`, and `pull` before a file becomes
the default): the checksum edgegemma's converter stores, a SHA-256 of every byte of the file but the digest's
own 64 characters, which are hashed as '0's. Files without one (llama.cpp's) are read all the same.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from . import formats as F
from .gguf_file import GGUFFile, ModelFileError, shown

CHECKSUM_PREFIX = "sha256:"
CHECKSUM_PLACEHOLDER = CHECKSUM_PREFIX + "0" * 64  # what the converter writes first, then overwrites in place
_NORM_FIELDS = {"attn_norm": F.ATTN_NORM, "attn_q_norm": F.ATTN_Q_NORM, "attn_k_norm": F.ATTN_K_NORM,
                "post_attention_norm": F.ATTN_POST_NORM, "ffn_norm": F.FFN_NORM, "post_ffw_norm": F.FFN_POST_NORM}


def check_tensor_types(file: GGUFFile, config) -> None:
    """Every tensor the model reads is of a type the kernels decode (other tensors may be anything)."""
    kinds = [(kind, None) for kind in (F.TOKEN_EMBD, F.OUTPUT_NORM, F.DENSE_2, F.DENSE_3)]
    kinds += [(kind, i) for i in range(config.num_hidden_layers) for kind in F.BLOCK_TENSORS]
    for kind, layer in kinds:
        info = file.tensors.get(F.tensor_name(kind, layer))
        if info is not None:
            try:
                F.quant_type(info.ggml_type)
            except ValueError as err:
                raise ModelFileError(f"{file.path}: tensor {info.name}: {err}") from None


def check_norms(file: GGUFFile, weights) -> None:
    """The norm vectors (decoded to float32 at load) hold no NaN or Inf."""
    named = [(F.tensor_name(F.OUTPUT_NORM), weights.output_norm)]
    named += [(F.tensor_name(kind, i), getattr(layer, field)) for i, layer in enumerate(weights.layers)
              for field, kind in _NORM_FIELDS.items()]
    for name, values in named:
        if not np.isfinite(values).all():
            raise ModelFileError(f"{file.path}: tensor {name} holds NaN or Inf values: the file is corrupt")


def check_finite(vectors: np.ndarray, path: Path) -> None:
    """Refuse embeddings with a NaN or an Inf: a corrupt weight (or a kernel fault) must not come back as a vector."""
    finite = np.isfinite(vectors).all(axis=-1)
    if not finite.all():
        bad = int(np.count_nonzero(~finite))
        raise ModelFileError(f"{path}: the model computed NaN or Inf for {bad} of {finite.size} texts: its weights are "
                             f"corrupt (`edgegemma info --verify {path}` checks the file)")


# --- the checksum ---------------------------------------------------------------------------------


def _digest(path: Path, span: tuple[int, int], chunk: int = 1 << 20) -> str:
    """SHA-256 of the file with the bytes of `span` read as '0's, streamed."""
    digest = hashlib.sha256()
    start, end = span
    with open(path, "rb") as f:
        for lo, hi in ((0, start), (end, None)):
            f.seek(lo)
            left = None if hi is None else hi - lo
            while left is None or left > 0:
                block = f.read(chunk if left is None else min(chunk, left))
                if not block:
                    break
                digest.update(block)
                if left is not None:
                    left -= len(block)
            if hi is not None:
                digest.update(b"0" * (end - start))
    return digest.hexdigest()


def _digest_span(file: GGUFFile) -> tuple[int, int] | None:
    """Where the stored digest's hex characters lie in the file, or None when the file stores no checksum."""
    value = file.metadata.get(F.KEY_CHECKSUM)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(CHECKSUM_PREFIX) or len(value) != len(CHECKSUM_PLACEHOLDER):
        raise ModelFileError(f"{file.path}: metadata key {F.KEY_CHECKSUM} is {shown(value)}, not {CHECKSUM_PREFIX}<64 hex digits>")
    end = file.string_end(F.KEY_CHECKSUM)
    return end - 64, end


def seal(path: Path) -> str:
    """Write the checksum of a finished file over its placeholder (the converter's last step); returns it."""
    span = _digest_span(GGUFFile(path))
    if span is None:
        raise ValueError(f"{path}: no {F.KEY_CHECKSUM} placeholder to fill")
    digest = _digest(path, span)
    with open(path, "r+b") as f:
        f.seek(span[0])
        f.write(digest.encode("ascii"))
    return CHECKSUM_PREFIX + digest


def verify(path: str | Path) -> str | None:
    """Check a file against its stored checksum: the checksum when it matches, None when the file stores none;
    ModelFileError when the bytes differ from those written."""
    path = Path(path)
    file = GGUFFile(path)
    span = _digest_span(file)
    if span is None:
        return None
    stored = file.metadata[F.KEY_CHECKSUM]
    computed = CHECKSUM_PREFIX + _digest(path, span)
    if computed != stored:
        raise ModelFileError(f"{path}: checksum mismatch: the file's bytes are not those its converter wrote "
                             f"(stored {stored[:19]}..., computed {computed[:19]}...): the file is corrupt")
    return stored
