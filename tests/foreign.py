"""GGUF files made by other tools, for real, cached between test runs.

    convert_with_llama_cpp(checkpoint, outtype)   llama.cpp's convert_hf_to_gguf.py (f32, f16, bf16, q8_0), with the
                                                  dense head (--sentence-transformers-dense-modules) or without
    quantize_with_llama_cpp(source, ftype)        llama.cpp's quantizer (llama_cpp.llama_model_quantize): Q4_K_M,
                                                  Q5_K_M, Q6_K, Q4_1, Q5_0, Q5_1 … from an F16/F32 file
    make_tiny_bpe_checkpoint(folder)              the tiny checkpoint with a BPE tokenizer.model, as Gemma's is
    rewrite(source, dest, drop_prefix, values)    a copy of a small GGUF file with metadata keys dropped or changed

The converter is the one vendored in llama-cpp-python's source distribution (the installed version's, so that
the converter and the runtime that reads its files are the same llama.cpp), downloaded once with pip; it needs
torch, transformers and sentencepiece. Files go to $EDGEGEMMA_TEST_CACHE (default ~/.cache/edgegemma-test),
under the tool's version and a key of the checkpoint. Where a tool cannot be had, the test asking for the file
is skipped with the reason.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("EDGEGEMMA_TEST_CACHE") or Path.home() / ".cache" / "edgegemma-test")
DIST = "llama-cpp-python"
# What the converter imports beyond numpy and sentencepiece; CI pins them (see .ci/run).
CONVERTER_NEEDS = ("torch", "transformers", "sentencepiece", "safetensors")
CONVERTER_INSTALL = "pip install torch==2.13.0 transformers==4.57.6"
# llama.cpp's converter writes these files with one outtype each.
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def llama_cpp_version() -> str | None:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(args: list[str], what: str, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if run.returncode:
        raise RuntimeError(f"{what} failed (exit {run.returncode}):\n{(run.stderr or run.stdout)[-3000:]}")
    return run


def llama_cpp_source() -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/: $EDGEGEMMA_LLAMA_CPP_DIR, or
    vendor/llama.cpp of llama-cpp-python's sdist (the installed version, else the newest), fetched with pip once."""
    given = os.environ.get("EDGEGEMMA_LLAMA_CPP_DIR")
    if given:
        if not (Path(given) / "convert_hf_to_gguf.py").is_file():
            pytest.fail(f"EDGEGEMMA_LLAMA_CPP_DIR={given} holds no convert_hf_to_gguf.py")
        return Path(given)
    version = llama_cpp_version()
    requirement = f"{DIST}=={version}" if version else DIST
    folder = CACHE / "llama.cpp-source"
    marker = folder / f"{version or 'newest'}.ready"
    if marker.is_file():
        return Path(marker.read_text())
    downloads = folder / "sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    try:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", "-d", str(downloads),
              requirement], f"pip download {requirement}", timeout=900)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"llama.cpp's converter unavailable: could not download the {requirement} source ({str(err).splitlines()[0]})")
    sdists = sorted(downloads.glob(f"llama_cpp_python-{version or ''}*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if not sdists:
        pytest.skip(f"llama.cpp's converter unavailable: pip downloaded no {DIST} source distribution")
    sdist = sdists[-1]
    root = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    dest = folder / sdist.name.removesuffix(".tar.gz")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(root) and m.name[len(root):].startswith(wanted)]
        for m in members:
            m.name = m.name[len(root):]
        tar.extractall(dest, members=members, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    if not (dest / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"llama.cpp's converter unavailable: {sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    marker.write_text(str(dest))
    return dest


def checkpoint_key(folder: Path) -> str:
    """A short digest of a checkpoint: its JSON files and tokenizer, and the names, sizes and safetensors headers of
    the rest (reading 1.2 GB of weights on every run would cost more than the conversions it saves)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json" or path.name == "tokenizer.model":
            digest.update(path.read_bytes())
        elif path.suffix == ".safetensors":
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                digest.update(f.read(min(n, 1 << 24)))
    return f"{folder.resolve().name}-{digest.hexdigest()[:12]}"


def _cached(name: str, checkpoint_or_file: Path, tool: str) -> Path:
    key = checkpoint_key(checkpoint_or_file) if checkpoint_or_file.is_dir() else _file_key(checkpoint_or_file)
    return CACHE / tool / key / name


def _file_key(path: Path) -> str:
    st = path.stat()
    return f"{path.stem}-{hashlib.sha256(f'{path.resolve()}:{st.st_size}:{st.st_mtime_ns}'.encode()).hexdigest()[:12]}"


def convert_with_llama_cpp(checkpoint: Path, outtype: str, dense: bool = True) -> Path:
    """`convert_hf_to_gguf.py CHECKPOINT --outtype OUTTYPE [--sentence-transformers-dense-modules]`, cached."""
    assert outtype in OUTTYPES, outtype
    source = llama_cpp_source()
    out = _cached(f"{outtype}{'' if dense else '-nodense'}.gguf", Path(checkpoint), f"llama.cpp-convert-{source.name}")
    if out.is_file():
        return out
    missing = [m for m in CONVERTER_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"llama.cpp's converter needs {', '.join(missing)} ({CONVERTER_INSTALL})")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    args = [sys.executable, str(source / "convert_hf_to_gguf.py"), str(checkpoint), "--outtype", outtype, "--outfile", str(partial)]
    if dense:
        args.append("--sentence-transformers-dense-modules")
    try:
        _run(args, f"llama.cpp's converter on {checkpoint} ({outtype})", timeout=3600)
    finally:
        if not partial.is_file() or partial.stat().st_size == 0:
            partial.unlink(missing_ok=True)
    os.replace(partial, out)
    return out


# Runs in a child process (a native crash becomes a test failure with its stderr). argv: source, dest, ftype name.
QUANTIZE = textwrap.dedent("""
    import ctypes, sys
    import llama_cpp
    source, dest, name = sys.argv[1:4]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + name)
    params.nthread = 2
    code = llama_cpp.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params))
    sys.exit(code)
""")


def quantize_with_llama_cpp(source: Path, ftype: str) -> Path:
    """llama.cpp's quantizer on `source` (an F16/F32 GGUF file), to LLAMA_FTYPE_MOSTLY_<ftype>, cached."""
    version = llama_cpp_version()
    if version is None:
        pytest.skip(f"llama.cpp's quantizer needs {DIST} (pip install {DIST})")
    out = _cached(f"{ftype}.gguf", Path(source), f"llama.cpp-quantize-{version}")
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    try:
        _run([sys.executable, "-c", QUANTIZE, str(source), str(partial), ftype.upper()],
             f"llama.cpp's quantizer on {source.name} ({ftype})", timeout=3600)
    except RuntimeError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, out)
    return out


def make_tiny_bpe_checkpoint(folder: Path) -> Path:
    """The tiny checkpoint (conftest.make_tiny_checkpoint) with its tokenizer.model trained as BPE, the model
    Gemma's tokenizer is and the one llama.cpp's `llama` vocabulary runs."""
    import sentencepiece as spm
    from conftest import _write_tokenizer_json, make_tiny_checkpoint, tiny_corpus, tiny_sentencepiece, train_sentencepiece

    folder = make_tiny_checkpoint(folder)
    vocab_size = spm.SentencePieceProcessor(model_proto=tiny_sentencepiece()).vocab_size()
    corpus = tiny_corpus(2000, seed=1, number_every=5, endings=(".", "?", "!", ",", "", "  "))
    sp_bytes = train_sentencepiece(corpus, vocab_size, "bpe")
    trained = spm.SentencePieceProcessor(model_proto=sp_bytes).vocab_size()
    if trained != vocab_size:  # the embedding table has vocab_size rows: the vocabularies must be the same size
        raise RuntimeError(f"the BPE tokenizer has {trained} pieces, the tiny checkpoint {vocab_size}")
    (folder / "tokenizer.model").write_bytes(sp_bytes)
    _write_tokenizer_json(folder, sp_bytes, vocab_size)
    return folder


def rewrite(source: Path, dest: Path, drop_prefix: str | None = None, values: dict | None = None) -> Path:
    """A copy of a (small) GGUF file, written by gguf.GGUFWriter, without the metadata keys that start with
    `drop_prefix` and with `values` (key -> value, None: remove the key) in place of the file's own; a value keeps
    the type of the one it replaces (an array, its item type)."""
    import gguf
    import numpy as np

    values = dict(values or {})
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == gguf.Keys.General.ARCHITECTURE or (drop_prefix and key.startswith(drop_prefix)):
            continue
        value = values.pop(key) if key in values else field.contents()
        if value is None:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    for key, value in values.items():  # keys the file lacks
        if value is not None:
            writer.add_key_value(key, value, gguf.GGUFValueType.get_type(value))
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=[int(d) for d in reversed(t.shape)], raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest
