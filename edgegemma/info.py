"""`edgegemma info FILE`: what a GGUF file holds — architecture, sizes, the type of each tensor group,
prompts and bytes on disk. Reads only the header (the weights stay on disk), so it is instant."""
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


def describe(path: str | Path) -> dict:
    """Everything `info` shows, as plain data (`--json` prints exactly this)."""
    from gguf import Keys

    from . import formats as F
    from .config import Config
    from .gguf_file import GGUFFile

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
    except KeyError:
        config = None  # another architecture, or a file missing keys: show what there is
    names, texts = meta.get(F.KEY_PROMPT_NAMES, []), meta.get(F.KEY_PROMPT_TEXTS, [])
    return {
        "file": str(path),
        "bytes": path.stat().st_size,
        "gguf_version": version,
        "architecture": meta.get(Keys.General.ARCHITECTURE),
        "name": meta.get(Keys.General.NAME),
        "recipe": meta.get(F.KEY_RECIPE),
        "converter_version": meta.get(F.KEY_CONVERTER_VERSION),
        "config": config,
        "tensor_count": len(file.tensors),
        "tensor_bytes": sum(g["bytes"] for g in groups.values()),
        "tensor_groups": [{"name": name, "type": qtype, **g} for (name, qtype), g in groups.items()],
        "prompts": dict(zip(list(names), list(texts))),
        "exact_token_rows": len(meta.get(F.KEY_EXACT_TOKEN_IDS, [])),  # rows of a 4-bit table also stored as float32
    }


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_text(d: dict) -> str:
    lines = [f"file          {d['file']}  ({_mib(d['bytes'])}, {d['bytes']:,} bytes)"]
    extra = ", ".join(x for x in (f"recipe {d['recipe']}" if d["recipe"] else "",
                                  f"converter {d['converter_version']}" if d["converter_version"] else "") if x)
    lines.append(f"architecture  {d['architecture']} (GGUF v{d['gguf_version']})" + (f", {extra}" if extra else ""))
    c = d["config"]
    if c:
        lines.append(
            f"model         {c['hidden_size']}-d, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads "
            f"({c['num_key_value_heads']} kv) x {c['head_dim']}, ffn {c['intermediate_size']}, vocab {c['vocab_size']:,}, "
            f"context {c['max_position_embeddings']:,}, sliding window {c['sliding_window']}, "
            f"head {c['hidden_size']}->{c['dense_2_features']}->{c['hidden_size']}")
    lines.append(f"tensors       {d['tensor_count']}, {_mib(d['tensor_bytes'])} of weights")
    width = max((len(g["name"]) for g in d["tensor_groups"]), default=10)
    for g in d["tensor_groups"]:
        shape = "x".join(map(str, g["shape"]))
        count = f"x{g['tensors']}" if g["tensors"] > 1 else ""
        lines.append(f"  {g['name']:<{width}}  {g['type']:<5} {count:>4}  {shape:<12} {_mib(g['bytes']):>10}"
                     + (f"  + {d['exact_token_rows']} rows exact (f32)" if g["name"] == "token_embd" and d["exact_token_rows"] else ""))
    lines.append(f"prompts       {len(d['prompts'])}" + (" (prompt_name: text)" if d["prompts"] else ""))
    width = max((len(n) for n in d["prompts"]), default=0)
    lines += [f"  {name:<{width}}  {text!r}" for name, text in d["prompts"].items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .gguf_file import ModelFileError

    try:
        d = describe(args.file)
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
                       description="Architecture, sizes, the storage type of each tensor group, prompts and bytes on disk.")
    p.add_argument("file", metavar="FILE", help="a .gguf file")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(handler=run)
