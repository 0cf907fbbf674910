"""edgegemma against llama-cpp-python and sentence-transformers, same work, same machine, one run.

    python -m bench.run                                   # everything installed, 3 rounds
    python -m bench.run --quick                           # smoke run: small slices, 1 round
    python -m bench.run --systems edgegemma:q4_0 llama.cpp:q4_0 st --repeats 5
    python -m bench.run --models /tmp/eg --out bench/results/run.json
    python -m bench.run --profile edgegemma:q4_0:numba    # cProfile one system on the reference texts
    python -m bench.run --cpu avx2                        # every system restricted to AVX2 (see bench/profiles.py)

Each system runs in a fresh process per round (its own backend choice, imports and peak RSS); the order
of systems rotates between rounds and each figure is the best over rounds, because this machine is
shared and noisy. See bench/README.md for the columns.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from . import profiles as P
from . import workloads as W
from .systems import LLAMA_QUANTIZED, THREADS, TYPES, System, all_systems, available, child_env, llama_repack_pattern

REPO = W.REPO


# --- inputs -------------------------------------------------------------------------------------

def hf_model_dir() -> Path | None:
    value = os.environ.get("EDGEGEMMA_HF_MODEL")
    folder = Path(value) if value else _home() / "embeddinggemma-300m"
    return folder if (folder / "model.safetensors").is_file() else None


def _home() -> Path:
    value = os.environ.get("EDGEGEMMA_HOME")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "edgegemma"


def model_files(types, folder: Path | None, hf: Path | None) -> dict[str, Path | str]:
    """type -> GGUF path, or the reason it is missing. Missing files are converted from the checkpoint; the
    LLAMA_QUANTIZED ones are made by llama.cpp's quantizer from the f16 file."""
    folder = folder or _home() / "bench-gguf"
    out: dict[str, Path | str] = {}
    for t in types:
        path = folder / f"{t}.gguf"
        if not path.is_file():
            if t in LLAMA_QUANTIZED:
                source = model_files(["f16"], folder, hf)["f16"]
                if not isinstance(source, Path):
                    out[t] = source
                    continue
                why = quantize_with_llama_cpp(source, path, t)
                if why:
                    out[t] = why
                    continue
            elif hf is None:
                out[t] = f"no {path} and no checkpoint to convert (set EDGEGEMMA_HF_MODEL)"
                continue
            else:
                from edgegemma.converter import convert

                folder.mkdir(parents=True, exist_ok=True)
                print(f"converting {hf} -> {path} ({t}) ...", file=sys.stderr, flush=True)
                convert(hf, path, t, report=lambda line: None)
        out[t] = path
    return out


# In a child process, so that a native crash is a skipped row with its message. argv: source, dest, ftype name.
_QUANTIZE = """
import ctypes, sys
import llama_cpp
source, dest, name = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + name)
params.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params)))
"""


def quantize_with_llama_cpp(source: Path, dest: Path, ftype: str) -> str | None:
    """llama.cpp's quantizer (llama-cpp-python's llama_model_quantize) on `source` into `dest`: None, or why not."""
    if available("llama.cpp"):
        return f"llama.cpp's quantizer makes the {ftype} file: {available('llama.cpp')}"
    print(f"quantizing {source} -> {dest} ({ftype}, llama.cpp) ...", file=sys.stderr, flush=True)
    partial = dest.with_suffix(".partial")
    run = subprocess.run([sys.executable, "-c", _QUANTIZE, str(source), str(partial), ftype.upper()],
                         capture_output=True, text=True)
    if run.returncode:
        partial.unlink(missing_ok=True)
        return f"llama.cpp's quantizer failed on {source.name} ({ftype}, exit {run.returncode}): {(run.stderr or '').strip()[-200:]}"
    os.replace(partial, dest)
    return None


def token_counts(gguf: Path, texts: dict[str, list[str]], query: str) -> dict[str, int | list[int]]:
    """Tokens per workload as the model sees them (<bos> + prompt + text + <eos>), by edgegemma's tokenizer."""
    saved = os.environ.get("EDGEGEMMA_BACKEND")
    os.environ["EDGEGEMMA_BACKEND"] = "numpy"  # the parent only tokenizes: no need to load Numba here
    try:
        import edgegemma
    finally:
        if saved is None:
            os.environ.pop("EDGEGEMMA_BACKEND")
        else:
            os.environ["EDGEGEMMA_BACKEND"] = saved
    model = edgegemma.load(gguf)
    counts = {name: [len(ids) for ids in model.tokenize(t, prompt=W.DOCUMENT_PROMPT)] for name, t in texts.items()}
    counts["query"] = len(model.tokenize([query], prompt=W.QUERY_PROMPT)[0])
    return counts


def select(systems: list[System], patterns: list[str] | None) -> list[System]:
    """A pattern is an id, an id prefix up to a colon (`edgegemma:q4_0`, `st`) or a glob (`*:numpy`)."""
    if not patterns:
        return systems
    keep = []
    for s in systems:
        if any(s.id == p or s.id.startswith(p + ":") or fnmatch.fnmatchcase(s.id, p) for p in patterns):
            keep.append(s)
    if not keep:
        raise SystemExit(f"--systems {' '.join(patterns)} matches none of: {', '.join(s.id for s in systems)}")
    return keep


def restrict(systems: list[System], skipped: dict, profile: P.Profile) -> tuple[list[System], dict]:
    """Each system with its profile's switches in its environment; llama.cpp rows whose build the profile cannot hold
    are skipped with the reason. Returns the systems and notes for the report."""
    notes = {"restricted_by": {}, "not_restricted": []}
    if profile.native:
        return systems, notes
    llama_env, llama_note = None, ""
    if any(s.family == "llama.cpp" and not skipped[s.id] for s in systems):
        llama_env, llama_note = P.llama_for(profile)
        if llama_env is None:
            notes["not_restricted"].append(llama_note)
        else:
            notes["restricted_by"]["llama.cpp"] = llama_note
    out = []
    for s in systems:
        if s.family == "llama.cpp":
            if llama_env is None:
                skipped[s.id] = skipped[s.id] or llama_note
                out.append(s)
                continue
            env = llama_env
        else:
            env = P.env_for(profile, s.family)
        out.append(replace(s, env={**s.env, **env}))
    return out, notes


def interleave(systems: list[System]) -> list[System]:
    """Each type's edgegemma rows next to llama.cpp on the same file, then sentence-transformers."""
    rank = {t: i for i, t in enumerate(TYPES)}
    return sorted(systems, key=lambda s: (s.family == "st", rank.get(s.qtype, 0), s.family == "llama.cpp", s.id))


# --- running one child --------------------------------------------------------------------------

class Runner:
    def __init__(self, tmp: Path, files: dict, hf: Path | None, workloads_path: Path, latency_calls: int,
                 timeout: float, verbose: bool, repack: dict):
        self.tmp, self.files, self.hf, self.workloads_path = tmp, files, hf, workloads_path
        self.repack = repack
        self.latency_calls, self.timeout, self.verbose = latency_calls, timeout, verbose
        self.count = 0

    def __call__(self, system: System, mode: str, *, extra_env: dict | None = None, save: Path | None = None,
                 profile: Path | None = None) -> dict:
        self.count += 1
        stem = self.tmp / f"{self.count:03d}-{system.id.replace(':', '_')}-{mode}"
        spec = {"system": {k: v for k, v in system.__dict__.items()}, "mode": mode,
                "gguf": str(self.files[system.qtype]) if system.qtype else None,
                "hf_model": str(self.hf) if self.hf else None, "workloads": str(self.workloads_path),
                "latency_calls": self.latency_calls, "save_embeddings": str(save) if save else None,
                "profile": str(profile) if profile else None,
                "options": {"llama_repack": self.repack.get(system.qtype)} if system.family == "llama.cpp" else {}}
        env = child_env(system)
        env.update(extra_env or {})
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        started = time.perf_counter()
        spec["t_spawn"] = time.time()
        Path(f"{stem}.spec.json").write_text(json.dumps(spec))
        spec["t_spawn"] = time.time()  # written again so that writing the file is not part of the cold start
        Path(f"{stem}.spec.json").write_text(json.dumps(spec))
        with open(f"{stem}.log", "w") as log:
            try:
                proc = subprocess.run([sys.executable, "-m", "bench.worker", f"{stem}.spec.json", f"{stem}.json"],
                                      cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=self.timeout)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        wall = time.perf_counter() - started
        if code != 0 or not Path(f"{stem}.json").is_file():
            tail = Path(f"{stem}.log").read_text(errors="replace").strip().splitlines()[-6:]
            result = {"system": system.id, "mode": mode, "error": f"exit {code}: " + " | ".join(tail)}
        else:
            result = json.loads(Path(f"{stem}.json").read_text())
        result["wall_s"] = wall
        if self.verbose:
            brief = result.get("error") or " ".join(
                f"{k}={v:.2f}" for k, v in result.items() if isinstance(v, float) and k in ("cold_start_s", "latency_s"))
            if "workloads" in result:
                brief += " " + " ".join(f"{n}={w['seconds']:.1f}s" for n, w in result["workloads"].items())
            print(f"  {system.id:24} {mode:9} {wall:7.1f}s  {brief}", file=sys.stderr, flush=True)
        return result


# --- the figures --------------------------------------------------------------------------------

def _best(values, key=max):
    values = [v for v in values if v is not None]
    return key(values) if values else None


def _stop_compilers(cache: str) -> None:
    """End the kernels' background compilers (kernels/warm_start.py) working for this Numba cache folder."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"NUMBA_CACHE_DIR={cache}".encode() in environ.read_bytes().split(b"\0"):
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def summarise(system: System, runs: list[dict], cold: list[dict], tokens: dict) -> dict:
    ok = [r for r in runs if "error" not in r]
    best: dict = {}
    for name in ("reference", "synthetic"):
        secs = [r["workloads"][name]["seconds"] for r in ok if name in r.get("workloads", {})]
        if secs:
            s = min(secs)
            best[name] = {"seconds": s, "tokens_per_s": sum(tokens[name]) / s, "texts_per_s": len(tokens[name]) / s,
                          "all_tokens_per_s": [sum(tokens[name]) / x for x in secs]}
    best["latency_ms"] = _best([r["latency_s"] * 1e3 for r in ok if "latency_s" in r], min)
    best["cold_start_s"] = _best([r["cold_start_s"] for r in ok], min)
    best["cold_start_cold_cache_s"] = _best([r["cold_start_s"] for r in cold if "error" not in r], min)
    best["peak_rss_cold_cache_mib"] = _best([r.get("peak_rss_after_first_mib") for r in cold if "error" not in r], max)
    best["peak_rss_mib"] = _best([r.get("peak_rss_mib") for r in ok], max)
    best["anon_end_mib"] = _best([r.get("anon_end_mib") for r in ok], max)
    return best


def cosines(a, b):
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.sum(a * b, axis=1)
    return {"mean": float(c.mean()), "min": float(c.min())}


def compare(report: dict, peers_for) -> None:
    """Ratios of each edgegemma row to its fastest peer: llama.cpp on the same file, or any sentence-transformers."""
    systems = report["systems"]
    for sid, row in systems.items():
        if row["family"] != "edgegemma" or "best" not in row:
            continue
        peers = [p for p in peers_for(row) if "best" in systems[p]]
        vs = {}
        for name in ("reference", "synthetic"):
            cands = [(systems[p]["best"][name]["tokens_per_s"], p) for p in peers if name in systems[p]["best"]]
            if cands and name in row["best"]:
                tps, peer = max(cands)
                vs[name] = {"peer": peer, "peer_tokens_per_s": tps, "ratio": row["best"][name]["tokens_per_s"] / tps}
        cands = [(systems[p]["best"]["latency_ms"], p) for p in peers if systems[p]["best"].get("latency_ms")]
        if cands and row["best"].get("latency_ms"):
            ms, peer = min(cands)
            vs["latency"] = {"peer": peer, "peer_ms": ms, "ratio": row["best"]["latency_ms"] / ms}
        row["vs_fastest_peer"] = vs


def acceptance(report: dict) -> list[dict]:
    """Issue 5's targets, from this run's figures (numba backend)."""
    systems, checks = report["systems"], []
    for t in ("q8_0", "q4_0"):
        row = systems.get(f"edgegemma:{t}:numba", {})
        for name in ("reference", "synthetic"):
            vs = row.get("vs_fastest_peer", {}).get(name)
            if vs:
                checks.append({"check": f"{t} {name} throughput / fastest peer ({vs['peer']})",
                               "value": round(vs["ratio"], 3), "target": ">= 1.25", "pass": vs["ratio"] >= 1.25})
    row = systems.get("edgegemma:q4_0:numba", {})
    vs = row.get("vs_fastest_peer", {}).get("latency")
    if vs:
        checks.append({"check": f"q4_0 short-query latency / fastest peer ({vs['peer']})", "value": round(vs["ratio"], 3),
                       "target": "<= 1.0", "pass": vs["ratio"] <= 1.0})
    rss = row.get("best", {}).get("peak_rss_mib")
    if rss and row.get("file_mib"):
        checks.append({"check": "q4_0 peak RSS MiB vs file + 100 MB (95.4 MiB)", "value": round(rss, 1),
                       "target": f"<= {row['file_mib'] + 100e6 / 2**20:.1f}", "pass": rss <= row["file_mib"] + 100e6 / 2**20})
    cold = row.get("best", {}).get("cold_start_s")
    if cold:
        checks.append({"check": "q4_0 cold start, warm Numba cache (s)", "value": round(cold, 3), "target": "<= 1.5",
                       "pass": cold <= 1.5})
    return checks


def _f(x, fmt="{:.0f}", none="—"):
    return none if x is None else fmt.format(x)


def table(report: dict) -> str:
    head = ("| system | file MiB | ref tok/s | ref texts/s | ref ×peer | syn tok/s | syn texts/s | syn ×peer "
            "| query ms | ×peer | cold start s (warm / cold cache) | peak RSS MiB (anon at end; cold-cache start) | cos vs reference (mean / min) |")
    lines = [f"CPU profile: {_profile_line(report['meta'])}", "", head, "|" + "---|" * head.count(" | ") + "---|"]
    for sid, row in report["systems"].items():
        if row.get("skipped") or "best" not in row:
            reason = row.get("skipped") or row.get("error", "failed")
            lines.append(f"| {sid} | " + " | ".join([""] * 11) + f" | skipped: {reason[:80]} |")
            continue
        b, vs = row["best"], row.get("vs_fastest_peer", {})
        ratio = lambda k: _f(vs.get(k, {}).get("ratio"), "{:.2f}×")
        wl = lambda k, f: _f(b.get(k, {}).get(f), "{:.0f}" if f == "tokens_per_s" else "{:.1f}")
        cold = _f(b.get("cold_start_s"), "{:.2f}")
        if b.get("cold_start_cold_cache_s") is not None:
            cold += " / " + _f(b["cold_start_cold_cache_s"], "{:.2f}")
        rss = _f(b.get("peak_rss_mib"))
        if b.get("anon_end_mib") is not None:
            rss += " (" + _f(b["anon_end_mib"]) + ")"
        if b.get("peak_rss_cold_cache_mib") is not None:
            rss += "; " + _f(b["peak_rss_cold_cache_mib"])
        cos = row.get("cos_reference")
        lines.append(" | ".join([
            f"| {sid}", _f(row.get("file_mib")), wl("reference", "tokens_per_s"), wl("reference", "texts_per_s"),
            ratio("reference"), wl("synthetic", "tokens_per_s"), wl("synthetic", "texts_per_s"), ratio("synthetic"),
            _f(b.get("latency_ms"), "{:.1f}"), ratio("latency"), cold, rss,
            f"{cos['mean']:.5f} / {cos['min']:.4f}" if cos else "—"]) + " |")
    return "\n".join(lines)


# --- the command --------------------------------------------------------------------------------

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", metavar="PATTERN", help="ids, prefixes (edgegemma:q4_0, st) or globs")
    p.add_argument("--cpu", choices=list(P.PROFILES), default="native",
                   help="CPU profile: every system restricted to the same instruction set (default native: none)")
    p.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES, help="GGUF types (default: all)")
    p.add_argument("--models", type=Path, help="folder with {f32,q8_0,q4_0,mixed,q4_k_m,q5_k_m,q6_k}.gguf (default: "
                                               "converted into $EDGEGEMMA_HOME/bench-gguf from EDGEGEMMA_HF_MODEL; the "
                                               "last three by llama.cpp's quantizer from f16.gguf)")
    p.add_argument("--quick", action="store_true", help="smoke run: 12 reference texts, 8 synthetic, 5 latency calls, 1 round")
    p.add_argument("--repeats", type=int, help="rounds; each figure is the best of them (default 3, --quick 1)")
    p.add_argument("--limit", type=int, help="reference texts to use, spread over the set (default all 205)")
    p.add_argument("--synthetic", type=int, help=f"synthetic documents (default {W.SYNTHETIC_DOCS})")
    p.add_argument("--latency-calls", type=int, help="short-query calls per round, median taken (default 30)")
    p.add_argument("--llama-per-call", type=int, default=8, help="texts per llama.cpp embed() call (default 8)")
    p.add_argument("--no-llama-repack", action="store_true",
                   help="llama.cpp without its repacked Q4_0 weights (AMX stays off either way: SIGILL here)")
    p.add_argument("--batch-size", type=int, default=32, help="edgegemma encode batch_size (default 32)")
    p.add_argument("--no-cold-cache", action="store_true", help="skip the cold-Numba-cache start-up runs")
    p.add_argument("--profile", metavar="SYSTEM", help="cProfile one system on the reference workload, print the top")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    p.add_argument("--out", type=Path, help="JSON output (default bench/results/run-<time>.json)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    profile = P.PROFILES[args.cpu]
    refused = P.refusal(profile)
    if refused:  # a switch only takes instructions away: running native instead would mislabel the table
        raise SystemExit(refused)
    repeats = args.repeats or (1 if args.quick else 3)
    limit = args.limit or (12 if args.quick else None)
    n_synth = args.synthetic if args.synthetic is not None else (8 if args.quick else W.SYNTHETIC_DOCS)
    latency_calls = args.latency_calls or (5 if args.quick else 30)

    ref_dir = W.reference_dir()
    ref_ids, ref_texts, ref_rows = W.reference_texts(ref_dir, limit)
    synth = W.synthetic_texts(n_synth)
    systems = interleave(select(all_systems(args.types, args.llama_per_call, args.batch_size), args.systems
                                if not args.profile else [args.profile]))
    hf = hf_model_dir()
    skipped = {s.id: available(s.family) for s in systems}
    for s in systems:
        if s.family == "st" and not skipped[s.id] and hf is None:
            skipped[s.id] = "no checkpoint folder (set EDGEGEMMA_HF_MODEL)"
    systems, profile_notes = restrict(systems, skipped, profile)
    need = sorted({s.qtype for s in systems if s.qtype and not skipped[s.id]}, key=TYPES.index)
    files = model_files(need, args.models, hf)
    for s in systems:
        if s.qtype and not skipped[s.id] and not isinstance(files.get(s.qtype), Path):
            skipped[s.id] = files[s.qtype]
    paths = [f for f in files.values() if isinstance(f, Path)]
    any_file = paths[0] if paths else next(iter(model_files(["q4_0"], args.models, hf).values()))
    if not isinstance(any_file, Path):
        raise SystemExit(f"no GGUF file to tokenize with: {any_file}")
    tokens = token_counts(any_file, {"reference": ref_texts, "synthetic": synth}, W.QUERY)
    runnable = [s for s in systems if not skipped[s.id]]

    tmp = Path(tempfile.mkdtemp(prefix="edgegemma-bench-"))
    work_file = tmp / "workloads.json"
    work_file.write_text(json.dumps({"reference": ref_texts, "synthetic": synth, "warmup": synth[:2] + ref_texts[:2]}))
    repack = {} if args.no_llama_repack else {
        s.qtype: llama_repack_pattern(files[s.qtype]) for s in runnable if s.family == "llama.cpp"}
    run = Runner(tmp, files, hf, work_file, latency_calls, args.timeout, not args.quiet, repack)
    started, git_start, load_start = time.time(), _git(), _load()

    if args.profile:
        if not runnable:
            raise SystemExit(f"--profile {args.profile}: {skipped}")
        prof = tmp / "profile.pstats"
        result = run(runnable[0], "full", profile=prof)
        if "error" in result:
            raise SystemExit(result["error"])
        stats = pstats.Stats(str(prof))
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
        shutil.rmtree(tmp, ignore_errors=True)
        return result

    def make_report(rounds_done: int) -> dict:
        import numpy as np

        reference = np.load(ref_dir / "emb_document_fp32.npy")[ref_rows]
        report = {
            "meta": {
                "date": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                "duration_s": round(time.time() - started, 1), "host": platform.node(), "machine": _machine(),
                "python": platform.python_version(), "versions": _versions(), "threads": THREADS,
                "repeats": repeats, "rounds_done": rounds_done, "quick": args.quick, "latency_calls": latency_calls,
                "llama_texts_per_call": args.llama_per_call, "edgegemma_batch_size": args.batch_size,
                "llama_repack": repack,
                "cpu_profile": {"name": profile.name, "summary": profile.summary,
                                "restricted_by": {**P.restrictions(profile), **profile_notes["restricted_by"]},
                                "not_restricted": profile_notes["not_restricted"]},
                "method": f"each system in a fresh process per round, order rotated between rounds; best of {rounds_done} "
                          "round(s) for throughput, latency (median of the calls) and cold start; peak RSS the max",
                "load_average_start": load_start, "git": git_start,
            },
            "workloads": {
                "reference": {"folder": str(ref_dir), "texts": len(ref_texts), "tokens": sum(tokens["reference"]),
                              "max_tokens": max(tokens["reference"]), "prompt": W.DOCUMENT_PROMPT},
                "synthetic": {"texts": len(synth), "tokens": sum(tokens["synthetic"]), "seed": W.SYNTHETIC_SEED,
                              "words_per_text": W.SYNTHETIC_WORDS, "prompt": W.DOCUMENT_PROMPT},
                "query": {"text": W.QUERY, "prompt": W.QUERY_PROMPT, "tokens": tokens["query"]},
            },
            "systems": {},
        }
        for s in systems:
            row = {"family": s.family, "qtype": s.qtype, "backend": s.backend, "dtype": s.dtype, "batch": s.batch}
            if s.qtype and isinstance(files.get(s.qtype), Path):
                row["file"], row["file_mib"] = str(files[s.qtype]), files[s.qtype].stat().st_size / 2**20
            elif s.family == "st" and hf:
                row["file"] = str(hf)
                row["file_mib"] = sum(f.stat().st_size for f in hf.rglob("*.safetensors")) / 2**20
            if skipped[s.id]:
                row["skipped"] = skipped[s.id]
            else:
                row["runs"], row["cold_cache_runs"] = list(runs[s.id]), list(cold[s.id])
                errors = [x["error"] for x in runs[s.id] if "error" in x]
                if errors:
                    row["error"] = errors[0]
                if len(errors) < len(runs[s.id]):
                    row["best"] = summarise(s, runs[s.id], cold[s.id], tokens)
                if s.id in saved:
                    emb = np.load(saved[s.id])
                    if emb.shape == reference.shape:  # not for toy models
                        row["cos_reference"] = cosines(emb, reference)
            report["systems"][s.id] = row
        for s in systems:  # llama.cpp against edgegemma on the very same file
            if s.family == "llama.cpp" and s.id in saved:
                for b in ("numba", "numpy"):
                    other = f"edgegemma:{s.qtype}:{b}"
                    if other in saved:
                        report["systems"][s.id]["cos_edgegemma"] = {"against": other,
                                                                    **cosines(np.load(saved[s.id]), np.load(saved[other]))}
                        break

        def peers_for(row):
            return [sid for sid, r in report["systems"].items()
                    if (r["family"] == "llama.cpp" and r["qtype"] == row["qtype"]) or r["family"] == "st"]

        compare(report, peers_for)
        report["acceptance"] = acceptance(report)
        report["meta"]["load_average_end"] = _load()
        report["table"] = table(report)

        return report

    numba = lambda s: s.family == "edgegemma" and s.backend == "numba"
    if not args.quick:  # page every file in once, untimed, so that no system pays for the first read
        for s in runnable:
            if not numba(s):
                run(s, "coldstart")
    runs: dict[str, list] = {s.id: [] for s in runnable}
    cold: dict[str, list] = {s.id: [] for s in runnable}
    saved: dict[str, Path] = {}
    out = args.out or REPO / "bench" / "results" / f"run-{_dt.datetime.fromtimestamp(started):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it like Ctrl-C: rounds done are kept
    report = None
    try:
        for r in range(repeats):
            if not args.quiet:
                print(f"round {r + 1}/{repeats}", file=sys.stderr, flush=True)
            k = (r * max(1, len(runnable) // repeats)) % max(1, len(runnable))
            order = runnable[k:] + runnable[:k]  # each round starts elsewhere: no system always runs first
            for s in order:
                if numba(s):  # untimed: pages the file in and fills the Numba cache (again, if the kernels changed),
                    run(s, "prime")  # long documents' kernels too: a compile in "full" would count in its peak RSS
                save = tmp / f"{s.id.replace(':', '_')}.npy" if s.id not in saved else None
                runs[s.id].append(run(s, "full", save=save))
                if save is not None and save.is_file():
                    saved[s.id] = save
                if numba(s) and not args.no_cold_cache:
                    cache = tempfile.mkdtemp(prefix="numba-cold-", dir=tmp)
                    cold[s.id].append(run(s, "coldstart", extra_env={"NUMBA_CACHE_DIR": cache}))
                    _stop_compilers(cache)  # the background compiler it started must not run beside later systems
                    shutil.rmtree(cache, ignore_errors=True)
            report = make_report(r + 1)  # after every round: a stopped run still leaves its complete rounds
            out.write_text(json.dumps(report, indent=1))
            if not args.quiet and r + 1 < repeats:
                print(f"rounds so far written to {out}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted: reporting the complete rounds only", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        shutil.rmtree(tmp, ignore_errors=True)
    if report is None:
        raise SystemExit("stopped before the first round was complete: nothing to report")

    print(render(report))
    print(f"\nJSON: {out}")
    return report


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def render(report: dict) -> str:
    m, w = report["meta"], report["workloads"]
    g = m.get("git", {})
    lines = [
        f"edgegemma bench, {m['date']} ({m['duration_s'] / 60:.0f} min) on {m['machine']} ({m['threads']} threads every "
        f"system; load average {m['load_average_start']} at start, {m.get('load_average_end')} at end)",
        f"code: commit {g.get('commit', '?')}" + (f" with local changes to {', '.join(g['modified'])}" if g.get("modified") else ""),
        f"work: reference {w['reference']['texts']} texts / {w['reference']['tokens']} tokens (document mode, longest "
        f"{w['reference']['max_tokens']}); synthetic {w['synthetic']['texts']} texts / {w['synthetic']['tokens']} tokens; "
        f"query {w['query']['tokens']} tokens, median of {m['latency_calls']} calls",
        f"CPU profile: {_profile_line(m)}",
        f"method: {m['method']}; ×peer = edgegemma / fastest peer (llama.cpp same file, sentence-transformers any)"
        " — for latency, lower is better",
        "",
        report["table"],
    ]
    agree = [(sid, r["cos_edgegemma"]) for sid, r in report["systems"].items() if r.get("cos_edgegemma")]
    if agree:
        lines += ["", "llama.cpp vs edgegemma on the same file (reference texts, cosine mean / min): " + "; ".join(
            f"{sid} vs {c['against']}: {c['mean']:.6f} / {c['min']:.5f}" for sid, c in agree)]
    fastest = {}
    for sid, r in report["systems"].items():
        for k, v in r.get("vs_fastest_peer", {}).items():
            fastest.setdefault(k, set()).add(v["peer"])
    if fastest:
        lines += ["fastest peers: " + "; ".join(f"{k}: {', '.join(sorted(v))}" for k, v in fastest.items())]
    cpu = m.get("cpu_profile", {})
    if cpu.get("restricted_by"):
        lines += ["", f"restricted to the {cpu['name']} profile by:"] + [f"  {k}: {v}" for k, v in cpu["restricted_by"].items()]
    if cpu.get("not_restricted"):
        lines += ["not restricted:"] + [f"  {note}" for note in cpu["not_restricted"]]
    if report.get("acceptance"):
        lines += ["", f"issue 5 / 25 acceptance (numba backend, {cpu.get('name', 'native')} profile):"]
        lines += [f"  [{'pass' if c['pass'] else 'FAIL'}] {c['check']}: {c['value']} (target {c['target']})"
                  for c in report["acceptance"]]
    return "\n".join(lines)


def _profile_line(meta: dict) -> str:
    cpu = meta.get("cpu_profile") or {"name": "native", "summary": P.PROFILES["native"].summary}
    return f"{cpu['name']} ({cpu['summary']})"


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = next(l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name"))
        have = set(next(l for l in text.splitlines() if l.startswith("flags")).split())
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if f in have)
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores{', ' + flags if flags else ''}"


def _git() -> dict:
    """The commit measured, and which source files differed from it (others may be editing kernels/ meanwhile)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    # (Not `status --porcelain`: its lines start with a space, which the strip above would eat from the first.)
    return {"commit": git("rev-parse", "--short", "HEAD"), "modified": git("diff", "--name-only", "HEAD").splitlines()}


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("edgegemma", "numpy", "numba", "llama_cpp_python", "torch", "sentence-transformers", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
