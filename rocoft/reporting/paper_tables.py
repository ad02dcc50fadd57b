"""The paper's tables with the suite's numbers joined in: :func:`render_paper_table`.

A table is built as a long frame, one row per (paper row, column): the paper's rows and the table's columns
cross-joined, the published numbers merged in, then the suite's seed cells (:func:`.frame.aggregate`) merged
on (model, task, method, rank, variant, metric). Each cell's text is pivoted into the paper's grid; the long
frame is the table's CSV.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from .frame import STATS, Cell, aggregate, none, run_table, shown_rows
from .labels import model_label
from .paper import GLUE_MAIN, SPECS, UNSUPPORTED, Part, TableSpec
from .render import Table, fmt_cell, fmt_diff, fmt_num

ROW_KEY = ["block", "paper_label", "method", "rank", "variant", "row_metric"]
BLOCK_HEAD = {"model": "LM", "variant": "Setting", "rank": "Rank", "none": ""}
CELL_NOTE = "Cells: paper vs suite mean ± sample std (n = seeds); Δ = suite − paper; '-' = the suite has not run this cell."


def render_paper_table(number: int, paper: pd.DataFrame, frame: pd.DataFrame, split: str | None = None,
                       ranks: dict[str, int] | None = None) -> Table:
    """One paper table with the same rows and columns as the paper; every cell shows
    ``paper vs suite mean ± std (n); Δ suite - paper``, ``paper vs -`` when the suite has not run the cell,
    and only the paper's number for methods the suite cannot run (their label says so).

    Rows whose rank the paper does not print (baselines, Table 7's RoCoFT) use ``ranks[method]`` when
    given, else the suite's rank with the most runs on the table's tasks (ties: the larger rank); the label
    names it, e.g. ``LoRA [suite r=8]``."""
    spec = SPECS[number]
    rows_shown = shown_rows(frame, split)
    stats = aggregate(rows_shown)
    runs = run_table(frame)
    has_block = any(p.block != "none" for p in spec.parts)
    multi = len(spec.parts) > 1
    n_cols = max(len(p.columns) for p in spec.parts)
    first = spec.parts[0]
    header = ([BLOCK_HEAD[first.block]] if has_block else []) + ["Method"]
    header += [f"({i + 1})" for i in range(n_cols)] if multi else [c.header for c in first.columns]
    display: list = []
    records: list = []
    for part in spec.parts:
        rows, cells, suite_ranks = _part_cells(spec, part, paper, stats, rows_shown, runs, ranks or {})
        if multi:
            display += [None, ([""] if has_block else []) + [f"**{part.title}**"] + [c.header for c in part.columns]
                        + [""] * (n_cols - len(part.columns))]
        records += [_record(c, number, part) for c in cells.itertuples(index=False)]
        grid = cells.pivot(index="row", columns="col", values="text")
        prev_block = None
        for row in rows.itertuples(index=False):
            if prev_block is not None and row.block != prev_block and part.block != "none":
                display.append(None)
            block_text = "" if row.block == prev_block else (
                model_label(row.block) if part.block == "model" else f"r={row.block}" if part.block == "rank"
                else row.block)
            prev_block = row.block
            label = row.paper_label
            if row.row_metric and row.row_metric.startswith("kernel_rel"):
                label += f", p={row.row_metric[-1]}"
            if not row.supported:
                label += f" ({UNSUPPORTED})"
            elif none(row.rank) is None:
                shown = sorted({r for (i, _), r in suite_ranks.items() if i == row.row and r is not None})
                if shown:
                    label += " [suite r=" + "/".join(str(r) for r in shown) + "]"
            texts = grid.loc[row.row].tolist()
            display.append(([block_text] if has_block else []) + [label] + texts + [""] * (n_cols - len(texts)))
    any_suite = any(r["suite_mean"] is not None for r in records)
    notes = [CELL_NOTE] + list(spec.notes)
    if split:
        notes.insert(1, f"Suite split forced to '{split}' where runs have it.")
    if not any_suite:
        notes.append("No suite runs match this table yet.")
    assert all(r is None or len(r) == len(header) for r in display), "row width mismatch"
    return Table(f"table{number}", spec.title, header, display, notes, pd.DataFrame.from_records(records),
                 label_cols=1 + has_block)


def _part_cells(spec: TableSpec, part: Part, paper: pd.DataFrame, stats: pd.DataFrame, rows_shown: pd.DataFrame,
                runs: pd.DataFrame, ranks: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(the paper's rows of one part, its cells = rows x columns with paper and suite numbers, the suite
    rank chosen per (row, model) for rows whose rank the paper omits)."""
    sub = paper[paper.table == spec.number]
    match = pd.Series(False, index=sub.index)
    for c in part.columns:
        match |= sub.task.eq(c.task or "") & (sub.metric.eq(c.metric) if c.metric else True)
    block = {"model": sub.model, "variant": sub.variant, "none": "",
             "rank": sub["rank"].map(lambda r: "" if pd.isna(r) else str(int(r)))}[part.block]
    rows = (sub.assign(block=block, row_metric=sub.metric if part.row_metric else None)[match]
            .drop_duplicates(ROW_KEY)[[*ROW_KEY, "model", "suite_supported"]]
            .rename(columns={"model": "row_model", "suite_supported": "supported"}).reset_index(drop=True))
    rows["row"] = range(len(rows))
    cols = pd.DataFrame([{"col": i, "column": c.header, "task": c.task or "", "col_metric": c.metric,
                          "col_model": c.model, "decimals": c.decimals, "suite_metric": c.suite_metric}
                         for i, c in enumerate(part.columns)])
    cells = rows.merge(cols, how="cross")
    cells["model"] = cells.col_model.where(cells.col_model.notna(), cells.row_model)
    cells["metric"] = cells.col_metric.where(cells.col_metric.notna(), cells.row_metric)
    cells["suite_metric"] = cells.suite_metric.where(cells.suite_metric.notna(), cells.metric)
    numbers = sub[["model", "task", "paper_label", "method", "rank", "variant", "metric", "value", "value_str",
                   "std_str", "unit"]]
    cells = cells.merge(numbers, how="left", on=["model", "task", "paper_label", "method", "rank", "variant",
                                                  "metric"], validate="many_to_one")
    cells["wanted"] = cells.supported & cells.value.notna()       # a suite number is looked for
    suite_ranks = {}
    for (row, model), c in cells[cells.wanted & cells["rank"].isna()].groupby(["row", "model"], sort=False):
        method, variant = c.method.iloc[0], c.variant.iloc[0]
        if method in ranks:
            suite_ranks[(row, model)] = int(ranks[method])
            continue
        tasks = [t for t in _tasks(part, model) if t != "glue_avg"]
        counts = Counter(none(r) for r in runs["rank"][(runs.model == model) & (runs.method == method)
                                                       & (runs.variant == variant) & runs.task.isin(tasks)])
        suite_ranks[(row, model)] = (max(counts, key=lambda r: (counts[r], r if r is not None else -1))
                                     if counts else None)
    srank = [suite_ranks.get((r, m)) for r, m in zip(cells.row, cells.model)]
    cells["suite_rank"] = cells["rank"].where(cells["rank"].notna(), pd.array(srank, dtype="Int64"))
    suite = _suite_numbers(part, stats, rows_shown, set(cells.model))
    cells = cells.merge(suite, how="left", on=["model", "task", "method", "suite_rank", "variant", "suite_metric"],
                        validate="many_to_one")
    cells.loc[~cells.wanted, STATS] = np.nan
    cells["text"] = [_text(c) for c in cells.itertuples(index=False)]
    return rows, cells, suite_ranks


def _tasks(part: Part, model: str) -> list[str]:
    """The tasks of a part's columns on one model (a per-method column counts over these)."""
    return [c.task for c in part.columns if c.task and (c.model is None or c.model == model)]


def _suite_numbers(part: Part, stats: pd.DataFrame, rows_shown: pd.DataFrame, models: set) -> pd.DataFrame:
    """The suite's cells a part can show, keyed like its cells: the seed cells, the per-method columns
    (task "": a count over every task of the part, a range when the task heads differ) and GLUE's average
    of the 8 main metrics (task glue_avg, only when all 8 cells exist)."""
    keys = ["model", "task", "method", "rank", "variant", "metric"]
    parts = [stats]
    metrics = {c.suite_metric or c.metric for c in part.columns if c.task is None}
    for model in sorted(models) if metrics else []:
        tasks = _tasks(part, model)
        rows = rows_shown[(rows_shown.model == model) & (rows_shown.split == "") & rows_shown.metric.isin(metrics)
                          & rows_shown.task.isin(tasks)]
        rows = rows.iloc[np.argsort([tasks.index(t) for t in rows.task], kind="stable")]
        parts.append(aggregate(rows, by=("model", "method", "rank", "variant")).assign(task=""))
    main = stats.merge(pd.DataFrame(GLUE_MAIN, columns=["task", "metric"]).assign(pos=range(len(GLUE_MAIN))))
    avg = []
    for key, g in main.sort_values("pos", kind="stable").groupby(["model", "method", "rank", "variant"],
                                                                   sort=False, dropna=False):
        if len(g) == len(GLUE_MAIN):
            mean = float(np.mean(list(g["mean"])))
            avg.append({**dict(zip(["model", "method", "rank", "variant"], key)), "task": "glue_avg",
                        "metric": "avg_main", **Cell(int(g.n.min()), mean, 0.0, g["mean"].min(), g["mean"].max(),
                                                     mean, 0.0)._asdict()})
    parts.append(pd.DataFrame(avg, columns=[*keys, *STATS]))
    suite = pd.concat([p[keys + STATS] for p in parts if len(p)], ignore_index=True) if any(
        len(p) for p in parts) else pd.DataFrame(columns=keys + STATS)
    suite["rank"] = suite["rank"].astype("Int64")
    return suite.rename(columns={"rank": "suite_rank", "metric": "suite_metric"})


def _shown(c) -> tuple:
    """(mean, std) in the paper's unit: stored fractions for a table printed as fractions, else x100."""
    return (c.fmean, c.fstd) if c.unit == "fraction" else (c.mean, c.std)


def _text(c) -> str:
    if pd.isna(c.value):
        return ""
    ptext = fmt_num(float(c.value), metric=c.metric) if c.metric == "train_time_s" else c.value_str
    if c.std_str:
        ptext += f" ({c.std_str})"
    if not c.supported:
        return ptext
    if pd.isna(c.n):
        return f"{ptext} vs -"
    mean, std = _shown(c)
    dec, metric = c.decimals, c.metric
    if metric == "trainable_params":      # a count: one value, or the range over tasks / seeds
        lo, hi = fmt_num(c.lo, dec), fmt_num(c.hi, dec)
        stext = lo if lo == hi else f"{lo}–{hi}"
    elif metric == "avg_main":
        stext = f"{fmt_num(mean, dec)} (n≥{int(c.n)})"
    else:
        stext = fmt_cell(Cell(int(c.n), mean, std, c.lo, c.hi, c.fmean, c.fstd, int(c.n_nan)), dec, metric)
    return f"{ptext} vs {stext}; Δ {fmt_diff(mean - float(c.value), dec, metric)}"


def _record(c, number: int, part: Part) -> dict:
    """One cell of the long CSV frame (plain Python values, so that pandas infers the columns as before)."""
    found = not pd.isna(c.n)
    mean, std = _shown(c) if found else (None, None)
    pval = None if pd.isna(c.value) else float(c.value)
    return {"table": number, "part": part.title, "block": c.block, "row": c.paper_label, "method": c.method,
            "rank": None if none(c.rank) is None else int(c.rank), "variant": c.variant, "model": c.model, "task": c.task,
            "metric": c.metric, "column": c.column, "suite_supported": bool(c.supported), "paper": pval,
            "paper_std": None if pval is None or not c.std_str else float(c.std_str),
            "suite_rank": None if not found or none(c.suite_rank) is None else int(c.suite_rank), "suite_mean": mean, "suite_std": std,
            "suite_n": int(c.n) if found else None,
            "diff": None if mean is None or pval is None else mean - pval}
