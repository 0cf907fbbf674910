"""The `edgegemma` command: one subcommand per job.

Each subcommand is a function that registers its parser and sets `handler`; add one to
SUBCOMMANDS to add a command. Handlers import what they need when they run, so
`edgegemma --help` stays fast and the runtime never imports the converter.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

RECIPE_HELP = ("f32, f16, bf16, q8_0, q4_0, mixed (e4_a8_f4_p4: attention Q8_0, embedding/FFN/head Q4_0) "
               "or e4_q8 (embedding table Q4_0, every other weight Q8_0)")
QUANTIZER_HELP = ("how Q4_0/Q8_0 blocks are filled; default: search for q8_0 and e4_q8, gptq for q4_0 and mixed. "
                  "Measured on e4_q8 (2-core machine, quiet; time, peak RAM, mean / min cosine to sentence-transformers): "
                  "search: scale search, no calibration: ~30 s, ~440 MiB, 0.99913 / 0.99604; "
                  "gptq: GPTQ error compensation from the float model's activations on ~25,000 tokens of calibration "
                  "text: ~3 min, ~970 MiB, 160 MB of statistics cached for the next conversion, 0.99920 / 0.99618; "
                  "imatrix: the scale search weighted by the same statistics: ~2.5 min, ~970 MiB, 0.99918 / 0.99624; "
                  "ggml: ggml's max rule, byte for byte what llama.cpp writes: ~10 s, ~440 MiB, 0.99887 / 0.99382")


def _convert(args: argparse.Namespace) -> int:
    from edgegemma.converter.cli import run  # the converter (and safetensors) load only for this command

    return run(args)


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="Hugging Face checkpoint -> GGUF file",
        description="Convert a sentence-transformers EmbeddingGemma folder into a GGUF file llama.cpp reads too.",
    )
    p.add_argument("src", help="sentence-transformers checkpoint folder (config.json, model.safetensors, 1_Pooling/, 2_Dense/, 3_Dense/, ...)")
    p.add_argument("-o", "--output", required=True, help="the .gguf file to write")
    # Checked by the converter, not by argparse `choices`, so a wrong type exits 1 like every other bad input.
    p.add_argument("--type", required=True, metavar="TYPE", help=RECIPE_HELP)
    p.add_argument("--quantizer", metavar="RULE", default=None, help=QUANTIZER_HELP)
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    p.set_defaults(handler=_convert)


from . import cache_cli, embed_cli, info, pull, server  # noqa: E402  (their registrations; handlers import the rest lazily)

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    pull.register, embed_cli.register, info.register, server.register, add_convert, cache_cli.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgegemma", description="EmbeddingGemma-300m on a CPU.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except BrokenPipeError:  # `edgegemma info FILE | head` closed stdout: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush fails silently too
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
