"""`edgegemma embed`: texts in (arguments, stdin lines, a .txt or .jsonl file), vectors out (JSON lines or .npy).

    echo "Which planet is known as the Red Planet?" | edgegemma embed --prompt-name query
    edgegemma embed --input docs.jsonl --title "Solar system" --dim 256 --output docs.npy

Every failure is one line on stderr and exit code 1.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

from . import cache, text
from .corpus import cli as corpus_cli

PROG = "edgegemma embed"
PROGRESS_MIN_INPUTS = 256  # a bar for fewer inputs than this is noise


class InputError(Exception):
    """Bad input text or arguments; str() is the one line shown."""


def read_texts(args: argparse.Namespace) -> list[str]:
    """Texts from the arguments, else --input (.txt: one per non-blank line; .jsonl: the `text` field), else stdin lines.

    As the server: invalid UTF-8 and lone surrogates become U+FFFD (edgegemma.text); an empty or whitespace-only
    argument or "text" field is an error; a line-oriented input skips blank lines, and one with no text is an error."""
    if args.texts and args.input:
        raise InputError("give texts as arguments or with --input, not both")
    if args.texts:
        texts = [text.clean(t) for t in args.texts]  # argv's undecodable bytes arrive as lone surrogates
        for i, t in enumerate(texts, 1):
            if text.is_blank(t):
                raise InputError(f"argument {i} is {'empty' if not t else 'only whitespace'}; give the text to embed")
        return texts
    if args.input:
        path = Path(args.input)
        try:
            content = _stdin_text() if args.input == "-" else text.decode(path.read_bytes())
        except OSError as err:
            raise InputError(f"cannot read {path}: {err.strerror or err}") from None
        texts = _jsonl_texts(content, path) if path.suffix.lower() == ".jsonl" else _lines(content)
        if not texts:
            raise InputError(f"{'stdin' if args.input == '-' else path} holds no text (it is empty or only blank lines)")
        return texts
    if sys.stdin is None or sys.stdin.isatty():
        raise InputError("no input: give TEXT arguments, --input FILE, or pipe lines on stdin")
    texts = _lines(_stdin_text())
    if not texts:
        raise InputError("stdin is empty (or only blank lines): pipe one text per line, or give TEXT arguments")
    return texts


def _stdin_text() -> str:
    """All of stdin, its bytes decoded as every input is (a stream without bytes underneath: its text, cleaned)."""
    buffer = getattr(sys.stdin, "buffer", None)
    return text.decode(buffer.read()) if buffer is not None else text.clean(sys.stdin.read())


def _lines(content: str) -> list[str]:
    return [line for line in content.splitlines() if not text.is_blank(line)]


def _jsonl_texts(content: str, path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(content.splitlines(), 1):
        if text.is_blank(line):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f"{path}:{number}: expected an object with a string field \"text\"")
        if text.is_blank(record["text"]):
            raise InputError(f"{path}:{number}: the \"text\" field is empty or only whitespace")
        texts.append(text.clean(record["text"]))  # JSON's "\ud800" escapes give lone surrogates
    return texts


def _float_list(vector) -> str:
    """A float32 vector as a JSON array; 9 significant digits bring every float32 back exactly."""
    return "[" + ",".join(f"{v:.9g}" for v in vector.tolist()) + "]"


def write_output(path: str | None, texts: list[str], vectors, out=None) -> None:
    """JSON lines to `out` (stdout), or the file `path` (.jsonl or .npy), written whole or not at all: under a hidden
    name beside it, flushed to disk, then renamed; a full disk or a kill leaves no partial file under `path`."""
    import numpy as np

    if path and Path(path).suffix.lower() not in (".jsonl", ".json", ".npy"):
        raise InputError(f"{path}: unknown output format; use .jsonl (JSON lines) or .npy")
    if not path:
        _write_jsonl(out or sys.stdout, texts, vectors)
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if target.suffix.lower() == ".npy":  # through memory: a failed write then says why ("File too large")
                data = io.BytesIO()
                np.save(data, vectors)
                f.write(data.getbuffer())
            else:
                stream = io.TextIOWrapper(f, encoding="utf-8")
                _write_jsonl(stream, texts, vectors)
                stream.detach()  # f stays open, for the fsync
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}; nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_jsonl(stream, texts: list[str], vectors) -> None:
    for i, (t, vector) in enumerate(zip(texts, vectors)):
        stream.write(f'{{"index": {i}, "text": {json.dumps(t, ensure_ascii=False)}, "embedding": {_float_list(vector)}}}\n')
    stream.flush()


def _check_output_path(path: str | None) -> None:
    """Refuse a bad --output before spending time on the model."""
    if path and Path(path).suffix.lower() not in (".jsonl", ".json", ".npy"):
        raise InputError(f"{path}: unknown output format; use .jsonl (JSON lines) or .npy")
    if path and not Path(path).resolve().parent.is_dir():
        raise InputError(f"cannot write {path}: no such folder")


def run(args: argparse.Namespace) -> int:
    from .gguf_file import ModelFileError

    if corpus_cli.wanted(args):  # a file or folder to an output file: in resumable parts (edgegemma/corpus/)
        return corpus_cli.run(args)
    try:
        _check_output_path(args.output)
        document = args.prompt_name is not None and args.prompt_name.casefold() == "document"
        if args.title is not None and args.prompt_name is not None and not document:
            raise InputError(f"--title goes with the document prompt, not --prompt-name {args.prompt_name}")
        model_path = cache.resolve_model(args.model)
        texts = read_texts(args)

        from .api import load

        model = load(model_path)
        progress = args.progress if args.progress is not None else (len(texts) >= PROGRESS_MIN_INPUTS and sys.stderr.isatty())
        options = dict(batch_size=args.batch_size, truncate_dim=args.dim, show_progress_bar=progress)
        if args.title is not None or document:
            vectors = model.encode_document(texts, titles=args.title, **options)
        else:
            vectors = model.encode(texts, prompt_name=args.prompt_name, **options)
        write_output(args.output, texts, vectors)
    except (InputError, cache.NoModelError, ModelFileError, ValueError, TypeError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `edgegemma embed ... | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # e.g. a model file we may not read
        print(f"{PROG}: error: {err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed", help="embed texts: arguments, stdin lines or a file -> JSON lines or .npy",
        description="Embed texts with the default model (see `edgegemma pull`) or -m FILE. Input: TEXT arguments, "
                    "else --input (.txt: one text per line; .jsonl: a \"text\" field per line), else stdin lines "
                    "(blank lines skipped). Output: JSON lines {\"index\", \"text\", \"embedding\"} on stdout, or --output.",
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("-m", "--model", metavar="FILE", help="GGUF model file (default: the one `edgegemma pull` set)")
    p.add_argument("-i", "--input", metavar="FILE", help="read texts from a .txt (one per line) or .jsonl file ('-' for stdin)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE.jsonl or FILE.npy instead of stdout")
    p.add_argument("-p", "--prompt-name", metavar="NAME",
                   help="EmbeddingGemma prompt: query, document, Classification, Clustering, STS, ... (see `edgegemma info`)")
    p.add_argument("--title", help="embed as documents with this title (prompt 'title: TITLE | text: ')")
    p.add_argument("--dim", type=_positive_int, metavar="N", help="Matryoshka size: keep the first N dimensions, renormalised (768, 512, 256, 128)")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="texts per forward pass (default 32)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help=f"progress bar on stderr (default: when stderr is a terminal and there are >= {PROGRESS_MIN_INPUTS} texts)")
    corpus_cli.add_arguments(p)
    p.set_defaults(handler=run)
