"""How the kernels are compiled and launched: explicit signatures, compiled (or loaded from Numba's disk cache) on
first use only, and the two launch patterns every parallel kernel follows.

    jit(signature, calls=())    numba.njit with cache=True, nogil, numpy's division rules; signature declared
    inner()                     a function only compiled code calls (compiled into its callers)
    compiled(kernel)            the kernel with its declared signature compiled, once
    load_cached(kernel)         the same from Numba's disk cache only: whether it was there
    launch(worker, parallel, threads, *args)        a task-claiming kernel on `threads` threads
    split(rows, parallel, n, per_task, *args)       a row-range kernel, over rows in parallel when there are enough
"""
from __future__ import annotations

import sys

import numba
import numpy as np
from numba import types
from numba.core.compiler_lock import global_compiler_lock

from . import compiler_pages

_cache_ok = True  # False once Numba found no writable cache folder: compile without the disk cache


def jit(signature, calls=(), **options):
    """numba.njit(cache=True) with a declared signature, compiled by `compiled` the first time Python calls it, so a
    process loads only the kernels its model uses. `calls`: kernels with signatures this one calls; they are
    compiled first through theirs, because a kernel compiled only as a callee is missed in the disk cache when
    Python later calls it directly (a compile in every new process)."""

    def wrap(func):
        global _cache_ok
        options.setdefault("nogil", True)
        options.setdefault("error_model", "numpy")  # x / 0 is inf: a check would stop LLVM vectorizing
        kernel = None
        if _cache_ok:
            try:
                kernel = numba.njit(cache=True, **options)(func)
            except RuntimeError:  # "cannot cache function ...: no locator available": read-only install, no home
                _cache_ok = False
        if kernel is None:
            kernel = numba.njit(**options)(func)
        if signature is not None and not numba.config.DISABLE_JIT:
            kernel._declared = signature
            kernel._calls = calls
        return kernel

    return wrap


def inner(**options):
    """jit without a signature, for functions only compiled code calls: typed from, and cached inside, their callers."""
    return jit(None, **options)


def cache_enabled() -> bool:
    """Whether compiled kernels go to (and come from) Numba's disk cache in this process."""
    return _cache_ok


_target_loaded = False


def _load_target():
    """Load Numba's CPU target once, hiding scipy's BLAS while it does: Numba imports scipy.linalg.cython_blas then
    (for np.correlate), which loads 17 MiB of OpenBLAS and LAPACK that no kernel here calls."""
    global _target_loaded
    if _target_loaded:
        return
    _target_loaded = True
    blas = "scipy.linalg.cython_blas"
    if blas in sys.modules:
        return
    sys.modules[blas] = None  # "import scipy.linalg.cython_blas" raises ImportError
    try:
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
    finally:
        if sys.modules.get(blas, False) is None:
            del sys.modules[blas]


def _compile_declared(kernel) -> bool:
    """Compile `kernel`'s declared signature and its callees' if not done; whether anything was."""
    declared = getattr(kernel, "_declared", None)
    if declared is None:
        return False
    _load_target()
    for callee in kernel._calls:
        _compile_declared(callee)
    kernel.compile(declared)
    kernel.disable_compile()  # a call with other types is an error, not a silent second compile
    kernel._declared = None
    return True


def load_cached(kernel) -> bool:
    """Make `kernel` ready without compiling: whether it was compiled already, or its declared signature (and its
    callees') could be loaded from Numba's disk cache now (~10 ms a kernel)."""
    declared = getattr(kernel, "_declared", None)
    if declared is None:
        return True
    _load_target()
    if not all([load_cached(callee) for callee in kernel._calls]):
        return False
    with global_compiler_lock:
        cres = kernel._cache.load_overload(declared, kernel.targetctx)
        if cres is None:
            return False
        kernel.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])  # as Dispatcher.compile
        kernel.add_overload(cres)
    kernel.disable_compile()
    kernel._declared = None
    return True


def compiled(kernel):
    """`kernel` with its declared signature compiled, once; then the compiler's memory leaves the resident set."""
    if _compile_declared(kernel):
        compiler_pages.release()
    return kernel


def threads_for(n_tasks: int) -> int:
    """Threads worth starting for n_tasks tasks."""
    return max(1, min(numba.get_num_threads(), n_tasks))


def launch(worker, parallel, threads: int, *args) -> None:
    """Run a task-claiming kernel: worker(*args, counter) claims tasks from counter until none are left, and
    parallel(*args, threads) runs `threads` workers sharing one counter. One thread: the worker alone, no pool."""
    if threads > 1:
        compiled(parallel)(*args, threads)
    else:
        compiled(worker)(*args, np.zeros(1, np.int64))


def split(rows_kernel, parallel, n: int, per_task: int, *args) -> None:
    """Run rows_kernel(*args, r0, r1) over rows [0, n): in parallel tasks of per_task rows through
    parallel(*args, per_task) when there are at least two tasks and threads, else in one call."""
    if n >= 2 * per_task and numba.get_num_threads() > 1:
        compiled(parallel)(*args, per_task)
    else:
        compiled(rows_kernel)(*args, 0, n)


def aligned(shape, dtype, alignment: int = 64) -> np.ndarray:
    """np.empty(shape, dtype) starting on a cache line (numpy's large arrays start 16 bytes past a page, so 32-byte
    loads from them split across cache lines one time in two)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def read_only(a: np.ndarray) -> np.ndarray:
    """`a` as the kernels' read-only array type (weights from a file already are; a tuple of them must be one type)."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


FAST = {"reassoc", "contract"}  # sums may be reordered (vectorized), a*b+c fused: the float32 error bound holds

u8_row = types.Array(types.uint8, 1, "C", readonly=True)  # one stored weight row
u8_rows = types.Array(types.uint8, 2, "C", readonly=True)  # a stored weight: memory-mapped, read-only
f32_row = types.float32[::1]
f32_rows = types.float32[:, ::1]
f32_rows_ro = types.Array(types.float32, 2, "C", readonly=True)
f32_vec_ro = types.Array(types.float32, 1, "C", readonly=True)
f32_3d = types.float32[:, :, ::1]
f32_3d_ro = types.Array(types.float32, 3, "C", readonly=True)
i64_vec = types.Array(types.int64, 1, "C", readonly=True)
i64_counter = types.int64[::1]
