"""bench/quality: the metrics against hand-computed values, the paired intervals, and the tasks load from
installed packages."""
from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from bench.quality.metrics import (classify_per_item, logreg_accuracy, ndcg_at_10, ndcg_per_query, paired_bootstrap,
                                   paired_bootstrap_sts, spearman_pairs, spearman_resampled)


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ndcg_at_10():
    corpus = unit(np.eye(12))
    queries = unit(np.eye(12)[[0, 1]] + 0.5 * np.eye(12)[[5, 6]])  # query 0 ranks doc 0 first, then 5
    assert ndcg_at_10(queries, corpus, [[0], [1]]) == pytest.approx(1.0)
    assert ndcg_at_10(queries[:1], corpus, [[5]]) == pytest.approx(1 / np.log2(3))  # relevant at rank 2
    assert ndcg_at_10(queries[:1], corpus, [[0, 5]]) == pytest.approx(1.0)
    ideal2 = 1 + 1 / np.log2(3)
    assert ndcg_per_query(queries[:1], corpus, [[0, 1]])[0] == pytest.approx((1 + 1 / np.log2(4)) / ideal2)  # ties: by index


def test_ndcg_groups_rank_within_the_query_group():
    corpus = unit(np.eye(12))
    queries = unit(np.eye(12)[[0]] + 0.5 * np.eye(12)[[5]])
    # doc 0 is in another group: out of the ranking, so doc 5 comes first
    groups = {"query_group": ["b"], "corpus_group": ["a"] + ["b"] * 11}
    assert ndcg_per_query(queries, corpus, [[5]], **groups)[0] == pytest.approx(1.0)
    assert ndcg_per_query(queries, corpus, [[5]])[0] == pytest.approx(1 / np.log2(3))


def test_spearman_pairs_and_accuracy():
    docs = unit(np.random.default_rng(0).standard_normal((6, 4)))
    sims = docs @ docs.T
    assert spearman_pairs(docs, sims) == pytest.approx(1.0)
    assert spearman_pairs(docs, -sims) == pytest.approx(-1.0)
    # a resample that draws every document once is the full set of pairs
    gold = np.random.default_rng(3).random((6, 6))
    gold = gold + gold.T
    assert spearman_resampled(docs, gold, np.arange(6)[::-1]) == pytest.approx(spearman_pairs(docs, gold))
    x = np.r_[np.random.default_rng(1).normal(-3, 1, (20, 3)), np.random.default_rng(2).normal(3, 1, (20, 3))]
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    assert logreg_accuracy(x, y) == 1.0
    per_item = classify_per_item(x, y, folds=5, repeats=3)
    assert per_item.shape == (40,) and np.all(per_item == 1.0)


def test_classify_per_item_counts_each_item_once_per_repeat():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((60, 5)), np.repeat([0, 1, 2], 20)  # labels unrelated to x: about chance
    per_item = classify_per_item(x, y, folds=5, repeats=4)
    assert set(np.round(per_item * 4).astype(int)) <= {0, 1, 2, 3, 4}
    assert 0.1 < per_item.mean() < 0.6
    # same data, same seeds: the same splits, so identical embeddings give a zero loss
    assert np.array_equal(per_item, classify_per_item(x, y, folds=5, repeats=4))


def test_paired_bootstrap():
    rng = np.random.default_rng(5)
    base = rng.random(2000)
    loss, se, lo, hi = paired_bootstrap(base, base - 0.01 + rng.normal(0, 0.05, 2000))
    assert loss == pytest.approx(0.01, abs=0.004)
    assert se == pytest.approx(0.05 / np.sqrt(2000), rel=0.1)
    assert lo < loss < hi and lo > 0  # a real loss: the interval excludes 0
    loss, se, lo, hi = paired_bootstrap(base, base)
    assert loss == se == lo == hi == 0.0
    # STS: identical embeddings lose nothing, a noisier copy loses
    docs = unit(rng.standard_normal((30, 8)))
    gold = docs @ docs.T
    assert paired_bootstrap_sts(docs, docs, gold, n_boot=50)[0] == 0.0
    loss, se, lo, hi = paired_bootstrap_sts(docs, unit(docs + rng.normal(0, 0.5, docs.shape)), gold, n_boot=100)
    assert loss > 0 and se > 0 and lo < loss < hi


def test_code_modules_are_not_calibration_texts():
    from edgegemma.converter import calibration_texts

    from bench.quality.tasks import CALIBRATION_MODULES, CODE_MODULES

    tree = ast.parse(inspect.getsource(calibration_texts.stdlib_texts))
    calibrated = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert calibrated and calibrated <= set(CALIBRATION_MODULES)
    assert "pydoc_data" in inspect.getsource(calibration_texts.reference_manual)
    assert not {m.split(".")[0] for m in CODE_MODULES} & set(CALIBRATION_MODULES)


def test_tasks_load_from_installed_packages():
    pytest.importorskip("chatterbot_corpus")
    pytest.importorskip("gensim")
    from bench.quality.tasks import TASKS

    minimum = {"qa-retrieval": 1000, "lee-sts": 50, "code-retrieval": 200, "topic-classify": 1500,
               "sentiment-classify": 200}
    for name, load in TASKS.items():
        task = load()
        assert all(len(v) >= minimum[name] for v in task.texts.values()), name
        for group, texts in task.texts.items():  # no text twice (QA: twice in one language)
            lang = task.gold.get({"queries": "query_group", "corpus": "corpus_group"}.get(group, ""), [None] * len(texts))
            assert len(set(zip(lang, texts))) == len(texts), (name, group)
        if "relevant" in task.gold:
            n_corpus = len(task.texts["corpus"])
            assert len(task.gold["relevant"]) == len(task.texts["queries"])
            assert all(rel and 0 <= i < n_corpus for rel in task.gold["relevant"] for i in rel)
        if "query_group" in task.gold:  # every relevant document is in its query's group
            qg, cg = task.gold["query_group"], task.gold["corpus_group"]
            assert len(qg) == len(task.texts["queries"]) and len(cg) == n_corpus
            assert all(cg[i] == qg[q] for q, rel in enumerate(task.gold["relevant"]) for i in rel)
        if "labels" in task.gold:
            counts = np.bincount(task.gold["labels"])
            assert len(counts) == len(task.gold["label_names"]) >= 2 and counts.min() >= 30, name
