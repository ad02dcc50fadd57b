"""Kernel solvers on toy kernels, relative kernel differences and the kernel store."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegressionCV

from rocoft.ntk.analysis import cached_kernels, inputs_hash, relative_difference, spectrum
from rocoft.ntk.solvers import kernel_logistic, kernel_ridge, reference_logistic


def toy(n_per_class: int, classes: int, m_per_class: int, seed: int = 0, noise: float = 0.3):
    """Linear-feature kernel [N, C, M, C] of a separable problem: class c's examples have features near
    the c-th axis, output logit d's gradient is the features placed in block d (a block-diagonal NTK)."""
    g = torch.Generator().manual_seed(seed)

    def feats(per):
        y = torch.arange(classes).repeat_interleave(per)
        x = torch.eye(classes)[y] * 3 + noise * torch.randn(len(y), classes, generator=g)
        return x.double(), y.numpy()

    xa, ya = feats(n_per_class)
    xb, yb = feats(m_per_class)
    base = lambda u, v: u @ v.T + 0.5  # noqa: E731
    eye = torch.eye(classes, dtype=torch.float64)
    k = lambda u, v: torch.einsum("nm,cd->ncmd", base(u, v), eye)  # noqa: E731
    return k(xa, xa), ya, k(xa, xb), yb


@pytest.mark.parametrize("classes", [2, 3])
def test_klr_solvers_separate_a_separable_kernel(classes):
    ktr, ytr, kev, yev = toy(8, classes, 10)
    assert kernel_logistic(ktr, ytr, kev, yev).accuracy == 1.0
    assert kernel_logistic(ktr, ytr, kev, yev, lam=1e-3).accuracy == 1.0
    assert reference_logistic(ktr, ytr, kev, yev).accuracy == 1.0
    assert kernel_ridge(ktr, ytr, kev, yev, ridge=1e-3).accuracy == 1.0
    assert kernel_ridge(ktr, ytr, kev, yev).solver == "kernel_lstsq"


@pytest.mark.filterwarnings("ignore::FutureWarning")  # sklearn 1.9 asks for its new defaults to be spelled out
def test_reference_solver_is_sklearn_on_kernel_rows():
    ktr, ytr, kev, yev = toy(8, 3, 10, noise=1.5)  # overlapping classes: predictions depend on the fit
    res = reference_logistic(ktr, ytr, kev, yev)
    n, c, m = 24, 3, 30
    clf = LogisticRegressionCV(max_iter=10000, random_state=0).fit(ktr.reshape(n * c, n * c).numpy(),
                                                                    np.eye(c, dtype=int)[ytr].reshape(-1))
    lp = clf.predict_log_proba(kev.reshape(n * c, m * c).T.numpy())
    np.testing.assert_allclose(res.scores, (lp[:, 1] - lp[:, 0]).reshape(m, c))
    np.testing.assert_array_equal(res.predictions, res.scores.argmax(1))
    assert res.solver == "reference_logistic_cv" and 0.3 < res.accuracy < 1.0

    k2, y2, e2, _ = toy(8, 2, 10, noise=1.5)
    res2 = reference_logistic(k2, y2, e2)
    diff = lambda k: k[:, 1, :, 1] - k[:, 1, :, 0] - k[:, 0, :, 1] + k[:, 0, :, 0]  # noqa: E731
    clf2 = LogisticRegressionCV(max_iter=10000, random_state=0).fit(diff(k2).numpy(), y2)
    lp2 = clf2.predict_log_proba(diff(e2).T.numpy())
    np.testing.assert_allclose(res2.scores, lp2[:, 1] - lp2[:, 0])


def test_kernel_logistic_minimises_its_objective():
    """The fitted alpha has zero gradient of the paper's objective (binary, y in {0, 1})."""
    from rocoft.ntk.solvers import _klr_fit
    ktr, ytr, _, _ = toy(6, 2, 1, noise=1.5)
    k = (ktr[:, 1, :, 1] - ktr[:, 1, :, 0] - ktr[:, 0, :, 1] + ktr[:, 0, :, 0]).numpy()
    alpha = _klr_fit(k, ytr, 2, 0.1, True)
    f = k @ alpha
    grad = 0.1 * k @ alpha - k @ ytr + k @ (1 / (1 + np.exp(-f)))
    assert np.abs(grad).max() < 1e-6 * np.abs(k).max()


def test_relative_difference():
    k = torch.randn(4, 2, 4, 2, dtype=torch.float64)
    for p in (1, 2):
        assert relative_difference(k, k, p) == 0
        assert relative_difference(3.7 * k, k, p) == pytest.approx(0, abs=1e-15)
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 0.0])
    assert relative_difference(a, b, 2) == pytest.approx(np.hypot(0.6 - 1, 0.8))
    assert relative_difference(a, b, 1) == pytest.approx(abs(3 / 7 - 1) + 4 / 7)


def test_spectrum_matches_numpy():
    x = torch.randn(5, 2, 7, dtype=torch.float64)
    k = torch.einsum("ncp,mdp->ncmd", x, x)
    ev = spectrum(k)
    np.testing.assert_allclose(ev.numpy(), np.sort(np.linalg.eigvalsh(k.reshape(10, 10).numpy()))[::-1], atol=1e-10)


def test_cached_kernels_reuse_unless_inputs_change(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"full": torch.full((2, 2, 2, 2), float(len(calls)))}

    ids = torch.arange(6).reshape(2, 3)
    meta = {"task": "mr", "k": 16, "seed": 13, "inputs": inputs_hash(ids, [5, 7])}
    path = tmp_path / "k.pt"
    k1, reused1 = cached_kernels(path, meta, compute)
    k2, reused2 = cached_kernels(path, dict(meta), compute)
    assert (reused1, reused2, len(calls)) == (False, True, 1) and torch.equal(k1["full"], k2["full"])
    changed = dict(meta, inputs=inputs_hash(ids + 1, [5, 7]))
    k3, reused3 = cached_kernels(path, changed, compute)
    assert not reused3 and len(calls) == 2 and float(k3["full"][0, 0, 0, 0]) == 2.0
    assert (tmp_path / "k.json").is_file()
