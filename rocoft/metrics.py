"""Metrics computed with scikit-learn / scipy (the `evaluate` library needs the hub at run time)."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def classification_metrics(preds, labels, names=("accuracy", "f1")) -> dict[str, float]:
    """accuracy, f1 (binary if two classes else macro), matthews_corr; values in [0, 1] (mcc in [-1, 1])."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    binary = len(np.union1d(np.unique(labels), np.unique(preds))) <= 2 and set(np.unique(labels)) <= {0, 1}
    fns = {
        "accuracy": lambda: skm.accuracy_score(labels, preds),
        "f1": lambda: skm.f1_score(labels, preds, average="binary" if binary else "macro", zero_division=0),
        "matthews_corr": lambda: skm.matthews_corrcoef(labels, preds),
    }
    return {n: float(fns[n]()) for n in names}


def regression_metrics(preds, labels) -> dict[str, float]:
    preds, labels = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
    return {"pearson": float(stats.pearsonr(preds, labels)[0]),
            "spearman": float(stats.spearmanr(preds, labels)[0])}
