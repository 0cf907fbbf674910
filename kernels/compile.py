"""python -m edgegemma.kernels.compile MODULE:KERNEL ...: compile these kernels into Numba's disk cache (what
warm_start runs in the background); exits 0 once all are there."""
from __future__ import annotations

import importlib
import sys


def main(names: list[str]) -> int:
    from . import jit

    for name in names:
        module, _, kernel = name.partition(":")
        jit.compiled(getattr(importlib.import_module(module), kernel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
