"""bench/quality: the metrics against hand-computed values, and the tasks load from installed packages."""
from __future__ import annotations

import numpy as np
import pytest

from bench.quality.metrics import logreg_accuracy, ndcg_at_10, spearman_pairs


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ndcg_at_10():
    corpus = unit(np.eye(12))
    queries = unit(np.eye(12)[[0, 1]] + 0.5 * np.eye(12)[[5, 6]])  # query 0 ranks doc 0 first, then 5
    assert ndcg_at_10(queries, corpus, [[0], [1]]) == pytest.approx(1.0)
    assert ndcg_at_10(queries[:1], corpus, [[5]]) == pytest.approx(1 / np.log2(3))  # relevant at rank 2
    assert ndcg_at_10(queries[:1], corpus, [[0, 5]]) == pytest.approx(1.0)


def test_spearman_pairs_and_accuracy():
    docs = unit(np.random.default_rng(0).standard_normal((6, 4)))
    sims = docs @ docs.T
    assert spearman_pairs(docs, sims) == pytest.approx(1.0)
    assert spearman_pairs(docs, -sims) == pytest.approx(-1.0)
    x = np.r_[np.random.default_rng(1).normal(-3, 1, (20, 3)), np.random.default_rng(2).normal(3, 1, (20, 3))]
    assert logreg_accuracy(x, np.r_[np.zeros(20, int), np.ones(20, int)]) == 1.0


def test_tasks_load_from_installed_packages():
    pytest.importorskip("chatterbot_corpus")
    pytest.importorskip("gensim")
    from bench.quality.tasks import TASKS

    for name, load in TASKS.items():
        task = load()
        assert all(len(v) >= 40 for v in task.texts.values()), name
        if "relevant" in task.gold:
            n_corpus = len(task.texts["corpus"])
            assert len(task.gold["relevant"]) == len(task.texts["queries"])
            assert all(0 <= i < n_corpus for rel in task.gold["relevant"] for i in rel)
