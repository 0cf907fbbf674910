"""Text as every face takes it (library, CLI, server): one rule for what is not valid Unicode.

Invalid UTF-8 (stdin, files, request bodies) and lone surrogates (a str may hold them: JSON's "\\ud800",
argv's undecodable bytes under Python's surrogateescape) are replaced with U+FFFD, one per bad byte or
surrogate, and the text is embedded. SentencePiece takes only valid Unicode; refusing a whole batch of a
corpus for one stray byte helps nobody, and U+FFFD is what `bytes.decode(errors="replace")` gives.
"""
from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def decode(data: bytes) -> str:
    """Bytes read from outside (a file, stdin, a request body) as text: UTF-8, invalid bytes as U+FFFD."""
    return data.decode("utf-8", errors="replace")


def clean(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (unchanged, and fast, when it has none)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub(REPLACEMENT, text)


def is_blank(text: str) -> bool:
    """Empty or whitespace only: refused as an input by the CLI and the server alike."""
    return not text.strip()
