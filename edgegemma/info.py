"""`edgegemma info FILE`: what a GGUF file holds — where it comes from, architecture, sizes, the type of each
tensor group, the tokenizer's source, prompts and bytes on disk. Reads only the header (the weights stay on
disk), so it is instant."""
from __future__ import annotations

import argparse
import json
import struct
import sys
from collections import defaultdict
from pathlib import Path

PROG = "edgegemma info"


def _type_name(ggml_type: int) -> str:
    from gguf import GGMLQuantizationType

    from . import formats as F

    try:
        return F.quant_type(ggml_type).name
    except ValueError:
        try:
            return GGMLQuantizationType(ggml_type).name.lower()
        except ValueError:
            return f"type{ggml_type}"


def origin(meta: dict) -> str:
    """Which tool wrote the file, from its metadata: edgegemma's converter names itself; llama.cpp's
    convert_hf_to_gguf.py is known by the general.basename / general.size_label keys its metadata step writes;
    general.quantized_by names who quantized it (Unsloth's files, for one)."""
    from gguf import Keys, LlamaFileType

    from . import formats as F

    if F.KEY_CONVERTER_VERSION in meta:
        made = f"edgegemma converter {_text(meta, F.KEY_CONVERTER_VERSION) or '?'}"
        quantizer = _text(meta, F.KEY_QUANTIZER)
        made += f" (recipe {_text(meta, F.KEY_RECIPE) or '?'}" + (f", quantizer {quantizer})" if quantizer else ")")
    elif Keys.General.BASENAME in meta or Keys.General.SIZE_LABEL in meta:
        made = "llama.cpp's convert_hf_to_gguf.py"
    else:
        made = "unknown converter (no edgegemma or llama.cpp metadata)"
    file_type = meta.get(Keys.General.FILE_TYPE)
    if isinstance(file_type, int) and F.KEY_RECIPE not in meta:
        try:
            made += f", file type {LlamaFileType(file_type).name.removeprefix('MOSTLY_')}"
        except ValueError:
            made += f", file type {file_type}"
    if Keys.General.QUANTIZED_BY in meta:
        made += f", quantized by {_text(meta, Keys.General.QUANTIZED_BY) or '?'}"
    for key in (Keys.General.REPO_URL, Keys.General.SOURCE_URL, Keys.General.URL):
        if isinstance(meta.get(key), str):
            made += f", from {meta[key]}"
            break
    return made


def describe(path: str | Path) -> dict:
    """Everything `info` shows, as plain data (`--json` prints exactly this)."""
    from gguf import Keys

    from . import formats as F
    from .config import Config
    from .gguf_file import GGUFFile, ModelFileError
    from .prompts import file_prompts, prompts_for
    from .tokenizer import FROM_MODEL, tokenizer_source

    path = Path(path)
    file = GGUFFile(path)
    meta = file.metadata
    with open(path, "rb") as f:
        version = struct.unpack("<I", f.read(8)[4:])[0]
    groups: dict[tuple[str, str], dict] = defaultdict(lambda: {"tensors": 0, "bytes": 0, "shape": None})
    for info in file.tensors.values():
        kind, layer = F.tensor_kind(info.name)
        group = groups[(kind.replace("blk.{bid}.", "blk.*."), _type_name(info.ggml_type))]
        group["tensors"] += 1
        group["bytes"] += int(info.data.nbytes)
        group["shape"] = list(info.shape)
    try:
        config = Config.from_metadata(meta).__dict__
    except (KeyError, ValueError):
        config = None  # another architecture, or a file missing keys: show what there is
    source = tokenizer_source(meta)
    try:
        prompts = prompts_for(meta)
    except ValueError as err:
        raise ModelFileError(f"{path}: {err}") from None
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "gguf_version": version,
        "architecture": _text(meta, Keys.General.ARCHITECTURE),
        "name": _text(meta, Keys.General.NAME),
        "origin": origin(meta),
        "recipe": _text(meta, F.KEY_RECIPE),
        "converter_version": _text(meta, F.KEY_CONVERTER_VERSION),
        "config": config,
        "tokenizer": {
            "source": source,  # "sentencepiece model" (the checkpoint's, stored whole) or "gguf arrays" (rebuilt)
            "model": _text(meta, Keys.Tokenizer.MODEL),
            "tokens": _count(meta, Keys.Tokenizer.LIST),
            "key": F.KEY_TOKENIZER_MODEL if source == FROM_MODEL else Keys.Tokenizer.LIST,
        },
        "dense_head": all(F.tensor_name(k) in file.tensors for k in (F.DENSE_2, F.DENSE_3)),
        "tensor_count": len(file.tensors),
        "tensor_bytes": sum(g["bytes"] for g in groups.values()),
        "tensor_groups": [{"name": name, "type": qtype, **g} for (name, qtype), g in groups.items()],
        "prompts": prompts,
        "prompts_stored": file_prompts(meta) is not None,  # False: EmbeddingGemma's published prompts stand in
        "exact_token_rows": _count(meta, F.KEY_EXACT_TOKEN_IDS),
        "fine_token_rows": _count(meta, F.KEY_FINE_TOKEN_IDS),  # rows of a 4-bit table also stored in a finer type
        "fine_token_type": _type_name(meta[F.KEY_FINE_TOKEN_TYPE]) if isinstance(meta.get(F.KEY_FINE_TOKEN_TYPE), int) else None,
        "checksum": _text(meta, F.KEY_CHECKSUM),  # edgegemma's converter stores one; `--verify` checks it
        "checksum_verified": None,  # --verify: True (else the command fails); None: not checked, or no checksum  # rows of a 4-bit table also stored as float32
    }


def _extra_rows(d: dict) -> str:
    """The token table's rows stored beside it: '  + 280 rows exact (f32) + 15,000 rows q8_0'."""
    parts = [f"{d['exact_token_rows']} rows exact (f32)"] if d["exact_token_rows"] else []
    if d.get("fine_token_rows"):
        parts.append(f"{d['fine_token_rows']:,} rows {d['fine_token_type'] or '?'}")
    return "".join(f"  + {p}" for p in parts)


def _text(meta: dict, key: str) -> str | None:
    """A metadata string, or None when absent or not a string (a corrupt or foreign file)."""
    value = meta.get(key)
    return value if isinstance(value, str) else None


def _count(meta: dict, key: str) -> int:
    """The length of a metadata array; 0 when absent or not an array."""
    value = meta.get(key)
    return len(value) if hasattr(value, "__len__") and not isinstance(value, str) else 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_text(d: dict) -> str:
    lines = [f"file          {d['file']}  ({_mib(d['bytes'])}, {d['bytes']:,} bytes)"]
    lines.append(f"made by       {d['origin']}")
    lines.append(f"architecture  {d['architecture']} (GGUF v{d['gguf_version']})")
    c = d["config"]
    if c:
        lines.append(
            f"model         {c['hidden_size']}-d, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads "
            f"({c['num_key_value_heads']} kv) x {c['head_dim']}, ffn {c['intermediate_size']}, vocab {c['vocab_size']:,}, "
            f"context {c['max_position_embeddings']:,}, sliding window {c['sliding_window']}, "
            f"head {c['hidden_size']}->{c['dense_2_features']}->{c['hidden_size']}")
    t = d["tokenizer"]
    lines.append(f"tokenizer     {t['source']} ({t['key']}), {t['tokens']:,} tokens")
    if not d["dense_head"]:
        lines.append("dense head    missing (no dense_2/dense_3): edgegemma will not load this file; re-convert the checkpoint "
                     "with the head (llama.cpp: --sentence-transformers-dense-modules)")
    lines.append(f"tensors       {d['tensor_count']}, {_mib(d['tensor_bytes'])} of weights")
    width = max((len(g["name"]) for g in d["tensor_groups"]), default=10)
    for g in d["tensor_groups"]:
        shape = "x".join(map(str, g["shape"]))
        count = f"x{g['tensors']}" if g["tensors"] > 1 else ""
        lines.append(f"  {g['name']:<{width}}  {g['type']:<5} {count:>4}  {shape:<12} {_mib(g['bytes']):>10}"
                     + (_extra_rows(d) if g["name"] == "token_embd" else ""))
    lines.append(f"prompts       {len(d['prompts'])}" + (" (prompt_name: text)" if d["prompts"] else "")
                 + ("" if d["prompts_stored"] else ", EmbeddingGemma's: the file stores none"))
    width = max((len(n) for n in d["prompts"]), default=0)
    lines += [f"  {name:<{width}}  {text!r}" for name, text in d["prompts"].items()]
    if d["checksum"] is None:
        lines.append("checksum      none stored (files made by other converters carry none)")
    else:
        lines.append(f"checksum      {d['checksum']}"
                     + ("  verified: the file's bytes are those written" if d["checksum_verified"] else "  (--verify checks it)"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .gguf_file import ModelFileError

    try:
        d = describe(args.file)
        if args.verify and d["checksum"] is not None:
            from .integrity import verify

            d["checksum_verified"] = verify(args.file) is not None
    except ModelFileError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{PROG}: error: {args.file}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(json.dumps(d, indent=2, ensure_ascii=False) if args.json else format_text(d))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show what a GGUF file holds",
                       description="Origin, architecture, sizes, the storage type of each tensor group, the tokenizer's "
                                   "source, prompts and bytes on disk.")
    p.add_argument("file", metavar="FILE", help="a .gguf file")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("--verify", action="store_true",
                   help="also check the file's bytes against the checksum edgegemma's converter stores (reads the whole "
                        "file: ~0.2 s for 227 MiB); a mismatch is an error (exit 1)")
    p.set_defaults(handler=run)
