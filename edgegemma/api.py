"""The public interface: `load(path)` and the sentence-transformers methods users already know."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import formats as F
from .config import Config
from .gguf_file import GGUFFile, ModelFileError, shown
from .gguf_spec import Keys
from .integrity import check_finite, check_norms, check_tensor_types
import edgegemma.kernels as kernels
from .model import EmbeddingGemma, Trace
from .prompts import prompts_for, resolve_name
from .tokenizer import Tokenizer
from .weights import load_weights, require_dense_head

DOCUMENT_TEMPLATE = "title: {title} | text: "


class SentenceEncoder:
    """EmbeddingGemma from one GGUF file, with sentence-transformers' `encode` family."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = GGUFFile(self.path)
        meta = self.file.metadata
        arch = meta.get(Keys.General.ARCHITECTURE)
        if not isinstance(arch, str) or arch != F.ARCH:
            raise ModelFileError(f"{self.path}: architecture is {shown(arch)}, expected {F.ARCH!r}")
        require_dense_head(self.file)
        try:
            self.config = Config.from_metadata(meta)
            self.prompts: dict[str, str] = prompts_for(meta)
        except KeyError as err:
            raise ModelFileError(f"{self.path}: metadata key {err.args[0]} is missing") from None
        except ValueError as err:
            raise ModelFileError(f"{self.path}: {err}") from None
        self.tokenizer = self._tokenizer(meta)  # first: its transient memory then peaks before the weights are packed
        check_tensor_types(self.file, self.config)
        weights = load_weights(self.file, self.config)
        check_norms(self.file, weights)
        self.model = EmbeddingGemma(self.config, weights)
        recipe = meta.get(F.KEY_RECIPE)
        self.recipe = recipe if isinstance(recipe, str) else "unknown"
        self.file.release_header()  # the vocabulary and tokenizer pages: read, no longer needed in memory

    def _tokenizer(self, meta: dict) -> Tokenizer:
        return Tokenizer.from_gguf(meta, str(self.path), self.config.max_position_embeddings)

    @property
    def dimension(self) -> int:
        return self.config.hidden_size

    def warm_up(self) -> None:
        """Bind the compiled kernels now (loaded from Numba's disk cache; those not there start compiling in the
        background) instead of once the numpy kernels have cost as much: for a long-running service."""
        kernels.prepare((), now=True)

    def __repr__(self) -> str:
        return f"SentenceEncoder({str(self.path)!r}, recipe={self.recipe!r}, dim={self.dimension})"

    # --- encoding -------------------------------------------------------------------------------

    def encode(self, sentences: str | Sequence[str], prompt_name: str | None = None, prompt: str | None = None,
               batch_size: int = 32, truncate_dim: int | None = None, normalize_embeddings: bool = True,
               show_progress_bar: bool | None = None) -> np.ndarray:
        """float32 (n, d) embeddings, in input order; a single string gives (d,). Lone surrogates in a text are read as
        U+FFFD (edgegemma.text); a vector with NaN or Inf (a damaged file) raises ModelFileError, never returns."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        prompt = self._prompt(prompt_name, prompt)
        out = self._encode([prompt] * len(texts), texts, batch_size, truncate_dim, normalize_embeddings, show_progress_bar)
        return out[0] if single else out

    def encode_query(self, sentences: str | Sequence[str], **kwargs) -> np.ndarray:
        """Queries for retrieval: prompt `task: search result | query: `."""
        kwargs.setdefault("prompt_name", "query")
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences: str | Sequence[str], titles: str | Sequence[str | None] | None = None,
                        batch_size: int = 32, truncate_dim: int | None = None, normalize_embeddings: bool = True,
                        show_progress_bar: bool | None = None) -> np.ndarray:
        """Documents for retrieval: prompt `title: {title or none} | text: `."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        if titles is None or isinstance(titles, str):
            titles = [titles] * len(texts)
        elif len(titles) != len(texts):
            raise ValueError(f"got {len(titles)} titles for {len(texts)} documents")
        prompts = [DOCUMENT_TEMPLATE.format(title=t if t else "none") for t in titles]
        out = self._encode(prompts, texts, batch_size, truncate_dim, normalize_embeddings, show_progress_bar)
        return out[0] if single else out

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine similarity of every row of `a` with every row of `b` (n, m)."""
        a, b = np.atleast_2d(np.asarray(a, np.float32)), np.atleast_2d(np.asarray(b, np.float32))
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return a @ b.T

    def tokenize(self, texts: Sequence[str], prompt_name: str | None = None, prompt: str | None = None) -> list[list[int]]:
        """The exact ids the model sees: <bos> + prompt + text + <eos>."""
        prefix = self._prompt(prompt_name, prompt)
        return [self.tokenizer.encode(prefix + _check_text(t, i)) for i, t in enumerate(texts)]

    def trace(self, text: str, prompt_name: str | None = None, prompt: str | None = None) -> dict[str, np.ndarray]:
        """Every named intermediate of one text's forward pass: embeddings; per block blk.N.attn_norm,
        .attn_out_in, .ffn_norm, .ffn_down_in (the inputs of its linear layers) and blk.N; output_norm,
        pooled, dense_2, dense."""
        seen: dict[str, np.ndarray] = {}
        record: Trace = lambda name, value: seen.__setitem__(name, value.copy())
        self.model.forward(self.tokenize([text], prompt_name, prompt), trace=record)
        return seen

    def prompt_name(self, name: str) -> str:
        """The model's name for prompt `name`, matched case-insensitively ("sts" is "STS") as the CLI and the server
        match it; ValueError when it names none."""
        if not isinstance(name, str):
            raise TypeError(f"prompt_name must be a string, got {type(name).__name__}")
        return resolve_name(self.prompts, name)

    # --- internals ------------------------------------------------------------------------------

    def _prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            return prompt
        if prompt_name is None:
            return ""
        return self.prompts[self.prompt_name(prompt_name)]

    def _encode(self, prompts: list[str], texts: list, batch_size: int, truncate_dim: int | None,
                normalize: bool, progress: bool | None) -> np.ndarray:
        dim = self.dimension
        if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer))
                                         or not 1 <= truncate_dim <= dim):
            raise ValueError(f"truncate_dim must be an integer from 1 to {dim} (Matryoshka sizes 768, 512, 256, 128), got {truncate_dim!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        ids = [self.tokenizer.encode(p + _check_text(t, i)) for i, (p, t) in enumerate(zip(prompts, texts))]
        out = np.empty((len(ids), dim), np.float32)
        # Longest first, so that batches hold sequences of similar length; results go back in input order.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="edgegemma", unit="batch")
        with np.errstate(over="ignore", invalid="ignore"):  # a corrupt file's overflows are reported below, once
            for batch in batches:
                out[batch] = self.model.forward([ids[i] for i in batch])
        check_finite(out, self.path)
        if truncate_dim is not None:
            out = np.ascontiguousarray(out[:, :truncate_dim])
        if normalize:  # the model's output is unit length; after truncation it is made so again
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out


def _check_text(text, index: int) -> str:
    if not isinstance(text, str):
        raise TypeError(f"sentences[{index}] is {type(text).__name__}, expected str")
    return text


def load(path: str | os.PathLike | None = None) -> SentenceEncoder:
    """Open an edgegemma/llama.cpp GGUF file of EmbeddingGemma; weights stay memory-mapped.
    Without a path: the default model that `edgegemma pull` put in the cache."""
    if path is None:
        from .cache import default_model, home

        path = default_model()
        if path is None:
            raise ModelFileError(f"no default model in {home()}: run `edgegemma pull` or pass a .gguf path")
    return SentenceEncoder(path)
