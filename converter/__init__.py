"""Hugging Face sentence-transformers checkpoint -> GGUF file of llama.cpp's `gemma-embedding` architecture.

    pipeline.py          convert(): read -> calibrate -> quantize -> write, the one module that knows the order
    checkpoint.py        open and validate the folder, hand out tensors under llama.cpp's names
    vocab.py             the SentencePiece vocabulary as llama.cpp's tokenizer.ggml.* keys
    recipes.py           which storage type each tensor gets (f32, f16, bf16, q8_0, q4_0, mixed, e4_q8)
    calibration_texts.py the texts the float model reads for calibration
    calibrate.py         second moments of each linear layer's input, from the float model on those texts
    exact_rows.py        the embedding table's most used rows, kept exact beside a 4-bit table
    quantize.py          ggml's block packers, bit for bit; the scale search; the error they introduce
    gptq.py              GPTQ's error compensation inside ggml's blocks
    quantizers.py        --quantizer (ggml, search, imatrix, gptq) applied to one tensor, chunk by chunk
    metadata.py          the file's metadata keys
    writer.py            stream it all into a GGUF file, atomically
    progress.py          progress bars on stderr for the long steps (edgegemma.progress)
    cli.py               `edgegemma convert` / `python -m edgegemma.converter`

The runtime never imports this package; only the converter needs safetensors. Measurements: docs/converter.md.
"""
from .errors import ConversionError

__all__ = ["ConversionError", "convert"]


def convert(*args, **kwargs):
    """See converter.pipeline.convert (imported on first use: safetensors loads only when converting)."""
    from .pipeline import convert as run

    return run(*args, **kwargs)
