"""The work every system does, identical for all of them.

    reference   the 205 texts of ../shared/reference in document mode (`title: none | text: ` + text):
                queries, sentences, paragraphs, code, edge cases and long texts up to ~1,900 tokens
    synthetic   256 documents of about 256 tokens each (prompt, <bos> and <eos> included), English-like
                sentences drawn from a fixed word list with a fixed seed: the same texts on every machine
    query       one short query (13 tokens as plain text, 20 with the query prompt) for latency

Every system receives the full strings (prompt + text) through its own document/query interface, and
tokens/s always divides the same count: the tokens edgegemma's tokenizer (= the reference's) gives.
Standard library only: the worker imports this before it times anything.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENT_PROMPT = "title: none | text: "
QUERY_PROMPT = "task: search result | query: "
QUERY = "how do I reset the password on my home wifi router"

SYNTHETIC_DOCS = 256
SYNTHETIC_WORDS = 226  # words per document: ≈ 256 tokens with prompt, <bos> and <eos> (mean 255.9, 253-260)
SYNTHETIC_SEED = 5

_WORDS = """
the of and to in is was for on are with as by at from that this which be it or an have has had not but
all were when we there can more if will one about up out so what its into than them only other new some
could time these two may then do first any like now such our over most after also made many before must
through back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go came right used take three
system water city river mountain market house school family study paper report method result model data
light energy music garden village station north south history science language library window morning
evening winter summer table letter number problem question answer process network engine signal storage
memory power price level value project group service policy region field course table road bridge forest
island harbor valley coast weather travel doctor teacher student worker farmer writer reader player
simple large small early late quick slow open short strong clear public local general social national
build carry change follow grow hold keep learn leave move play read run show start turn write explain
measure compare improve describe produce receive support suggest develop consider remember continue
""".split()


def reference_dir() -> Path:
    """EDGEGEMMA_REFERENCE, else <repo>/../shared/reference, else /work/shared/reference."""
    for candidate in (os.environ.get("EDGEGEMMA_REFERENCE"), REPO.parent / "shared" / "reference", "/work/shared/reference"):
        if candidate and (Path(candidate) / "texts.jsonl").is_file():
            return Path(candidate)
    raise FileNotFoundError("reference texts not found: set EDGEGEMMA_REFERENCE to the folder with texts.jsonl")


def reference_texts(folder: Path, limit: int | None = None) -> tuple[list[str], list[str], list[int]]:
    """(ids, texts, row in the reference embeddings) in the reference's `order`; `limit` keeps an even spread."""
    rows = {}
    for line in (folder / "texts.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows[row["id"]] = row["text"]
    order = json.loads((folder / "token_ids.json").read_text(encoding="utf-8"))["order"]
    picks = list(range(len(order)))
    if limit is not None and limit < len(order):
        step = len(order) / limit  # every kind and length, not just the first (short) queries
        picks = [int(i * step) for i in range(limit)]
    return [order[i] for i in picks], [rows[order[i]] for i in picks], picks


def synthetic_texts(n: int = SYNTHETIC_DOCS, words: int = SYNTHETIC_WORDS, seed: int = SYNTHETIC_SEED) -> list[str]:
    """`n` documents of `words` words in sentences of 5-16 words; the same for a given seed everywhere."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentences, left = [], words
        while left > 0:
            k = min(left, rng.randint(5, 16))
            s = " ".join(rng.choice(_WORDS) for _ in range(k))
            sentences.append(s[0].upper() + s[1:] + rng.choice(".....?!"))
            left -= k
        docs.append(" ".join(sentences))
    return docs
