"""The sentence-transformers interface and its errors, on the tiny model."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import edgegemma
from edgegemma import ModelFileError
from edgegemma import formats as F


def test_shapes_and_unit_length(model):
    d = model.dimension
    one = model.encode("hello")
    many = model.encode(["hello", "world", "again"])
    assert one.shape == (d,) and one.dtype == np.float32
    assert many.shape == (3, d) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    assert model.encode([]).shape == (0, d)


def test_results_come_back_in_input_order(model):
    texts = ["a", "a much longer text than the others in this list", "mid length text", "b"]
    together = model.encode(texts, batch_size=2)
    alone = np.stack([model.encode(t) for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-6)


def test_truncate_dim_truncates_then_renormalises(model):
    full = model.encode(["hello world"], normalize_embeddings=False)
    for dim in (model.dimension, 32, 7, 1):
        cut = model.encode(["hello world"], truncate_dim=dim)
        assert cut.shape == (1, dim)
        np.testing.assert_allclose(cut[0], full[0, :dim] / np.linalg.norm(full[0, :dim]), atol=1e-6)
    raw = model.encode(["hello world"], truncate_dim=8, normalize_embeddings=False)
    np.testing.assert_allclose(raw, full[:, :8])


@pytest.mark.parametrize("bad", [0, -1, 10_000, 1.5, "256"])
def test_truncate_dim_out_of_range(model, bad):
    with pytest.raises(ValueError, match="truncate_dim must be an integer from 1 to"):
        model.encode("x", truncate_dim=bad)


def test_prompts_come_from_the_file(model):
    assert model.prompts["query"] == "task: search result | query: "
    assert model.prompts["document"] == "title: none | text: "
    assert model.prompts["fact_checking"] == "task: fact checking | query: "  # the card's tasks too
    np.testing.assert_allclose(model.encode_query("q"), model.encode("task: search result | query: q"), atol=1e-6)
    np.testing.assert_allclose(model.encode("q", prompt_name="query"), model.encode_query("q"), atol=1e-6)
    with pytest.raises(ValueError, match="unknown prompt_name 'nope'.*query.*document"):
        model.encode("x", prompt_name="nope")


def test_document_titles(model):
    plain = model.encode_document(["text one", "text two"])
    np.testing.assert_allclose(plain[0], model.encode("title: none | text: text one"), atol=1e-6)
    titled = model.encode_document(["text one", "text two"], titles=["A title", None])
    np.testing.assert_allclose(titled[0], model.encode("title: A title | text: text one"), atol=1e-6)
    np.testing.assert_allclose(titled[1], plain[1], atol=1e-6)
    with pytest.raises(ValueError, match="2 titles for 3 documents"):
        model.encode_document(["a", "b", "c"], titles=["x", "y"])


def test_similarity_is_cosine(model):
    a = model.encode(["alpha", "beta"])
    sims = model.similarity(a, a)
    assert sims.shape == (2, 2)
    np.testing.assert_allclose(np.diag(sims), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.similarity([3.0, 4.0], [[6.0, 8.0], [4.0, -3.0]]), [[1.0, 0.0]], atol=1e-6)


def test_non_string_names_its_index(model):
    with pytest.raises(TypeError, match=r"sentences\[1\] is int"):
        model.encode(["fine", 42])


def test_long_input_is_cut_with_eos_last(model):
    limit = model.config.max_position_embeddings
    ids = model.tokenize(["word " * (limit * 2)])[0]
    assert len(ids) == limit and ids[0] == model.tokenizer.bos_id and ids[-1] == model.tokenizer.eos_id


def test_string_arrays_read_as_gguf_reads_them(tiny_gguf):
    import gguf

    from edgegemma.gguf_file import GGUFFile

    path = tiny_gguf("q8_0")
    ours, theirs = GGUFFile(path).metadata, gguf.GGUFReader(path)
    for key in (gguf.Keys.Tokenizer.LIST, "edgegemma.prompt_names", "edgegemma.prompt_texts"):
        assert list(ours[key]) == theirs.get_field(key).contents(), key
    assert ours[gguf.Keys.General.ARCHITECTURE] == theirs.get_field(gguf.Keys.General.ARCHITECTURE).contents()


def test_embedding_rows_are_read_as_the_map_holds_them(model):
    """The lookup reads the table's rows with pread (GGUFFile.read_rows), not through the map: same rows."""
    from edgegemma import kernels

    table = model.model.weights.token_embd
    rows = np.array([0, 1, 2, 7, 100, table.shape[0] - 1])
    np.testing.assert_array_equal(model.file.read_rows(model.file.tensors[table.name], rows), table.data[rows])
    ids = np.array([5, 3, 5, 0, table.shape[0] - 1, 3, 4])
    np.testing.assert_array_equal(model.model.embed(ids), kernels.dequantize_rows(table.data, table.qtype, ids))
    with pytest.raises(IndexError, match="out of range"):
        model.model.embed(np.array([table.shape[0]]))


def test_long_batches_run_in_groups_of_max_tokens(model, monkeypatch):
    import edgegemma.model

    texts = ["a", "a much longer text than the others in this list", "mid length text", "b", "the end of it"]
    whole = model.encode(texts, batch_size=len(texts))
    monkeypatch.setattr(edgegemma.model, "MAX_TOKENS", 12)  # several groups, one text longer than a group
    np.testing.assert_allclose(model.encode(texts, batch_size=len(texts)), whole, atol=2e-6)


def test_bad_files_name_the_problem(tmp_path, tiny_gguf):
    good = tiny_gguf("q8_0")
    with pytest.raises(ModelFileError, match="no such file"):
        edgegemma.load(tmp_path / "missing.gguf")
    (tmp_path / "text.gguf").write_text("not a model at all")
    with pytest.raises(ModelFileError, match="not a GGUF file"):
        edgegemma.load(tmp_path / "text.gguf")
    data = good.read_bytes()
    for cut in (len(data) // 2, 200):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="truncated"):
            edgegemma.load(tmp_path / "cut.gguf")
    # Another architecture: same file, architecture string changed in place.
    other = data.replace(b"gemma-embedding", b"gemma-embeddinX", 1)
    (tmp_path / "other.gguf").write_bytes(other)
    with pytest.raises(ModelFileError, match="architecture is 'gemma-embeddinX', expected 'gemma-embedding'"):
        edgegemma.load(tmp_path / "other.gguf")
    shutil.copy(good, tmp_path / "copy.gguf")
    assert edgegemma.load(tmp_path / "copy.gguf").encode("ok").shape == (edgegemma.load(good).dimension,)


def _rewrite(src, dst, change, change_field=lambda name, value: value):
    """Copy a GGUF file through gguf's own reader and writer, letting `change(name, array, type)`
    replace a tensor's data and type and `change_field(name, value)` a metadata value."""
    import gguf

    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=reader.get_field(gguf.Keys.General.ARCHITECTURE).contents())
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        value_type = field.types[0]
        value = change_field(field.name, field.contents())
        if value_type == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(field.name, value, value_type, sub_type=field.types[-1])
        else:
            writer.add_key_value(field.name, value, value_type)
    for t in reader.tensors:
        data, qtype = change(t.name, gguf.quants.dequantize(t.data, t.tensor_type), t.tensor_type)
        writer.add_tensor(t.name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_tensor_type_is_named(tmp_path, tiny_gguf):
    import gguf

    iq4_nl = gguf.GGMLQuantizationType.IQ4_NL  # blocks of Q4_0's size, so the file is well formed but for the type

    def to_iq4_nl(name, values, qtype):
        if name == "blk.0.attn_q.weight":
            return gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_0), iq4_nl
        return gguf.quants.quantize(values, qtype) if qtype != 0 else values, qtype

    _rewrite(tiny_gguf("q8_0"), tmp_path / "iq4_nl.gguf", to_iq4_nl)
    with pytest.raises(ModelFileError, match=r"blk\.0\.attn_q\.weight: tensor type IQ4_NL is not supported \(supported: f32, "):
        edgegemma.load(tmp_path / "iq4_nl.gguf")


def test_wrong_tensor_shape_is_named(tmp_path, tiny_gguf):
    import gguf

    def shrink(name, values, qtype):
        values = values[:32] if name == "blk.1.ffn_up.weight" else values
        return (gguf.quants.quantize(values, qtype) if qtype != 0 else values), qtype

    _rewrite(tiny_gguf("q8_0"), tmp_path / "shape.gguf", shrink)
    with pytest.raises(ModelFileError, match=r"blk\.1\.ffn_up\.weight has shape \(32, 64\), expected \(96, 64\)"):
        edgegemma.load(tmp_path / "shape.gguf")


def _same_tensors(name, values, qtype):
    import gguf

    return (gguf.quants.quantize(values, qtype) if qtype != 0 else values), qtype


@pytest.mark.parametrize("change, message", [
    (lambda name, v: v[:-1] if name == F.KEY_EXACT_TOKEN_ROWS else v, r"\d+ values for \d+ rows of 64"),
    (lambda name, v: v[::-1] if name == F.KEY_EXACT_TOKEN_IDS else v, r"the ids are not sorted, unique token ids below 384"),
    (lambda name, v: v[:-1] + [384] if name == F.KEY_EXACT_TOKEN_IDS else v, r"the ids are not sorted, unique token ids below 384"),
])
def test_corrupt_exact_token_rows_are_named(change, message, tmp_path, tiny_gguf):
    _rewrite(tiny_gguf("q4_0"), tmp_path / "exact.gguf", _same_tensors, change)
    with pytest.raises(ModelFileError, match=re.escape(F.KEY_EXACT_TOKEN_IDS) + ".*" + message):
        edgegemma.load(tmp_path / "exact.gguf")


def test_exact_token_rows_replace_the_4bit_rows(tiny_checkpoint, tiny_gguf):
    """Ids the file keeps exact embed as the checkpoint's float32 rows; the rest as their Q4_0 blocks."""
    import gguf
    from safetensors.numpy import load_file

    path = tiny_gguf("q4_0")
    model = edgegemma.load(path).model
    kept = model.weights.exact_token_ids
    table = load_file(tiny_checkpoint / "model.safetensors")["embed_tokens.weight"]
    blocks = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    stored = gguf.quants.dequantize(np.asarray(blocks.data), blocks.tensor_type)
    ids = np.arange(table.shape[0])
    exact = np.isin(ids, kept)
    assert exact.any() and not exact.all()
    x = model.embed(np.concatenate([ids, ids[::-1]]))[: len(ids)]
    np.testing.assert_array_equal(x[exact], table[exact])
    np.testing.assert_array_equal(x[~exact], stored[~exact])
    assert np.abs(stored[exact] - table[exact]).max() > 0  # the 4-bit rows they replace do differ


def test_load_without_a_path_opens_the_default_model(tmp_path, monkeypatch, tiny_gguf):
    from edgegemma import cache

    monkeypatch.setenv("EDGEGEMMA_HOME", str(tmp_path))
    with pytest.raises(ModelFileError, match="no default model.*edgegemma pull"):
        edgegemma.load()
    cache.set_default(tiny_gguf("q8_0"))
    assert edgegemma.load().path == tiny_gguf("q8_0").resolve()
