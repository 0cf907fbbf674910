"""The distribution claims one top-level name, `edgegemma`: kernels/ and converter/ install inside it, so nothing
generic (Hugging Face's transformers imports a package called `kernels`) lands at the top of site-packages."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_top_level_package(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    if built.returncode != 0 and "No matching distribution" in built.stderr:
        pytest.skip(f"the build backend cannot be installed here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("edgegemma-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"edgegemma"}, tops
    for module in ("edgegemma/kernels/numba_backend.py", "edgegemma/converter/pipeline.py"):
        assert module in names, f"{module} missing from the wheel"


def test_generic_names_are_not_ours_outside_the_repository(tmp_path):
    """Run from elsewhere, `kernels` and `converter` are whatever else is installed (or nothing), never our folders."""
    code = ("import importlib.util, json; "
            "print(json.dumps({n: getattr(importlib.util.find_spec(n), 'origin', None) for n in ('kernels', 'converter')}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for name, origin in __import__("json").loads(done.stdout).items():
        assert origin is None or not str(origin).startswith(str(ROOT)), f"`import {name}` finds {origin}"
    done = subprocess.run([sys.executable, "-c", "import edgegemma.kernels, edgegemma.converter"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
