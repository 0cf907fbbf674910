"""Embed a generated corpus to Parquet with `edgegemma embed`, kill it at random points, resume, and check the result.

    python -m bench.corpus_resume --rows 100000 --kills 3 --folder /tmp/corpus-bench [-m FILE]

1. Writes ROWS short generated sentences (5-12 words, seeded) to FOLDER/texts.parquet (columns id, text).
2. Runs `edgegemma embed --input texts.parquet --id-column id --output resumed.parquet`, kills it with SIGKILL
   KILLS times at random points (each after a random number of rows are done, a random time into the next
   part), and reruns the same command until it finishes.
3. Unless --no-reference (or --reference FILE, an earlier uninterrupted run's output): the same command once,
   uninterrupted, into reference.parquet.
4. Checks that resumed.parquet has every id exactly once and that each vector is within cosine 0.999999 of the
   reference's; prints each run's peak RSS (the process's own, from wait4) and texts/s.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORDS = (
    "the a of to in on for with river mountain city music code data value planet star moon ocean forest garden "
    "house street market train station bridge tower castle school library museum painting song poem story book "
    "letter window door table chair kitchen bread coffee tea apple orange lemon rain snow wind storm summer winter "
    "morning evening night day week year old new small large quiet loud bright dark warm cold fast slow early late "
    "red blue green yellow white black walks runs reads writes builds finds opens closes sings plays cooks paints "
    "teacher doctor farmer pilot child friend neighbour scientist engineer artist student traveller sailor baker "
    "near under over behind across through during after before because while although every each some many few"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))).capitalize() + "." for _ in range(rows)]
    table = pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=10_000)


def command(folder: Path, output: str, model: str | None, part_size: int) -> list[str]:
    cmd = [sys.executable, "-m", "edgegemma", "embed", "--input", str(folder / "texts.parquet"), "--id-column", "id",
           "--output", str(folder / output), "--part-size", str(part_size), "--no-progress"]
    return cmd + (["-m", model] if model else [])


def rows_done(folder: Path, output: str, part_size: int) -> int:
    parts = folder / f"{output}.parts"
    return part_size * sum(1 for p in parts.glob("part-*.npz")) if parts.is_dir() else 0


def run(cmd: list[str], kill_at_rows: int | None, folder: Path, output: str, part_size: int, rng: random.Random):
    """One process: returns (exit status, peak RSS MiB, seconds, killed)."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    killed = False
    if kill_at_rows is not None:
        while process.poll() is None and rows_done(folder, output, part_size) < kill_at_rows:
            time.sleep(0.2)
        if process.poll() is None:
            time.sleep(rng.uniform(0, 5))  # somewhere into the next part (or while it is being written)
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                killed = True
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024, time.perf_counter() - started, killed


def read(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    dim = table.schema.field("embedding").type.list_size
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    return table.column("id").to_numpy(), vectors, meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--part-size", type=int, default=1024)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/corpus-bench"))
    parser.add_argument("-m", "--model", help="GGUF file (default: the default model)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-reference", action="store_true", help="skip the uninterrupted run")
    parser.add_argument("--reference", type=Path, help="compare with this uninterrupted run's output instead of making one")
    args = parser.parse_args()
    folder, rng = args.folder, random.Random(args.seed)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "texts.parquet").is_file():
        generate(folder / "texts.parquet", args.rows)
    report = {"rows": args.rows, "part_size": args.part_size, "runs": []}

    cmd = command(folder, "resumed.parquet", args.model, args.part_size)
    kill_points = sorted(rng.randrange(0, args.rows) for _ in range(args.kills))
    for target in kill_points + [None]:
        code, rss, seconds, killed = run(cmd, target, folder, "resumed.parquet", args.part_size, rng)
        report["runs"].append({"kill_after_rows": target, "killed": killed, "exit": code, "peak_rss_mib": round(rss, 1),
                               "seconds": round(seconds, 1), "rows_done_after": rows_done(folder, "resumed.parquet", args.part_size)})
        print(json.dumps(report["runs"][-1]), flush=True)
    if report["runs"][-1]["exit"] != 0:
        print("the last run failed", file=sys.stderr)
        return 1
    ids, vectors, meta = read(folder / "resumed.parquet")
    report["ids_exactly_once"] = bool(len(ids) == args.rows and np.array_equal(np.sort(ids), np.arange(args.rows)))
    report["metadata"] = meta

    if args.reference or not args.no_reference:
        if not args.reference:
            code, rss, seconds, _ = run(command(folder, "reference.parquet", args.model, args.part_size), None, folder,
                                        "reference.parquet", args.part_size, rng)
            report["reference"] = {"exit": code, "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1),
                                   "texts_per_s": round(args.rows / seconds, 1)}
        ref_ids, ref_vectors, _ = read(args.reference or folder / "reference.parquet")
        order, ref_order = np.argsort(ids), np.argsort(ref_ids)
        a, b = vectors[order].astype(np.float64), ref_vectors[ref_order].astype(np.float64)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        report["cosine_min"] = float(cosine.min())
        report["vectors_equal"] = bool(cosine.min() >= 0.999999)
        report["bitwise_equal_rows"] = int((vectors[order] == ref_vectors[ref_order]).all(axis=1).sum())
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
