"""`edgegemma embed` on corpora (edgegemma/corpus/) with the tiny model: every input format, the Parquet output,
resuming after Ctrl-C, kill -9 and a full disk (each row exactly once, the same vectors), and one-line errors."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import edgegemma
from edgegemma.cli import main
from edgegemma.corpus import EncodeOptions, embed_corpus, open_source
from edgegemma.corpus.parts import parts_folder

pa = pytest.importorskip("pyarrow", reason="pyarrow (edgegemma[parquet]) not installed")
import pyarrow.parquet as pq  # noqa: E402

from conftest import tiny_corpus  # noqa: E402

TEXTS = tiny_corpus(40, seed=3, number_every=5)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEGEMMA_HOME", str(tmp_path / "home"))


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_parquet(path: Path) -> tuple[list, np.ndarray, dict]:
    table = pq.read_table(path)
    dim = table.schema.field("embedding").type.list_size
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    return table.column("id").to_pylist(), vectors, meta


def assert_same_vectors(a: np.ndarray, b: np.ndarray, floor: float = 0.999999) -> None:
    assert a.shape == b.shape
    a, b = a.astype(np.float64), b.astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() >= floor, cosine.min()


def write_parquet_input(path: Path, texts: list[str], ids: list | None = None, row_group_size: int = 7) -> Path:
    columns = {"body": pa.array(texts, pa.string())}
    if ids is not None:
        columns["doc"] = pa.array(ids)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


# --- inputs and outputs -----------------------------------------------------------------------------


def test_parquet_in_parquet_out_with_ids_and_metadata(capsys, tmp_path, model_file, model):
    ids = [f"doc-{i}" for i in range(len(TEXTS))]
    source = write_parquet_input(tmp_path / "in.parquet", TEXTS, ids)
    out = tmp_path / "out.parquet"
    code, _, err = cli(capsys, "embed", "-m", model_file, "--input", source, "--column", "body", "--id-column", "doc",
                       "--prompt-name", "document", "--dim", 32, "--part-size", 6, "--output", out)
    assert code == 0, err
    got_ids, vectors, meta = read_parquet(out)
    assert got_ids == ids
    schema = pq.read_schema(out)
    assert schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert meta["edgegemma.model"] == Path(model_file).name and meta["edgegemma.dimension"] == "32"
    assert meta["edgegemma.prompt"] == "title: none | text: "
    assert_same_vectors(vectors, model.encode_document(TEXTS, truncate_dim=32))
    assert not parts_folder(out).exists()


def test_txt_jsonl_and_folder_inputs(capsys, tmp_path, model_file, model):
    (tmp_path / "in.txt").write_text("\n".join(TEXTS[:5]) + "\n\n", encoding="utf-8")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"key": 100 + i, "body": t}) + "\n" for i, t in enumerate(TEXTS[:5])),
                                       encoding="utf-8")
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    for i, text in enumerate(TEXTS[:5]):
        (notes / ("sub" if i % 2 else ".") / f"n{i}.md").write_text(text, encoding="utf-8")
    (notes / "blank.md").write_text("  \n", encoding="utf-8")
    (notes / "skipped.py").write_text("print()", encoding="utf-8")
    expected = model.encode(TEXTS[:5], prompt_name="query")
    runs = [(tmp_path / "in.txt", [], list(range(5))),
            (tmp_path / "in.jsonl", ["--column", "body", "--id-column", "key"], [100 + i for i in range(5)]),
            (notes, [], ["n0.md", "n2.md", "n4.md", "sub/n1.md", "sub/n3.md"])]
    for source, options, ids in runs:
        out = tmp_path / f"{source.name}.parquet"
        code, _, err = cli(capsys, "embed", "-m", model_file, "--input", source, *options, "-p", "query", "--output", out)
        assert code == 0, err
        got_ids, vectors, _ = read_parquet(out)
        assert got_ids == ids, source
        order = [int(name.split("n")[-1].split(".")[0]) for name in ids] if source == notes else range(5)
        assert_same_vectors(vectors, expected[list(order)])


def test_invalid_utf8_becomes_u_fffd_as_elsewhere(capsys, tmp_path, model_file, model):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.md").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "in.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "caf\ud800 au lait"}) + "\n", encoding="utf-8")
    for source in ("notes", "in.txt", "in.jsonl"):
        out = tmp_path / f"{source}.npy"
        code, _, err = cli(capsys, "embed", "-m", model_file, "--input", tmp_path / source, "--output", out)
        assert code == 0, err
        assert_same_vectors(np.load(out), model.encode(["caf\ufffd au lait"]))


def test_npy_and_jsonl_outputs_match_parquet(capsys, tmp_path, model_file):
    source = write_parquet_input(tmp_path / "in.parquet", TEXTS[:9])
    vectors = {}
    for suffix in ("parquet", "npy", "jsonl"):
        out = tmp_path / f"out.{suffix}"
        code, _, err = cli(capsys, "embed", "-m", model_file, "--input", source, "--column", "body", "--part-size", 4, "--output", out)
        assert code == 0, err
        if suffix == "parquet":
            vectors[suffix] = read_parquet(out)[1]
        elif suffix == "npy":
            vectors[suffix] = np.load(out)
        else:
            rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
            assert [r["index"] for r in rows] == list(range(9)) and [r["text"] for r in rows] == TEXTS[:9]
            vectors[suffix] = np.array([r["embedding"] for r in rows], np.float32)
    np.testing.assert_array_equal(vectors["npy"], vectors["parquet"])
    np.testing.assert_array_equal(vectors["jsonl"], vectors["parquet"])


def test_progress_bar_shows_texts_per_second(capsys, tmp_path, model_file):
    source = write_parquet_input(tmp_path / "in.parquet", TEXTS)
    code, _, err = cli(capsys, "embed", "-m", model_file, "--input", source, "--column", "body", "--part-size", 8,
                       "--progress", "--output", tmp_path / "out.parquet")
    assert code == 0, err
    assert "texts/s" in err and f"{len(TEXTS)} texts in" in err


# --- resuming ---------------------------------------------------------------------------------------


class StopAfter:
    """The model in this process, interrupted (KeyboardInterrupt, as Ctrl-C raises) after `parts` parts."""

    def __init__(self, model, options, parts: int):
        self.model, self.options, self.parts, self.calls = model, options, parts, 0

    def embed(self, chunks):
        for k, ids, texts in chunks:
            if self.calls == self.parts:
                raise KeyboardInterrupt
            self.calls += 1
            yield k, ids, texts, self.options.encode(self.model, texts)


def test_resume_after_ctrl_c_embeds_only_the_missing_parts(tmp_path, model):
    source = open_source(write_parquet_input(tmp_path / "in.parquet", TEXTS, list(range(500, 540))), "body", "doc")
    options, out = EncodeOptions(prompt_name="query"), tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(source, out, model, options, StopAfter(model, options, 3), part_size=6)
    assert not out.exists() and len(list(parts_folder(out).glob("part-*.npz"))) == 3
    resumed = StopAfter(model, options, 99)
    summary = embed_corpus(source, out, model, options, resumed, part_size=6)
    assert resumed.calls == 4 and summary.embedded == 40 - 18 and summary.rows == 40
    ids, vectors, _ = read_parquet(out)
    assert ids == list(range(500, 540))
    assert_same_vectors(vectors, model.encode_query(TEXTS))


def test_rerun_with_other_settings_is_refused(capsys, tmp_path, model_file, model):
    source = open_source(write_parquet_input(tmp_path / "in.parquet", TEXTS), "body", None)
    options, out = EncodeOptions(prompt_name="query"), tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(source, out, model, options, StopAfter(model, options, 1), part_size=6)
    code, _, err = cli(capsys, "embed", "-m", model_file, "--input", tmp_path / "in.parquet", "--column", "body",
                       "-p", "STS", "--part-size", 6, "--output", out)
    assert code == 1 and err.count("\n") == 1
    assert "other settings (differs in prompt)" in err and "delete that folder" in err
    assert len(list(parts_folder(out).glob("part-*.npz"))) == 1 and not out.exists()


def run_embed(argv: list, limit_bytes: int | None = None) -> subprocess.Popen:
    """`python -m edgegemma embed ...` in a process of its own; limit_bytes caps the size of any file it writes
    (RLIMIT_FSIZE: a write past it fails as a write to a full disk does, with SIGXFSZ ignored)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "edgegemma", "embed", *map(str, argv)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if limit_bytes else None)


def test_kill_9_then_resume_gives_every_row_once(tmp_path, model_file, model):
    texts = tiny_corpus(3000, seed=4, number_every=3)
    source = write_parquet_input(tmp_path / "in.parquet", texts, row_group_size=500)
    out = tmp_path / "out.parquet"
    argv = ["-m", model_file, "--input", source, "--column", "body", "--part-size", 40, "--output", out]
    process = run_embed(argv)
    deadline = time.monotonic() + 60
    while len(list(parts_folder(out).glob("part-*.npz"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(parts_folder(out).glob("part-*.npz")))
    assert not out.exists() and 3 <= done < 75
    leftover = tmp_path / ".out.parquet.999999999.tmp"  # as a run killed while joining the parts leaves
    leftover.write_bytes(b"PAR1")
    process = run_embed(argv + ["--progress"])
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert f"3000 texts in {out}; {3000 - 40 * done} embedded" in err
    assert not leftover.exists()
    ids, vectors, _ = read_parquet(out)
    assert ids == list(range(3000))
    assert_same_vectors(vectors, model.encode(texts))


def test_full_disk_then_resume(tmp_path, model_file, model):
    texts = TEXTS * 5
    source = write_parquet_input(tmp_path / "in.parquet", texts)
    out = tmp_path / "out.parquet"
    argv = ["-m", model_file, "--input", source, "--column", "body", "--part-size", 20, "--output", out]
    part_bytes = 20 * model.dimension * 4
    # No room for one part: nothing is kept but the manifest.
    process = run_embed(argv, limit_bytes=part_bytes // 2)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and err.count("\n") == 1, err
    assert "File too large; rerun the same command to resume" in err
    assert not list(parts_folder(out).glob("part-*")) and not list(parts_folder(out).glob(".*.tmp"))
    # Room for every part but not for the joined output: the parts stay, no output (nor half of one) appears.
    process = run_embed(argv, limit_bytes=part_bytes * 3)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and f"cannot write {out}" in err, err
    assert len(list(parts_folder(out).glob("part-*.npz"))) == 10
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))
    # With room again, nothing is embedded twice.
    process = run_embed(argv + ["--progress"])
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0 and f"200 texts in {out}; 0 embedded" in err, err
    ids, vectors, _ = read_parquet(out)
    assert ids == list(range(200))
    assert_same_vectors(vectors, model.encode(texts))


# --- bad input --------------------------------------------------------------------------------------


def test_bad_corpus_input_is_one_line(capsys, tmp_path, model_file):
    source = write_parquet_input(tmp_path / "in.parquet", TEXTS[:3], [1, 2, 3])
    pq.write_table(pa.table({"body": pa.array(["a", None], pa.string())}), tmp_path / "nulls.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": 5}\n', encoding="utf-8")
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.jsonl").write_text('{"text": " "}\n', encoding="utf-8")
    out = tmp_path / "out.parquet"
    cases = [
        (["--input", source, "--output", out], "no column 'text' (--column); it has: body, doc"),
        (["--input", source, "--column", "doc", "--output", out], "column 'doc' holds int64, not text"),
        (["--input", tmp_path / "nulls.parquet", "--column", "body", "--output", out], "row 1 (id 1): 'body' is null"),
        (["--input", tmp_path / "bad.jsonl", "--output", out], "bad.jsonl:2: expected an object with a string field \"text\""),
        (["--input", tmp_path / "empty", "--output", out], "no files match **/*.md or **/*.txt (--glob)"),
        (["--input", tmp_path / "blank.jsonl", "--output", out], "blank.jsonl:1: the \"text\" field is empty or only whitespace"),
        (["--input", source, "--column", "body"], "writes an --output file"),
        (["--input", source, "--column", "body", "--output", tmp_path / "out.csv"], "unknown output format"),
        (["--column", "body", "x"], "not both"),
        (["--input", source, "--column", "body", "--part-size", 0, "--output", out], "--part-size must be a positive"),
    ]
    for argv, message in cases:
        code, out_text, err = cli(capsys, "embed", "-m", model_file, *argv)
        assert code == 1 and out_text == "" and err.count("\n") == 1, (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err and not out.exists()


def test_missing_pyarrow_is_one_line_before_any_work(tmp_path, model_file):
    source = write_parquet_input(tmp_path / "in.parquet", TEXTS[:3])
    (tmp_path / "in.txt").write_text("\n".join(TEXTS[:3]), encoding="utf-8")
    for argv in ([source, "x.npy"], [tmp_path / "in.txt", "x.parquet"]):
        code = ("import sys; sys.modules['pyarrow'] = None; from edgegemma.cli import main; raise SystemExit(main("
                f"['embed', '-m', {str(model_file)!r}, '--input', {str(argv[0])!r}, '--output', {argv[1]!r}]))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert result.returncode == 1
        assert result.stderr == "edgegemma embed: error: Parquet needs pyarrow: pip install 'edgegemma[parquet]'\n"
        assert not (tmp_path / "x.parquet.parts").exists()
