"""The real model against sentence-transformers' own outputs (../shared/reference)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import edgegemma
from edgegemma import kernels
from edgegemma.kernels import numpy_backend

MODES = ("query", "document", "plain")
KINDS_ORDER = ("query", "sentence", "paragraph", "code", "edge", "long")


@pytest.fixture(scope="module")
def reference(reference_dir):
    ids = json.loads((reference_dir / "token_ids.json").read_text())
    texts = {}
    for line in (reference_dir / "texts.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts[row["id"]] = row
    order = ids["order"]
    return {
        "order": order,
        "texts": [texts[i]["text"] for i in order],
        "kinds": [texts[i]["kind"] for i in order],
        "prompts": ids["prompts"],
        "token_ids": {mode: [ids["token_ids"][i][mode] for i in order] for mode in MODES},
        "emb": lambda mode, dim=None: np.load(reference_dir / (f"emb_{mode}_fp32" + (f"_dim{dim}" if dim else "") + ".npy")),
    }


_EMBEDDED: dict = {}


def embed(model, reference, mode):
    """Each (file, mode) is embedded once per session: the backend test reuses the Q4_0 pass."""
    key = (str(model.path), mode)
    if key not in _EMBEDDED:
        _EMBEDDED[key] = model.encode(reference["texts"], prompt=reference["prompts"][mode], batch_size=32)
    return _EMBEDDED[key]


def cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def report(label, cos, kinds):
    by_kind = {k: cos[[i for i, x in enumerate(kinds) if x == k]] for k in KINDS_ORDER}
    cells = "  ".join(f"{k} {v.mean():.5f}/{v.min():.5f}" for k, v in by_kind.items() if len(v))
    print(f"\n{label}: mean {cos.mean():.6f} min {cos.min():.6f}  (per kind mean/min: {cells})")


def test_token_ids_match_reference(real_gguf, reference):
    model = edgegemma.load(real_gguf("q4_0"))
    for mode in MODES:
        got = model.tokenize(reference["texts"], prompt=reference["prompts"][mode])
        mismatched = [reference["order"][i] for i, (g, e) in enumerate(zip(got, reference["token_ids"][mode])) if g != e]
        assert not mismatched, f"{mode}: token ids differ for {mismatched}"


# (recipe, mean at least, min at least): the bars. Q4_0 and mixed: not worse than llama.cpp's Q4_0.
BARS = {
    "f32": (0.99999, 0.99999),
    "f16": (0.9999, 0.9999),
    "bf16": (0.9995, 0.9995),
    # Block types, with the default (gptq) quantizer and exact rows beside 4-bit tables, document mode.
    # Measured: q8_0 0.99996 / 0.99983, q4_0 0.98999 / 0.97158, mixed 0.99246 / 0.97462, e4_q8 0.99920 / 0.99619.
    "q8_0": (0.9997, 0.998),  # issue 6's bar
    "q4_0": (0.985, 0.95),  # issue 6's bar (llama.cpp's Q4_0: 0.968 / 0.870)
    "mixed": (0.99, 0.97),  # issue 6's bar
    "e4_q8": (0.999, 0.995),  # issue 6's bar (llama.cpp's Q4_0 table with Q8_0 weights: 0.9987 / 0.993)
}


# Every recipe in every mode is 21 passes over 205 texts. The prompt modes test the tokenizer and
# prompts, which token ids check for all modes anyway, so by default F32 runs all three modes and
# the other recipes document mode; EDGEGEMMA_FULL_REFERENCE=1 runs the whole matrix.
FULL = os.environ.get("EDGEGEMMA_FULL_REFERENCE") == "1"
ALL_MODES = ("f32",)
CASES = [
    pytest.param(recipe, mode, marks=() if FULL or recipe in ALL_MODES or mode == "document" else pytest.mark.skip(
        reason="set EDGEGEMMA_FULL_REFERENCE=1 for every recipe in every prompt mode"))
    for recipe in BARS for mode in MODES
]


@pytest.mark.parametrize("recipe, mode", CASES)
def test_embeddings_match_reference(recipe, mode, real_gguf, reference):
    model = edgegemma.load(real_gguf(recipe))
    mean_bar, min_bar = BARS[recipe]
    out = embed(model, reference, mode)
    cos = cosines(out, reference["emb"](mode))
    report(f"{recipe} {mode}", cos, reference["kinds"])
    assert cos.mean() >= mean_bar and cos.min() >= min_bar, f"{recipe} {mode}: mean {cos.mean():.6f} min {cos.min():.6f}"
    if recipe == "f32":
        # Matryoshka: the full vectors truncated by the runtime against the reference's truncations.
        for dim in (512, 256, 128):
            cut = out[:, :dim] / np.linalg.norm(out[:, :dim], axis=1, keepdims=True)
            direct = model.encode(reference["texts"][:8], prompt=reference["prompts"][mode], truncate_dim=dim)
            np.testing.assert_allclose(direct, cut[:8], atol=1e-5)
            cos_dim = cosines(cut, reference["emb"](mode, dim))
            assert cos_dim.min() >= 0.99999, f"f32 {mode} dim {dim}: min {cos_dim.min()}"


def test_model_card_example(real_gguf):
    model = edgegemma.load(real_gguf("f32"))
    query = model.encode_query("Which planet is known as the Red Planet?")
    documents = model.encode_document([
        "Venus is often called Earth's twin because of its similar size and proximity.",
        "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
        "Jupiter, the largest planet in our solar system, has a prominent red spot.",
        "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
    ])
    assert query.shape == (768,) and documents.shape == (4, 768)
    sims = model.similarity(query, documents)[0]
    print("\nmodel card similarities:", np.round(sims, 4))
    np.testing.assert_allclose(sims, [0.3011, 0.6359, 0.4930, 0.4889], atol=0.002)


def test_numba_and_numpy_backends_agree(real_gguf, reference, monkeypatch):
    """The numpy oracle against the compiled kernels, on every text, both ways the model runs: as it does here
    (where the CPU has AMX tiles, long texts' Q8_0 / Q4_0 products in bfloat16, which numpy rounds alike), and
    with every matmul in float32-exact designs (kernels.LONG_SEQUENCE 0)."""
    if kernels.BACKEND != "numba":
        pytest.skip("Numba is not the active backend here; nothing to compare")
    prompt = reference["prompts"]["document"]

    def with_numpy():
        with pytest.MonkeyPatch.context() as patch:
            for name in kernels.__all__:  # every kernel the model calls, and pack, which loading calls
                if callable(getattr(numpy_backend, name, None)):
                    patch.setattr(kernels, name, getattr(numpy_backend, name))
            return edgegemma.load(real_gguf("q4_0")).encode(reference["texts"], prompt=prompt, batch_size=32)

    as_run = cosines(embed(edgegemma.load(real_gguf("q4_0")), reference, "document"), with_numpy())
    exact = as_run
    if kernels.LONG_SEQUENCE:
        monkeypatch.setattr(kernels, "LONG_SEQUENCE", 0)
        exact = cosines(edgegemma.load(real_gguf("q4_0")).encode(reference["texts"], prompt=prompt, batch_size=32),
                        with_numpy())
    print(f"\nnumba vs numpy (q4_0, document): min cosine {as_run.min():.7f} as run, {exact.min():.7f} in float32")
    assert exact.min() >= 0.99999
    # Rounding to bfloat16 turns the backends' float32-level differences (~1e-7) into bfloat16-level ones (2^-9
    # an operand) as the layers go, each backend's as far from exact as the other's (each text within 4e-5 in
    # cosine of the float32 designs, measured): 0.99998 measured between them.
    assert as_run.min() >= 0.9999


def resident_kib(address: int) -> int:
    """Resident KiB of this process's mapping that starts at `address` (Linux's /proc/self/smaps)."""
    inside = False
    for line in open("/proc/self/smaps", encoding="ascii", errors="replace"):
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):
            inside = int(head.split("-")[0], 16) == address
        elif inside and head == "Rss:":
            return int(line.split()[1])
    raise LookupError(f"no mapping starts at {address:#x}")


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_a_loaded_model_keeps_little_of_its_file_resident(real_gguf):
    """Packed layer weights are read from the map once and their pages dropped, and the token table is read row by
    row with pread: after a query the map holds the norm vectors and the pages around them, not the 57 MiB of
    q4_0 layer weights (before packing: 58 MiB resident of the 177 MiB file)."""
    model = edgegemma.load(real_gguf("q4_0"))
    q = model.model.weights.layers[0].attn_q
    if q.packed is q.data:
        pytest.skip("the weights are read where they lie here (no integer design): their pages stay resident")
    model.encode_query("Which planet is known as the Red Planet?")
    resident = resident_kib(model.file._data_offset) * 1024
    print(f"\nresident of the q4_0 file after a query: {resident / 2**20:.1f} MiB of {model.path.stat().st_size / 2**20:.0f}")
    assert resident < model.path.stat().st_size / 10
