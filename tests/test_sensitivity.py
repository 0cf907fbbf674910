"""bench.sensitivity, the development tool that ranks tensor groups by the damage quantizing them does,
on the tiny checkpoint: every group moves the embeddings, 4-bit more than 8-bit, and the model is left as it was."""
from __future__ import annotations

import numpy as np

import edgegemma
from bench import sensitivity
from edgegemma.formats import QUANT_TYPES_BY_NAME


def test_every_group_is_measured_and_4_bit_hurts_more(tiny_gguf):
    model = edgegemma.load(tiny_gguf("f32"))
    texts = ["A short sentence about rivers.", "def f(x):\n    return x * 2", "Der Zug hatte Verspätung."]
    before = model.encode(texts, prompt_name="document")
    errors = {name: {label: (mean, worst) for label, mean, worst, _ in
                     sensitivity.measure(model, texts, QUANT_TYPES_BY_NAME[name], "search")}
              for name in ("q8_0", "q4_0")}
    n_layers = model.config.num_hidden_layers
    assert set(errors["q4_0"]) == set(sensitivity.groups(n_layers)) == set(errors["q8_0"])
    assert len(errors["q4_0"]) == len(sensitivity.KINDS) + -(-n_layers // 4)
    for label, (mean, worst) in errors["q4_0"].items():
        assert 0 < mean <= worst < 0.5, (label, mean, worst)  # quantizing moved the output, and not into noise
        assert errors["q8_0"][label][0] < mean, label
    np.testing.assert_array_equal(model.encode(texts, prompt_name="document"), before)


def test_command_line(tiny_gguf, tiny_checkpoint, capsys):
    assert sensitivity.main([str(tiny_gguf("f32")), "--checkpoint", str(tiny_checkpoint), "--quantizer", "imatrix",
                             "--type", "q4_0", "--texts", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "group" not in line]
    n_layers = edgegemma.load(tiny_gguf("f32")).config.num_hidden_layers
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(sensitivity.groups(n_layers))
