"""Corpus readers: texts (with their ids) streamed from a file or a folder, a chunk at a time, from any row on.

    source = open_source("notes/", globs=["**/*.md"])     # or a .txt, .jsonl or .parquet file
    source.total                                           # rows, counted without holding the texts
    for ids, texts in source.chunks(start=2048, size=1024): ...

A row is a text the corpus embeds; rows are numbered from 0 in a fixed order (lines in file order, files in
sorted path order, Parquet rows in file order), so a resumed run can start at any row and see the same rows.
Ids: the --id-column's values where one is named (a folder: each file's path relative to the folder), else the
row number. Only one chunk of texts is held at a time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from ..text import clean as _clean  # lone surrogates as U+FFFD, as invalid UTF-8 bytes are read: embed's one rule

DEFAULT_GLOBS = ("**/*.md", "**/*.txt")
DEFAULT_COLUMN = "text"


class CorpusError(Exception):
    """Bad corpus input or options; str() is the one line shown."""


PYARROW_MISSING = "Parquet needs pyarrow: pip install 'edgegemma[parquet]'"


def require_pyarrow():
    """pyarrow, or a one-line error saying how to get it."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet
    except ImportError:
        raise CorpusError(PYARROW_MISSING) from None
    return pyarrow


def check_pyarrow() -> None:
    """require_pyarrow's error now, without importing it (~40 MiB resident) until it is used."""
    import importlib.util

    try:
        found = importlib.util.find_spec("pyarrow") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["pyarrow"] is None
        found = False
    if not found:
        raise CorpusError(PYARROW_MISSING)


def _file_identity(path: Path) -> dict:
    """What a resumed run checks to know it reads the same input: size and modification time."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_error(path: Path, err: Exception) -> CorpusError:
    return CorpusError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}")


class TextLines:
    """A .txt file: one text per non-blank line (invalid UTF-8 as U+FFFD); id = row number."""

    has_ids = False

    def __init__(self, path: Path, column: str | None, id_column: str | None):
        if column or id_column:
            raise CorpusError(f"{path}: --column/--id-column apply to .jsonl and .parquet input, not .txt")
        self.path = path
        self.total = sum(1 for _ in self._rows())

    def identity(self) -> dict:
        return {"kind": "txt", **_file_identity(self.path)}

    def _rows(self) -> Iterator[tuple[int, str]]:
        try:
            with open(self.path, encoding="utf-8", errors="replace", newline=None) as stream:
                for number, line in enumerate(stream, 1):
                    text = line.rstrip("\n")
                    if text.strip():
                        yield number, text
        except (OSError, UnicodeDecodeError) as err:
            raise _read_error(self.path, err) from None

    def chunks(self, start: int, size: int) -> Iterator[tuple[list, list[str]]]:
        return _chunked(((row, text) for row, (_, text) in enumerate(self._rows()) if row >= start), size)


class JsonLines:
    """A .jsonl file: an object per non-blank line, its text in `column` (default "text"), its id in `id_column`
    (a string or an integer) when named."""

    def __init__(self, path: Path, column: str | None, id_column: str | None):
        self.path, self.column, self.id_column = path, column or DEFAULT_COLUMN, id_column
        self.has_ids = id_column is not None
        self.total = sum(1 for _ in self._lines())

    def identity(self) -> dict:
        return {"kind": "jsonl", "column": self.column, "id_column": self.id_column, **_file_identity(self.path)}

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as stream:
                for number, line in enumerate(stream, 1):
                    if line.strip():
                        yield number, line
        except (OSError, UnicodeDecodeError) as err:
            raise _read_error(self.path, err) from None

    def _record(self, number: int, line: str, row: int) -> tuple[object, str]:
        where = f"{self.path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(self.column), str):
            raise CorpusError(f"{where}: expected an object with a string field {json.dumps(self.column)}")
        if not record[self.column].strip():
            raise CorpusError(f"{where}: the {json.dumps(self.column)} field is empty or only whitespace")
        if self.id_column is None:
            return row, _clean(record[self.column])
        key = record.get(self.id_column)
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise CorpusError(f"{where}: field {json.dumps(self.id_column)} must be a string or an integer")
        return _clean(key) if isinstance(key, str) else key, _clean(record[self.column])

    def chunks(self, start: int, size: int) -> Iterator[tuple[list, list[str]]]:
        rows = (self._record(number, line, row) for row, (number, line) in enumerate(self._lines()) if row >= start)
        return _chunked(rows, size)


class ParquetColumn:
    """A Parquet file: texts from `column` (default "text"), ids from `id_column` when named. Reads only those
    columns, one record batch at a time; a resumed run skips whole row groups by their row counts."""

    def __init__(self, path: Path, column: str | None, id_column: str | None):
        pa = require_pyarrow()
        import pyarrow.parquet as pq

        self.path, self.column, self.id_column = path, column or DEFAULT_COLUMN, id_column
        self.has_ids = id_column is not None
        try:
            self.file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as err:
            raise CorpusError(f"cannot read {path} as Parquet: {err}") from None
        schema = self.file.schema_arrow
        for name, option in ((self.column, "--column"), (id_column, "--id-column")):
            if name is not None and name not in schema.names:
                raise CorpusError(f"{path}: no column {name!r} ({option}); it has: {', '.join(schema.names)}")
        if not (pa.types.is_string(schema.field(self.column).type) or pa.types.is_large_string(schema.field(self.column).type)):
            raise CorpusError(f"{path}: column {self.column!r} holds {schema.field(self.column).type}, not text")
        if id_column is not None:
            kind = schema.field(id_column).type
            if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise CorpusError(f"{path}: id column {id_column!r} holds {kind}; ids must be integers or strings")
        self.total = self.file.metadata.num_rows

    def identity(self) -> dict:
        return {"kind": "parquet", "column": self.column, "id_column": self.id_column, **_file_identity(self.path)}

    def chunks(self, start: int, size: int) -> Iterator[tuple[list, list[str]]]:
        groups, skipped = [], 0
        for i in range(self.file.num_row_groups):
            rows = self.file.metadata.row_group(i).num_rows
            if skipped + rows <= start and not groups:
                skipped += rows
                continue
            groups.append(i)
        columns = [self.column] + ([self.id_column] if self.id_column else [])
        row = skipped

        def rows() -> Iterator[tuple[object, str]]:
            nonlocal row
            if not groups:
                return
            # One thread: the model is the bottleneck, and pyarrow's reader threads each keep memory of their own.
            batches = self.file.iter_batches(batch_size=max(size, 1024), row_groups=groups, columns=columns, use_threads=False)
            for batch in batches:
                texts = batch.column(self.column).to_pylist()
                ids = batch.column(self.id_column).to_pylist() if self.id_column else range(row, row + len(texts))
                for key, text in zip(ids, texts):
                    if row >= start:
                        if text is None:
                            raise CorpusError(f"{self.path}: row {row} (id {key!r}): {self.column!r} is null")
                        if key is None:
                            raise CorpusError(f"{self.path}: row {row}: id column {self.id_column!r} is null")
                        yield key, text
                    row += 1

        return _chunked(rows(), size)


class Folder:
    """A folder: one text per file matching the globs (sorted by path), read as UTF-8 (invalid bytes as U+FFFD);
    files with only white space are skipped, as blank lines are. id = the file's path relative to the folder."""

    has_ids = True

    def __init__(self, path: Path, globs: Sequence[str] | None):
        self.path, self.globs = path, list(globs or DEFAULT_GLOBS)
        found = {p for pattern in self.globs for p in path.glob(pattern) if p.is_file()}
        self.files = sorted(p.relative_to(path).as_posix() for p in found)
        if not self.files:
            raise CorpusError(f"{path}: no files match {' or '.join(self.globs)} (--glob)")
        self.total = len(self.files)  # an upper bound: blank files are found only when read

    def identity(self) -> dict:
        # The file list, not each file's time: editing a note between runs is the user's business.
        listing = "\n".join(self.files).encode("utf-8")
        import hashlib

        return {"kind": "folder", "path": str(self.path.resolve()), "globs": self.globs,
                "files": len(self.files), "listing_sha256": hashlib.sha256(listing).hexdigest()}

    def chunks(self, start: int, size: int) -> Iterator[tuple[list, list[str]]]:
        def rows() -> Iterator[tuple[str, str]]:
            row = 0
            for name in self.files:
                try:
                    text = (self.path / name).read_bytes().decode("utf-8", errors="replace")
                except OSError as err:
                    raise _read_error(self.path / name, err) from None
                if not text.strip():
                    continue
                if row >= start:
                    yield name, text
                row += 1

        return _chunked(rows(), size)


def _chunked(rows: Iterator[tuple[object, str]], size: int) -> Iterator[tuple[list, list[str]]]:
    ids, texts = [], []
    for key, text in rows:
        ids.append(key)
        texts.append(text)
        if len(texts) == size:
            yield ids, texts
            ids, texts = [], []
    if texts:
        yield ids, texts


READERS = {".txt": TextLines, ".jsonl": JsonLines, ".parquet": ParquetColumn}


def open_source(path: str | os.PathLike, column: str | None = None, id_column: str | None = None,
                globs: Sequence[str] | None = None):
    """The reader for `path`: a folder (one text per file), else by the file's suffix."""
    path = Path(path)
    if path.is_dir():
        if column or id_column:
            raise CorpusError(f"{path} is a folder: each file is one text and its path the id; --column/--id-column do not apply")
        return Folder(path, globs)
    if globs:
        raise CorpusError(f"--glob applies to a folder; {path} is not one")
    if not path.exists():
        raise CorpusError(f"cannot read {path}: no such file or folder")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise CorpusError(f"{path}: unknown input format; use .txt, .jsonl, .parquet or a folder")
    return reader(path, column, id_column)
