"""Figures drawn from the tidy run frame: Figure 2 (memory and time per method), Figure 4 (selection
strategies) and the rank-ablation curves. Matplotlib is imported only here, lazily, with the Agg backend.

Each ``plot_*`` returns ``(written paths, notes)``; a figure without the runs it needs is skipped with a
note, never an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .frame import aggregate, groups, lookup, none, run_table, seed_stats, shown_rows
from .labels import method_label, row_sort_key, setting_label

SELECTIONS = ["max", "min", "mixed", "random", "first"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    _plt().close(fig)
    return paths


def plot_memory_time(frame: pd.DataFrame, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Figure 2: peak memory (left) and training time (right) per method, bars grouped by task; one
    figure per model."""
    out_dir = Path(out_dir)
    cells = lookup(aggregate(frame[frame.split == ""]))
    gs = groups(frame)
    has = [not g.variant and any((g.model, g.task, g.method, none(g.rank), "", m) in cells
                                 for m in ("peak_memory_mb", "train_time_s")) for g in gs.itertuples(index=False)]
    gs = gs[has]
    if gs.empty:
        return [], ["Figure 2 (memory / time per method): skipped, no runs with peak_memory_mb / train_time_s."]
    plt = _plt()
    written = []
    for model, mg in sorted(gs.groupby("model"), key=lambda kv: kv[0]):
        labels = {}
        for g in mg.itertuples(index=False):
            labels.setdefault((g.method, none(g.rank), g.variant), g.method_label)
        methods = sorted(labels, key=lambda k: row_sort_key(*k))
        tasks = sorted(set(mg.task))
        kinds = {k for ks in mg.memory_kinds for k in ks}
        fig, axes = plt.subplots(1, 2, figsize=(min(24, max(9, 1.1 * len(methods) + 5)), 4.2))
        width = 0.8 / len(tasks)
        x = np.arange(len(methods))
        for ax, metric, ylabel in ((axes[0], "peak_memory_mb", "peak memory (MB)"),
                                   (axes[1], "train_time_s", "training time (s)")):
            for i, task in enumerate(tasks):
                found = [cells.get((model, task, *m, metric)) for m in methods]
                means = [np.nan if c is None else c.mean for c in found]
                stds = [0.0 if c is None else c.std for c in found]
                ax.bar(x + (i - (len(tasks) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=task)
            ax.set_xticks(x, [setting_label(*m, label=labels[m]) for m in methods], rotation=35, ha="right",
                          fontsize=8)
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_title("Peak memory" + (f" ({', '.join(sorted(k for k in kinds if k))})" if kinds else ""),
                          fontsize=9)
        axes[1].set_title("Training time (mean ± std over seeds)", fontsize=9)
        axes[1].legend(fontsize=8, title="task")
        fig.suptitle(f"Figure 2 (suite): memory and time per method, {mg.model_label.iloc[0]}")
        fig.tight_layout()
        written += _save(fig, out_dir, f"fig2_memory_time_{model}")
    return written, []


def plot_selection(frame: pd.DataFrame, out_dir: Path, rank: int = 4, split: str | None = None
                   ) -> tuple[list[Path], list[str]]:
    """Figure 4: main metric per row/column selection strategy (max / min / mixed / random) at rank
    ``rank``: RoCoFT row and column runs grouped by ``method.selection`` from their config.yaml."""
    out_dir = Path(out_dir)
    runs = run_table(frame)
    runs = runs[runs.method.isin(["rocoft_row", "rocoft_col"]) & runs["rank"].eq(rank).fillna(False)
                & runs.selection.map(lambda s: bool(none(s)))]
    if runs.empty:
        return [], [f"Figure 4 (selection strategies at r={rank}): skipped, no RoCoFT row/column runs at rank "
                    f"{rank} with method.selection in config.yaml."]
    rows = shown_rows(frame[frame.run.isin(runs.run)], split)
    main = rows.main_metric.map(lambda m: none(m) or "accuracy")
    rows = rows[(rows.split != "") & (rows.metric == main)]
    plt = _plt()
    written = []
    for model, rs in sorted(runs.groupby("model"), key=lambda kv: kv[0]):
        tasks = sorted(set(rs.task))
        sels = [s for s in SELECTIONS if (rs.selection == s).any()]
        sels += sorted(set(rs.selection) - set(sels))
        fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.6 * len(tasks) + 4), 4), sharey=True)
        width = 0.8 / len(sels)
        x = np.arange(len(tasks))
        lows: list = []
        highs: list = []
        for ax, method in zip(axes, ("rocoft_row", "rocoft_col")):
            for i, s in enumerate(sels):
                found = [seed_stats(rows.shown[rows.run.isin(rs.run[(rs.task == t) & (rs.method == method)
                                                                     & (rs.selection == s)])])
                         for t in tasks]
                means = [np.nan if c is None else c.mean for c in found]
                stds = [0.0 if c is None else c.std for c in found]
                ax.bar(x + (i - (len(sels) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=s)
            ax.set_xticks(x, tasks)
            ax.set_title(f"{method_label(method)}, r={rank}", fontsize=9)
            lows += [m - s for m, s in zip(means, stds) if np.isfinite(m)]     # the last strategy's bars
            highs += [m + s for m, s in zip(means, stds) if np.isfinite(m)]
            ax.grid(axis="y", alpha=0.3)
        if lows:   # zoom on the bars: the strategies differ by fractions of a point
            span = max(highs) - min(lows)
            axes[0].set_ylim(max(0.0, min(lows) - max(2.0, 0.5 * span)), max(highs) + max(1.0, 0.2 * span))
        axes[0].set_ylabel("main metric (%)")
        axes[1].legend(fontsize=8, title="selection", loc="lower right")
        fig.suptitle(f"Figure 4 (suite): selection strategies, {rs.model_label.iloc[0]}")
        fig.tight_layout()
        written += _save(fig, out_dir, f"fig4_selection_{model}")
    return written, []


def plot_rank_ablation(frame: pd.DataFrame, out_dir: Path, split: str | None = None,
                       methods=("rocoft_row", "rocoft_col", "lora")) -> tuple[list[Path], list[str]]:
    """Main metric vs rank for RoCoFT row / column and LoRA, one figure per (model, task) where at least
    one of these methods has two or more ranks."""
    out_dir = Path(out_dir)
    cells = lookup(aggregate(shown_rows(frame, split)))
    curves: dict = {}
    gs = groups(frame, split)
    for g in gs.itertuples(index=False):
        if g.method in methods and none(g.rank) is not None and not g.variant:
            c = cells.get((g.model, g.task, g.method, g.rank, "", g.main_metric or "accuracy"))
            if c is not None:
                curves.setdefault((g.model, g.task), {}).setdefault(g.method, {})[int(g.rank)] = c
    targets = {k: v for k, v in curves.items() if any(len(r) >= 2 for r in v.values())}
    if not targets:
        return [], ["Rank ablation (accuracy vs rank): skipped, no (model, task) with a RoCoFT row/column or LoRA "
                    "method at two or more ranks."]
    plt = _plt()
    written = []
    labels = gs.drop_duplicates("model").set_index("model").model_label
    for (model, task), per in sorted(targets.items()):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ranks_all = set()
        for method in methods:
            if method not in per:
                continue
            rs = sorted(per[method])
            ranks_all |= set(rs)
            ax.errorbar(rs, [per[method][r].mean for r in rs], yerr=[per[method][r].std for r in rs],
                        marker="o", capsize=3, label=method_label(method))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ranks_all), [str(r) for r in sorted(ranks_all)])
        ax.set_xlabel("rank r")
        ax.set_ylabel("main metric (%)")
        ax.set_title(f"Rank ablation (suite): {labels[model]} on {task}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written += _save(fig, out_dir, f"rank_ablation_{task}_{model}")
    return written, []


# ---- the kernel analysis (scripts/ntk.py runs): Figures 3 / 6 and 5
KERNEL_SETS = (("full", "K_θ (full)"), ("rows", "K_θR (rows)"), ("cols", "K_θC (columns)"), ("lora", "K_LoRA"))


def _ntk_runs(frame: pd.DataFrame) -> dict[tuple, list[Path]]:
    """(model, task, variant) -> the eNTK run directories (one per seed, in seed order)."""
    runs = run_table(frame)
    runs = runs[runs.kind == "ntk"]
    out: dict[tuple, list] = {}
    for r in runs.sort_values("seed", key=lambda s: s.astype(str)).itertuples(index=False):
        path = Path(str(r.run).split("#")[0])
        key = (r.model, r.task, r.variant)
        if path not in out.setdefault(key, []):
            out[key].append(path)
    return out


def _read_metrics(path: Path) -> dict:
    import json
    return json.loads((path / "metrics.json").read_text())


def plot_kernels(frame: pd.DataFrame, out_dir: Path, split: str | None = None) -> tuple[list[Path], list[str]]:
    """Figures 3 / 6: the train kernels of the full, rows, columns and LoRA sets side by side, one figure per
    (model, task, k), from the first seed's run (its ``kernels/``). Rows and columns are (label logit c,
    example i), the examples ordered by label, so a C-class task shows C x C blocks, as in the paper."""
    import torch

    from rocoft.ntk.analysis import load_kernel

    written, notes = [], []
    for (model, task, variant), paths in sorted(_ntk_runs(frame).items()):
        run = paths[0]
        metrics = _read_metrics(run)
        kdir = Path(metrics.get("kernel_dir") or run / "kernels")
        kdir = kdir if kdir.is_absolute() and kdir.is_dir() else run / "kernels"
        shown = [(name, title) for name, title in KERNEL_SETS if (kdir / f"{name}.pt").is_file()]
        if not shown:
            notes.append(f"Kernel heatmaps: skipped {model}/{task}/{variant}: no kernel files in {kdir}.")
            continue
        plt = _plt()
        fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False)
        for ax, (name, title) in zip(axes[0], shown):
            kernels, meta = load_kernel(kdir / f"{name}.pt")
            k = kernels["train"]
            order = torch.as_tensor(np.argsort(np.asarray(meta["labels_train"]), kind="stable"))
            k = k[order][:, :, order].permute(1, 0, 3, 2)
            mat = k.reshape(k.shape[0] * k.shape[1], -1).numpy()
            im = ax.imshow(mat, cmap="viridis")
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        fig.suptitle(f"eNTK, {task} {variant}, {model} (seed {metrics['seed']}; examples ordered by label)",
                     fontsize=10)
        written += _save(fig, Path(out_dir), f"ntk_kernels_{model}_{task}_{variant.replace('=', '')}")
    if not written and not notes:
        notes.append("Kernel heatmaps (Figures 3 / 6): skipped, no eNTK runs (scripts/ntk.py).")
    return written, notes


def plot_spectra(frame: pd.DataFrame, out_dir: Path, split: str | None = None) -> tuple[list[Path], list[str]]:
    """Figure 5: eigenvalues of the full, rows, columns (and LoRA) train kernels (``metrics.json``'s
    ``eigenvalues``, the top ones kept), each divided by its kernel's trace over the kept ones (the paper
    rescales per task; the subsets' kernels are orders of magnitude smaller, so each is normalised to compare
    shapes), log scale; one panel per (model, task, k), the first seed."""
    groups_ = sorted(_ntk_runs(frame).items())
    if not groups_:
        return [], ["Eigenvalue spectra (Figure 5): skipped, no eNTK runs (scripts/ntk.py)."]
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups_), figsize=(4 * len(groups_), 3.3), squeeze=False)
    for ax, ((model, task, variant), paths) in zip(axes[0], groups_):
        eig = _read_metrics(paths[0]).get("eigenvalues") or {}
        for name, title in KERNEL_SETS:
            if name in eig:
                ev = np.clip(np.asarray(eig[name], dtype=float), 0, None)
                ax.semilogy(np.arange(1, len(ev) + 1), ev / ev.sum(), marker=".", label=title)
        ax.set_title(f"{task} {variant} ({model})", fontsize=10)
        ax.set_xlabel("index")
        ax.set_ylabel("eigenvalue / sum")
        ax.legend(fontsize=8)
    return _save(fig, Path(out_dir), "ntk_spectra"), []
