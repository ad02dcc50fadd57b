"""Reporting: scan a results tree, aggregate seeds, render the paper's tables next to the suite's numbers.

Used by ``scripts/tables.py``; importable and side-effect free until a ``write*`` / ``plot_*`` /
:func:`build_report` call. The flow, one module per step:

| module          | step                                                                                     |
|-----------------|------------------------------------------------------------------------------------------|
| runs.py         | :func:`scan_results`: run directories -> ONE tidy frame (run x split x metric) + issues;   |
|                 | old (format 1) metrics.json files converted to fractions on read                        |
| frame.py        | :func:`aggregate`: groupby cells (mean, sample std ddof=1, n); :func:`groups` per setting |
| labels.py       | display labels (``label:`` in conf/method, conf/model) and the method display order      |
| paper.py        | :func:`load_paper_numbers` (rocoft/paper_numbers.csv) and the paper tables' layout SPECS |
| paper_tables.py | :func:`render_paper_table`: paper rows x columns, paper numbers and suite cells merged in |
| suite.py        | the suite's own tables: one per (model, task) and a per-model overview                   |
| render.py       | :class:`Table` (Markdown, LaTeX, CSV) and the number formats                             |
| figures.py      | Figure 2, Figure 4 and the rank-ablation curves (matplotlib, lazily, Agg)                |
| build.py        | :func:`build_report`: everything requested, written under one folder                     |

Units: every score is shown x100 (stored as a fraction, see :mod:`rocoft.metrics`), except the keys of
``rocoft.metrics.UNSCALED`` (loss, perplexity, counts); a paper table printing fractions (Table 8's
accuracy, the CSV's unit ``fraction``) shows the stored fraction.
"""

from .build import build_report, issues_markdown
from .figures import plot_memory_time, plot_rank_ablation, plot_selection
from .frame import Cell, aggregate, cells, groups, lookup, run_table, seed_stats, shown_rows, shown_splits
from .labels import method_label, model_label, setting_label
from .paper import NTK_TABLES, PAPER_TABLES, SPECS, load_paper_numbers, paper_value
from .paper_tables import render_paper_table
from .render import Table, fmt_cell, fmt_diff, fmt_num, latex_escape
from .runs import COLUMNS, Issue, make_frame, run_variant, scan_results, split_rows, stored_in_percent
from .suite import render_suite_overview, render_suite_table, suite_markdown, write_suite

__all__ = ["COLUMNS", "NTK_TABLES", "PAPER_TABLES", "SPECS", "Cell", "Issue", "Table", "aggregate", "build_report",
           "cells", "fmt_cell", "fmt_diff", "fmt_num", "groups", "issues_markdown", "latex_escape",
           "load_paper_numbers", "lookup", "make_frame", "method_label", "model_label", "paper_value", "plot_memory_time",
           "plot_rank_ablation", "plot_selection", "render_paper_table", "render_suite_overview",
           "render_suite_table", "run_table", "run_variant", "scan_results", "seed_stats", "setting_label",
           "shown_rows", "shown_splits", "split_rows", "stored_in_percent", "suite_markdown", "write_suite"]
