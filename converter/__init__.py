"""Hugging Face sentence-transformers checkpoint -> GGUF file of llama.cpp's `gemma-embedding` architecture.

    checkpoint.py  open and validate the folder, hand out tensors under llama.cpp's names
    vocab.py       the SentencePiece vocabulary as llama.cpp's tokenizer.ggml.* keys
    recipes.py     which storage type each tensor gets (f32, f16, bf16, q8_0, q4_0, mixed, e4_q8)
    calibrate.py   importance of each input column, from the float model on calibration texts
    quantize.py    ggml's block packers, bit for bit; the scale search; the error they introduce
    metadata.py    the file's metadata keys
    writer.py      stream it all into a GGUF file, atomically
    cli.py         `edgegemma convert` / `python -m edgegemma.converter`

The runtime never imports this package; only the converter needs safetensors.
"""
from .errors import ConversionError

__all__ = ["ConversionError", "convert"]


def convert(*args, **kwargs):
    """See converter.writer.convert (imported on first use: safetensors loads only when converting)."""
    from .writer import convert as _convert

    return _convert(*args, **kwargs)
