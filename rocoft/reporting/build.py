"""Everything at once: :func:`build_report` scans a results tree and writes every requested table and figure."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd

from .figures import plot_kernels, plot_memory_time, plot_rank_ablation, plot_selection, plot_spectra
from .frame import groups, run_table
from .labels import model_label
from .paper import PAPER_TABLES, load_paper_numbers
from .paper_tables import render_paper_table
from .runs import Issue, scan_results
from .suite import render_suite_overview, render_suite_table, suite_markdown, write_suite

FIGURES = {"fig2": plot_memory_time, "fig4": plot_selection, "ranks": plot_rank_ablation,
           "fig3": plot_kernels, "fig5": plot_spectra}


def issues_markdown(issues: list[Issue], root: Path | None = None, limit: int = 20) -> str:
    if not issues:
        return ""
    counts = Counter(i.status for i in issues)
    counted = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines = [f"### Run directories not used, or used with a warning ({counted})", ""]
    lines += [f"- {i.line(root)}" for i in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"- ... and {len(issues) - limit} more (see issues.csv)")
    return "\n".join(lines) + "\n"


def build_report(results: str | os.PathLike, out: str | os.PathLike, tables=("all",),
                 formats=("md", "latex", "csv"), split: str | None = None, paper: pd.DataFrame | None = None,
                 plots: bool = True, ranks: dict[str, int] | None = None,
                 as_model: dict[str, str] | None = None) -> dict:
    """Scan ``results``, write every requested table and figure under ``out`` (``tables``: "all", "suite",
    paper table numbers, "figures" / "plots" or one of "fig2", "fig4", "ranks"); returns {"markdown": str,
    "written": [paths], "issues": [Issue], "notes": [str], "frame": the tidy frame, "runs": one row per run}.

    ``as_model`` (suite model -> paper model, e.g. ``{"smollm2_135m": "roberta_base"}``): in the paper tables, the
    suite's runs of a model stand in the cells of a model the paper ran (the table's notes say so), to compare a
    model the paper did not use with its published numbers; the suite table and the figures keep the real names."""
    results, out = Path(results), Path(out)
    frame, issues = scan_results(results)
    paper = load_paper_numbers() if paper is None else paper
    want = {str(t) for t in tables}
    everything = "all" in want
    runs = run_table(frame)
    written: list[Path] = []
    md_parts = [f"# RoCoFT tables: {len(runs)} finished runs in {len(groups(frame))} cells under {results}\n"]
    if issues:
        md_parts.append(issues_markdown(issues, results))
    notes: list[str] = []
    if everything or "suite" in want:
        suite = render_suite_overview(frame, split) + render_suite_table(frame, split)
        if suite:
            written += write_suite(suite, out, formats)
            md_parts.append(suite_markdown(suite))
        else:
            notes.append("Suite table: skipped, no finished runs.")
    for n in PAPER_TABLES:
        if everything or str(n) in want:
            table = render_paper_table(n, paper, _stand_in(frame, as_model), split, ranks)
            table.notes += [f"Suite cells of {model_label(p)}: the suite's runs of {model_label(s)} (--as-model)."
                            for s, p in (as_model or {}).items() if (frame.model == s).any()]
            written += table.write(out, formats)
            md_parts.append(table.to_markdown())
    if plots:
        for name, plot in FIGURES.items():
            if everything or want & {"figures", "plots", name}:
                paths, skipped = plot(frame, out / "figures") if name == "fig2" else plot(
                    frame, out / "figures", split=split)
                written += paths
                notes += skipped
    if notes:
        md_parts.append("### Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    markdown = "\n".join(md_parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    pd.DataFrame([{"path": str(i.path), "status": i.status, "detail": i.detail} for i in issues],
                 columns=["path", "status", "detail"]).to_csv(out / "issues.csv", index=False)
    written += [out / "report.md", out / "issues.csv"]
    return {"markdown": markdown, "written": written, "issues": issues, "notes": notes, "frame": frame,
            "runs": runs}


def _stand_in(frame: pd.DataFrame, as_model: dict[str, str] | None) -> pd.DataFrame:
    """The frame with the runs of each suite model of ``as_model`` relabelled as its paper model (whose own runs,
    if any, are left out so that a cell never mixes two models)."""
    if not as_model:
        return frame
    replaced = frame[~frame.model.isin(set(as_model.values()) - set(as_model))]
    return replaced.assign(model=replaced.model.replace(as_model))
