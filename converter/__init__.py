"""Hugging Face checkpoint -> GGUF converter (to be filled in)."""
