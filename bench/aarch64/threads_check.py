"""Which threading layer Numba takes on this machine, whether its parallel loops reach every core, and whether two
Python threads may launch parallel loops at once (the workqueue layer forbids it). Run by bench/aarch64/run.sh.

    python threads_check.py            # the default choice, then each layer asked for by name
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

# One process per layer: Numba picks its layer once, at the first parallel launch. Prints a JSON line.
_PROBE = """
import json, threading
import numpy as np
import numba
from numba import njit, prange

@njit(parallel=True, cache=False)
def spread(n):
    used = np.zeros(numba.get_num_threads(), np.int64)
    for i in prange(n):
        used[numba.get_thread_id()] += 1
    return used

out = {"threads": numba.get_num_threads()}
try:
    used = spread(1 << 16)
except Exception as e:  # the layer asked for cannot load (no libgomp, no tbb)
    print(json.dumps({**out, "error": str(e).splitlines()[0][:200]}))
    raise SystemExit
out["layer"] = numba.threading_layer()
out["threads_that_worked"] = int((used > 0).sum())
print(json.dumps(out), flush=True)
errors = []
def launch():
    try:
        for _ in range(200):
            spread(1 << 12)
    except Exception as e:
        errors.append(str(e)[:200])
pair = [threading.Thread(target=launch) for _ in range(2)]
[t.start() for t in pair]
[t.join() for t in pair]
print(json.dumps({"concurrent": "ok" if not errors else errors[0]}), flush=True)
"""


def probe(layer: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    if layer:
        env["NUMBA_THREADING_LAYER"] = layer
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True)
    result = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    if done.returncode and "layer" in result and "concurrent" not in result:
        # The process died during the two-thread launches: workqueue aborts on concurrent use.
        first = next((line for line in done.stderr.splitlines() if line.strip()), "")
        result["concurrent"] = f"the process aborted (exit {done.returncode}): {first.strip()[:160]}"
    elif done.returncode and "concurrent" not in result and "error" not in result:
        result["error"] = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else ''}"
    return result


def main() -> int:
    print(f"cores: {os.cpu_count()}")
    for layer in (None, "workqueue", "omp", "tbb"):
        r = probe(layer)
        name = layer or "default"
        if "error" in r:
            print(f"{name}: unavailable: {r['error']}")
        else:
            print(f"{name}: layer {r.get('layer')}, {r.get('threads_that_worked')} of {r.get('threads')} threads "
                  f"did work; two Python threads launching at once: {r.get('concurrent')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
