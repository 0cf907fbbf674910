"""kernels.prepare: a first vector without waiting for Numba, the compiled kernels taking over once the numpy ones
have cost what loading them costs (and, with an empty cache, once a background process has filled Numba's disk
cache), and a later process compiling nothing.

Each case is a new Python process with its own NUMBA_CACHE_DIR, as a fresh machine or CI job has.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edgegemma import kernels

pytestmark = pytest.mark.skipif(kernels.BACKEND != "numba" or os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"),
                                reason="needs Numba compiling: the numpy backend has nothing to prepare")

PROBE = """
    import json, sys, time
    import edgegemma
    from edgegemma import kernels
    model = edgegemma.load(sys.argv[1])
    first = model.encode_query("Which planet is known as the Red Planet?")
    report = {"after_load": kernels.active_backend(), "numba_imported": "numba" in sys.modules}
    deadline = time.monotonic() + float(sys.argv[2])
    while kernels.active_backend() != "numba" and time.monotonic() < deadline:
        time.sleep(0.5)
        model.encode_query("poll")  # the swap happens at a kernel call
    last = model.encode_query("Which planet is known as the Red Planet?")
    import numba
    misses = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("edgegemma.kernels."):
            for value in vars(module).values():
                if isinstance(value, numba.core.registry.CPUDispatcher):
                    misses += sum(value.stats.cache_misses.values())
    report.update(final=kernels.active_backend(), cosine=float(first @ last), misses=misses)
    print(json.dumps(report))
"""


def run(model_path, cache_dir, wait_seconds, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("EDGEGEMMA_COMPILE", "EDGEGEMMA_BACKEND")}
    full.update(NUMBA_CACHE_DIR=str(cache_dir), **env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE), str(model_path), str(wait_seconds)],
                          env=full, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_for_compilers(cache_dir, timeout=900):
    """The compiler a probe left running fills the cache after the probe exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "edgegemma.kernels.compile"], capture_output=True, text=True).stdout.split()
        if not any(str(cache_dir) in open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
                   for pid in found if os.path.exists(f"/proc/{pid}/environ")):
            return
        time.sleep(1)
    pytest.fail(f"the background compiler for {cache_dir} did not finish in {timeout} s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the compiler process through /proc")
def test_cold_cache_answers_at_once_and_the_compiled_kernels_take_over(tiny_gguf, tmp_path):
    path = tiny_gguf("q4_0")
    cold = run(path, tmp_path, 900)
    assert cold["after_load"] == "numpy", cold  # nothing in the cache: numpy answered the first call
    assert cold["final"] == "numba", cold  # the compiler's kernels took over, in the same process
    assert cold["cosine"] >= 0.99999, cold  # and give the same vector
    wait_for_compilers(tmp_path)
    warm = run(path, tmp_path, 900)
    assert warm == {**warm, "final": "numba", "misses": 0}, warm  # a later process compiles nothing
    assert warm["cosine"] >= 0.99999, warm


def test_a_short_job_never_loads_numba(tiny_gguf, tmp_path):
    report = run(tiny_gguf("q4_0"), tmp_path, 0)  # one short query, then no waiting for the compiled kernels
    assert report["after_load"] == "numpy" and not report["numba_imported"], report


def test_compile_wait_compiles_before_the_first_call(tiny_gguf, tmp_path):
    report = run(tiny_gguf("q8_0"), tmp_path, 0, EDGEGEMMA_COMPILE="wait")
    assert report["after_load"] == "numba" and report["final"] == "numba", report
