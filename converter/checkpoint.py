"""Open a sentence-transformers EmbeddingGemma folder and hand out its tensors under llama.cpp's names.

Everything that can be checked before writing is checked here, from the files' headers alone:
the files exist, config.json describes a Gemma3TextModel that llama.cpp's `gemma-embedding`
can run, pooling is mean, the two Dense layers chain up, and every tensor is present with the
shape config.json implies. The weights themselves are read later, a chunk of rows at a time
(`Checkpoint.read`), and checked for NaN/Inf then.

Checkpoint fix-ups live in `sanitize`, the one place the stored values differ from Hugging Face's:
Gemma's RMSNorm computes x·(1 + w), and llama.cpp stores 1 + w (convert_hf_to_gguf.py,
Gemma3Model.norm_shift), so every tensor whose name ends in `norm.weight` gets +1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np
from gguf import PoolingType

from edgegemma import formats as F
from edgegemma.prompts import CARD_TASK_PROMPTS

from .errors import ConversionError

ARCHITECTURE = "Gemma3TextModel"
MODEL_TYPE = "gemma3_text"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.model", "config_sentence_transformers.json")
# When modules.json is missing we assume EmbeddingGemma's own layout.
DEFAULT_MODULES = [
    {"path": "", "type": "sentence_transformers.models.Transformer"},
    {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    {"path": "3_Dense", "type": "sentence_transformers.models.Dense"},
    {"path": "4_Normalize", "type": "sentence_transformers.models.Normalize"},
]
DENSE_NAMES = (F.DENSE_2, F.DENSE_3)  # the only projection layers llama.cpp knows
READABLE_DTYPES = ("F32", "F16")  # numpy has no bf16; safetensors' numpy reader refuses it


@dataclass(frozen=True)
class Hparams:
    """The fields of config.json the GGUF file needs, under Hugging Face's names."""

    vocab_size: int | None
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    sliding_window: int  # as written in config.json (transformers may adjust it on load; llama.cpp wants this one)
    sliding_window_pattern: int  # every n-th layer is full attention, the others sliding
    rms_norm_eps: float
    rope_theta: float  # full-attention layers
    rope_local_base_freq: float  # sliding-window layers


@dataclass(frozen=True)
class Dense:
    name: str  # GGUF base name: dense_2
    path: str  # folder: 2_Dense
    in_features: int
    out_features: int


@dataclass(frozen=True)
class TensorSource:
    """One tensor of the output: where it comes from, and its shape (numpy order) in the GGUF file."""

    name: str  # GGUF name: blk.0.attn_q.weight
    hf_name: str  # name in the safetensors file
    file: Path
    shape: tuple[int, ...]


@dataclass
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    hparams: Hparams
    pooling: PoolingType
    dense: list[Dense]
    prompts: dict[str, str]  # name -> text, in file order
    tensors: list[TensorSource] = field(default_factory=list)

    def read(self, source: TensorSource, max_values: int = 1 << 22) -> Iterator[np.ndarray]:
        """The tensor as float32 chunks of whole rows (at most ~max_values each), sanitized.

        The file is opened again for every chunk: safetensors memory-maps it, and the pages a
        chunk touched count against our RSS until the map is closed.
        """
        from safetensors import safe_open

        rows = source.shape[0]
        step = rows if len(source.shape) == 1 else max(1, max_values // int(np.prod(source.shape[1:])))
        for start in range(0, rows, step):
            with safe_open(source.file, framework="np") as f:
                chunk = f.get_slice(source.hf_name)[start:min(rows, start + step)]
            chunk = np.asarray(chunk, dtype=np.float32)
            if not np.isfinite(chunk).all():
                bad = np.argwhere(~np.isfinite(chunk))[0]
                bad[0] += start
                raise ConversionError(
                    f"{_rel(self.folder, source.file)}: tensor {source.hf_name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})"
                )
            yield sanitize(source.hf_name, chunk)

    def trim_vocab(self, n_vocab: int) -> None:
        """Keep the first n_vocab rows of the embedding table, as llama.cpp does (one per token of the vocabulary)."""
        for i, t in enumerate(self.tensors):
            if t.name == F.tensor_name(F.TOKEN_EMBD):
                if t.shape[0] < n_vocab:
                    raise ConversionError(
                        f"model.safetensors: tensor {t.hf_name} has {t.shape[0]} rows, fewer than the {n_vocab} tokens of the vocabulary")
                self.tensors[i] = TensorSource(t.name, t.hf_name, t.file, (n_vocab, *t.shape[1:]))


def sanitize(hf_name: str, chunk: np.ndarray) -> np.ndarray:
    """Hugging Face values -> llama.cpp values. Norms: Gemma's x·(1 + w) stored as 1 + w."""
    if hf_name.endswith("norm.weight"):
        return chunk + np.float32(1.0)
    return chunk


# --- opening and validating ------------------------------------------------------------

def _rel(folder: Path, path: Path) -> str:
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    if not path.is_file():
        raise ConversionError(f"{folder}: missing file {name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def _field(config: dict, key: str, kind: type | tuple[type, ...], default: Any = ..., where: str = "config.json") -> Any:
    value = config.get(key, default)
    if value is ...:
        raise ConversionError(f"{where}: missing field {key!r}")
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ConversionError(f"{where}: field {key!r} is {value!r}, expected a number")
    return value


def read_hparams(config: dict) -> Hparams:
    """Check config.json describes what llama.cpp's gemma-embedding runs, and take its numbers."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if ARCHITECTURE not in archs or model_type != MODEL_TYPE:
        found = ", ".join(map(str, archs)) or "no architectures"
        raise ConversionError(
            f"config.json: this is {found} (model_type {model_type!r}), not an EmbeddingGemma checkpoint "
            f"({ARCHITECTURE}, model_type {MODEL_TYPE!r})"
        )
    ints = {k: _field(config, k, int) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")}
    for k, v in ints.items():
        if v <= 0:
            raise ConversionError(f"config.json: field {k!r} is {v}, expected a positive integer")

    # What the GGUF file has no key for must be what llama.cpp assumes.
    fixed = {
        "hidden_activation": ("gelu_pytorch_tanh", "llama.cpp's gemma-embedding uses tanh-approximated GELU"),
        "attn_logit_softcapping": (None, "Gemma 3 has no attention softcapping"),
        "rope_scaling": (None, "llama.cpp's gemma-embedding has no RoPE scaling"),
        "query_pre_attn_scalar": (ints["head_dim"], "llama.cpp scales attention by 1/sqrt(head_dim)"),
    }
    for key, (want, why) in fixed.items():
        if key in config and config[key] != want:
            raise ConversionError(f"config.json: {key} is {config[key]!r}, expected {want!r} ({why})")
    if config.get("use_bidirectional_attention") is False:
        raise ConversionError("config.json: use_bidirectional_attention is false; an embedding model attends both ways")
    if ints["num_attention_heads"] % ints["num_key_value_heads"]:
        raise ConversionError(
            f"config.json: num_attention_heads {ints['num_attention_heads']} is not a multiple of num_key_value_heads {ints['num_key_value_heads']}")

    return Hparams(
        vocab_size=_field(config, "vocab_size", int, None),
        **ints,
        sliding_window_pattern=_sliding_window_pattern(config, ints["num_hidden_layers"]),
        rms_norm_eps=float(_field(config, "rms_norm_eps", (int, float), 1e-6)),
        rope_theta=float(_field(config, "rope_theta", (int, float), 1_000_000.0)),
        rope_local_base_freq=float(_field(config, "rope_local_base_freq", (int, float), 10_000.0)),
    )


def _sliding_window_pattern(config: dict, n_layers: int) -> int:
    """n such that layer i is full attention iff (i + 1) % n == 0; from the field, or from layer_types."""
    pattern = config.get("_sliding_window_pattern", config.get("sliding_window_pattern"))
    layer_types = config.get("layer_types")
    if layer_types is not None:
        if len(layer_types) != n_layers or not set(layer_types) <= {"sliding_attention", "full_attention"}:
            raise ConversionError(f"config.json: layer_types must list {n_layers} of sliding_attention/full_attention")
        full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
        derived = full[0] + 1 if full else n_layers + 1
        if pattern is None:
            pattern = derived
        expected = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
        if layer_types != expected:
            raise ConversionError(
                f"config.json: layer_types is not 'every {pattern}th layer full attention', the only pattern llama.cpp's gemma-embedding knows")
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern <= 0:
        raise ConversionError("config.json: needs _sliding_window_pattern or layer_types")
    return pattern


def _modules(folder: Path) -> list[dict]:
    if not (folder / "modules.json").is_file():
        return DEFAULT_MODULES
    modules = _read_json(folder, "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ConversionError("modules.json: expected a list of {path, type} entries")
    return modules


def _pooling(folder: Path, modules: list[dict]) -> PoolingType:
    paths = [m.get("path", "") for m in modules if m["type"].endswith(".Pooling")]
    if len(paths) != 1:
        raise ConversionError(f"modules.json: expected one Pooling module, found {len(paths)}")
    name = f"{paths[0]}/config.json"
    config = _read_json(folder, name)
    modes = sorted(k.removeprefix("pooling_mode_") for k, v in config.items() if k.startswith("pooling_mode_") and v)
    if modes != ["mean_tokens"]:
        raise ConversionError(f"{name}: pooling mode is {' + '.join(modes) or 'none'}; only mean pooling is supported")
    if config.get("include_prompt") is False:
        raise ConversionError(f"{name}: include_prompt is false; llama.cpp pools over every token, prompt included")
    return PoolingType.MEAN


def _dense_layers(folder: Path, modules: list[dict], hidden: int) -> list[Dense]:
    dense = []
    for m in modules:
        if not m["type"].endswith(".Dense"):
            continue
        path = m.get("path", "")
        name = "dense_" + path.split("_")[0]  # 2_Dense -> dense_2, as llama.cpp names it
        if name not in DENSE_NAMES:
            raise ConversionError(f"modules.json: Dense module at {path!r}; llama.cpp only knows 2_Dense and 3_Dense")
        where = f"{path}/config.json"
        config = _read_json(folder, where)
        if config.get("bias", False):
            raise ConversionError(f"{where}: has a bias; llama.cpp's dense layers have none")
        act = config.get("activation_function", "torch.nn.modules.linear.Identity")
        if act.rsplit(".", 1)[-1] != "Identity":
            raise ConversionError(f"{where}: activation is {act}; llama.cpp's dense layers have none")
        dense.append(Dense(name, path, _field(config, "in_features", int, where=where), _field(config, "out_features", int, where=where)))
    if [d.name for d in dense] != list(DENSE_NAMES):
        raise ConversionError(f"modules.json: expected Dense modules 2_Dense then 3_Dense, found {[d.path for d in dense]}")
    width = hidden
    for d in dense:
        if d.in_features != width:
            raise ConversionError(f"{d.path}/config.json: in_features is {d.in_features}, expected {width} (the size before it)")
        width = d.out_features
    return dense


def _prompts(folder: Path) -> dict[str, str]:
    """The checkpoint's prompts, in file order, then the card's task prompts it does not name (its config names
    prompts after MTEB's task types; the card's plain names let users find them by task)."""
    config = _read_json(folder, "config_sentence_transformers.json")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ConversionError("config_sentence_transformers.json: prompts must map names to strings")
    return prompts | {name: text for name, text in CARD_TASK_PROMPTS.items() if name not in prompts}


def _headers(file: Path, folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors header, without reading the data."""
    from safetensors import safe_open

    if not file.is_file():
        raise ConversionError(f"{folder}: missing file {_rel(folder, file)}")
    try:
        with safe_open(file, framework="np") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError (and others) for a damaged file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"{_rel(folder, file)}: not a valid safetensors file ({reason})") from None


def expected_tensors(hp: Hparams, n_vocab: int, dense: list[Dense]) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """(GGUF name, file, HF name, shape) for every tensor, in the order they are written."""
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA_EMBEDDING, hp.num_hidden_layers)
    h, hd, ffn = hp.hidden_size, hp.head_dim, hp.intermediate_size
    q, kv = hp.num_attention_heads * hd, hp.num_key_value_heads * hd
    per_layer = {  # HF name under layers.N -> shape, in formats.BLOCK_TENSORS order
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_norm.weight": (hd,),
        "self_attn.k_norm.weight": (hd,),
        "self_attn.o_proj.weight": (h, q),
        "post_attention_layernorm.weight": (h,),
        "pre_feedforward_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (ffn, h),
        "mlp.up_proj.weight": (ffn, h),
        "mlp.down_proj.weight": (h, ffn),
        "post_feedforward_layernorm.weight": (h,),
    }
    hf = [("embed_tokens.weight", (n_vocab, h))]
    hf += [(f"layers.{i}.{k}", shape) for i in range(hp.num_hidden_layers) for k, shape in per_layer.items()]
    hf += [("norm.weight", (h,))]
    out = []
    for hf_name, shape in hf:
        name = name_map.get_name(hf_name, try_suffixes=(".weight",))
        assert name is not None, hf_name
        out.append((name, "model.safetensors", hf_name, shape))
    for d in dense:
        out.append((F.tensor_name(d.name), f"{d.path}/model.safetensors", "linear.weight", (d.out_features, d.in_features)))
    return out


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """Validate a sentence-transformers EmbeddingGemma folder from its headers; raises ConversionError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            raise ConversionError(f"{folder}: missing file {name}")
    config = _read_json(folder, "config.json")
    hp = read_hparams(config)
    modules = _modules(folder)
    ckpt = Checkpoint(
        folder=folder, config=config, hparams=hp,
        pooling=_pooling(folder, modules),
        dense=_dense_layers(folder, modules, hp.hidden_size),
        prompts=_prompts(folder),
    )
    n_vocab = hp.vocab_size
    headers: dict[str, dict] = {}
    for gguf_name, file, hf_name, shape in expected_tensors(hp, n_vocab or 0, ckpt.dense):
        if file not in headers:
            headers[file] = _headers(folder / file, folder)
        found = headers[file].pop(hf_name, None)
        if found is None:
            raise ConversionError(f"{file}: tensor {hf_name} is missing")
        dtype, found_shape = found
        if hf_name == "embed_tokens.weight":  # may hold more rows than the vocabulary: see trim_vocab
            ok = len(found_shape) == 2 and found_shape[1] == shape[1] and found_shape[0] >= (n_vocab or 0)
            want = f"[{n_vocab or 'n_vocab'}, {shape[1]}]"
        else:
            ok, want = found_shape == shape, str(list(shape))
        if not ok:
            raise ConversionError(f"{file}: tensor {hf_name} has shape {list(found_shape)}, expected {want} (from config.json)")
        if hf_name == "embed_tokens.weight":
            shape = found_shape
        if dtype not in READABLE_DTYPES:
            raise ConversionError(f"{file}: tensor {hf_name} is {dtype}; only {' and '.join(READABLE_DTYPES)} checkpoints are supported")
        ckpt.tensors.append(TensorSource(gguf_name, hf_name, folder / file, shape))
    for file, left in headers.items():
        if left:
            raise ConversionError(f"{file}: unexpected tensor {next(iter(left))} (not part of {ARCHITECTURE})")
    return ckpt
