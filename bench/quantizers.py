"""What each quantizer costs and gives for one recipe: conversion time, peak RSS, file size, cosine.

    python -m bench.quantizers                            # e4_q8, every quantizer, fresh calibration each
    python -m bench.quantizers --recipe mixed --quantizers search gptq
    python -m bench.quantizers --shared-cache             # calibrated quantizers after the first reuse its statistics

Each conversion runs `python -m edgegemma.converter` in a process of its own (checkpoint from
EDGEGEMMA_HF_MODEL, default ~/.cache/edgegemma/embeddinggemma-300m), with EDGEGEMMA_HOME pointed at a
temporary folder so the calibration statistics are computed as on a first `edgegemma pull` (with
--shared-cache one folder serves the whole run, and the table says which rows found statistics cached).
Peak RSS is the conversion process's own (wait4's ru_maxrss). The file is then loaded in this process
and embeds the reference texts (EDGEGEMMA_REFERENCE) with `encode_document`; cosine is against
sentence-transformers' float32 document embeddings, without the one text that spells special tokens
literally (`<bos>` ...: the reference's tokenizer turns them into control tokens, ours does not), and
with all of them. Run it with `nice`: a GPTQ conversion takes ~10 minutes on two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.workloads import reference_dir, reference_texts

QUANTIZERS = ("ggml", "search", "imatrix", "gptq")
CALIBRATED = ("imatrix", "gptq")  # the quantizers that run the float model over calibration texts
SPECIAL_TOKEN_TEXT = re.compile(r"<(bos|eos|pad|unk|mask|start_of_turn|end_of_turn)>")


def default_checkpoint() -> Path:
    return Path(os.environ.get("EDGEGEMMA_HF_MODEL") or Path.home() / ".cache/edgegemma/embeddinggemma-300m")


def folder_mib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20 if folder.is_dir() else 0.0


def convert(checkpoint: Path, out: Path, recipe: str, quantizer: str, home: Path, log: Path) -> tuple[float, float, float]:
    """Run one conversion in a child process; (wall seconds, CPU seconds, peak RSS MiB). Its progress goes to
    our stderr. CPU time is the steadier figure on a shared machine: wall time grows with the others' load."""
    env = {**os.environ, "EDGEGEMMA_HOME": str(home)}
    cmd = [sys.executable, "-m", "edgegemma.converter", str(checkpoint), "-o", str(out), "--type", recipe,
           "--quantizer", quantizer, "--force"]
    started = time.perf_counter()
    with open(log, "w") as stdout:
        child = subprocess.Popen(cmd, env=env, stdout=stdout)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"bench.quantizers: {' '.join(cmd)} exited with {child.returncode}; its output: {log}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux reports KiB


def cosines(path: Path, texts: list[str], reference: np.ndarray) -> np.ndarray:
    import edgegemma

    emb = edgegemma.load(path).encode_document(texts, batch_size=32)
    return np.sum(emb * reference, axis=1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(reference, axis=1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quantizers", description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="e4_q8")
    p.add_argument("--quantizers", nargs="+", default=list(QUANTIZERS), choices=QUANTIZERS)
    p.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    p.add_argument("--out-dir", type=Path, help="keep the files here (default: a temporary folder, removed)")
    p.add_argument("--shared-cache", action="store_true", help="one calibration cache for the whole run")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args = p.parse_args(argv)

    ref = reference_dir()
    ids, texts, rows = reference_texts(ref)
    reference = np.load(ref / "emb_document_fp32.npy")[rows]
    plain = np.array([SPECIAL_TOKEN_TEXT.search(t) is None for t in texts])

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-quantizers-") as tmp:
        out_dir = args.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for quantizer in args.quantizers:
            home = Path(tmp) / ("home" if args.shared_cache else f"home-{quantizer}")
            cached = quantizer in CALIBRATED and folder_mib(home / "calibration") > 0
            out = out_dir / f"{args.recipe}-{quantizer}.gguf"
            print(f"converting {args.recipe} with {quantizer} ...", file=sys.stderr, flush=True)
            seconds, cpu, rss = convert(args.checkpoint, out, args.recipe, quantizer, home, out_dir / f"{out.stem}.log")
            cos = cosines(out, texts, reference)
            cache_mib = folder_mib(home / "calibration") if quantizer in CALIBRATED else 0.0
            row = {"quantizer": quantizer, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "peak_rss_mib": round(rss),
                   "file_mib": round(out.stat().st_size / 2**20, 1),
                   "calibration_cache_mib": round(cache_mib, 1),
                   "statistics": "cached" if cached else "computed" if cache_mib else "none",
                   "mean_cos": float(cos[plain].mean()), "min_cos": float(cos[plain].min()),
                   "mean_cos_all": float(cos.mean()), "min_cos_all": float(cos.min())}
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.out_dir is None:
                out.unlink()

    n_plain = int(plain.sum())
    print(f"recipe {args.recipe}, checkpoint {args.checkpoint}; cosine vs sentence-transformers fp32, document mode, "
          f"{n_plain} texts without literal special tokens (all {len(texts)} in brackets)")
    print("| quantizer | wall s | CPU s | peak RSS MiB | file MiB | calibration cache MiB | mean cos | min cos |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        cache = f"{r['calibration_cache_mib']:.0f} ({r['statistics']})" if r["statistics"] != "none" else "-"
        print(f"| {r['quantizer']} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['peak_rss_mib']} | {r['file_mib']:.1f} | {cache} | "
              f"{r['mean_cos']:.5f} ({r['mean_cos_all']:.5f}) | {r['min_cos']:.5f} ({r['min_cos_all']:.5f}) |")
    if args.json:
        args.json.write_text(json.dumps({"recipe": args.recipe, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
