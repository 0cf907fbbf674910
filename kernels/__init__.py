"""Block-dequantized matrix kernels (to be filled in)."""
