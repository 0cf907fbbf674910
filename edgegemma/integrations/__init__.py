"""edgegemma inside the frameworks people already use; each module needs its framework (an optional extra):

    from edgegemma.integrations.langchain import EdgeGemmaEmbeddings        # pip install 'edgegemma[langchain]'
    from edgegemma.integrations.llamaindex import EdgeGemmaEmbedding        # pip install 'edgegemma[llamaindex]'
    from edgegemma.integrations.chroma import EdgeGemmaEmbeddingFunction    # pip install 'edgegemma[chroma]'

Each takes a model (a loaded edgegemma.SentenceEncoder, a GGUF path, or None for the default model),
`truncate_dim` (Matryoshka size, renormalised) and a batch size; documents get the model's document prompt and
queries its query prompt, as encode_document / encode_query do.
"""
from __future__ import annotations

import os


def as_model(model=None):
    """A SentenceEncoder from a loaded one, a GGUF path, or None (the default model)."""
    from ..api import SentenceEncoder, load

    if isinstance(model, SentenceEncoder):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load(model)
    raise TypeError(f"model must be an edgegemma.SentenceEncoder, a GGUF path or None, got {type(model).__name__}")


def require(module: str, extra: str):
    """Import a framework, or fail in one line naming the extra that installs it."""
    from importlib import import_module

    try:
        return import_module(module)
    except ImportError:
        raise ImportError(f"this integration needs {module.split('.')[0]}: pip install 'edgegemma[{extra}]'") from None
