"""The tasks: real data that installed packages ship, nothing downloaded when the suite runs.

    qa-retrieval    chatterbot-corpus: question -> its answers, per language (8 languages), nDCG@10
    lee-sts         gensim's test data: the Lee corpus (50 news documents) with human similarity
                    scores for every pair (Lee, Pincombe & Welsh 2005), Spearman
    code-retrieval  Python's standard library via `ast`: docstring -> its function (docstring
                    removed from the code), nDCG@10
    topic-classify  chatterbot-corpus English: utterance -> topic file (8 topics), logistic
                    regression on the embeddings, 5-fold accuracy

Each loader returns a Task: the texts to embed with their prompt names, and what is scored.
Sizes are kept small (about 12,000 tokens in all) so five files run in minutes on two cores.
"""
from __future__ import annotations

import ast
import copy
import importlib
import inspect
import os
import textwrap
from dataclasses import dataclass, field

import numpy as np

QA_LANGUAGES = ("english", "spanish", "german", "french", "portuguese", "russian", "chinese", "japanese")
QA_PER_LANGUAGE = 12
TOPICS = ("computers", "food", "health", "history", "money", "movies", "science", "sports")
TOPIC_PER_CLASS = 20
# Standard-library modules for code retrieval; none of them is in the converter's calibration set.
CODE_MODULES = ("fractions", "statistics", "calendar", "difflib", "ipaddress", "colorsys", "glob", "fnmatch",
                "base64", "bisect", "gzip", "csv", "tokenize", "quopri", "zipfile")
CODE_PAIRS = 50
CODE_CHARS = 400


@dataclass
class Task:
    name: str
    metric: str  # ndcg@10, spearman, accuracy
    texts: dict[str, list[str]]  # group (queries, corpus, docs) -> texts
    prompts: dict[str, str]  # group -> prompt name
    gold: dict = field(default_factory=dict)


def _yaml(path):
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _chatterbot_dir() -> str:
    import chatterbot_corpus

    return os.path.join(os.path.dirname(chatterbot_corpus.__file__), "data")


def _as_text(x) -> str | None:
    return x.strip() if isinstance(x, str) and x.strip() else None


def qa_retrieval() -> Task:
    """Each language's first QA_PER_LANGUAGE questions (files in name order) against all that language's answers."""
    root = _chatterbot_dir()
    queries, corpus, relevant = [], [], []
    for lang in QA_LANGUAGES:
        folder = os.path.join(root, lang)
        pairs = []
        for name in sorted(os.listdir(folder)):
            for conv in _yaml(os.path.join(folder, name)).get("conversations") or []:
                texts = [t for t in map(_as_text, conv) if t]
                if len(texts) >= 2 and texts[0].endswith(("?", "？")) and texts[0] not in {q for q, _ in pairs}:
                    pairs.append((texts[0], texts[1:]))
        pairs = pairs[:QA_PER_LANGUAGE]
        offset = len(corpus)
        for q, answers in pairs:
            ids = []
            for a in answers[:2]:
                ids.append(len(corpus))
                corpus.append(a)
            queries.append(q)
            relevant.append(ids)
        assert len(corpus) > offset, lang
    return Task("qa-retrieval", "ndcg@10", {"queries": queries, "corpus": corpus},
                {"queries": "query", "corpus": "document"}, {"relevant": relevant})


def lee_sts() -> Task:
    import gensim

    data = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data")
    with open(os.path.join(data, "lee.cor"), encoding="latin-1") as f:
        docs = [line.strip() for line in f if line.strip()]
    scores = np.loadtxt(os.path.join(data, "similarities0-1.txt"))
    assert scores.shape == (len(docs), len(docs)) == (50, 50)
    return Task("lee-sts", "spearman", {"docs": docs}, {"docs": "STS"}, {"scores": scores})


def code_retrieval() -> Task:
    """Functions of CODE_MODULES with a docstring of a sentence or more; query = its first paragraph."""
    queries, corpus = [], []
    for mod_name in CODE_MODULES:
        try:
            source = inspect.getsource(importlib.import_module(mod_name))
        except (ImportError, OSError, TypeError):
            continue
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40:
                continue
            body = node.body[1:] or [ast.Pass()]
            stripped = copy.copy(node)
            stripped.body = body
            code = ast.unparse(stripped)
            if len(code) < 60:
                continue
            queries.append(doc.split("\n\n")[0].replace("\n", " ")[:300])
            corpus.append(code[:CODE_CHARS])
    queries, corpus = queries[:CODE_PAIRS], corpus[:CODE_PAIRS]
    return Task("code-retrieval", "ndcg@10", {"queries": queries, "corpus": corpus},
                {"queries": "InstructionRetrieval", "corpus": "document"}, {"relevant": [[i] for i in range(len(queries))]})


def topic_classification() -> Task:
    root = os.path.join(_chatterbot_dir(), "english")
    texts, labels = [], []
    for label, topic in enumerate(TOPICS):
        seen: list[str] = []
        for conv in _yaml(os.path.join(root, f"{topic}.yml")).get("conversations") or []:
            for t in map(_as_text, conv):
                if t and t not in seen and len(t) < 300:
                    seen.append(t)
        take = seen[:TOPIC_PER_CLASS]
        texts += take
        labels += [label] * len(take)
    return Task("topic-classify", "accuracy", {"texts": texts}, {"texts": "Classification"}, {"labels": np.array(labels)})


TASKS = {"qa-retrieval": qa_retrieval, "lee-sts": lee_sts, "code-retrieval": code_retrieval, "topic-classify": topic_classification}
