"""A first vector in a fraction of a second whatever the state of Numba's disk cache: the numpy kernels answer
first, and the compiled ones take over once they are worth their cost.

    install()              at import: numpy's functions, behind wrappers that bind the compiled ones when due
    prepare(qtypes)        a model with these weight types will call the kernels: the compiled ones are loaded (with
                           Numba itself) once the numpy ones have spent LOAD_COST seconds of the calling threads'
                           CPU time, the cost of loading them,
                           so a short job never pays it; those not in Numba's disk cache are then compiled by
                           `python -m edgegemma.kernels.compile` in a process of its own while numpy answers on.
                           now=True: load them at once; EDGEGEMMA_COMPILE=wait: compile them here and now
    when_ready(callback)   callback() once the compiled kernels are bound (at once if they are); a model repacks
                           its weights for them there
    active_backend()       "numba" or "numpy": whose functions the kernels module hands out now

Code that calls a kernel without prepare gets the compiled kernels at that first call (Numba imported, and each
kernel compiled or loaded on first use), so the converter's results never depend on timing.

Why the numpy kernels first: importing Numba and loading a model's kernels from its cache takes longer than a short
query on the numpy kernels (kernels/DESIGN.md), and a thread loading them beside a query slows the query down more
than it saves (both hold the GIL); so, as in renting versus buying, numpy runs until it has cost what loading
costs, which bounds any job's overhead to twice the best choice made in hindsight. Compiling runs in a process:
it holds the GIL for seconds at a time, and a one-shot command (`edgegemma embed`) may exit while the compiler
carries on filling the cache for the next run. Every swap happens in a caller's thread, at a kernel call. Where
memory is too short for a compiler beside this process (a capped CI job), it starts when this process exits, and
the numpy kernels serve this one throughout.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
from typing import Callable

from . import numpy_backend
from .memory import ONE_KERNEL_PEAK, headroom

LOAD_COST = 0.5  # seconds: Numba's import and a model's ~20 kernels from its cache (kernels/DESIGN.md)

_lock = threading.RLock()
_state = {"active": "numpy", "qtypes": None, "spent": 0.0, "compiler": None, "pending": [], "callbacks": []}


def _package():
    return sys.modules[__package__]


def active_backend() -> str:
    return _state["active"]


def _names(kernels) -> list[str]:
    return [f"{k.py_func.__module__}:{k.py_func.__name__}" for k in kernels]


def _compiled_backend():
    """The numba backend, imported on first need; None where Numba cannot be imported and nobody asked for it by
    name: then the numpy kernels stay, for good."""
    try:
        from . import numba_backend
    except ImportError as err:
        if os.environ.get("EDGEGEMMA_BACKEND", "").strip().lower() == "numba":
            raise ImportError(f"EDGEGEMMA_BACKEND=numba but Numba cannot be imported ({err}); pip install numba") from err
        return None
    return numba_backend


def install() -> None:
    """Where the numba backend is chosen, hand out numpy's functions until the compiled ones are bound."""
    if _package().BACKEND == "numba":
        _bind_switching()


def prepare(qtypes, now: bool = False) -> None:
    """See the module docstring. Without Numba (the numpy backend) there is nothing to prepare."""
    if _package().BACKEND != "numba":
        return
    wait = os.environ.get("EDGEGEMMA_COMPILE", "").strip().lower() == "wait"
    with _lock:
        qtypes = frozenset(int(t) for t in qtypes) | (_state["qtypes"] or frozenset())
        _state["qtypes"] = qtypes
        if wait:
            from . import jit

            backend = _compiled_backend()
            for kernel in backend.kernels_for(qtypes) if backend is not None else ():
                jit.compiled(kernel)
        if _state["active"] == "numba":  # a second model: Numba is loaded, so this is quick
            _load_or_start_compiler(_compiled_backend(), qtypes)
        elif now or wait:
            _switch(now=True)


def _load_or_start_compiler(backend, qtypes) -> bool:
    """Load the kernels `qtypes` need from the disk cache: whether all were there. Those that are not go to a
    compiler process, and the numpy kernels answer until it is done. Holds _lock."""
    from . import jit

    missing = [k for k in backend.kernels_for(qtypes) if k not in _state["pending"] and not jit.load_cached(k)]
    if not missing:
        return not _state["pending"]
    _state["pending"] += missing
    if _state["compiler"] is None:
        _start_compiler()
    if _state["active"] == "numba":
        _state["active"] = "numpy"
        _bind_switching()
    return False


def compiler_process(kernels, lower_priority: bool = False) -> subprocess.Popen:
    """A process compiling `kernels` into Numba's disk cache (the same NUMBA_* settings, inherited), in a session of
    its own so that it outlives a one-shot command; at nice 10 with lower_priority."""
    lower = (lambda: os.nice(10)) if lower_priority and hasattr(os, "nice") else None
    return subprocess.Popen([sys.executable, "-m", f"{__package__}.compile", *_names(kernels)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=lower)


class _AtExit:
    """A compiler that starts when this process exits: beside it, there is not memory enough for one."""

    def __init__(self, kernels):
        atexit.register(lambda: compiler_process(kernels))

    def poll(self):
        return None  # never done while this process lives


def _start_compiler() -> None:
    room = headroom()
    start = _AtExit if room is not None and room < ONE_KERNEL_PEAK else compiler_process
    _state["compiler"] = start(list(_state["pending"]))


def _due() -> bool:
    """Whether to try binding the compiled kernels at this call: nobody prepared (bind at the first call), or the
    numpy kernels have cost what loading costs; never while a compiler is still at work."""
    compiler = _state["compiler"]
    if compiler is not None:
        return compiler.poll() is not None
    return _state["qtypes"] is None or _state["spent"] >= LOAD_COST


def _bind_switching() -> None:
    """Hand out numpy's functions, each first checking whether the compiled kernels are due (~1 us)."""
    def switching(name):
        numpy_function = getattr(numpy_backend, name)

        def call(*args, **kwargs):
            if _state["active"] == "numpy" and _due():
                _switch()
            function = getattr(_package(), name)  # the compiled kernel once _switch bound it
            if function is not call:
                return function(*args, **kwargs)
            # CPU time of the calling thread, not wall time: on a busy machine a 0.2 s query can take a second of
            # wall time, and Numba would then load mid-query (loading it costs CPU time much as the kernels do).
            start = time.thread_time()
            try:
                return numpy_function(*args, **kwargs)
            finally:
                _state["spent"] += time.thread_time() - start

        call.__name__ = call.__qualname__ = name
        call.__doc__ = numpy_function.__doc__
        return call

    package = _package()
    for name in package._API:
        value = getattr(numpy_backend, name)
        setattr(package, name, switching(name) if callable(value) else value)


def _switch(now: bool = False) -> None:
    """Bind the compiled kernels if they can be (and are due, unless `now`): those prepared are loaded from the cache
    (what a finished compiler left there included); any missing go to a compiler process, and numpy's functions
    stay bound meanwhile."""
    with _lock:
        if _state["active"] == _package().BACKEND or not (now or _due()):
            return
        backend = _compiled_backend()
        if backend is None:  # Numba would not import: the numpy kernels for good
            _package().BACKEND = "numpy"
            backend = numpy_backend
        elif _state["compiler"] is not None:
            compiler, _state["compiler"] = _state["compiler"], None
            pending, _state["pending"] = _state["pending"], []
            from . import jit

            missing = [k for k in pending if not jit.load_cached(k)]
            if missing and compiler.returncode != 0:  # it failed or was killed: once more
                _state["pending"] = missing
                _start_compiler()
                return
            for kernel in missing:  # it said it compiled them, yet they are not in the cache: no cache here
                jit.compiled(kernel)
        elif _state["qtypes"] is not None and not _load_or_start_compiler(backend, _state["qtypes"]):
            return
        if backend is not numpy_backend:
            from . import compiler_pages

            compiler_pages.release()  # kernels loaded from the cache leave LLVM's pages resident too
        _state["active"] = _package().BACKEND
        _package()._bind(backend)
        callbacks, _state["callbacks"] = _state["callbacks"], []
    for callback in callbacks:
        callback()


def when_ready(callback: Callable[[], None]) -> None:
    """callback() once the compiled kernels are the ones handed out: now if they already are."""
    with _lock:
        if _state["active"] != _package().BACKEND:
            _state["callbacks"].append(callback)
            return
    callback()
