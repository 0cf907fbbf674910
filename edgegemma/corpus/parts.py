"""The parts of an unfinished corpus run, in a folder beside its output (OUT.parts/), so that a rerun resumes.

    OUT.parts/manifest.json     the run's settings (input, model, prompt, dimension, part size, output format)
    OUT.parts/part-000000.npz   rows [0, part_size): vectors float32 (n, dim), ids, and texts if the output keeps them
    OUT.parts/part-000001.npz   rows [part_size, 2·part_size) ...

Part k always holds rows [k·part_size, (k+1)·part_size), so the finished parts say exactly which rows are done.
Each part is written under a temporary name, flushed to disk and renamed: a part that exists is complete, and a
kill -9, Ctrl-C or full disk in the middle of one leaves only a temporary file, which the next run deletes and
redoes. A rerun with other settings is refused rather than mixed into the same output.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from .readers import CorpusError

MANIFEST = "manifest.json"
PART = re.compile(r"part-(\d{6})\.npz")


def parts_folder(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def _disk_error(path: Path, err: OSError) -> CorpusError:
    reason = "the disk is full" if err.errno == 28 else (err.strerror or str(err))
    return CorpusError(f"cannot write {path}: {reason}; rerun the same command to resume")


def write_atomically(path: Path, write) -> None:
    """write(stream) into a temporary file beside `path`, flushed to disk, then renamed to `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise _disk_error(path, err) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _packed_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes end to end, and each string's end offset: no padding to the longest string."""
    encoded = [v.encode("utf-8") for v in values]
    return np.frombuffer(b"".join(encoded), np.uint8), np.cumsum([len(e) for e in encoded], dtype=np.int64)


def _unpacked_strings(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    data, starts = blob.tobytes(), np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [data[a:b].decode("utf-8") for a, b in zip(starts.tolist(), ends.tolist())]


class Part:
    """One finished part, read back: ids (a list of int or str), vectors (n, dim), texts (or None)."""

    def __init__(self, path: Path):
        with np.load(path) as f:
            self.vectors = f["vectors"]
            self.ids = f["ids"].tolist() if "ids" in f.files else _unpacked_strings(f["id_bytes"], f["id_ends"])
            self.texts = _unpacked_strings(f["text_bytes"], f["text_ends"]) if "text_bytes" in f.files else None

    @staticmethod
    def ids_are_integers(path: Path) -> bool:
        with np.load(path) as f:
            return "ids" in f.files


class PartStore:
    """The parts folder of one output: opened for `settings`, refusing a folder left by other settings."""

    def __init__(self, output: Path, settings: dict):
        self.folder = parts_folder(output)
        self.settings = settings
        self.part_size = settings["part_size"]
        manifest = self.folder / MANIFEST
        if manifest.is_file():
            try:
                previous = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                previous = None
            if previous != settings and not self.done():  # nothing done yet (the last run failed at once): start over
                write_atomically(manifest, lambda s: s.write(json.dumps(settings, indent=1).encode("utf-8")))
            elif previous != settings:
                raise CorpusError(f"{self.folder} holds an unfinished run with other settings "
                                  f"({_difference(previous, settings)}); rerun it with the same options, "
                                  "or delete that folder to start over")
        else:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise _disk_error(self.folder, err) from None
            write_atomically(manifest, lambda s: s.write(json.dumps(settings, indent=1).encode("utf-8")))
        for leftover in self.folder.glob(".*.tmp"):  # a part a killed run was writing
            leftover.unlink(missing_ok=True)
        for leftover in output.parent.glob(f".{output.name}.*.tmp"):  # an output a killed run was joining
            if not _alive(leftover.name.split(".")[-2]):
                leftover.unlink(missing_ok=True)

    def done(self) -> list[int]:
        """The finished parts' numbers, in order."""
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := PART.fullmatch(p.name)))

    def first_missing(self) -> int:
        """The first part not yet written: the run resumes from its first row. Parts are written in order, so
        every part before it is done; any after it (none, normally) are rewritten with the same rows."""
        done, k = set(self.done()), 0
        while k in done:
            k += 1
        return k

    def path(self, k: int) -> Path:
        return self.folder / f"part-{k:06d}.npz"

    def write(self, k: int, ids: list, vectors: np.ndarray, texts: list[str] | None) -> None:
        arrays = {"vectors": np.ascontiguousarray(vectors, np.float32)}
        if all(isinstance(i, int) for i in ids):
            arrays["ids"] = np.asarray(ids, np.int64)
        else:
            arrays["id_bytes"], arrays["id_ends"] = _packed_strings([str(i) for i in ids])
        if texts is not None:
            arrays["text_bytes"], arrays["text_ends"] = _packed_strings(texts)
        write_atomically(self.path(k), lambda s: np.savez(s, **arrays))

    def parts(self) -> list[Path]:
        return [self.path(k) for k in self.done()]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _difference(previous: dict | None, settings: dict) -> str:
    if not isinstance(previous, dict):
        return "its manifest is unreadable"
    changed = [key for key in settings if previous.get(key) != settings[key]]
    return "differs in " + ", ".join(changed) if changed else "another version"
