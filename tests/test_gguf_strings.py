"""String arrays: the vectorised search for short strings' length fields (gguf_file._short_string_fields) gives
exactly the strings gguf's writer wrote and gguf's reader reads, and hands every array it cannot prove over to
the one-by-one loop: empty strings, NUL bytes, strings of 256 bytes and more, a damaged length, a cut file."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from edgegemma import gguf_file
from edgegemma.gguf_file import GGUFFile, ModelFileError


def write(path, arrays: dict[str, list[str]]) -> None:
    """A GGUF file of string arrays (and a short string before and after each, and one tensor), by gguf's writer."""
    writer = gguf.GGUFWriter(str(path), "gemma-embedding")
    for key, strings in arrays.items():
        writer.add_string(key + ".before", "x")
        writer.add_array(key, strings)
        writer.add_string(key + ".after", "y" * 300)
    writer.add_tensor("t", np.arange(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def vocabulary(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghij ▁<>0123456789") + ["é", "日本", "\U0001f600", "\x01", "\xff"]
    return ["".join(rng.choice(alphabet, rng.integers(1, 12))) for _ in range(n)]


CASES = {
    "short": vocabulary(5_000, 0),
    "empty string": ["a", "", "b"] + vocabulary(300, 1),
    "a NUL": vocabulary(300, 2) + ["a\x00b", "c"],  # the search proves it all the same
    "seven NULs": vocabulary(300, 2) + ["a" + "\x00" * 7 + "b", "c"],  # a length field's pattern in a text
    "256 bytes": vocabulary(300, 3) + ["z" * 256] + vocabulary(10, 4),
    "multi-byte 255": ["é" * 127 + "a", "b"],
    "one": ["only"],
}
FAST = {"short", "a NUL", "multi-byte 255", "one"}  # the ones the search can prove


@pytest.fixture(scope="module")
def strings_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("strings")
    for i, (case, strings) in enumerate(CASES.items()):
        write(folder / f"{i}.gguf", {case: strings})
    return {case: folder / f"{i}.gguf" for i, case in enumerate(CASES)}


@pytest.mark.parametrize("case", list(CASES))
def test_string_arrays_read_as_written(strings_files, case, monkeypatch):
    strings_file = strings_files[case]
    ours = GGUFFile(strings_file).metadata
    assert list(ours[case]) == CASES[case]
    assert ours[case + ".after"] == "y" * 300  # and the reading goes on where the array ends
    reader = gguf.GGUFReader(strings_file)
    assert list(ours[case]) == [str(bytes(reader.fields[case].parts[i]), "utf-8") for i in reader.fields[case].data]
    # Which path read it: the search alone, with the loop switched off.
    monkeypatch.setattr(gguf_file._Cursor, "_strings_one_by_one", lambda self, count: pytest.fail("loop used"))
    if case in FAST:
        assert list(GGUFFile(strings_file).metadata[case]) == CASES[case]
    else:
        with pytest.raises(pytest.fail.Exception):
            GGUFFile(strings_file)


def test_the_search_spans_its_reads(strings_files, monkeypatch):
    """A vocabulary over many of the search's reads (shrunk to 64 bytes here) reads the same."""
    monkeypatch.setattr(gguf_file, "_SCAN_BYTES", 64)
    monkeypatch.setattr(gguf_file._Cursor, "_strings_one_by_one", lambda self, count: pytest.fail("loop used"))
    assert list(GGUFFile(strings_files["short"]).metadata["short"]) == CASES["short"]


def test_damaged_lengths_are_refused_as_the_loop_refuses_them(tmp_path, monkeypatch):
    write(tmp_path / "ok.gguf", {"words": vocabulary(2_000, 5)})
    data = (tmp_path / "ok.gguf").read_bytes()
    key = len("words").to_bytes(8, "little") + b"words" + int(gguf.GGUFValueType.ARRAY).to_bytes(4, "little")
    first = data.index(key) + len(key) + 4 + 8  # after the item type and the count
    # The 1,000th string's length made huge; then the file cut inside the array.
    at = first
    for _ in range(1_000):
        at += 8 + int.from_bytes(data[at:at + 8], "little")
    cases = {"huge": data[:at] + (2**40).to_bytes(8, "little") + data[at + 8:], "cut": data[:at + 3]}
    for name, mutated in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(mutated)
        with pytest.raises(ModelFileError, match="of 2,000 in an array runs past the end of the file") as searched:
            GGUFFile(path)
        with monkeypatch.context() as patch:
            patch.setattr(gguf_file, "_short_string_fields", lambda *args: None)
            with pytest.raises(ModelFileError) as looped:
                GGUFFile(path)
        assert str(searched.value) == str(looped.value)


def test_texts_decode_as_one_by_one():
    """StringArray.texts (many strings in one decode) gives what indexing gives, broken UTF-8 and NULs included."""
    pieces = [b"ab\xe2\x82", "é".encode(), b"\xff", b"x\x00y", b"", "日本".encode(), b"\x80z"]
    buf = b"".join(pieces)
    lengths = np.array([len(p) for p in pieces])
    strings = gguf_file.StringArray(memoryview(buf), np.cumsum(lengths) - lengths, lengths)
    for indices in ([0, 1, 2, 4, 5, 6], [6, 0, 0], [3, 1], [], list(range(len(pieces)))):
        assert strings.texts(indices) == [strings[i] for i in indices], indices
