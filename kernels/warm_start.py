"""A first vector in seconds when Numba's disk cache is empty (a new machine, a CI job): the numpy kernels answer
while a separate process compiles the Numba kernels into the cache, and the compiled kernels take over at the
first call after it is done.

    prepare(qtypes)        kernels for these weight types: loaded from the cache now if all are there; else
                           compiled by `python -m edgegemma.kernels.compile` in the background (EDGEGEMMA_COMPILE=wait:
                           here and now instead), the numpy kernels bound meanwhile
    when_ready(callback)   callback() once the compiled kernels are bound (at once if they are); a model repacks
                           its weights for them there
    active_backend()       "numba" or "numpy": whose functions the kernels module hands out now

A process, not a thread: compiling holds the GIL for seconds at a time, and a one-shot command (`edgegemma embed`)
can exit while the compiler carries on filling the cache for the next run. The swap happens in a caller's thread,
at the first kernel call after the compiler exits, so nothing compiled runs in a thread of ours in the background.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Callable

from . import numpy_backend

_lock = threading.RLock()
_state = {"active": None, "compiler": None, "pending": [], "callbacks": []}


def _package():
    return sys.modules[__package__]


def active_backend() -> str:
    return "numpy" if _state["active"] == "numpy" else _package().BACKEND


def _names(kernels) -> list[str]:
    return [f"{k.py_func.__module__}:{k.py_func.__name__}" for k in kernels]


def prepare(qtypes) -> None:
    """See the module docstring. Without Numba (the numpy backend) there is nothing to prepare."""
    package = _package()
    if package.BACKEND != "numba":
        return
    from . import jit, numba_backend

    with _lock:
        needed = [k for k in numba_backend.kernels_for(qtypes) if k not in _state["pending"]]
        if os.environ.get("EDGEGEMMA_COMPILE", "").strip().lower() == "wait":
            for kernel in needed:
                jit.compiled(kernel)
            return
        missing = [k for k in needed if not jit.load_cached(k)]
        if not missing:
            return
        _state["pending"] += missing
        if _state["compiler"] is None:
            _start_compiler()
        if _state["active"] != "numpy":
            _state["active"] = "numpy"
            _bind_switching()


def compiler_process(kernels, lower_priority: bool = False) -> subprocess.Popen:
    """A process compiling `kernels` into Numba's disk cache (the same NUMBA_* settings, inherited), in a session of
    its own so that it outlives a one-shot command; at nice 10 with lower_priority."""
    lower = (lambda: os.nice(10)) if lower_priority and hasattr(os, "nice") else None
    return subprocess.Popen([sys.executable, "-m", f"{__package__}.compile", *_names(kernels)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=lower)


def _start_compiler() -> None:
    _state["compiler"] = compiler_process(_state["pending"])


def _bind_switching() -> None:
    """Hand out numpy's functions, each first checking whether the compiler is done (a poll: ~1 us)."""
    def switching(name):
        numpy_function = getattr(numpy_backend, name)

        def call(*args, **kwargs):
            compiler = _state["compiler"]
            if compiler is not None and compiler.poll() is not None:
                _switch()
            if _state["active"] == "numpy":
                return numpy_function(*args, **kwargs)
            return getattr(_package(), name)(*args, **kwargs)  # the compiled kernels, bound by _switch

        call.__name__ = call.__qualname__ = name
        call.__doc__ = numpy_function.__doc__
        return call

    package = _package()
    for name in package._API:
        value = getattr(numpy_backend, name)
        setattr(package, name, switching(name) if callable(value) else value)


def _switch() -> None:
    """The compiler has exited: load what it compiled and bind the compiled kernels; a kernel it did not leave in the
    cache (it failed or was killed) keeps the numpy functions bound, and a new compiler is started for it."""
    from . import jit, numba_backend

    with _lock:
        compiler = _state["compiler"]
        if compiler is None or compiler.poll() is None:
            return
        _state["compiler"] = None
        missing = [k for k in _state["pending"] if not jit.load_cached(k)]
        _state["pending"] = missing
        if missing:
            if compiler.returncode == 0:  # it said it compiled them, yet they are not in the cache: no cache here
                for kernel in missing:
                    jit.compiled(kernel)
                _state["pending"] = []
            else:
                _start_compiler()
                return
        _state["active"] = None
        _package()._bind(numba_backend)
        callbacks, _state["callbacks"] = _state["callbacks"], []
    for callback in callbacks:
        callback()


def when_ready(callback: Callable[[], None]) -> None:
    """callback() once the compiled kernels are the ones handed out: now if they already are."""
    with _lock:
        if _state["active"] == "numpy":
            _state["callbacks"].append(callback)
            return
    callback()
