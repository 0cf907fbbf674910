"""The GGUF constants the runtime keeps of its own (edgegemma.gguf_spec, kernels.blocks' type table, formats' tensor
names) are the `gguf` package's, value for value; and loading a model and answering a query imports no gguf."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import gguf

from edgegemma import formats as F
from edgegemma import gguf_spec
from edgegemma.kernels import blocks


def members(enum) -> dict[str, int]:
    return {m.name: int(m) for m in enum}


def test_file_constants_and_enums_are_the_packages():
    assert gguf_spec.GGUF_MAGIC == gguf.GGUF_MAGIC
    assert gguf_spec.GGUF_DEFAULT_ALIGNMENT == gguf.GGUF_DEFAULT_ALIGNMENT
    for name in ("GGUFValueType", "TokenType", "PoolingType"):
        assert members(getattr(gguf_spec, name)) == members(getattr(gguf, name)), name


def test_every_metadata_key_is_the_packages():
    groups = [g for g in vars(gguf_spec.Keys) if not g.startswith("_")]
    assert groups, "no key groups found"
    for group in groups:
        ours = {k: v for k, v in vars(getattr(gguf_spec.Keys, group)).items() if not k.startswith("_")}
        assert ours, group
        for name, value in ours.items():
            assert value == getattr(getattr(gguf.Keys, group), name), f"Keys.{group}.{name}"


def test_the_type_table_is_ggmls():
    assert members(blocks.GGMLQuantizationType) == members(gguf.GGMLQuantizationType)
    ours = {t.name: sizes for t, sizes in blocks.GGML_QUANT_SIZES.items()}
    assert ours == {t.name: sizes for t, sizes in gguf.GGML_QUANT_SIZES.items()}
    for t, qt in blocks.QUANT_TYPES.items():  # the supported types, as the converter hands them to gguf
        assert (qt.label, qt.block_size, qt.type_size) == (gguf.GGMLQuantizationType(t).name, *gguf.GGML_QUANT_SIZES[t])
        assert blocks.QUANT_TYPES[gguf.GGMLQuantizationType(int(t))] is qt  # gguf's members look ours up


def test_tensor_names_are_llama_cpps():
    arch = gguf.MODEL_ARCH.GEMMA_EMBEDDING
    assert F.ARCH == gguf.MODEL_ARCH_NAMES[arch]
    names = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    ours = [F.TOKEN_EMBD, F.OUTPUT_NORM, F.DENSE_2, F.DENSE_3, *F.BLOCK_TENSORS]
    assert set(ours) <= names, set(ours) - names
    T = gguf.MODEL_TENSOR
    assert (F.DENSE_2, F.DENSE_3, F.FFN_NORM, F.ATTN_OUT) == tuple(
        gguf.TENSOR_NAMES[t] for t in (T.DENSE_2_OUT, T.DENSE_3_OUT, T.FFN_PRE_NORM, T.ATTN_OUT))


PROBE = """
    import json, sys
    import edgegemma
    model = edgegemma.load(sys.argv[1])
    vector = model.encode_query("Which planet is known as the Red Planet?")
    print(json.dumps({"dim": len(vector), "imported": sorted(m for m in sys.modules if m.split(".")[0] == "gguf"
                                                           or m.startswith("edgegemma.converter"))}))
"""


def test_loading_and_a_query_import_no_gguf(model_file):
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEGEMMA_COMPILE", "EDGEGEMMA_BACKEND")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE), str(model_file)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["dim"] > 0 and report["imported"] == [], report
