"""Embedding a corpus: texts streamed from a file or folder, vectors written in parts, resumable.

    readers.py    .txt, .jsonl, .parquet or a folder -> (ids, texts) chunks from any row on
    encoding.py   the prompt / Matryoshka size / batch size of a run, applied to a list of texts
    parts.py      the parts folder beside the output: manifest, atomic part files, what is done
    outputs.py    the parts joined into .parquet / .npy / .jsonl
    pipeline.py   embed_corpus(): read, embed, write parts, join; a progress bar with texts/s and ETA
    cli.py        the options `edgegemma embed` gains for corpora, and their run

    from edgegemma.corpus import open_source, embed_corpus, EncodeOptions
    embed_corpus(open_source("notes/", globs=["**/*.md"]), "notes.parquet", model, EncodeOptions("document"))
"""
from importlib import import_module

# Loaded on first use: `edgegemma embed` imports cli.py at start-up and must stay quick.
_EXPORTS = {"EncodeOptions": "encoding", "embed_corpus": "pipeline", "DEFAULT_PART_SIZE": "pipeline",
            "open_source": "readers", "CorpusError": "readers"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
