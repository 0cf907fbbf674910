"""One system in one fresh process: `python -m bench.worker SPEC.json RESULT.json` (run.py starts these).

In this order: build the system and embed the short query (cold start = the parent's clock at spawn to
the first embedding returned); stop there in "coldstart" mode, or after the warm-up and reference documents in
"prime" mode (run.py's untimed run, which fills the Numba cache with every kernel the workloads take: texts of
each length, batches of each size). Otherwise: the query again `latency_calls`
times (median; at least 5 calls but no more once 30 s have passed), a few documents to warm up, then each workload timed end to end, and the peak RSS of the
whole process (VmHWM), so that every system's memory is measured alone, with its own imports.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _status_mib(*names: str) -> list[float] | None:
    """The named fields of /proc/self/status (kB) in MiB; None where /proc says nothing (not Linux)."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status", encoding="ascii"))
        return [int(fields[name].split()[0]) / 1024 for name in names]
    except (OSError, KeyError):
        return None


def anonymous_mb() -> float | None:
    """This process's resident anonymous memory in MiB (RssAnon: its private data, without the pages of files and
    libraries, which the kernel can drop and read back); None where /proc says nothing."""
    anon = _status_mib("RssAnon")
    return anon[0] if anon else None


def peak_rss_mb() -> tuple[float, float]:
    """(peak, current) resident set of this process in MiB."""
    status = _status_mib("VmHWM", "VmRSS")
    if status:
        return status[0], status[1]
    import resource  # not Linux: ru_maxrss is kB on Linux, bytes on macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak / 2**20 if sys.platform == "darwin" else peak / 1024
    return peak, float("nan")


def main(spec_path: str, result_path: str) -> None:
    spec = json.load(open(spec_path, encoding="utf-8"))
    t_spawn = spec["t_spawn"]
    from .systems import System, build
    from .workloads import QUERY

    system = System(**spec["system"])
    encoder = build(system, spec.get("gguf"), spec.get("hf_model"), spec.get("options", {}))
    t_loaded = time.time()
    first = encoder.query(QUERY)
    t_first = time.time()
    peak, rss = peak_rss_mb()
    result = {"system": system.id, "mode": spec["mode"], "cold_start_s": t_first - t_spawn,
              "load_s": t_loaded - t_spawn, "rss_after_first_mib": rss, "peak_rss_after_first_mib": peak,
              "dim": int(first.shape[-1])}
    if spec["mode"] != "coldstart":
        encoder.settle()
    if spec["mode"] == "prime":
        work = json.load(open(spec["workloads"], encoding="utf-8"))
        encoder.documents(work["warmup"] + work["reference"])
    if spec["mode"] == "full":
        work = json.load(open(spec["workloads"], encoding="utf-8"))
        latencies, budget = [], time.perf_counter() + spec.get("latency_budget_s", 30.0)
        for i in range(spec["latency_calls"]):
            if i >= 5 and time.perf_counter() > budget:  # a slow system: 5 calls or more, not minutes of them
                break
            t0 = time.perf_counter()
            encoder.query(QUERY)
            latencies.append(time.perf_counter() - t0)
        result["latency_s"] = sorted(latencies)[len(latencies) // 2]
        result["latency_all_s"] = latencies
        encoder.documents(work["warmup"])
        result["workloads"] = {}
        for name in ("reference", "synthetic"):
            texts = work[name]
            profiler = None
            if spec.get("profile") and name == "reference":
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            t0 = time.perf_counter()
            emb = encoder.documents(texts)
            seconds = time.perf_counter() - t0
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(spec["profile"])
            result["workloads"][name] = {"seconds": seconds, "texts": len(texts)}
            if name == "reference" and spec.get("save_embeddings"):
                import numpy as np

                np.save(spec["save_embeddings"], np.asarray(emb, np.float32))
        result["peak_rss_mib"], result["rss_end_mib"] = peak_rss_mb()
        result["anon_end_mib"] = anonymous_mb()
    from .profiles import PROFILE_VARIABLES  # after the clocks: which CPU switches this process ran under

    result["cpu_switches"] = {k: os.environ[k] for k in PROFILE_VARIABLES if k in os.environ}
    json.dump(result, open(result_path, "w", encoding="utf-8"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
