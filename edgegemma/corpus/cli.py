"""`edgegemma embed` for corpora: the options it adds, when they apply, and the run.

    edgegemma embed --input notes/ --glob '**/*.md' --prompt-name document --output notes.parquet
    edgegemma embed --input dump.parquet --column body --id-column doc_id --output vectors.parquet
    edgegemma embed --input dump.parquet --output vectors.parquet --dask tcp://scheduler:8786

A file or folder --input with an --output file takes this path: the output is written in parts as it goes and a
rerun of the same command resumes an interrupted run. Texts given as arguments or on stdin, or printed to
stdout, take embed_cli's path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .readers import DEFAULT_COLUMN, DEFAULT_GLOBS, CorpusError

PROG = "edgegemma embed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "corpora", "an --input file or folder with an --output file is embedded in parts (OUT.parts/ beside the "
                   "output) and a rerun of the same command resumes where an interrupted run stopped")
    group.add_argument("--column", metavar="NAME", help=f"the text field of .jsonl / column of .parquet input (default {DEFAULT_COLUMN!r})")
    group.add_argument("--id-column", metavar="NAME", help="the id field/column of .jsonl / .parquet input (default: the row number)")
    group.add_argument("--glob", action="append", metavar="PATTERN",
                       help=f"files of a folder --input to embed, one text each (default {' and '.join(DEFAULT_GLOBS)}; repeatable)")
    group.add_argument("--part-size", type=int, default=None, metavar="N", help="texts per part written (default 1024)")
    group.add_argument("--dask", metavar="ADDRESS", help="embed on a Dask cluster (scheduler address, e.g. tcp://host:8786); "
                                                         "the model file must be at the same path on every worker")


def wanted(args: argparse.Namespace) -> bool:
    """Whether this run is a corpus run: a corpus option, a .parquet --input, or an --input file/folder with an
    --output file."""
    if any(getattr(args, name, None) is not None for name in ("column", "id_column", "glob", "part_size", "dask")):
        return True
    if not args.input or args.input == "-":
        return False
    # A .parquet file is never read as lines of text; a folder without --output gets embed_cli's "is a directory".
    return Path(args.input).suffix.lower() == ".parquet" or bool(args.output)


def run(args: argparse.Namespace) -> int:
    from .. import cache
    from ..gguf_file import ModelFileError

    try:
        return _run(args)
    except (CorpusError, cache.NoModelError, ModelFileError, ValueError, TypeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{PROG}: error: {err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; the finished parts are kept: rerun the same command to resume", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from .. import cache
    from .encoding import EncodeOptions
    from .outputs import output_format
    from .pipeline import DEFAULT_PART_SIZE, embed_corpus
    from .readers import open_source

    if args.texts:
        raise CorpusError("give texts as arguments or with --input, not both")
    if not args.input or args.input == "-":
        raise CorpusError("--column, --id-column, --glob, --part-size and --dask need an --input file or folder")
    if not args.output:
        raise CorpusError("a corpus run writes an --output file (.parquet, .npy or .jsonl), in parts, so that it can resume")
    output = Path(args.output)
    output_format(output)
    if not output.resolve().parent.is_dir():
        raise CorpusError(f"cannot write {output}: no such folder")
    if args.title is not None and args.prompt_name not in (None, "document"):
        raise CorpusError(f"--title goes with the document prompt, not --prompt-name {args.prompt_name}")
    part_size = args.part_size if args.part_size is not None else DEFAULT_PART_SIZE
    if part_size < 1:
        raise CorpusError(f"--part-size must be a positive integer, got {part_size}")
    model_path = cache.resolve_model(args.model)
    source = open_source(args.input, args.column, args.id_column, args.glob)
    options = EncodeOptions(prompt_name=args.prompt_name, title=args.title, batch_size=args.batch_size, truncate_dim=args.dim)
    embedder = None
    if args.dask:
        from ..dask import ClusterEmbedder

        embedder = ClusterEmbedder.connect(args.dask, model_path, options)
    show = args.progress if args.progress is not None else _terminal()
    try:  # the model goes as a path: embed_corpus loads it, and lets it go before joining the parts
        summary = embed_corpus(source, output, model_path, options, embedder, part_size=part_size, show_progress=show)
    finally:
        if embedder is not None:
            embedder.close()
    if show:
        print(f"{PROG}: {summary.rows} texts in {output}; {summary.embedded} embedded in {summary.seconds:.1f} s "
              f"({summary.rate:.1f} texts/s)", file=sys.stderr)
    return 0


def _terminal() -> bool:
    from ..progress import is_terminal

    return is_terminal()
