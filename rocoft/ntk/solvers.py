"""Classifiers on an eNTK: the reference protocol, true kernel logistic regression, kernel least squares.

Kernels are ``[N, C, M, C]`` (train x label logits x eval x label logits). ``binary`` (default: C == 2)
uses the kernel of the scalar ``f_1 - f_0`` (the reference code's ``--binary_classification``):
``K[:,1,:,1] - K[:,1,:,0] - K[:,0,:,1] + K[:,0,:,0]``; otherwise every (example, class) is one row.

* :func:`reference_logistic` -- LM-Kernel-FT's solver: sklearn ``LogisticRegressionCV(max_iter=10000,
  random_state=0)`` with kernel rows as features (fit on K_train's rows, predict on K_eval^T). Binary:
  score ``log p1 - log p0`` of each eval example (the decision function: finite where p underflows). Multi-class: fit the one-hot (example, class) rows,
  score each eval (example, class) the same way and take the argmax over classes.
* :func:`kernel_logistic` -- the paper's kernel logistic regression: min over alpha of the logistic
  (multi-class: softmax cross-entropy) loss of f = K alpha plus (lambda / 2) alpha^T K alpha, convex,
  solved by L-BFGS in float64; lambda by stratified cross-validation over a grid unless given.
* :func:`kernel_ridge` -- least squares on the kernel (``lstsq``) with optional ridge
  ``ridge * sigma_max(K)``; targets one-hot (binary: +-1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class SolverResult:
    """``solver`` names the method; ``predictions`` [M] class ids; ``scores`` [M, C] or [M] (binary)."""

    solver: str
    predictions: np.ndarray
    scores: np.ndarray
    accuracy: float | None = None
    info: dict = field(default_factory=dict)


def binary_kernel(k: torch.Tensor) -> torch.Tensor:
    """The kernel [N, M] of f_1 - f_0 from a [N, 2, M, 2] kernel."""
    if k.shape[1] != 2 or k.shape[3] != 2:
        raise ValueError(f"a binary kernel needs 2 outputs, got {tuple(k.shape)}")
    return k[:, 1, :, 1] - k[:, 1, :, 0] - k[:, 0, :, 1] + k[:, 0, :, 0]


def _inputs(k_train, y_train, k_eval):
    k_train, k_eval = torch.as_tensor(k_train, dtype=torch.float64), torch.as_tensor(k_eval, dtype=torch.float64)
    y = np.asarray(y_train, dtype=np.int64)
    if k_train.dim() != 4 or k_train.shape[0] != k_train.shape[2] or k_train.shape[0] != len(y):
        raise ValueError(f"K_train must be [N, C, N, C] with N = {len(y)} labels, got {tuple(k_train.shape)}")
    if k_eval.dim() != 4 or k_eval.shape[0] != k_train.shape[0] or k_eval.shape[1] != k_train.shape[1]:
        raise ValueError(f"K_eval must be [N, C, M, C] with N = {k_train.shape[0]}, got {tuple(k_eval.shape)}")
    return k_train, y, k_eval


def _result(name, pred, scores, y_eval, info) -> SolverResult:
    acc = None if y_eval is None else float(np.mean(pred == np.asarray(y_eval)))
    return SolverResult(name, pred, scores, acc, info)


def _binary(binary, classes):
    return classes == 2 if binary is None else bool(binary)


def reference_classifier():
    """``LogisticRegressionCV(max_iter=10000, random_state=0)`` with sklearn 0.24's defaults (Cs=10, 5-fold
    stratified CV, L2, lbfgs, accuracy scoring), spelled out where newer sklearn asks for them."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    pinned = {"l1_ratios": (0.0,), "scoring": "accuracy", "use_legacy_attributes": True}
    params = inspect.signature(LogisticRegressionCV).parameters
    extra = {k: v for k, v in pinned.items() if k in params and params[k].default == "warn"}
    return LogisticRegressionCV(max_iter=10000, random_state=0, **extra)


def reference_logistic(k_train, y_train, k_eval, y_eval=None, *, binary: bool | None = None) -> SolverResult:
    """LM-Kernel-FT's ``logistic`` solver (see the module docstring)."""
    k_train, y, k_eval = _inputs(k_train, y_train, k_eval)
    n, classes, m = k_train.shape[0], k_train.shape[1], k_eval.shape[2]
    model = reference_classifier()
    if _binary(binary, classes):
        model.fit(binary_kernel(k_train).numpy(), y)
        score = model.decision_function(binary_kernel(k_eval).T.numpy())  # = log p1 - log p0, finite
        return _result("reference_logistic_cv", (score > 0).astype(np.int64), score, y_eval,
                       {"binary": True, "C": float(model.C_[0])})
    targets = np.eye(classes, dtype=np.int64)[y].reshape(-1)
    model.fit(k_train.reshape(n * classes, n * classes).numpy(), targets)
    score = model.decision_function(k_eval.reshape(n * classes, m * classes).T.numpy()).reshape(m, classes)
    return _result("reference_logistic_cv", score.argmax(1), score, y_eval, {"binary": False, "C": float(model.C_[0])})


def _klr_fit(k: np.ndarray, y: np.ndarray, classes: int, lam: float, binary: bool) -> np.ndarray:
    """alpha minimising loss(K alpha) + lam/2 alpha^T K alpha (K: [P, P] over (example, class) rows)."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax, logsumexp

    onehot = np.eye(classes)[y]

    def objective(alpha):
        f = k.T @ alpha  # binary: [N]; multi-class: [N * C] -> [N, C]
        if binary:
            loss = np.sum(np.logaddexp(0.0, f) - y * f)
            df = 1.0 / (1.0 + np.exp(-f)) - y
        else:
            fm = f.reshape(-1, classes)
            loss = np.sum(logsumexp(fm, axis=1) - np.sum(fm * onehot, axis=1))
            df = (np.exp(log_softmax(fm, axis=1)) - onehot).reshape(-1)
        ka = k @ alpha
        return loss + 0.5 * lam * alpha @ ka, k @ df + lam * ka

    res = minimize(objective, np.zeros(k.shape[0]), jac=True, method="L-BFGS-B",
                   options={"maxiter": 10000, "gtol": 1e-10, "ftol": 1e-14})
    return res.x


def _klr_matrices(k_train, k_eval, binary):
    n, classes, m = k_train.shape[0], k_train.shape[1], k_eval.shape[2]
    if binary:
        return binary_kernel(k_train).numpy(), binary_kernel(k_eval).numpy()
    return k_train.reshape(n * classes, n * classes).numpy(), k_eval.reshape(n * classes, m * classes).numpy()


def _klr_predict(alpha, ke, classes, binary):
    f = ke.T @ alpha
    return ((f > 0).astype(np.int64), f) if binary else (f.reshape(-1, classes).argmax(1), f.reshape(-1, classes))


def kernel_logistic(k_train, y_train, k_eval, y_eval=None, *, lam: float | None = None,
                    lams=tuple(np.logspace(-4, 2, 7)), folds: int = 4, binary: bool | None = None) -> SolverResult:
    """Kernel logistic regression (RKHS-norm regularised, convex in alpha). The kernel is divided by its
    mean diagonal first so that ``lam`` means the same for kernels of any scale; without ``lam``, the
    value of ``lams`` with the best stratified ``folds``-fold accuracy (ties: the largest) is used."""
    from sklearn.model_selection import StratifiedKFold

    k_train, y, k_eval = _inputs(k_train, y_train, k_eval)
    classes = k_train.shape[1]
    binary = _binary(binary, classes)
    kt, ke = _klr_matrices(k_train, k_eval, binary)
    scale = float(np.mean(np.diag(kt))) or 1.0
    kt, ke = kt / scale, ke / scale
    scores_cv = {}
    if lam is None:
        splits = min(folds, int(np.bincount(y).min()))
        if splits < 2:
            raise ValueError("kernel_logistic: cross-validating lambda needs >= 2 examples per class; give lam=")
        cv = list(StratifiedKFold(splits, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
        for value in lams:
            correct = 0
            for tr, te in cv:
                rows_tr, rows_te = _rows(tr, classes, binary), _rows(te, classes, binary)
                alpha = _klr_fit(kt[np.ix_(rows_tr, rows_tr)], y[tr], classes, value, binary)
                pred, _ = _klr_predict(alpha, kt[np.ix_(rows_tr, rows_te)], classes, binary)
                correct += int(np.sum(pred == y[te]))
            scores_cv[float(value)] = correct / len(y)
        best = max(scores_cv.values())
        lam = max(v for v, s in scores_cv.items() if s == best)
    alpha = _klr_fit(kt, y, classes, lam, binary)
    pred, score = _klr_predict(alpha, ke, classes, binary)
    return _result("kernel_logistic", pred, score, y_eval,
                   {"binary": binary, "lambda": float(lam), "kernel_scale": scale, "cv_accuracy": scores_cv})


def _rows(idx: np.ndarray, classes: int, binary: bool) -> np.ndarray:
    return idx if binary else (idx[:, None] * classes + np.arange(classes)[None]).reshape(-1)


def kernel_ridge(k_train, y_train, k_eval, y_eval=None, *, ridge: float = 0.0, binary: bool | None = None) -> SolverResult:
    """Least squares ``(K + ridge * sigma_max(K) I) alpha = Y`` (lstsq), predictions ``K_eval^T alpha``."""
    k_train, y, k_eval = _inputs(k_train, y_train, k_eval)
    classes = k_train.shape[1]
    binary = _binary(binary, classes)
    kt, ke = (torch.from_numpy(a) for a in _klr_matrices(k_train, k_eval, binary))
    target = torch.from_numpy(2.0 * y - 1.0 if binary else np.eye(classes)[y].reshape(-1))
    if ridge:
        kt = kt + ridge * torch.linalg.matrix_norm(kt, ord=2) * torch.eye(kt.shape[0], dtype=kt.dtype)
    alpha = torch.linalg.lstsq(kt, target[:, None], driver="gelsd").solution[:, 0]
    pred, score = _klr_predict(alpha.numpy(), ke.numpy(), classes, binary)
    return _result("kernel_ridge" if ridge else "kernel_lstsq", pred, score, y_eval,
                   {"binary": binary, "ridge": float(ridge)})


SOLVERS = {"reference_logistic": reference_logistic, "kernel_logistic": kernel_logistic, "kernel_ridge": kernel_ridge}
