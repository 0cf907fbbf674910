"""`edgegemma convert` / `python -m edgegemma.converter`: run a conversion, turn bad input into one line and exit 1."""
from __future__ import annotations

import argparse
import logging
import sys

from tqdm import tqdm

from .errors import ConversionError
from .pipeline import convert

PROG = "edgegemma convert"


def run(args: argparse.Namespace) -> int:
    """The handler behind both entry points; returns the exit code."""
    # gguf.SpecialVocab warns about Gemma's tokenizer.json template (llama.cpp's converter prints the same); keep stderr for errors.
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    # Lines go to stdout above the progress bars (stderr), which tqdm redraws below them.
    report = lambda line: tqdm.write(line, file=sys.stdout)
    try:
        convert(args.src, args.output, args.type, force=args.force, quantizer=getattr(args, "quantizer", None),
                report=report, progress=True)
    except ConversionError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing written", file=sys.stderr)
        return 130
    return 0
