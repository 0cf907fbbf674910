"""Task-level quality of quantized files against F32: `python -m bench.quality` (see bench/quality/README.md)."""
