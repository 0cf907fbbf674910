"""edgegemma: EmbeddingGemma-300m on a CPU, from a small memory-mapped GGUF file."""
__version__ = "0.1.0"
