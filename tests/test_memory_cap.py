"""A memory-capped CI runner (issue 28): the q4_0 file embeds a long text and a batch under a 256 MiB cgroup cap,
with an empty Numba cache and then with the cache that run left. With the cache empty the compiler must not
break the cap either: beside the process it would not fit, so it starts when the process exits, and its kernels
serve the next one."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import edgegemma

CAP = 256 << 20

PROBE = """
    import json, sys
    import numpy as np
    import edgegemma
    from edgegemma import kernels
    model = edgegemma.load(sys.argv[1])
    query = model.encode_query("Which planet is known as the Red Planet?")
    documents = model.encode_document(json.loads(sys.argv[2]), batch_size=8)
    print(json.dumps({"query": query.tolist(), "documents": documents.tolist(), "backend": kernels.active_backend()}))
"""


def texts() -> list[str]:
    rng = np.random.default_rng(28)
    words = "the of and a to in is was for on that with as by at from it an were which this has had".split()
    return [" ".join(rng.choice(words, size=n)) for n in (1900, 5, 40, 120, 300, 700)]


_groups = itertools.count()


def memory_cgroup(limit: int) -> Path | None:
    """A cgroup-v1 memory child of our own cgroup capped at `limit`, or None where we may not make one."""
    if not sys.platform.startswith("linux"):
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            group = Path(f"/sys/fs/cgroup/memory{path}") / f"edgegemma-test-{os.getpid()}-{next(_groups)}"
            try:
                group.mkdir()
                (group / "memory.limit_in_bytes").write_text(str(limit))
            except OSError:
                return None
            return group
    return None


def run_capped(group: Path, model_path: Path, cache_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEGEMMA_COMPILE", "EDGEGEMMA_BACKEND")}
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    enter = lambda: (group / "cgroup.procs").write_text(str(os.getpid()))  # noqa: E731
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE), str(model_path), json.dumps(texts())],
                          env=env, capture_output=True, text=True, timeout=1800, preexec_fn=enter)
    assert done.returncode == 0, f"exit {done.returncode} under a {CAP >> 20} MiB cap: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_until_empty(group: Path, timeout: float = 1800) -> None:
    """The compiler a run leaves behind works on in the cgroup after the run exits."""
    deadline = time.monotonic() + timeout
    while (group / "cgroup.procs").read_text().strip():
        if time.monotonic() > deadline:
            pytest.fail(f"the compiler left in {group} did not finish in {timeout} s")
        time.sleep(1)


def oom_kills(group: Path) -> int:
    for line in (group / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"), reason="needs Numba compiling")
def test_q4_0_cold_and_warm_under_256_mib(real_gguf, tmp_path):
    path = real_gguf("q4_0")
    group = memory_cgroup(CAP)
    if group is None:
        pytest.skip("cannot make a cgroup-v1 memory group here (needs Linux, root and the v1 memory controller)")
    try:
        expected = edgegemma.load(path)
        query = expected.encode_query("Which planet is known as the Red Planet?")
        documents = expected.encode_document(texts(), batch_size=8)
        for state in ("cold", "warm"):
            got = run_capped(group, path, tmp_path / "numba-cache")
            assert float(query @ np.asarray(got["query"])) >= 0.99999, state
            cosines = np.sum(documents * np.asarray(got["documents"]), axis=1)
            assert cosines.min() >= 0.99999, (state, cosines)
            wait_until_empty(group)
            assert oom_kills(group) == 0, f"{state}: the OOM killer ran under the cap"
        assert got["backend"] == "numba", got["backend"]  # the compiler the cold run left filled the cache
    finally:
        wait_until_empty(group, timeout=60)
        group.rmdir()
