"""Rows of a 4-bit token table stored finer (Q8_0) beside it, under edgegemma's keys: the converter writes them
for e4_q8, the runtime reads them and embeds those tokens with them, `info` shows them, damaged ones are named,
and files with only the float32 exact rows still read as before. The tiny model, real converter, real files."""
from __future__ import annotations

import numpy as np
import pytest

import edgegemma
from edgegemma import formats as F
from edgegemma.gguf_file import ModelFileError

from test_api import _rewrite, _same_tensors


def _field(reader, key):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def test_fine_rows_are_written_and_used(tiny_checkpoint, tiny_gguf):
    import gguf
    from safetensors.numpy import load_file

    path = tiny_gguf("e4_q8")
    reader = gguf.GGUFReader(path)
    fine_ids = np.array(_field(reader, F.KEY_FINE_TOKEN_IDS))
    assert _field(reader, F.KEY_FINE_TOKEN_TYPE) == gguf.GGMLQuantizationType.Q8_0
    fine_bytes = np.array(_field(reader, F.KEY_FINE_TOKEN_ROWS), np.uint8).reshape(len(fine_ids), -1)
    exact_ids = np.array(_field(reader, F.KEY_EXACT_TOKEN_IDS))
    assert len(fine_ids) and not np.isin(fine_ids, exact_ids).any()

    model = edgegemma.load(path).model
    np.testing.assert_array_equal(model.weights.fine_token_ids, fine_ids)
    table = load_file(tiny_checkpoint / "model.safetensors")["embed_tokens.weight"]
    blocks = next(t for t in reader.tensors if t.name == "token_embd.weight")
    stored = gguf.quants.dequantize(np.asarray(blocks.data), blocks.tensor_type)
    fine_values = gguf.quants.dequantize(fine_bytes, gguf.GGMLQuantizationType.Q8_0)  # an independent decoder
    ids = np.arange(table.shape[0])
    fine, exact = np.isin(ids, fine_ids), np.isin(ids, exact_ids)
    rest = ~fine & ~exact
    assert rest.any()
    x = model.embed(np.concatenate([ids, ids[::-1]]))[: len(ids)]
    np.testing.assert_array_equal(x[fine], fine_values)
    np.testing.assert_array_equal(x[exact], table[exact])
    np.testing.assert_array_equal(x[rest], stored[rest])
    # the finer rows are nearer the checkpoint than the 4-bit rows they replace
    assert np.abs(fine_values - table[fine]).max() < np.abs(stored[fine] - table[fine]).max() / 4


def test_info_shows_fine_rows(tiny_gguf):
    from edgegemma.info import describe, format_text

    d = describe(tiny_gguf("e4_q8"))
    n = len(edgegemma.load(tiny_gguf("e4_q8")).model.weights.fine_token_ids)
    assert d["fine_token_rows"] == n > 0 and d["fine_token_type"] == "q8_0"
    assert f"+ {n:,} rows q8_0" in format_text(d)


def test_files_with_only_exact_rows_read_as_before(tiny_gguf):
    """q4_0 keeps its float32 exact rows and gets no finer ones (FINE_ROW_RECIPES)."""
    w = edgegemma.load(tiny_gguf("q4_0")).model.weights
    assert len(w.exact_token_ids) and not len(w.fine_token_ids)


def _nan_scale(name, value):
    if name != F.KEY_FINE_TOKEN_ROWS:
        return value
    value = list(value)
    value[0:2] = [0x00, 0x7E]  # float16 NaN as the first block's scale
    return value


@pytest.mark.parametrize("change, message", [
    (lambda name, v: v[:-1] if name == F.KEY_FINE_TOKEN_ROWS else v, r"bytes for \d+ q8_0 rows of 64"),
    (lambda name, v: v[::-1] if name == F.KEY_FINE_TOKEN_IDS else v, r"the ids are not sorted, unique token ids below 384"),
    (_nan_scale, r"the rows hold NaN or Inf"),
    (lambda name, v: 2 if name == F.KEY_FINE_TOKEN_TYPE else v, r"type id 2 is not one of q8_0, f16"),
])
def test_corrupt_fine_rows_are_named(change, message, tmp_path, tiny_gguf):
    _rewrite(tiny_gguf("e4_q8"), tmp_path / "fine.gguf", _same_tensors, change)
    with pytest.raises(ModelFileError, match=F.KEY_FINE_TOKEN_IDS.replace(".", r"\.") + ".*" + message):
        edgegemma.load(tmp_path / "fine.gguf")


def test_fine_rows_may_not_repeat_exact_ones(tmp_path, tiny_gguf):
    import gguf

    reader = gguf.GGUFReader(tiny_gguf("e4_q8"))
    exact = list(_field(reader, F.KEY_EXACT_TOKEN_IDS))
    fine = list(_field(reader, F.KEY_FINE_TOKEN_IDS))
    overlapping = sorted(set(fine[1:]) | {exact[0]})  # one exact id in place of a fine one: same count, sorted

    _rewrite(tiny_gguf("e4_q8"), tmp_path / "overlap.gguf", _same_tensors,
             lambda name, v: overlapping if name == F.KEY_FINE_TOKEN_IDS else v)
    with pytest.raises(ModelFileError, match="apart from " + F.KEY_EXACT_TOKEN_IDS.replace(".", r"\.")):
        edgegemma.load(tmp_path / "overlap.gguf")
