"""python -m edgegemma.kernels.compile MODULE:KERNEL ...: compile these kernels into Numba's disk cache (what
warm_start runs in the background); exits 0 once all are there.

One compiler at a time per cache: a second one (a second process started before the first finished) waits for
the first, then finds most kernels in the cache instead of compiling them again beside it.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
import tempfile


@contextlib.contextmanager
def _one_at_a_time():
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    from . import __file__ as package_file

    where = os.environ.get("NUMBA_CACHE_DIR") or os.path.dirname(package_file)
    key = hashlib.sha256(f"{where}|{os.environ.get('NUMBA_CPU_NAME', '')}".encode()).hexdigest()[:16]
    with open(os.path.join(tempfile.gettempdir(), f"edgegemma-compile-{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(names: list[str]) -> int:
    from . import jit

    with _one_at_a_time():
        for name in names:
            module, _, kernel = name.partition(":")
            jit.compiled(getattr(importlib.import_module(module), kernel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
