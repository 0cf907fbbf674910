"""edgegemma: EmbeddingGemma-300m on a CPU, from a small memory-mapped GGUF file.

    import edgegemma
    model = edgegemma.load("embeddinggemma-300m-mixed.gguf")
    q = model.encode_query("Which planet is known as the Red Planet?")
    d = model.encode_document(["Mars, known for its reddish appearance, ..."])
    model.similarity(q, d)
"""
from .api import SentenceEncoder, load
from .gguf_file import ModelFileError

__version__ = "0.1.0"
__all__ = ["load", "SentenceEncoder", "ModelFileError", "__version__"]
