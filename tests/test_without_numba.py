"""Pyodide has no Numba: edgegemma must import and give the same answers without it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent

BLOCK_NUMBA = """
import importlib.abc, sys
class _NoNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba is blocked for this test (as on Pyodide)")
sys.meta_path.insert(0, _NoNumba())
"""


@pytest.mark.skipif(os.environ.get("EDGEGEMMA_INNER_RUN") == "1", reason="already inside the Numba-less run")
def test_tiny_model_suite_passes_without_numba(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_NUMBA)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
               EDGEGEMMA_INNER_RUN="1")
    env.pop("EDGEGEMMA_BACKEND", None)
    probe = subprocess.run([sys.executable, "-c", "from edgegemma import kernels; print(kernels.BACKEND)"],
                           env=env, capture_output=True, text=True, cwd=HERE.parent)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "numpy"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(HERE / "test_model.py"), str(HERE / "test_api.py")],
                         env=env, capture_output=True, text=True, cwd=HERE.parent)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
