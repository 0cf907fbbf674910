"""The tasks: real data that installed packages ship, nothing downloaded when the suite runs.

    qa-retrieval        chatterbot-corpus, every language with QA_MIN_QUERIES questions or more: question ->
                        its replies, ranked among all replies of its own language, nDCG@10
    lee-sts             gensim's test data: the Lee corpus (50 news documents) with human similarity
                        scores for every pair (Lee, Pincombe & Welsh 2005), Spearman
    code-retrieval      Python's standard library, read with `ast` (CODE_MODULES, none of them in the
                        converter's calibration set): docstring -> its function (docstring removed), nDCG@10
    topic-classify      chatterbot-corpus English: utterance -> its topic file, every topic with
                        TOPIC_MIN_TEXTS utterances or more; logistic regression, repeated stratified k-fold
    sentiment-classify  gensim's test data: 200 movie-review sentences of Pang & Lee's sentence polarity
                        data, positive / negative; logistic regression, repeated stratified k-fold

Each loader returns a Task: the texts to embed with their prompt names, and what is scored. Every
task is as large as the shipped data allows, within a budget of about 130,000 tokens per file
(a five-file run in about 20 minutes on two cores).
"""
from __future__ import annotations

import ast
import os
import sysconfig
from dataclasses import dataclass, field

import numpy as np

QA_MIN_QUERIES = 20  # languages with fewer questions have corpora so small that every ranking is right
QA_MAX_QUERIES = 100  # per language: the token budget (all 1,782 questions would cost 77,000 tokens a file)
QUESTION_MARKS = ("?", "？", "؟")
TOPIC_MIN_TEXTS = 30
TEXT_MAX_CHARS = 300
# Standard-library modules for code retrieval. The converter calibrates on heapq, shlex, textwrap,
# collections, string and pydoc_data (converter/calibration_texts.py): none of them may appear here.
CODE_MODULES = (
    "argparse", "ast", "base64", "bdb", "bisect", "calendar", "cmd", "codecs", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "difflib", "dis", "doctest", "email.utils", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib", "gzip",
    "hmac", "http.client", "http.cookiejar", "imaplib", "inspect", "ipaddress", "json.decoder", "json.encoder",
    "locale", "logging", "mailbox", "mimetypes", "netrc", "ntpath", "optparse", "os", "pathlib", "pickle",
    "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint", "pstats", "quopri", "random", "reprlib",
    "sched", "selectors", "shutil", "smtplib", "socket", "socketserver", "statistics", "subprocess",
    "tarfile", "tempfile", "threading", "tokenize", "traceback", "typing", "urllib.parse", "urllib.request",
    "uuid", "warnings", "wave", "weakref", "zipfile",
)
CODE_PAIRS = 250
CODE_CHARS = 400
CODE_QUERY_CHARS = 300
CALIBRATION_MODULES = ("heapq", "shlex", "textwrap", "collections", "string", "pydoc_data")
CLASSIFY_FOLDS = 5
CLASSIFY_REPEATS = 4


@dataclass
class Task:
    name: str
    metric: str  # ndcg@10, spearman, accuracy
    texts: dict[str, list[str]]  # group (queries, corpus, docs, texts) -> texts
    prompts: dict[str, str]  # group -> prompt name
    gold: dict = field(default_factory=dict)


def _yaml(path):
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _chatterbot_dir() -> str:
    import chatterbot_corpus

    return os.path.join(os.path.dirname(chatterbot_corpus.__file__), "data")


def _gensim_test_data() -> str:
    import gensim

    return os.path.join(os.path.dirname(gensim.__file__), "test", "test_data")


def _as_text(x) -> str | None:
    return x.strip() if isinstance(x, str) and x.strip() else None


def _conversations(path: str) -> list[list[str]]:
    return [[t for t in map(_as_text, conv) if t] for conv in _yaml(path).get("conversations") or []]


def qa_retrieval() -> Task:
    """Per language (folders in name order): the first QA_MAX_QUERIES distinct questions (a
    conversation's first utterance ending in a question mark; files in name order) are the queries; the corpus is every distinct reply (second utterance) to
    that language's questions; a query's relevant documents are the replies it gets in any
    conversation. Ranking is within the query's language (gold "query_group" /
    "corpus_group"); nDCG@10 is averaged over all queries."""
    root = _chatterbot_dir()
    queries, corpus, relevant, query_group, corpus_group = [], [], [], [], []
    for lang in sorted(os.listdir(root)):
        folder = os.path.join(root, lang)
        if not os.path.isdir(folder):
            continue
        replies: dict[str, int] = {}  # reply text -> corpus id, this language
        answers: dict[str, set[int]] = {}  # question -> reply ids, in first-seen order of questions
        for name in sorted(os.listdir(folder)):
            for conv in _conversations(os.path.join(folder, name)):
                if len(conv) >= 2 and conv[0].endswith(QUESTION_MARKS) and (
                        conv[0] in answers or len(answers) < QA_MAX_QUERIES):
                    answers.setdefault(conv[0], set()).add(replies.setdefault(conv[1], len(replies)))
        if len(answers) < QA_MIN_QUERIES:
            continue
        offset = len(corpus)
        corpus += list(replies)  # dicts keep insertion order: text i has id i
        corpus_group += [lang] * len(replies)
        for question, ids in answers.items():
            queries.append(question)
            relevant.append(sorted(offset + i for i in ids))
            query_group.append(lang)
    return Task("qa-retrieval", "ndcg@10", {"queries": queries, "corpus": corpus},
                {"queries": "query", "corpus": "document"},
                {"relevant": relevant, "query_group": query_group, "corpus_group": corpus_group})


def lee_sts() -> Task:
    data = _gensim_test_data()
    with open(os.path.join(data, "lee.cor"), encoding="latin-1") as f:
        docs = [line.strip() for line in f if line.strip()]
    scores = np.loadtxt(os.path.join(data, "similarities0-1.txt"))
    assert scores.shape == (len(docs), len(docs)) == (50, 50)
    return Task("lee-sts", "spearman", {"docs": docs}, {"docs": "STS"}, {"scores": scores})


def module_source(name: str) -> str | None:
    """A standard-library module's source, read from the stdlib folder without importing it (no side
    effects; frozen modules such as os have their .py there too), None where it has no .py file."""
    base = os.path.join(sysconfig.get_paths()["stdlib"], *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    return None


def code_retrieval() -> Task:
    """Public functions and methods of CODE_MODULES whose docstring is a sentence or more: the query is
    the docstring's first paragraph, the document the function's source without its docstring. A
    docstring or a function seen before (copies across modules) is skipped; CODE_PAIRS pairs taken
    round robin over the modules (each module's functions in `ast.walk` order)."""
    assert not set(CODE_MODULES) & set(CALIBRATION_MODULES)
    per_module: list[list[tuple[str, str]]] = []
    seen: set[str] = set()
    for mod_name in CODE_MODULES:
        source = module_source(mod_name)
        if source is None:
            continue
        pairs = []
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or len(doc) < 40:
                continue
            node.body = node.body[1:] or [ast.Pass()]  # a fresh tree per module: editing it in place is fine
            code = ast.unparse(node)[:CODE_CHARS]
            query = doc.split("\n\n")[0].replace("\n", " ")[:CODE_QUERY_CHARS]
            if len(code) < 60 or query in seen or code in seen:
                continue
            seen.update((query, code))
            pairs.append((query, code))
        per_module.append(pairs)
    # round robin over the modules, so that the pairs spread over all of them
    ranked = [pairs[i] for i in range(max(map(len, per_module))) for pairs in per_module if i < len(pairs)]
    queries = [q for q, _ in ranked[:CODE_PAIRS]]
    corpus = [c for _, c in ranked[:CODE_PAIRS]]
    return Task("code-retrieval", "ndcg@10", {"queries": queries, "corpus": corpus},
                {"queries": "InstructionRetrieval", "corpus": "document"}, {"relevant": [[i] for i in range(len(queries))]})


def topic_classification() -> Task:
    """Every distinct English utterance (under TEXT_MAX_CHARS) labelled with its topic file; utterances
    found in two topics are dropped, and so are topics left with fewer than TOPIC_MIN_TEXTS."""
    root = os.path.join(_chatterbot_dir(), "english")
    by_topic: dict[str, list[str]] = {}
    for name in sorted(os.listdir(root)):
        seen: dict[str, None] = {}
        for conv in _conversations(os.path.join(root, name)):
            seen.update((t, None) for t in conv if len(t) < TEXT_MAX_CHARS)
        by_topic[name.rsplit(".", 1)[0]] = list(seen)
    count: dict[str, int] = {}
    for texts in by_topic.values():
        for t in texts:
            count[t] = count.get(t, 0) + 1
    texts, labels, names = [], [], []
    for topic, items in by_topic.items():
        items = [t for t in items if count[t] == 1]
        if len(items) < TOPIC_MIN_TEXTS:
            continue
        texts += items
        labels += [len(names)] * len(items)
        names.append(topic)
    return Task("topic-classify", "accuracy", {"texts": texts}, {"texts": "Classification"},
                {"labels": np.array(labels), "label_names": names})


def sentiment_classification() -> Task:
    """gensim's pang_lee_polarity.cor (Windows-1252): `__label__pos|neg sentence`, 100 of each."""
    texts, labels = [], []
    with open(os.path.join(_gensim_test_data(), "pang_lee_polarity.cor"), encoding="cp1252") as f:
        for line in f:
            label, _, text = line.strip().partition(" ")
            if text.strip():
                texts.append(text.strip())
                labels.append({"__label__neg": 0, "__label__pos": 1}[label])
    return Task("sentiment-classify", "accuracy", {"texts": texts}, {"texts": "Classification"},
                {"labels": np.array(labels), "label_names": ["negative", "positive"]})


TASKS = {"qa-retrieval": qa_retrieval, "lee-sts": lee_sts, "code-retrieval": code_retrieval,
         "topic-classify": topic_classification, "sentiment-classify": sentiment_classification}
