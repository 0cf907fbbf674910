"""edgegemma.integrations against the real frameworks (LangChain, LlamaIndex, Chroma), with the tiny model: the
vectors are encode_document's for documents and encode_query's for queries, at the Matryoshka size asked, and
the model sees batches of the size asked. Each framework's tests skip where it is not installed."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import edgegemma
from conftest import tiny_corpus

TEXTS = tiny_corpus(10, seed=6, number_every=3)
QUERY = "search query about the river"


@pytest.fixture
def batches(model, monkeypatch):
    """The batch sizes the model's forward pass is called with (it still computes them)."""
    seen: list[int] = []
    forward = model.model.forward

    def recording(sequences, trace=None):
        seen.append(len(sequences))
        return forward(sequences, trace)

    monkeypatch.setattr(model.model, "forward", recording)
    return seen


def assert_close(got, expected) -> None:
    got, expected = np.atleast_2d(np.asarray(got, np.float64)), np.atleast_2d(np.asarray(expected, np.float64))
    assert got.shape == expected.shape
    cosine = (got * expected).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.99999, cosine.min()


def test_langchain(model, batches):
    pytest.importorskip("langchain_core", reason="langchain-core (edgegemma[langchain]) not installed")
    from langchain_core.embeddings import Embeddings

    from edgegemma.integrations.langchain import EdgeGemmaEmbeddings

    embeddings = EdgeGemmaEmbeddings(model, truncate_dim=32, batch_size=4)
    assert isinstance(embeddings, Embeddings)
    documents = embeddings.embed_documents(TEXTS)
    assert batches == [4, 4, 2]
    assert len(documents) == len(TEXTS) and all(len(v) == 32 for v in documents)
    assert_close(documents, model.encode_document(TEXTS, truncate_dim=32))
    assert_close(embeddings.embed_query(QUERY), model.encode_query(QUERY, truncate_dim=32))
    assert_close(asyncio.run(embeddings.aembed_query(QUERY)), model.encode_query(QUERY, truncate_dim=32))
    assert embeddings.embed_documents([]) == []


def test_llamaindex(model, batches):
    pytest.importorskip("llama_index.core", reason="llama-index-core (edgegemma[llamaindex]) not installed")
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from edgegemma.integrations.llamaindex import EdgeGemmaEmbedding

    embedding = EdgeGemmaEmbedding(model, truncate_dim=64, embed_batch_size=3)
    assert isinstance(embedding, BaseEmbedding)
    vectors = embedding.get_text_embedding_batch(TEXTS)
    assert max(batches) == 3 and sum(batches) == len(TEXTS)
    assert_close(vectors, model.encode_document(TEXTS, truncate_dim=64))
    assert_close(embedding.get_text_embedding(TEXTS[0]), model.encode_document(TEXTS[0], truncate_dim=64))
    assert_close(embedding.get_query_embedding(QUERY), model.encode_query(QUERY, truncate_dim=64))
    assert_close(asyncio.run(embedding.aget_query_embedding(QUERY)), model.encode_query(QUERY, truncate_dim=64))


def test_chroma(model, batches, tmp_path):
    chromadb = pytest.importorskip("chromadb", reason="chromadb (edgegemma[chroma]) not installed")
    from chromadb.api.types import EmbeddingFunction

    from edgegemma.integrations.chroma import EdgeGemmaEmbeddingFunction

    function = EdgeGemmaEmbeddingFunction(model, truncate_dim=32, batch_size=4)
    assert isinstance(function, EmbeddingFunction) and not function.is_legacy()
    client = chromadb.EphemeralClient(chromadb.config.Settings(anonymized_telemetry=False, allow_reset=True))
    collection = client.create_collection("notes", embedding_function=function)
    collection.add(ids=[f"n{i}" for i in range(len(TEXTS))], documents=TEXTS)
    assert batches == [4, 4, 2]
    stored = collection.get(ids=[f"n{i}" for i in range(len(TEXTS))], include=["embeddings"])["embeddings"]
    assert_close(stored, model.encode_document(TEXTS, truncate_dim=32))
    assert_close(function.embed_query([QUERY]), model.encode_query([QUERY], truncate_dim=32))
    # A query finds the document it was taken from: the collection's cosine ranking of encode_query's vector.
    found = collection.query(query_texts=[TEXTS[7]], n_results=1)["ids"][0]
    expected = np.argmax(model.encode_document(TEXTS, truncate_dim=32) @ model.encode_query(TEXTS[7], truncate_dim=32))
    assert found == [f"n{expected}"]
    rebuilt = EdgeGemmaEmbeddingFunction.build_from_config(function.get_config())
    assert rebuilt.truncate_dim == 32 and rebuilt.model.path == model.path
    client.reset()


def test_a_wrong_model_argument_is_refused():
    from edgegemma.integrations import as_model

    with pytest.raises(TypeError, match="model must be an edgegemma.SentenceEncoder, a GGUF path or None"):
        as_model(42)
