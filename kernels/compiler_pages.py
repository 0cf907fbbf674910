"""Keep LLVM out of the resident set while no kernel is compiling.

Numba compiles with LLVM, linked into libllvmlite.so. Importing it runs LLVM's static initialisers, and loading
the first kernel from the disk cache builds LLVM's code generator: together they fault in ~69 MiB of the library
(the kernel maps 64 KiB around each page touched), a quarter of a q4_0 process after its first query, for code
that runs again only when another kernel compiles or loads. `release()`, called once a kernel is ready, drops
those pages from this process:
- mappings with no private (modified) page, the machine code: MADV_DONTNEED unmaps them; they stay in the page
  cache, so the next compile faults back what it runs without reading the disk;
- the others (read-only data, with the pages the loader relocated): MADV_PAGEOUT, which reclaims only clean
  pages and keeps the modified ones (DONTNEED would lose those).
On other systems, or where madvise refuses, nothing changes.
"""
from __future__ import annotations

import ctypes
import sys

LIBRARY = "libllvmlite"
MADV_DONTNEED, MADV_PAGEOUT = 4, 21

_mappings: list[tuple[int, int, int]] | None = None  # (start, length, advice) per mapping, found once
_madvise = None


def _read_only_mappings(name: str) -> list[tuple[int, int, int]]:
    """The read-only mappings of the library `name`, each with the advice that drops its pages safely."""
    found, current = [], None
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields:
                continue
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header: range perms offset dev inode path
                current = None
                if len(fields) >= 6 and fields[1] in ("r-xp", "r--p") and name in fields[5]:
                    start, end = (int(v, 16) for v in fields[0].split("-"))
                    current = (start, end - start)
            elif current and fields[0] == "Anonymous:":  # kB of pages copied on write
                found.append(current + (MADV_DONTNEED if fields[1] == "0" else MADV_PAGEOUT,))
                current = None
    return found


def release() -> None:
    """Drop LLVM's pages from this process's resident set (Linux; elsewhere nothing)."""
    global _mappings, _madvise
    if not sys.platform.startswith("linux"):
        return
    try:
        if _mappings is None:
            _mappings = _read_only_mappings(LIBRARY)
            _madvise = ctypes.CDLL(None, use_errno=True).madvise
            _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        for start, length, advice in _mappings:
            _madvise(start, length, advice)  # an error (PAGEOUT before Linux 5.4) leaves the pages: fine
    except (OSError, AttributeError, ValueError):
        _mappings = []
