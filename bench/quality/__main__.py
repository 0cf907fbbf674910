"""python -m bench.quality --models DIR [--recipes f32 q8_0 ...] [--dims 768 256]: one table, loss vs F32."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .metrics import logreg_accuracy, ndcg_at_10, spearman_pairs
from .tasks import TASKS, Task

RECIPES = ("f32", "q8_0", "e4_q8", "mixed", "q4_0")


def score(task: Task, emb: dict[str, np.ndarray]) -> float:
    if task.name in ("qa-retrieval", "code-retrieval"):
        return ndcg_at_10(emb["queries"], emb["corpus"], task.gold["relevant"])
    if task.name == "lee-sts":
        return spearman_pairs(emb["docs"], task.gold["scores"])
    return logreg_accuracy(emb["texts"], task.gold["labels"])


def embed(model, path: Path, task: Task, cache: Path) -> dict[str, np.ndarray]:
    """768-d embeddings per group, cached by file (size, mtime) and texts."""
    out = {}
    for group, texts in task.texts.items():
        st = path.stat()
        key = hashlib.sha256(json.dumps([str(path.resolve()), st.st_size, st.st_mtime_ns, task.prompts[group], texts]).encode()).hexdigest()[:20]
        f = cache / f"{key}.npy"
        if f.is_file():
            out[group] = np.load(f)
            continue
        out[group] = model.encode(texts, prompt_name=task.prompts[group], batch_size=16)
        np.save(f, out[group])
    return out


def truncate(e: np.ndarray, dim: int) -> np.ndarray:
    e = e[:, :dim]
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    p.add_argument("--models", required=True, help="folder with <recipe>.gguf files (f32.gguf is the baseline)")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES))
    p.add_argument("--dims", nargs="+", type=int, default=[768, 256])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "edgegemma-quality-cache"))
    p.add_argument("--json", help="also write the scores here")
    args = p.parse_args(argv)

    import edgegemma

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    tasks = {name: TASKS[name]() for name in args.tasks}
    scores: dict[tuple[str, str, int], float] = {}
    for recipe in args.recipes:
        path = Path(args.models) / f"{recipe}.gguf"
        if not path.is_file():
            print(f"skip {recipe}: no {path}", file=sys.stderr)
            continue
        model = edgegemma.load(path)
        for name, task in tasks.items():
            started = time.perf_counter()
            emb = embed(model, path, task, cache)
            for dim in args.dims:
                scores[(recipe, name, dim)] = 100 * score(task, {g: truncate(e, dim) for g, e in emb.items()})
            print(f"{recipe:>6} {name:<15} {time.perf_counter() - started:6.1f} s", file=sys.stderr)

    sizes = ", ".join(f"{n} {sum(map(len, t.texts.values()))} texts" for n, t in tasks.items())
    print(f"\nquality suite ({sizes}); score ×100, loss = F32 − recipe\n")
    header = "| recipe | dim | " + " | ".join(f"{n} ({tasks[n].metric})" for n in tasks) + " | mean loss |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for recipe in args.recipes:
        for dim in args.dims:
            if (recipe, next(iter(tasks)), dim) not in scores:
                continue
            cells, losses = [], []
            for n in tasks:
                s = scores[(recipe, n, dim)]
                base = scores.get(("f32", n, dim))
                if base is None or recipe == "f32":
                    cells.append(f"{s:.2f}")
                else:
                    losses.append(base - s)
                    cells.append(f"{s:.2f} ({base - s:+.2f})")
            mean = f"{np.mean(losses):+.2f}" if losses else ""
            print(f"| {recipe} | {dim} | " + " | ".join(cells) + f" | {mean} |")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{r}/{n}/{d}": v for (r, n, d), v in scores.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
