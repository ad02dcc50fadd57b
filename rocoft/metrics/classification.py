"""Classification and regression metrics with scikit-learn / scipy (the `evaluate` library needs the hub)."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def classification_metrics(preds, labels, names=("accuracy", "f1"), num_labels: int | None = None) -> dict[str, float]:
    """accuracy, f1, matthews_corr; values in [0, 1] (mcc in [-1, 1]).

    f1 is the F1 of class 1 for a two-class task (GLUE's MRPC / QQP convention), else the macro
    average over all ``num_labels`` classes, whichever of them the evaluated rows happen to contain.
    Without ``num_labels`` the classes are those present in ``labels`` and ``preds``."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.arange(num_labels) if num_labels else np.union1d(np.unique(labels), np.unique(preds))
    binary = len(classes) <= 2 and set(classes.tolist()) <= {0, 1}
    fns = {
        "accuracy": lambda: skm.accuracy_score(labels, preds),
        "f1": lambda: skm.f1_score(labels, preds, average="binary" if binary else "macro",
                                   labels=None if binary else classes, zero_division=0),
        "matthews_corr": lambda: skm.matthews_corrcoef(labels, preds),
    }
    return {n: float(fns[n]()) for n in names}


def regression_metrics(preds, labels) -> dict[str, float]:
    """Pearson and Spearman correlations, in [-1, 1]."""
    preds, labels = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
    return {"pearson": float(stats.pearsonr(preds, labels)[0]),
            "spearman": float(stats.spearmanr(preds, labels)[0])}
