"""Scores as MTEB computes them: nDCG@10 (retrieval), Spearman of cosine vs gold (STS), logistic-regression accuracy."""
from __future__ import annotations

import numpy as np


def ndcg_at_10(queries: np.ndarray, corpus: np.ndarray, relevant: list[list[int]]) -> float:
    """Mean nDCG@10 over queries, binary relevance, cosine ranking (rows are unit length)."""
    sims = queries @ corpus.T
    discounts = 1 / np.log2(np.arange(2, 12))
    scores = []
    for i, rel in enumerate(relevant):
        top = np.argsort(-sims[i], kind="stable")[:10]
        gains = np.isin(top, rel).astype(float)
        ideal = discounts[: min(len(rel), 10)].sum()
        scores.append(float(gains @ discounts[: len(top)]) / ideal)
    return float(np.mean(scores))


def spearman_pairs(docs: np.ndarray, gold: np.ndarray) -> float:
    """Spearman correlation of cosine with the human score over every unordered pair (i < j)."""
    from scipy.stats import spearmanr

    i, j = np.triu_indices(len(docs), k=1)
    return float(spearmanr(np.sum(docs[i] * docs[j], axis=1), gold[i, j]).statistic)


def logreg_accuracy(x: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 42) -> float:
    """Mean accuracy of a logistic regression (MTEB: max_iter 100) over stratified folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    accs = []
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        clf = LogisticRegression(max_iter=100).fit(x[train], labels[train])
        accs.append(float((clf.predict(x[test]) == labels[test]).mean()))
    return float(np.mean(accs))
