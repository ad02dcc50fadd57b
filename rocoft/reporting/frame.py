"""Seeds aggregated: the tidy run frame of :mod:`.runs` grouped into cells.

A cell is one (model, task, method, rank, variant) and metric: mean, sample standard deviation (ddof=1; 0
for one seed), n, and the smallest and largest value, of the seeds' numbers in display units (``mean``,
``std``, ``lo``, ``hi``) and in stored units (``fmean``, ``fstd``: fractions, for a table printed as
fractions). The numbers of a table come from each run's shown split (:func:`shown_splits`) plus its
run-level numbers (split "").

A seed whose number is NaN, infinite or null is not in the mean, std or ``n`` (n counts the seeds with a
number); ``n_nan`` counts it, so that the cell can say so (:func:`.render.fmt_cell`: ``(n=2; 1 NaN)``). A cell
whose every seed is NaN is kept (n=0, mean NaN) and reads ``NaN``, not ``-`` (not run).

Means and deviations are numpy's over the seeds in seed order, as the suite has always computed them, so
the same runs give the same digits.
"""

from __future__ import annotations

from collections import Counter, namedtuple

import numpy as np
import pandas as pd

from .runs import COLUMNS, KEYS

RUN_COLUMNS = COLUMNS[:-5]                       # the per-run columns of the tidy frame
STATS = ["n", "mean", "std", "lo", "hi", "fmean", "fstd", "n_nan"]
SPLIT_PREFERENCE = ("test", "validation_matched", "validation")
Cell = namedtuple("Cell", STATS, defaults=[0])


def none(x):
    """None for a missing scalar (None, NaN, pandas' NA), else the value itself."""
    return None if x is None or (not isinstance(x, (str, list, tuple, set, frozenset)) and pd.isna(x)) else x


def run_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run (the run-level columns of the tidy frame), in the frame's order."""
    return frame.drop_duplicates("run")[RUN_COLUMNS].reset_index(drop=True)


def split_choice(splits: list[str], override: str | None = None) -> str | None:
    """The split a table shows for a run: ``override`` when the run has it, else ``test``, else
    ``validation_matched`` (MNLI), else ``validation``, else the first evaluated split."""
    if override and override in splits:
        return override
    for s in SPLIT_PREFERENCE:
        if s in splits:
            return s
    return splits[0] if splits else None


def shown_splits(frame: pd.DataFrame, override: str | None = None) -> dict:
    """run -> the split its numbers are shown from (None for a run without an evaluated split)."""
    evaluated = frame[frame["split"] != ""].drop_duplicates(["run", "split"])
    per_run = evaluated.groupby("run", sort=False)["split"].agg(list)
    return {run: split_choice(per_run.get(run, []), override) for run in frame["run"].unique()}


def shown_rows(frame: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """The rows a table aggregates: each run's shown split and its run-level numbers."""
    chosen = frame["run"].map(shown_splits(frame, split))
    return frame[(frame["split"] == "") | (frame["split"] == chosen)]


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def seed_stats(values, fractions=None) -> Cell | None:
    """Mean, sample std (ddof=1; 0 for one value), n, min and max of the finite values, and ``n_nan`` the
    number of the others; None when there are no values, NaN statistics (n=0) when none is finite."""
    a = _finite(values)
    n_nan = len(np.asarray(values, dtype=float)) - len(a)
    if not len(a):
        return Cell(0, *[np.nan] * 6, n_nan) if n_nan else None
    f = a if fractions is None else _finite(fractions)
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    fstd = float(f.std(ddof=1)) if len(f) > 1 else 0.0
    return Cell(len(a), float(a.mean()), std, float(a.min()), float(a.max()), float(f.mean()), fstd, n_nan)


def aggregate(rows: pd.DataFrame, by=tuple(KEYS)) -> pd.DataFrame:
    """Cells: ``rows`` grouped by ``by`` + metric (groups in order of appearance), one row per cell with
    the columns of :data:`STATS`; cells without any value are left out (a cell of NaNs stays, n=0)."""
    by = [*by, "metric"]
    if rows.empty:
        return pd.DataFrame(columns=[*by, *STATS])
    codes = rows.groupby(by, sort=False, dropna=False).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")             # each group's rows together, in frame order
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    shown = np.split(rows["shown"].to_numpy(float)[order], bounds)
    value = np.split(rows["value"].to_numpy(float)[order], bounds)
    out = rows.iloc[order[np.r_[0, bounds]]][by].reset_index(drop=True)
    stats = [seed_stats(s, v) or Cell(0, *[np.nan] * 6) for s, v in zip(shown, value)]
    out = pd.concat([out, pd.DataFrame(stats, columns=STATS)], axis=1)
    return out[(out["n"] > 0) | (out["n_nan"] > 0)].reset_index(drop=True)


def lookup(stats: pd.DataFrame) -> dict[tuple, Cell]:
    """Cells by key: ``(model, task, method, rank, variant, metric)`` -> :class:`Cell` (rank None when the
    method has none)."""
    keys = [c for c in stats.columns if c not in STATS]
    return {tuple(none(v) for v in rec[:len(keys)]): Cell(int(rec[len(keys)]), *rec[len(keys) + 1:-1], int(rec[-1]))
            for rec in stats[keys + STATS].itertuples(index=False, name=None)}


def cells(frame: pd.DataFrame, split: str | None = None) -> dict[tuple, Cell]:
    """Every cell of the frame, numbers from each run's shown split: a convenience for tests and notebooks."""
    return lookup(aggregate(shown_rows(frame, split)))


def _mode(values):
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def groups(frame: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """One row per (model, task, method, rank, variant) seed group: ``n`` runs, ``seeds`` (in seed order),
    ``failed_seeds`` (runs used whose status.json says failed), the most common ``main_metric`` and shown
    ``split``, the labels, the runs' ``memory_kinds``, ``selections`` and ``stored`` units."""
    runs = run_table(frame)
    chosen = shown_splits(frame, split)
    stored = frame.groupby("run", sort=False)["stored"].agg(lambda s: set(s) - {""})
    out = []
    for key, g in runs.groupby(KEYS, sort=False, dropna=False):
        g = g.iloc[np.argsort([str(s) for s in g["seed"]], kind="stable")]
        out.append({**{k: none(v) for k, v in zip(KEYS, key)}, "n": len(g), "seeds": list(g["seed"]),
                    "failed_seeds": list(g["seed"][g["status"] == "failed"]),
                    "main_metric": _mode([m for m in g["main_metric"] if none(m)]),
                    "split": _mode([chosen[r] for r in g["run"]]),
                    "method_label": g["method_label"].iloc[0], "model_label": g["model_label"].iloc[0],
                    "memory_kinds": [none(k) for k in g["memory_kind"]],
                    "selections": {s for s in g["selection"] if none(s)},
                    "stored": set().union(*(stored.get(r, set()) for r in g["run"]))})
    out = pd.DataFrame(out, columns=[*KEYS, "n", "seeds", "failed_seeds", "main_metric", "split", "method_label",
                                     "model_label", "memory_kinds", "selections", "stored"])
    out["rank"] = out["rank"].astype("Int64")
    return out
