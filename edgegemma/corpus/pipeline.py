"""A corpus run: read a chunk of texts, embed it, write it as a part; at the end join the parts into the output.

The embedder is anything with `embed(chunks)` turning (part, ids, texts) into (part, ids, texts, vectors) in
order: the model in this process (LocalEmbedder), or a Dask cluster (edgegemma.dask.ClusterEmbedder).
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .. import progress
from .encoding import EncodeOptions
from .outputs import KEEPS_TEXT, WRITERS, output_format, part_rows
from .parts import PartStore
from .readers import CorpusError

DEFAULT_PART_SIZE = 1024  # texts per part: what an interruption can cost, and how often a part file is written
FORMAT_VERSION = 1


class LocalEmbedder:
    """The model in this process."""

    def __init__(self, model, options: EncodeOptions):
        self.model, self.options = model, options

    def embed(self, chunks: Iterable[tuple[int, list, list[str]]]) -> Iterator[tuple[int, list, list[str], object]]:
        for k, ids, texts in chunks:
            yield k, ids, texts, self.options.encode(self.model, texts)


@dataclass
class Summary:
    rows: int  # rows in the output
    embedded: int  # rows embedded by this run (the rest came from an earlier, interrupted one)
    seconds: float

    @property
    def rate(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def settings_for(source, output: Path, model, options: EncodeOptions, part_size: int) -> dict:
    """What a resumed run must share with the one it continues; kept in the parts folder's manifest. An unknown
    prompt name or a size the model cannot truncate to fails here, before any work."""
    if options.truncate_dim is not None and not 1 <= options.truncate_dim <= model.dimension:
        raise ValueError(f"truncate_dim must be an integer from 1 to {model.dimension} (Matryoshka sizes 768, 512, "
                         f"256, 128), got {options.truncate_dim!r}")
    return {"version": FORMAT_VERSION, "input": source.identity(), "output": output_format(output),
            "model": {"file": model.path.name, "size": model.path.stat().st_size, "recipe": model.recipe},
            "prompt": options.prompt_text(model), "dimension": options.dimension(model), "part_size": part_size}


def embed_corpus(source, output: str | Path, model, options: EncodeOptions, embedder=None,
                 part_size: int = DEFAULT_PART_SIZE, show_progress: bool = False) -> Summary:
    """Embed every row of `source` into `output` (.parquet, .npy or .jsonl), resuming an interrupted run of the
    same settings. `model` (a SentenceEncoder, or a GGUF path to load) gives the settings (prompt, dimension,
    file); `embedder` does the work (default: the model). A model loaded here is let go before the parts are
    joined, so that the join's memory (pyarrow's writer) does not add to the model's."""
    output = Path(output)
    if isinstance(model, (str, os.PathLike)):
        from ..api import load

        model = load(model)
    if not source.total:
        raise CorpusError("no texts to embed in the input")
    settings = settings_for(source, output, model, options, part_size)
    fmt, dim = settings["output"], settings["dimension"]
    store = PartStore(output, settings)
    first = store.first_missing()
    embedder = embedder or LocalEmbedder(model, options)
    keep_text = fmt in KEEPS_TEXT
    started, embedded = time.perf_counter(), 0
    chunks = ((first + i, ids, texts) for i, (ids, texts) in enumerate(source.chunks(first * part_size, part_size)))
    with _bar(show_progress, source.total, min(first * part_size, source.total)) as bar:
        for k, ids, texts, vectors in embedder.embed(chunks):
            store.write(k, ids, vectors, texts if keep_text else None)
            embedded += len(ids)
            bar.update(len(ids))
        bar.finish()  # a folder's blank files were counted in its total
    seconds = time.perf_counter() - started
    metadata = {"model": model.path.name, "recipe": model.recipe, "dimension": dim, "prompt": settings["prompt"]}
    del model, embedder, chunks
    gc.collect()  # the caller's model, if it holds one, stays; ours (and its packed weights) is freed now
    parts = store.parts()
    WRITERS[fmt](output, parts, dim, metadata, source.has_ids)
    rows = sum(part_rows(p) for p in parts)
    store.remove()
    return Summary(rows=rows, embedded=embedded, seconds=seconds)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _bar(show: bool, total: int, done: int):
    if not show:
        return _NoBar()
    return _StartedBar(total, done)


class _StartedBar:
    """progress.bar counting texts, starting at those an earlier run finished (excluded from texts/s and ETA)."""

    def __init__(self, total: int, done: int):
        self.total, self.done = total, done

    def __enter__(self):
        self._context = progress.bar("embed", total=self.total, unit=" texts")
        self.bar = self._context.__enter__()
        self.bar.initial = self.bar.n = self.done
        self.bar.refresh()
        return self

    def update(self, n: int) -> None:
        self.bar.update(n)

    def finish(self) -> None:
        self.bar.total = self.bar.n
        self.bar.refresh()

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)
