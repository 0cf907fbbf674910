"""LlamaIndex: EdgeGemmaEmbedding, a llama_index.core BaseEmbedding (Settings.embed_model, VectorStoreIndex, ...).

    from llama_index.core import Settings
    Settings.embed_model = EdgeGemmaEmbedding(truncate_dim=256)

LlamaIndex hands texts over in lists of `embed_batch_size`; each list goes through the model in batches of as many.
"""
from __future__ import annotations

from . import as_model, require

_core = require("llama_index.core.base.embeddings.base", "llamaindex")
_bridge = require("llama_index.core.bridge.pydantic", "llamaindex")


class EdgeGemmaEmbedding(_core.BaseEmbedding):
    """Texts (nodes) with the document prompt, queries with the query prompt."""

    truncate_dim: int | None = _bridge.Field(default=None, description="Matryoshka size (768, 512, 256, 128)")
    _model = _bridge.PrivateAttr()

    def __init__(self, model=None, *, truncate_dim: int | None = None, embed_batch_size: int = 32, **kwargs):
        encoder = as_model(model)
        kwargs.setdefault("model_name", encoder.path.name)
        super().__init__(truncate_dim=truncate_dim, embed_batch_size=embed_batch_size, **kwargs)
        self._model = encoder

    @classmethod
    def class_name(cls) -> str:
        return "EdgeGemmaEmbedding"

    def _options(self) -> dict:
        return dict(truncate_dim=self.truncate_dim, batch_size=self.embed_batch_size)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.encode_query(query, **self._options()).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._model.encode_document(text, **self._options()).tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.encode_document(list(texts), **self._options()).tolist() if texts else []

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)
