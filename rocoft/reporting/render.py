"""Rendering: number formats, and :class:`Table`, a display grid written as Markdown, LaTeX and a long CSV.

The grid (header + rows, ``None`` = a section rule) is what the paper's layout needs: section rules inside
the body, bold best cells, the paper's ``X_{sub}`` labels as LaTeX subscripts, a caption after the tabular
and a ``\\resizebox``. pandas' ``Styler.to_latex`` draws rules only around the body and puts the caption
first, and ``DataFrame.to_markdown`` pads cells (and needs ``tabulate``), so both writers are written out
here (a few lines each); the CSV is the table's long frame, written by pandas.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


def fmt_num(v: float | None, decimals: int = 2, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if metric == "train_time_s":
        total = int(round(v))
        return f"{total // 60}:{total % 60:02d}"
    return f"{v:.{decimals}f}"


def fmt_cell(c, decimals: int = 2, metric: str = "", show_n: bool = True) -> str:
    """``93.12 ± 0.41 (n=3)``; one seed: ``93.12 (n=1)``; nothing: ``-``. ``c`` has ``mean``, ``std``, ``n``
    and optionally ``n_nan``: seeds without a number (NaN), outside the mean and n, are always said:
    ``93.12 ± 0.41 (n=2; 1 NaN)`` (``(1 NaN)`` without n), and a cell of NaNs only is ``NaN (n=0; 2 NaN)``."""
    if c is None:
        return "-"
    n_nan = int(getattr(c, "n_nan", 0) or 0)
    text = fmt_num(c.mean, decimals, metric) if c.n else "NaN"
    if c.n > 1:
        text += f" ± {c.std:.0f} s" if metric == "train_time_s" else f" ± {c.std:.{decimals}f}"
    said = ([f"n={c.n}"] if show_n else []) + ([f"{n_nan} NaN"] if n_nan else [])
    if said:
        text += f" ({'; '.join(said)})"
    return text


def fmt_diff(d: float | None, decimals: int = 2, metric: str = "") -> str:
    if d is None or not math.isfinite(d):
        return ""
    if metric == "train_time_s":
        return f"{d:+.0f} s"
    return f"{d:+.{decimals}f}"


def fmt_int_range(lo: float, hi: float) -> str:
    """An exact count, or the range over seeds / tasks: ``210,818`` or ``169,346–210,818``."""
    lo, hi = int(round(lo)), int(round(hi))
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


LATEX_SUBS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
              "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
LATEX_SYMBOLS = (("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("³", r"$^3$"), ("θ", r"$\theta$"), ("–", "--"),
                 ("≥", r"$\geq$"), ("·", r"$\cdot$"), ("→", r"$\rightarrow$"), ("−", "-"), ("—", "---"),
                 ("|", r"$|$"), ("†", r"\dag{}"))


def latex_escape(text: str) -> str:
    """Escape LaTeX specials; Markdown bold becomes ``\\textbf``, the paper's ``X_{sub}`` / ``X^S`` labels
    sub- / superscripts."""
    text = str(text)
    b = re.search(r"\*\*(.+?)\*\*", text)
    if b:
        return latex_escape(text[:b.start()]) + f"\\textbf{{{latex_escape(b.group(1))}}}" + latex_escape(text[b.end():])
    m = re.search(r"_\{([^{}]*)\}|\^(\w+)", text)
    if m:
        inner = latex_escape(m.group(1) if m.group(1) is not None else m.group(2))
        cmd = "textsubscript" if m.group(1) is not None else "textsuperscript"
        return latex_escape(text[:m.start()]) + f"\\{cmd}{{{inner}}}" + latex_escape(text[m.end():])
    s = "".join(LATEX_SUBS.get(ch, ch) for ch in text)
    for a, b in LATEX_SYMBOLS:
        s = s.replace(a, b)
    return s


@dataclass
class Table:
    """A table ready to write: a display grid (Markdown / LaTeX) and a long frame (CSV)."""
    name: str                 # file stem: table1, suite_imdb_minilm_l6, ...
    title: str
    header: list
    rows: list                # list of list[str]; a row None = section break (\midrule)
    notes: list
    frame: pd.DataFrame
    label_cols: int = 1       # leading text columns (left-aligned); the rest are numbers (right / centred)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(md_escape(h) for h in self.header) + " |",
                 "|" + "|".join(":---" if i < self.label_cols else "---:" for i in range(len(self.header))) + "|"]
        lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in self.rows if row is not None]
        if self.notes:
            lines += ["", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        align = "l" * self.label_cols + "c" * (len(self.header) - self.label_cols)
        out = ["% needs \\usepackage{booktabs} and \\usepackage{graphicx}", "\\begin{table*}[t]", "\\centering",
               "\\resizebox{\\textwidth}{!}{%", f"\\begin{{tabular}}{{{align}}}", "\\toprule",
               " & ".join(latex_escape(h) for h in self.header) + " \\\\", "\\midrule"]
        body = list(self.rows)
        while body and body[0] is None:
            body.pop(0)
        while body and body[-1] is None:
            body.pop()
        for i, row in enumerate(body):
            if row is None:
                if body[i - 1] is not None:       # one rule for consecutive breaks
                    out.append("\\midrule")
                continue
            out.append(" & ".join(latex_escape(c) for c in row) + " \\\\")
        caption = " ".join(latex_escape(t) for t in [self.title, *self.notes])
        out += ["\\bottomrule", "\\end{tabular}}", f"\\caption{{{caption}}}", f"\\label{{tab:{self.name}}}",
                "\\end{table*}"]
        return "\n".join(out) + "\n"

    def write(self, out_dir: str | os.PathLike, formats=("md", "latex", "csv")) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for fmt, suffix, text in (("md", "md", self.to_markdown), ("latex", "tex", self.to_latex)):
            if fmt in formats:
                written.append(out_dir / f"{self.name}.{suffix}")
                written[-1].write_text(text(), encoding="utf-8")
        if "csv" in formats:
            written.append(out_dir / f"{self.name}.csv")
            self.frame.to_csv(written[-1], index=False)
        return written
