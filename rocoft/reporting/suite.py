"""The suite's own tables (no paper numbers): one per (model, task), and a per-model overview.

Rows are method settings (method / rank / variant) in :func:`.labels.row_sort_key` order, cells the seed
cells of :func:`.frame.aggregate` (mean ± sample std over seeds), scores x100.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .frame import _mode, aggregate, groups, lookup, none, shown_rows
from .labels import model_label, row_sort_key
from .render import Table, fmt_cell, fmt_int_range
from .runs import KEYS

HIDDEN_METRICS = {"examples", "unparseable", "loss", "runtime_s"}
PARAM_COUNTS = ("trainable", "trainable_without_head", "additional")
METRIC_NAMES = {"accuracy": "Accuracy", "f1": "F1", "matthews_corr": "MCC", "pearson": "Pearson",
                "spearman": "Spearman", "exact_match": "EM", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
                "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum", "loglik_acc": "Log-lik acc"}
MEMORY_KINDS = {"cpu_max_rss": "cpu_max_rss, the process's max resident set size (not comparable to GPU memory; "
                               "in a sweep run in one process it is the maximum over the runs so far)",
                "cpu_rss_high_water": "cpu_rss_high_water, the run's resident set size high-water mark (reset at the "
                                      "start of each run; not comparable to GPU memory)",
                "cuda_max_allocated": "cuda_max_allocated, torch's peak allocated GPU memory"}
SUITE_NOTES = [
    "One table per (model, task) found under the results tree; rows = method / rank (/ variant: a non-default "
    "selection or p, and the settings that differ between the runs' config.yaml, e.g. train.lr=0.001). Cells: "
    "mean ± sample std over seeds (n = number of seeds, listed under Seeds; a cell over fewer seeds says its n, "
    "and how many had a NaN). † after a seed: its status.json says failed after metrics.json was written.",
    "Trainable = params.trainable (with the task head); w/o head = params.trainable_without_head; Added = "
    "params.additional (parameters the method adds to the model: 0 for RoCoFT, BitFit and full FT). Counts are "
    "exact; a range means the seeds differ. Times in seconds (wall = whole run, train = training loop)."]


def metric_name(m: str) -> str:
    return METRIC_NAMES.get(m, m)


def _sorted_groups(g: pd.DataFrame) -> pd.DataFrame:
    keys = [row_sort_key(m, none(r), v) for m, r, v in zip(g.method, g["rank"], g.variant)]
    return g.iloc[sorted(range(len(g)), key=keys.__getitem__)]


def _key(g) -> tuple:
    return (g.model, g.task, g.method, none(g.rank), g.variant)


def render_suite_table(frame: pd.DataFrame, split: str | None = None) -> list[Table]:
    """One table per (model, task): rows = method / rank (/ variant); columns = the main split's metrics
    (mean ± std, n; best main-metric mean in bold), the validation main metric when the table's split is
    another one, trainable parameters (with / without the task head), parameters added, wall and training
    time, and peak memory."""
    rows_shown = shown_rows(frame, split)
    cells = lookup(aggregate(rows_shown))
    validation = lookup(aggregate(frame[frame.split == "validation"]))
    out = []
    for (model, task), gs in sorted(groups(frame, split).groupby(["model", "task"]), key=lambda kv: kv[0]):
        gs = _sorted_groups(gs)
        main = _mode(list(gs.main_metric)) or "accuracy"
        msplit = _mode(list(gs.split))
        mine = rows_shown[(rows_shown.model == model) & (rows_shown.task == task) & (rows_shown.split != "")]
        mine = mine.merge(gs[KEYS].assign(pos=range(len(gs))), on=KEYS).sort_values("pos", kind="stable")
        order = [m for m in mine.metric.drop_duplicates() if m not in HIDDEN_METRICS]   # first seen, in row order
        metric_names = sorted(order, key=lambda k: (k != main, order.index(k)))
        val_col = msplit not in (None, "validation") and bool(
            ((frame.model == model) & (frame.task == task) & (frame.split == "validation")).any())
        has_variant = any(gs.variant)
        means = [c.mean for g in gs.itertuples(index=False) if (c := cells.get((*_key(g), main))) and c.n]
        best = max(means, default=None)
        header = ["Method", "Rank"] + (["Variant"] if has_variant else []) + ["n", "Seeds"]
        header += [f"{metric_name(m)} ({msplit})" for m in metric_names]
        if val_col:
            header.append(f"{metric_name(main)} (validation)")
        header += ["Trainable", "w/o head", "Added", "Wall time (s)", "Train time (s)", "Peak memory (MB)"]
        rows, records = [], []
        for g in gs.itertuples(index=False):
            key = _key(g)
            row = [g.method_label, "-" if key[3] is None else str(key[3])]
            if has_variant:
                sels = set(g.selections)
                row.append(g.variant or (f"selection={sels.pop()} (task default)" if len(sels) == 1 else ""))
            row += [str(g.n), ",".join(f"{s}†" if s in g.failed_seeds else str(s) for s in g.seeds)]
            rec = {"model": model, "task": task, "method": g.method, "rank": key[3], "variant": g.variant,
                   "n": g.n, "seeds": " ".join(str(s) for s in g.seeds), "split": msplit}
            for m in metric_names:
                c = cells.get((*key, m))
                text = fmt_cell(c, 2, show_n=c is not None and c.n != g.n)
                if m == main and c is not None and best is not None and abs(c.mean - best) < 1e-12:
                    text = f"**{text}**"
                row.append(text)
                rec[f"{m}_mean"], rec[f"{m}_std"] = (None, None) if c is None else (c.mean, c.std)
            if val_col:
                c = validation.get((*key, main))
                row.append(fmt_cell(c, 2, show_n=c is not None and c.n != g.n))
                rec[f"validation_{main}_mean"] = None if c is None else c.mean
                rec[f"validation_{main}_std"] = None if c is None else c.std
            for name in PARAM_COUNTS:
                c = cells.get((*key, name))
                row.append("-" if c is None or not c.n else fmt_int_range(c.lo, c.hi))
                rec[name] = None if c is None else c.mean
            for name in ("wall_time_s", "train_time_s", "peak_memory_mb"):
                c = cells.get((*key, name))
                row.append(fmt_cell(c, 1 if name != "peak_memory_mb" else 0, show_n=False))
                rec[f"{name}_mean"], rec[f"{name}_std"] = (None, None) if c is None else (c.mean, c.std)
            rows.append(row)
            records.append(rec)
        kinds = sorted({k for ks in gs.memory_kinds for k in ks if k})
        scale = ("x100 (fractions in metrics.json)" if any("fraction" in s for s in gs.stored)
                 else "as stored (already x100)")
        notes = [f"{metric_name(main)} is the main metric (best mean in bold); metrics {scale}, split '{msplit}'. "
                 "Peak memory: " + ("; ".join(MEMORY_KINDS.get(k, k) for k in kinds) or "unknown") + "."]
        title = f"Suite: {model_label(model, gs.model_label.iloc[0])} on {task}"
        out.append(Table(f"suite_{task}_{model}", title, header, rows, notes, pd.DataFrame.from_records(records),
                         label_cols=2 + has_variant))
    return out


def render_suite_overview(frame: pd.DataFrame, split: str | None = None) -> list[Table]:
    """Per model with two or more tasks: rows = method / rank (/ variant), one column per task with its main
    metric (mean ± std (n); best per task in bold), then the parameter counts over all its tasks."""
    rows_shown = shown_rows(frame, split)
    cells = lookup(aggregate(rows_shown))
    counts = lookup(aggregate(rows_shown[rows_shown.split == ""], by=("model", "method", "rank", "variant")))
    out = []
    for model, gs in sorted(groups(frame, split).groupby("model"), key=lambda kv: kv[0]):
        tasks = sorted(set(gs.task))
        if len(tasks) < 2:
            continue
        settings = {}
        for g in gs.itertuples(index=False):
            settings.setdefault((g.method, none(g.rank), g.variant), g.method_label)
        keys = sorted(settings, key=lambda k: row_sort_key(*k))
        has_variant = any(k[2] for k in keys)
        mains, best = {}, {}
        for t in tasks:
            tg = gs[gs.task == t]
            mains[t] = (_mode(list(tg.main_metric)) or "accuracy", _mode(list(tg.split)))
            means = [c.mean for g in tg.itertuples(index=False) if (c := cells.get((*_key(g), mains[t][0]))) and c.n]
            best[t] = max(means, default=None)
        header = ["Method", "Rank"] + (["Variant"] if has_variant else [])
        header += [f"{t}: {metric_name(m)} ({sp})" for t, (m, sp) in mains.items()]
        header += ["Trainable", "w/o head", "Added"]
        present = {(g.task, g.method, none(g.rank), g.variant) for g in gs.itertuples(index=False)}
        rows, records = [], []
        for method, rank, variant in keys:
            row = [settings[(method, rank, variant)], "-" if rank is None else str(rank)]
            if has_variant:
                row.append(variant)
            rec = {"model": model, "method": method, "rank": rank, "variant": variant}
            for t in tasks:
                main = mains[t][0]
                c = cells.get((model, t, method, rank, variant, main))
                text = fmt_cell(c)
                if c is not None and best[t] is not None and abs(c.mean - best[t]) < 1e-12:
                    text = f"**{text}**"
                row.append(text)
                rec[f"{t}_{main}_mean"] = None if c is None else c.mean
                rec[f"{t}_{main}_std"] = None if c is None else c.std
                rec[f"{t}_n"] = 0 if c is None else c.n
            ran = [t for t in tasks if (t, method, rank, variant) in present]
            for name in PARAM_COUNTS:
                complete = ran and all((model, t, method, rank, variant, name) in cells for t in ran)
                c = counts.get((model, method, rank, variant, name)) if complete else None
                row.append("-" if c is None or not c.n else fmt_int_range(c.lo, c.hi))
                rec[name] = None if c is None else c.mean
            rows.append(row)
            records.append(rec)
        notes = ["Main metric per task: mean ± sample std (n = seeds); best per task in bold. Parameter counts "
                 "over all tasks of the row (a range when the task heads differ)."]
        out.append(Table(f"suite_overview_{model}", f"Suite overview: {model_label(model, gs.model_label.iloc[0])}",
                         header, rows, notes, pd.DataFrame.from_records(records), label_cols=2 + has_variant))
    return out


def suite_markdown(tables: list[Table]) -> str:
    head = "## Suite runs\n\n" + "\n".join(f"- {n}" for n in SUITE_NOTES) + "\n"
    return "\n".join([head] + [t.to_markdown() for t in tables])


def write_suite(tables: list[Table], out_dir: Path, formats) -> list[Path]:
    """suite.md / suite.tex (every suite table), suite.csv (per (model, task) rows) and suite_overview.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        written.append(out_dir / "suite.md")
        written[-1].write_text(suite_markdown(tables), encoding="utf-8")
    if "latex" in formats:
        written.append(out_dir / "suite.tex")
        written[-1].write_text("% " + "\n% ".join(SUITE_NOTES) + "\n" + "\n".join(t.to_latex() for t in tables),
                               encoding="utf-8")
    if "csv" in formats:   # two schemas: per (model, task) rows, and the per-model overviews
        for stem, parts in (("suite", [t for t in tables if not t.name.startswith("suite_overview")]),
                            ("suite_overview", [t for t in tables if t.name.startswith("suite_overview")])):
            if parts:
                written.append(out_dir / f"{stem}.csv")
                pd.concat([t.frame for t in parts], ignore_index=True).to_csv(written[-1], index=False)
    return written
