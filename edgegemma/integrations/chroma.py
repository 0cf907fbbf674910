"""Chroma: EdgeGemmaEmbeddingFunction, a chromadb EmbeddingFunction.

    collection = client.create_collection("notes", embedding_function=EdgeGemmaEmbeddingFunction(truncate_dim=256))
    collection.add(ids=[...], documents=[...]); collection.query(query_texts=["..."])

Documents get the document prompt; Chroma's query_texts go through embed_query, with the query prompt.
"""
from __future__ import annotations

from . import as_model, require

_types = require("chromadb.api.types", "chroma")


class EdgeGemmaEmbeddingFunction(_types.EmbeddingFunction):
    def __init__(self, model=None, *, truncate_dim: int | None = None, batch_size: int = 32):
        self.model = as_model(model)
        self.truncate_dim, self.batch_size = truncate_dim, batch_size

    def __call__(self, input):
        return list(self.model.encode_document(list(input), truncate_dim=self.truncate_dim, batch_size=self.batch_size))

    def embed_query(self, input):
        return list(self.model.encode_query(list(input), truncate_dim=self.truncate_dim, batch_size=self.batch_size))

    @staticmethod
    def name() -> str:
        return "edgegemma"

    def default_space(self) -> str:
        return "cosine"  # the vectors are unit length: cosine ranks as inner product does

    def get_config(self) -> dict:
        return {"model": str(self.model.path), "truncate_dim": self.truncate_dim, "batch_size": self.batch_size}

    @staticmethod
    def build_from_config(config: dict) -> "EdgeGemmaEmbeddingFunction":
        return EdgeGemmaEmbeddingFunction(config["model"], truncate_dim=config.get("truncate_dim"),
                                          batch_size=config.get("batch_size", 32))
