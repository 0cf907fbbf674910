"""How a corpus run embeds a list of texts: the prompt, Matryoshka size and batch size, as one picklable value
(a Dask worker gets this and a model path, never the model)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncodeOptions:
    prompt_name: str | None = None  # a prompt of the model's (query, document, STS, ...); None: no prompt
    title: str | None = None  # documents with this title (the document prompt)
    batch_size: int = 32
    truncate_dim: int | None = None

    @property
    def as_documents(self) -> bool:
        return self.title is not None or self.prompt_name == "document"

    def encode(self, model, texts: list[str]) -> np.ndarray:
        """float32 (len(texts), dim) vectors, as `edgegemma embed` computes them for these options."""
        options = dict(batch_size=self.batch_size, truncate_dim=self.truncate_dim, show_progress_bar=False)
        if self.as_documents:
            return model.encode_document(texts, titles=self.title, **options)
        return model.encode(texts, prompt_name=self.prompt_name, **options)

    def prompt_text(self, model) -> str:
        """The prompt put before every text: recorded with the output, and checked when a run resumes."""
        if self.as_documents:
            from ..api import DOCUMENT_TEMPLATE

            return DOCUMENT_TEMPLATE.format(title=self.title or "none")
        return model._prompt(self.prompt_name, None)

    def dimension(self, model) -> int:
        return self.truncate_dim or model.dimension
