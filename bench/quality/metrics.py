"""Scores as MTEB computes them: nDCG@10 (retrieval), Spearman of cosine vs gold (STS), logistic-regression
accuracy (classification); each also per item (query, document, utterance), so that two files' scores can be
compared item by item: `paired_bootstrap` gives the loss's standard error and confidence interval."""
from __future__ import annotations

import numpy as np


def ndcg_per_query(queries: np.ndarray, corpus: np.ndarray, relevant: list[list[int]],
                   query_group: list | None = None, corpus_group: list | None = None) -> np.ndarray:
    """nDCG@10 of each query, binary relevance, cosine ranking (rows are unit length). With groups, a
    query ranks only the corpus documents of its own group (its language)."""
    sims = queries @ corpus.T
    if query_group is not None:
        qg, cg = np.asarray(query_group), np.asarray(corpus_group)
        sims = np.where(qg[:, None] == cg[None, :], sims, -np.inf)
    discounts = 1 / np.log2(np.arange(2, 12))
    scores = np.empty(len(relevant))
    for i, rel in enumerate(relevant):
        top = np.argsort(-sims[i], kind="stable")[:10]
        gains = np.isin(top, rel).astype(float)
        ideal = discounts[: min(len(rel), 10)].sum()
        scores[i] = float(gains @ discounts[: len(top)]) / ideal
    return scores


def ndcg_at_10(queries: np.ndarray, corpus: np.ndarray, relevant: list[list[int]], **groups) -> float:
    """Mean nDCG@10 over queries."""
    return float(np.mean(ndcg_per_query(queries, corpus, relevant, **groups)))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def spearman_pairs(docs: np.ndarray, gold: np.ndarray) -> float:
    """Spearman correlation of cosine with the human score over every unordered pair (i < j)."""
    i, j = np.triu_indices(len(docs), k=1)
    return _spearman(np.sum(docs[i] * docs[j], axis=1), gold[i, j])


def spearman_resampled(docs: np.ndarray, gold: np.ndarray, picks: np.ndarray) -> float:
    """Spearman over the pairs of a resample of the documents (`picks`, indices drawn with replacement):
    every pair of two draws that are different documents, as often as it was drawn."""
    a, b = np.triu_indices(len(picks), k=1)
    i, j = picks[a], picks[b]
    keep = i != j
    i, j = i[keep], j[keep]
    return _spearman(np.sum(docs[i] * docs[j], axis=1), gold[i, j])


def classify_per_item(x: np.ndarray, labels: np.ndarray, folds: int = 5, repeats: int = 1, seed: int = 42) -> np.ndarray:
    """Each item's accuracy (share of repeats in which it was predicted right) by a logistic regression
    (MTEB's: scikit-learn defaults, max_iter 100) trained on the other folds of a stratified k-fold,
    repeated `repeats` times with seeds seed, seed + 1, ...: the same splits for every file."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    right = np.zeros(len(labels))
    for r in range(repeats):
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(x, labels):
            clf = LogisticRegression(max_iter=100).fit(x[train], labels[train])
            right[test] += clf.predict(x[test]) == labels[test]
    return right / repeats


def logreg_accuracy(x: np.ndarray, labels: np.ndarray, folds: int = 5, repeats: int = 1, seed: int = 42) -> float:
    """Mean accuracy over the folds (all folds are the same size within one, so this is the mean per item)."""
    return float(np.mean(classify_per_item(x, labels, folds, repeats, seed)))


def paired_bootstrap(per_item_base: np.ndarray, per_item_other: np.ndarray, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float, float, float]:
    """Loss = mean(base) - mean(other) over items scored on both files, resampling items in pairs:
    (loss, standard error, 2.5 % and 97.5 % percentiles of the bootstrap losses)."""
    d = np.asarray(per_item_base, np.float64) - np.asarray(per_item_other, np.float64)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), float(lo), float(hi)


def paired_bootstrap_sts(base: np.ndarray, other: np.ndarray, gold: np.ndarray, n_boot: int = 1000,
                         seed: int = 0) -> tuple[float, float, float, float]:
    """The same for Spearman over document pairs: resample documents (a pair's items are shared with 2 × 48
    other pairs, so pairs are not independent), score both files on the same resample."""
    rng = np.random.default_rng(seed)
    loss = spearman_pairs(base, gold) - spearman_pairs(other, gold)
    boots = np.empty(n_boot)
    for k in range(n_boot):
        picks = rng.integers(0, len(base), len(base))
        boots[k] = spearman_resampled(base, gold, picks) - spearman_resampled(other, gold, picks)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(loss), float(boots.std(ddof=1)), float(lo), float(hi)
