"""How much memory this process may still take: the tighter of the cgroup's cap (v1 or v2; a container or a CI
job's limit) and the machine's MemAvailable. The compiler uses it to stay inside the budget the kernels run in.

    headroom()   bytes still free for this process, or None where neither can be read (not Linux)
"""
from __future__ import annotations

MiB = 1 << 20
ONE_KERNEL_PEAK = 240 * MiB  # a process compiling its largest kernel (210 MiB measured), with a margin
ALL_KERNELS_PEAK = 360 * MiB  # one process compiling a model's kernels one after another (320 MiB measured)

_UNLIMITED = 1 << 60


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _stat(text: str) -> dict[str, int]:
    pairs = (line.split() for line in text.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _cgroup_headroom() -> int | None:
    """Cap minus what cannot be reclaimed: anonymous memory and mapped file pages (the page cache of files no
    longer mapped is given back under pressure, so it does not count)."""
    groups = _read("/proc/self/cgroup") or ""
    for line in groups.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base = f"/sys/fs/cgroup{path}"
            cap, stat = _read(f"{base}/memory.max"), _read(f"{base}/memory.stat")
            if cap and stat and cap.strip() != "max":
                s = _stat(stat)
                return int(cap) - s.get("anon", 0) - s.get("file_mapped", 0)
        elif "memory" in controllers.split(","):  # v1
            base = f"/sys/fs/cgroup/memory{path}"
            cap, stat = _read(f"{base}/memory.limit_in_bytes"), _read(f"{base}/memory.stat")
            if cap and stat and int(cap) < _UNLIMITED:
                s = _stat(stat)
                return int(cap) - s.get("total_rss", 0) - s.get("total_mapped_file", 0)
    return None


def _available() -> int | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def headroom() -> int | None:
    found = [value for value in (_cgroup_headroom(), _available()) if value is not None]
    return min(found) if found else None

