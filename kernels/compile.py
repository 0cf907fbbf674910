"""python -m edgegemma.kernels.compile MODULE:KERNEL ...: compile these kernels into Numba's disk cache (what
warm_start runs in the background); exits 0 once all are there.

One compiler at a time per cache: a second one (a second process started before the first finished) waits for
the first, then finds most kernels in the cache instead of compiling them again beside it. Where memory is short
(a capped CI job, a small board) each kernel is compiled in a process of its own, so LLVM's memory is given back
between kernels (peaks measured in kernels/DESIGN.md).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import subprocess
import sys
import tempfile

from .memory import ALL_KERNELS_PEAK, headroom


@contextlib.contextmanager
def _one_at_a_time():
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    where = os.environ.get("NUMBA_CACHE_DIR") or os.path.dirname(os.path.abspath(__file__))
    key = hashlib.sha256(f"{where}|{os.environ.get('NUMBA_CPU_NAME', '')}".encode()).hexdigest()[:16]
    with open(os.path.join(tempfile.gettempdir(), f"edgegemma-compile-{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(names: list[str]) -> int:
    if names[:1] == [_UNDER_LOCK]:  # a kernel of a compiler that holds the lock
        return _compile(names[1:])
    with _one_at_a_time():
        room = headroom()
        if len(names) > 1 and room is not None and room < ALL_KERNELS_PEAK:
            for name in names:
                done = subprocess.run([sys.executable, "-m", __spec__.name, _UNDER_LOCK, name], stdin=subprocess.DEVNULL)
                if done.returncode != 0:
                    return done.returncode
            return 0
        return _compile(names)


_UNDER_LOCK = "--under-lock"


def _compile(names: list[str]) -> int:
    from . import jit

    for name in names:
        module, _, kernel = name.partition(":")
        jit.compiled(getattr(importlib.import_module(module), kernel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
