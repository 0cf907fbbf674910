"""LangChain: EdgeGemmaEmbeddings, a langchain_core Embeddings (vector stores, retrievers, ...).

    embeddings = EdgeGemmaEmbeddings(truncate_dim=256)
    embeddings.embed_documents(["Mars is red."]), embeddings.embed_query("Which planet is red?")
"""
from __future__ import annotations

from . import as_model, require

Embeddings = require("langchain_core.embeddings", "langchain").Embeddings


class EdgeGemmaEmbeddings(Embeddings):
    """embed_documents with the document prompt, embed_query with the query prompt."""

    def __init__(self, model=None, *, truncate_dim: int | None = None, batch_size: int = 32):
        self.model = as_model(model)
        self.options = dict(truncate_dim=truncate_dim, batch_size=batch_size)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode_document(list(texts), **self.options).tolist() if texts else []

    def embed_query(self, text: str) -> list[float]:
        return self.model.encode_query(text, **self.options).tolist()
