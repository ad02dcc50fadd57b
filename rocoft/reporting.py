"""Reporting: scan a results tree, aggregate seeds, render the paper's tables next to the suite's numbers.

Used by ``scripts/tables.py``; everything here is importable and side-effect free until a ``write_*`` or
``plot_*`` function is called. Matplotlib is imported lazily (Agg backend), only by the plot functions.

* :func:`scan_results` walks a results tree (any directory holding ``metrics.json`` or ``status.json``) and
  returns the finished runs plus a list of problems (unfinished, failed, corrupt, duplicate) -- it never
  raises on a bad run directory.
* :func:`aggregate` turns the runs into seed groups keyed by (model, task, method, rank, variant); a cell
  is mean, sample standard deviation (ddof=1; 0 for one seed) and n.
* :func:`load_paper_numbers` reads ``rocoft/paper_numbers.csv``: the published numbers of Tables 1, 2, 4,
  5, 6, 7, 8, 11, 12 and 13, one row per number.
* :func:`render_paper_table` / :func:`render_suite_table` build :class:`Rendered` tables (Markdown, LaTeX
  with booktabs rules, and a long CSV frame); :func:`plot_memory_time`, :func:`plot_selection` and
  :func:`plot_rank_ablation` draw Figure 2, Figure 4 and the rank-ablation curves.

Scales: classification metrics (accuracy, f1, matthews_corr, pearson, spearman) are stored as fractions by
the suite and shown x100 like the paper; SQuAD EM/F1, ROUGE and LLM accuracies are already x100.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

# ----------------------------------------------------------------------------------------------------------
# Paper numbers

PAPER_TABLES = (1, 2, 4, 5, 6, 7, 8, 11, 12, 13)
NTK_TABLES = (4, 5, 13)                      # kernel experiments: paper numbers only
PERCENT_METRICS = {"accuracy", "f1", "matthews_corr", "pearson", "spearman", "precision", "recall"}
FRACTION_KINDS = {"classification"}          # task kinds whose metrics.json holds fractions
METHOD_ORDER = ["full_ft", "bitfit", "ln_tuning", "ia3", "prompt_tuning", "prefix_tuning", "lora", "lorafa",
                "adalora", "loha", "lokr", "vera", "rocoft_row", "rocoft_col", "rocoft_random"]
METHOD_LABEL = {"full_ft": "Full FT", "bitfit": "BitFit", "ln_tuning": "LN tuning", "ia3": "(IA)³",
                "prompt_tuning": "Prompt tuning", "prefix_tuning": "Prefix tuning", "lora": "LoRA",
                "lorafa": "LoRA-FA", "adalora": "AdaLoRA", "loha": "LoHa", "lokr": "LoKr", "vera": "VeRA",
                "rocoft_row": "RoCoFT row", "rocoft_col": "RoCoFT column", "rocoft_random": "RoCoFT random"}
SELECTIONS = ["max", "min", "mixed", "random", "first"]


def load_paper_numbers(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The transcribed paper numbers (``rocoft/paper_numbers.csv``), values kept as printed (strings) in
    ``value_str`` / ``std_str`` and as floats in ``value`` / ``std``; ``rank`` is a nullable integer."""
    if path is None:
        src = resources.files("rocoft").joinpath("paper_numbers.csv")
        with resources.as_file(src) as p:
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
    else:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["value_str"], df["std_str"] = df["value"], df["std"]
    df["value"] = pd.to_numeric(df["value"])
    df["std"] = pd.to_numeric(df["std"].replace("", np.nan))
    df["table"] = df["table"].astype(int)
    df["rank"] = pd.to_numeric(df["rank"].replace("", np.nan)).astype("Int64")
    df["suite_supported"] = df["suite_supported"].str.lower().eq("true")
    return df


def paper_value(paper: pd.DataFrame, table: int, model: str, task: str, method: str, metric: str,
                rank: int | None = None, variant: str = "", label: str | None = None) -> float:
    """One published number (raises KeyError when absent or ambiguous): a convenience for tests and notebooks."""
    sel = ((paper.table == table) & (paper.model == model) & (paper.task == (task or ""))
           & (paper.method == method) & (paper.metric == metric) & (paper.variant == variant))
    sel &= paper["rank"].isna() if rank is None else (paper["rank"] == rank)
    if label is not None:
        sel &= paper.paper_label == label
    hit = paper[sel]
    if len(hit) != 1:
        raise KeyError(f"{len(hit)} paper numbers for table {table} {model} {task} {method} r={rank} {metric}")
    return float(hit.value.iloc[0])


# ----------------------------------------------------------------------------------------------------------
# Scanning the results tree


@dataclass
class Run:
    """One finished run directory."""
    path: Path
    model: str
    task: str
    method: str
    rank: int | None
    seed: int | None
    variant: str              # "" = the method's default for the task; "selection=max", "p=0.1", ...
    selection: str | None     # RoCoFT row/column choice (config.yaml method.selection)
    kind: str | None          # task.kind from config.yaml (None when config.yaml is missing)
    metrics: dict
    mtime: float = 0.0

    @property
    def key(self) -> tuple:
        return (self.model, self.task, self.method, self.rank, self.variant)


@dataclass
class Issue:
    """A run directory that is not (fully) used: unfinished, failed, corrupt, duplicate or a warning."""
    path: Path
    status: str
    detail: str = ""

    def line(self, root: Path | None = None) -> str:
        try:
            shown = self.path.relative_to(root) if root is not None else self.path
        except ValueError:
            shown = self.path
        return f"{shown}: {self.status}" + (f" ({self.detail})" if self.detail else "")


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_yaml(path: Path) -> dict | None:
    try:
        import yaml
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        return data if isinstance(data, dict) else None
    except Exception:  # noqa: BLE001 - a broken config only loses the variant information
        return None


def _fmt_p(p) -> str:
    try:
        return f"p={float(p):g}"
    except (TypeError, ValueError):
        return f"p={p}"


def run_variant(method: str, config: dict | None, path: Path) -> tuple[str, str | None]:
    """(variant, selection): which non-default flavour of a method a run is. RoCoFT row/column runs whose
    ``method.selection`` differs from the task's default (``task.rocoft.selection``, else ``first``) get
    ``selection=<s>``; random-entry runs get ``p=<p>``; everything else is the default ("")."""
    mcfg = (config or {}).get("method") or {}
    tcfg = (config or {}).get("task") or {}
    if method == "rocoft_random":
        if "p" in mcfg:
            return _fmt_p(mcfg["p"]), mcfg.get("selection")
        m = re.search(r"_p([0-9.eE+-]+)$", path.parent.name)
        return (_fmt_p(m.group(1)) if m else "p=?"), None
    if method in ("rocoft_row", "rocoft_col"):
        selection = mcfg.get("selection")
        default = ((tcfg.get("rocoft") or {}).get("selection")) or "first"
        if selection is None or selection == default:
            return "", selection
        return f"selection={selection}", selection
    return "", None


REQUIRED_KEYS = ("model", "task", "method", "seed")
SKIP_DIRS = {".hydra", "adapter", "merged", "checkpoints", "__pycache__"}   # inside a run: never runs


def scan_results(root: str | os.PathLike) -> tuple[list[Run], list[Issue]]:
    """All run directories under ``root`` (recursively: a directory holding ``metrics.json`` or
    ``status.json``, or a started run's ``config.yaml`` next to ``train.log`` / ``log.jsonl`` / ``.hydra``):
    those with a valid ``metrics.json`` become runs;
    the others are reported (never raised): no metrics.json = unfinished, status failed = failed (with its
    error), unreadable metrics.json = corrupt. Runs repeating a (model, task, method, rank, variant, seed)
    keep the newest ``metrics.json``; the older ones are reported as duplicates."""
    root = Path(root)
    runs: list[Run] = []
    issues: list[Issue] = []
    if not root.is_dir():
        return runs, [Issue(root, "missing", "results directory not found")]
    for dirpath, dirnames, filenames in os.walk(root):
        names = set(filenames)
        started = "config.yaml" in names and (".hydra" in dirnames or {"train.log", "log.jsonl"} & names)
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if "metrics.json" not in names and "status.json" not in names and not started:
            continue
        path = Path(dirpath)
        status = None
        if "status.json" in names:
            try:
                status = _read_json(path / "status.json")
                if not isinstance(status, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                status = None
                if "metrics.json" not in names:
                    issues.append(Issue(path, "corrupt", f"status.json unreadable: {e}"))
                    continue
                issues.append(Issue(path, "warning", f"status.json unreadable, metrics.json used: {e}"))
        status = status or {}
        state = status.get("status")
        if state == "failed":
            err = str(status.get("error") or "no error message")
            issues.append(Issue(path, "failed", _shorten(err)))
            continue
        if "metrics.json" not in names:
            detail = f"no metrics.json; status {state or 'unknown'}"
            if status.get("step") is not None:
                detail += f" at step {status['step']}"
            if status.get("time"):
                detail += f" since {status['time']}"
            issues.append(Issue(path, "unfinished", detail))
            continue
        try:
            metrics = _read_json(path / "metrics.json")
            if not isinstance(metrics, dict):
                raise ValueError("not a JSON object")
            missing = [k for k in REQUIRED_KEYS if k not in metrics]
            if missing:
                raise ValueError(f"missing keys {missing}")
        except (OSError, ValueError) as e:
            issues.append(Issue(path, "corrupt", f"metrics.json: {_shorten(str(e))}"))
            continue
        config = _read_yaml(path / "config.yaml") if "config.yaml" in names else None
        method = str(metrics["method"])
        variant, selection = run_variant(method, config, path)
        rank = metrics.get("rank")
        try:
            rank = None if rank is None else int(rank)
        except (TypeError, ValueError):
            rank = None
        seed = metrics.get("seed")
        kind = ((config or {}).get("task") or {}).get("kind")
        runs.append(Run(path=path, model=str(metrics["model"]), task=str(metrics["task"]), method=method,
                        rank=rank, seed=seed, variant=variant, selection=selection, kind=kind, metrics=metrics,
                        mtime=(path / "metrics.json").stat().st_mtime))
    # duplicates: the same cell and seed found twice (e.g. two output_dir overrides)
    by_seed: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        by_seed[(*r.key, r.seed)].append(r)
    kept = []
    for group in by_seed.values():
        group.sort(key=lambda r: r.mtime)
        kept.append(group[-1])
        for r in group[:-1]:
            issues.append(Issue(r.path, "duplicate", f"same cell and seed as {group[-1].path}; newer one used"))
    kept.sort(key=lambda r: (r.model, r.task, _method_pos(r.method), r.rank or 0, r.variant, str(r.seed)))
    return kept, issues


def _shorten(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _method_pos(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


# ----------------------------------------------------------------------------------------------------------
# Values and aggregation


def eval_split(run: Run, override: str | None = None) -> str | None:
    """The split whose numbers a table shows: ``override`` when the run has it, else ``test``, else
    ``validation_matched`` (MNLI), else ``validation``, else the first evaluated split."""
    splits = [s for s in (run.metrics.get("eval_splits") or []) if isinstance(run.metrics.get(s), dict)]
    if not splits:
        splits = [s for s in ("test", "validation_matched", "validation") if isinstance(run.metrics.get(s), dict)]
    if override and override in splits:
        return override
    for s in ("test", "validation_matched", "validation"):
        if s in splits:
            return s
    return splits[0] if splits else None


def is_fraction_scale(run: Run) -> bool:
    """Whether the run's classification metrics are stored as fractions (x100 for display)."""
    if run.kind is not None:
        return run.kind in FRACTION_KINDS
    # no config.yaml: the suite's LLM tasks report x100 accuracies, every classification task fractions
    return run.task not in LLM_TASKS and run.task not in {"squad", "squad_v2", "xsum", "cnn_dailymail"}


LLM_TASKS = {"boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_e", "arc_c", "obqa", "multiarith", "gsm8k",
             "addsub", "singleeq", "svamp", "aqua", "commonsense_170k", "math_10k"}

RUN_FIELDS = {
    "trainable_params": lambda m: m["params"]["trainable"] / 1e6,          # millions, with the task head
    "trainable_without_head_m": lambda m: m["params"]["trainable_without_head"] / 1e6,
    "additional_m": lambda m: m["params"]["additional"] / 1e6,
    "trainable": lambda m: m["params"]["trainable"],
    "trainable_without_head": lambda m: m["params"]["trainable_without_head"],
    "additional": lambda m: m["params"]["additional"],
    "train_time_s": lambda m: m["train_time_s"],
    "wall_time_s": lambda m: m["wall_time_s"],
    "peak_memory_mb": lambda m: m["peak_memory_mb"],
}


def run_value(run: Run, metric: str, split: str | None = None) -> float | None:
    """One number of a run in display units (classification metrics x100), or None when absent."""
    try:
        if metric in RUN_FIELDS:
            v = RUN_FIELDS[metric](run.metrics)
        else:
            s = eval_split(run, split)
            if s is None:
                return None
            v = run.metrics[s][metric]
            if metric in PERCENT_METRICS and is_fraction_scale(run):
                v = 100.0 * float(v)
        v = float(v)
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


@dataclass
class Cell:
    """Seeds aggregated: mean, sample std (ddof=1; 0 with one seed), n."""
    mean: float
    std: float
    n: int
    values: list = field(default_factory=list)


def seed_stats(values) -> Cell | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    arr = np.asarray(vals, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return Cell(float(arr.mean()), std, len(arr), vals)


@dataclass
class Group:
    model: str
    task: str
    method: str
    rank: int | None
    variant: str
    runs: list

    @property
    def key(self):
        return (self.model, self.task, self.method, self.rank, self.variant)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    def cell(self, metric: str, split: str | None = None) -> Cell | None:
        return seed_stats(run_value(r, metric, split) for r in self.runs)

    def main_metric(self) -> str | None:
        names = Counter(r.metrics.get("main_metric") for r in self.runs if r.metrics.get("main_metric"))
        return names.most_common(1)[0][0] if names else None

    def split(self, override: str | None = None) -> str | None:
        names = Counter(eval_split(r, override) for r in self.runs)
        return names.most_common(1)[0][0] if names else None

    def label(self) -> str:
        return method_label(self.method, self.rank, self.variant)


def method_label(method: str, rank: int | None, variant: str = "") -> str:
    text = METHOD_LABEL.get(method, method)
    if rank is not None:
        text += f" r={rank}"
    if variant:
        text += f" ({variant})"
    return text


def aggregate(runs: list[Run]) -> dict[tuple, Group]:
    groups: dict[tuple, Group] = {}
    for r in runs:
        g = groups.get(r.key)
        if g is None:
            g = groups[r.key] = Group(r.model, r.task, r.method, r.rank, r.variant, [])
        g.runs.append(r)
    for g in groups.values():
        g.runs.sort(key=lambda r: str(r.seed))
    return groups


# ----------------------------------------------------------------------------------------------------------
# Number formatting


def fmt_num(v: float | None, decimals: int = 2, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if metric == "train_time_s":
        total = int(round(v))
        return f"{total // 60}:{total % 60:02d}"
    return f"{v:.{decimals}f}"


def fmt_cell(c: Cell | None, decimals: int = 2, metric: str = "", show_n: bool = True) -> str:
    """``93.12 ± 0.41 (n=3)``; one seed: ``93.12 (n=1)``; nothing: ``-``."""
    if c is None:
        return "-"
    text = fmt_num(c.mean, decimals, metric)
    if c.n > 1:
        text += f" ± {c.std:.0f} s" if metric == "train_time_s" else f" ± {c.std:.{decimals}f}"
    if show_n:
        text += f" (n={c.n})"
    return text


def fmt_diff(d: float | None, decimals: int = 2, metric: str = "") -> str:
    if d is None or not math.isfinite(d):
        return ""
    if metric == "train_time_s":
        return f"{d:+.0f} s"
    return f"{d:+.{decimals}f}"


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


LATEX_SUBS = [("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
              ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")]


def latex_escape(text: str) -> str:
    """Escape LaTeX specials; the paper's ``X_{sub}`` / ``X^S`` labels become sub- / superscripts."""
    text = str(text)
    b = re.search(r"\*\*(.+?)\*\*", text)          # Markdown bold -> \textbf
    if b:
        return latex_escape(text[:b.start()]) + f"\\textbf{{{latex_escape(b.group(1))}}}" + latex_escape(text[b.end():])
    m = re.search(r"_\{([^{}]*)\}|\^(\w+)", text)
    if m:
        inner = latex_escape(m.group(1) if m.group(1) is not None else m.group(2))
        cmd = "textsubscript" if m.group(1) is not None else "textsuperscript"
        return latex_escape(text[:m.start()]) + f"\\{cmd}{{{inner}}}" + latex_escape(text[m.end():])
    out = []
    for ch in str(text):
        for a, b in LATEX_SUBS:
            if ch == a:
                ch = b
                break
        out.append(ch)
    s = "".join(out)
    for a, b in (("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("³", r"$^3$"), ("θ", r"$\theta$"), ("–", "--"),
                 ("≥", r"$\geq$"), ("·", r"$\cdot$"), ("→", r"$\rightarrow$"), ("−", "-"), ("—", "---"),
                 ("|", r"$|$")):
        s = s.replace(a, b)
    return s


# ----------------------------------------------------------------------------------------------------------
# Rendered tables


@dataclass
class Rendered:
    """A table ready to write: display rows (Markdown / LaTeX) and a long frame (CSV)."""
    name: str                 # file stem: table1, suite, ...
    title: str
    header: list
    rows: list                # list of list[str]; a row None = section break (\midrule)
    notes: list
    frame: pd.DataFrame
    label_cols: int = 1       # leading text columns (left-aligned); the rest are numbers (right / centred)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(md_escape(h) for h in self.header) + " |")
        lines.append("|" + "|".join(":---" if i < self.label_cols else "---:" for i in range(len(self.header))) + "|")
        for row in self.rows:
            if row is None:
                continue
            lines.append("| " + " | ".join(md_escape(c) for c in row) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {n}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        align = "l" * self.label_cols + "c" * (len(self.header) - self.label_cols)
        out = ["% needs \\usepackage{booktabs} and \\usepackage{graphicx}",
               "\\begin{table*}[t]", "\\centering", "\\resizebox{\\textwidth}{!}{%",
               f"\\begin{{tabular}}{{{align}}}", "\\toprule",
               " & ".join(latex_escape(h) for h in self.header) + " \\\\", "\\midrule"]
        body = list(self.rows)
        while body and body[0] is None:
            body.pop(0)
        while body and body[-1] is None:
            body.pop()
        prev_break = False
        for row in body:
            if row is None:
                if not prev_break:
                    out.append("\\midrule")
                prev_break = True
                continue
            prev_break = False
            out.append(" & ".join(latex_escape(c) for c in row) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}}"]
        caption = latex_escape(self.title)
        if self.notes:
            caption += " " + " ".join(latex_escape(n) for n in self.notes)
        out += [f"\\caption{{{caption}}}", f"\\label{{tab:{self.name}}}", "\\end{table*}"]
        return "\n".join(out) + "\n"

    def write(self, out_dir: str | os.PathLike, formats=("md", "latex", "csv")) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        if "md" in formats:
            p = out_dir / f"{self.name}.md"
            p.write_text(self.to_markdown(), encoding="utf-8")
            written.append(p)
        if "latex" in formats:
            p = out_dir / f"{self.name}.tex"
            p.write_text(self.to_latex(), encoding="utf-8")
            written.append(p)
        if "csv" in formats:
            p = out_dir / f"{self.name}.csv"
            self.frame.to_csv(p, index=False)
            written.append(p)
        return written


# ----------------------------------------------------------------------------------------------------------
# Paper table specifications


@dataclass
class Col:
    header: str
    task: str | None            # None: a per-method column (#TTPs)
    metric: str | None          # None: the row's metric (Tables 5 / 13)
    model: str | None = None    # None: the row's model
    decimals: int = 2
    suite_metric: str | None = None   # what the suite shows (default: metric)
    scale: float = 1.0                # suite value x scale (Table 8's accuracy is a fraction)


@dataclass
class Part:
    title: str
    columns: list
    block: str = "model"        # model | variant | rank | none: the paper's row groups
    row_metric: bool = False    # rows differ by metric (Tables 5 / 13: p=1 / p=2)


@dataclass
class TableSpec:
    number: int
    title: str
    parts: list
    notes: list = field(default_factory=list)
    rank_column: bool = False


TTP = Col("#TTPs (M)", None, "trainable_params", decimals=3)
GLUE_COLS = [Col("CoLA (MCC)", "cola", "matthews_corr"), Col("SST-2", "sst2", "accuracy"),
             Col("MRPC acc", "mrpc", "accuracy"), Col("MRPC F1", "mrpc", "f1"),
             Col("STS-B P", "stsb", "pearson"), Col("STS-B S", "stsb", "spearman"),
             Col("QQP acc", "qqp", "accuracy"), Col("QQP F1", "qqp", "f1"),
             Col("MNLI", "mnli", "accuracy"), Col("QNLI", "qnli", "accuracy"), Col("RTE", "rte", "accuracy")]
GLUE_MAIN = [("cola", "matthews_corr"), ("sst2", "accuracy"), ("mrpc", "accuracy"), ("stsb", "pearson"),
             ("qqp", "accuracy"), ("mnli", "accuracy"), ("qnli", "accuracy"), ("rte", "accuracy")]
LLM_COLS = [Col(h, t, "accuracy") for h, t in (
    ("BoolQ", "boolq"), ("PIQA", "piqa"), ("SIQA", "siqa"), ("H.Sw.", "hellaswag"), ("W.Gra.", "winogrande"),
    ("ARCe", "arc_e"), ("ARCc", "arc_c"), ("OBQA", "obqa"), ("M.Ar.", "multiarith"), ("G.8K", "gsm8k"),
    ("A.S.", "addsub"), ("S.eEq", "singleeq"), ("S.MP", "svamp"))]
SINGLE = [("SST-2", "sst2"), ("SST-5", "sst5"), ("MR", "mr"), ("CR", "cr"), ("MPQA", "mpqa"), ("Subj", "subj")]
PAIR = [("MNLI", "mnli"), ("SNLI", "snli"), ("QNLI", "qnli"), ("RTE", "rte"), ("MRPC", "mrpc"), ("QQP", "qqp")]

TTP_NOTE_GLUE = ("#TTPs: the paper's numbers as printed. The paper mixes conventions: LoRA's 0.89M matches r=8 on "
                 "query/value plus RoBERTa-base's 0.59M classification head, while RoCoFT_1-Row's 0.083M is the "
                 "82,944 adapted weights without the head. The suite column is params.trainable, i.e. WITH the "
                 "task head; trainable without the head and additional (added) parameters are in the CSV and in "
                 "the suite table.")
GLUE_NOTE = ("Split: GLUE validation sets (MNLI: validation_matched), as in the paper. CoLA = Matthews "
             "correlation x100, STS-B = Pearson/Spearman x100, the rest accuracy/F1 in %.")
NTK_NOTE = ("Not run by the suite: the NTK kernel-regression experiments (Malladi et al. 2023 prompt-based "
            "few-shot setting) are not implemented, so these paper numbers have no suite counterpart.")

def _kernel_difference_spec(number: int, shots: int) -> TableSpec:
    """Tables 5 and 13: relative kernel difference to K_θ (16- and 64-shot)."""
    return TableSpec(number, f"Table {number}: relative kernel difference to K_θ, {shots}-shot",
                     [Part("single-sentence tasks", [Col(h, t, None, decimals=3) for h, t in SINGLE + [("TREC", "trec")]],
                           block="variant", row_metric=True),
                      Part("sentence-pair tasks", [Col(h, t, None, decimals=3) for h, t in PAIR],
                           block="variant", row_metric=True)],
                     ["||K_S/||K_S||_p - K_θ/||K_θ||_p||_p for p = 1, 2; mean (std over 5 seeds).", NTK_NOTE])


SPECS: dict[int, TableSpec] = {
    1: TableSpec(1, "Table 1: GLUE, RoBERTa-base", [Part("", [TTP, *GLUE_COLS,
                 Col("Avg. (main)", "glue_avg", "avg_main"), Col("Avg. (2nd)", "glue_avg", "avg_second")])],
                 [GLUE_NOTE, TTP_NOTE_GLUE,
                  "Avg. (main): mean of the 8 first/only metrics (the suite's is shown only when all 8 cells "
                  "exist). Avg. (2nd): the paper does not define its second average; no suite value."]),
    6: TableSpec(6, "Table 6: GLUE, RoBERTa-large", [Part("", [TTP, *GLUE_COLS])],
                 [GLUE_NOTE, TTP_NOTE_GLUE.replace("RoBERTa-base", "RoBERTa-large")]),
    2: TableSpec(2, "Table 2: commonsense and math reasoning, LLMs (accuracy %)", [Part("", [TTP, *LLM_COLS])],
                 ["Split: test sets of LLM-Adapters; suite accuracies are already x100. #TTPs: paper as "
                  "printed; suite = params.trainable (no task head on causal LMs).",
                  "Columns: M.Ar. = MultiArith, G.8K = GSM8K, A.S. = AddSub, S.eEq = SingleEq, S.MP = SVAMP."]),
    7: TableSpec(7, "Table 7: SQuAD (DeBERTaV3-base, EM / F1) and summarization (BART-large, ROUGE-1/2/L)",
                 [Part("", [Col("DeBERTa #TTPs (M)", None, "trainable_params", "deberta_v3_base", 3),
                            Col("SQuAD1.1 EM", "squad", "exact_match", "deberta_v3_base"),
                            Col("SQuAD1.1 F1", "squad", "f1", "deberta_v3_base"),
                            Col("SQuAD2.0 EM", "squad_v2", "exact_match", "deberta_v3_base"),
                            Col("SQuAD2.0 F1", "squad_v2", "f1", "deberta_v3_base"),
                            Col("BART #TTPs (M)", None, "trainable_params", "bart_large", 3),
                            Col("XSum R-1", "xsum", "rouge1", "bart_large"),
                            Col("XSum R-2", "xsum", "rouge2", "bart_large"),
                            Col("XSum R-L", "xsum", "rougeLsum", "bart_large"),
                            Col("CNN/DM R-1", "cnn_dailymail", "rouge1", "bart_large"),
                            Col("CNN/DM R-2", "cnn_dailymail", "rouge2", "bart_large"),
                            Col("CNN/DM R-L", "cnn_dailymail", "rougeLsum", "bart_large")], block="none")],
                 ["Split: SQuAD validation (the official dev sets); XSum / CNN-DailyMail test when the run has "
                  "it, else validation. #TTPs: paper as printed; suite = params.trainable (with the QA head).",
                  "The paper does not state RoCoFT's rank in Table 7 (Table 10 lists rank 3): the suite's rank "
                  "is shown in brackets."]),
    8: TableSpec(8, "Table 8: rank ablation, RoBERTa-base on SST-2",
                 [Part("", [Col("Time (m:s)", "sst2", "train_time_s", decimals=0),
                            Col("Accuracy", "sst2", "accuracy", decimals=3, scale=0.01),
                            Col("Parameters (M)", "sst2", "trainable_params", decimals=3,
                                suite_metric="trainable_without_head_m"),
                            Col("Memory (MB)", "sst2", "peak_memory_mb", decimals=0)], block="rank")],
                 ["Accuracy as a fraction, like the paper. Time: paper = training time (min:s); suite = "
                  "train_time_s of the whole run (m:ss ± s). Parameters: paper = adapted weights in the "
                  "attention block (no head); suite = params.trainable_without_head. Memory: paper MB (GPU); "
                  "suite = peak_memory_mb (cuda_max_allocated on GPU, process max RSS on CPU)."],
                 rank_column=True),
    11: TableSpec(11, "Table 11: random-entry RoCoFT (p=0.1), RoBERTa GLUE", [Part("", [TTP, *GLUE_COLS])],
                  [GLUE_NOTE, "Suite: method=rocoft_random method.p=0.1. #TTPs: paper as printed; suite = "
                   "params.trainable (with the task head)."]),
    12: TableSpec(12, "Table 12: random-entry RoCoFT (p=0.01), LLMs (accuracy %)", [Part("", [TTP, *LLM_COLS])],
                  ["Suite: method=rocoft_random method.p=0.01. Test sets of LLM-Adapters. #TTPs: paper as "
                   "printed; suite = params.trainable."]),
    4: TableSpec(4, "Table 4: few-shot accuracy (%) of kernel logistic regression vs full FT, RoBERTa-base",
                 [Part("single-sentence tasks", [Col(h, t, "few_shot_accuracy", decimals=1) for h, t in SINGLE],
                       block="variant"),
                  Part("sentence-pair tasks", [Col(h, t, "few_shot_accuracy", decimals=1) for h, t in PAIR],
                       block="variant")],
                 ["Values: mean (std over 5 seeds) as printed; K_θ = full-parameter NTK, K_θR / K_θC = 1-row / "
                  "1-column NTK.", NTK_NOTE]),
    5: _kernel_difference_spec(5, 16),
    13: _kernel_difference_spec(13, 64),
}

MEMORY_KINDS = {"cpu_max_rss": "cpu_max_rss, the process's max resident set size (not comparable to GPU memory; "
                               "in a sweep run in one process it is the maximum over the runs so far)",
                "cpu_rss_high_water": "cpu_rss_high_water, the run's resident set size high-water mark (reset at the "
                                      "start of each run; not comparable to GPU memory)",
                "cuda_max_allocated": "cuda_max_allocated, torch's peak allocated GPU memory"}
MODEL_LABEL = {"minilm_l6": "MiniLM-L6", "tiny_encoder": "tiny encoder", "tiny_decoder": "tiny decoder",
               "tiny_seq2seq": "tiny seq2seq", "smollm2_135m": "SmolLM2-135M", "roberta_base": "RoBERTa-base",
               "roberta_large": "RoBERTa-large", "deberta_v3_base": "DeBERTaV3-base",
               "bart_large": "BART-large", "bloomz_7b": "BLOOMz-7B", "gptj_6b": "GPT-J-6B", "llama2_7b": "LLaMA-2-7B",
               "llama2_13b": "LLaMA-2-13B"}
UNSUPPORTED = "not run by the suite"


@dataclass
class PaperRow:
    block: str
    label: str
    method: str
    rank: int | None
    variant: str
    metric: str | None
    model: str
    supported: bool


def _rank_of(v) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


class SuiteIndex:
    """Seed groups indexed for the paper tables."""

    def __init__(self, groups: dict[tuple, Group], split: str | None = None):
        self.groups = groups
        self.split = split

    def find(self, model, task, method, rank, variant) -> Group | None:
        return self.groups.get((model, task, method, rank, variant))

    def ranks(self, model: str, method: str, variant: str, tasks) -> Counter:
        """Runs per rank of a method on a model over the given tasks (for rows whose rank the paper omits)."""
        c: Counter = Counter()
        for (m, t, me, r, v), g in self.groups.items():
            if m == model and me == method and v == variant and t in tasks:
                c[r] += len(g.runs)
        return c

    def cell(self, model, task, method, rank, variant, metric) -> Cell | None:
        g = self.find(model, task, method, rank, variant)
        return None if g is None else g.cell(metric, self.split)

    def param_cell(self, model, method, rank, variant, tasks, metric) -> Cell | None:
        """A per-method parameter count over every task the table shows (the head can differ by task)."""
        vals = []
        for t in tasks:
            g = self.find(model, t, method, rank, variant)
            if g is not None:
                vals += [run_value(r, metric) for r in g.runs]
        return seed_stats(vals)


def _paper_rows(paper: pd.DataFrame, spec: TableSpec, part: Part) -> list[PaperRow]:
    sub = paper[paper.table == spec.number]
    tasks = {c.task or "" for c in part.columns}
    rows: dict[tuple, PaperRow] = {}
    for rec in sub.itertuples(index=False):
        if rec.task not in tasks:
            continue
        if not any((c.task or "") == rec.task and (c.metric is None or c.metric == rec.metric) for c in part.columns):
            continue
        rank = _rank_of(rec.rank)
        block = {"model": rec.model, "variant": rec.variant, "rank": "" if rank is None else str(rank),
                 "none": ""}[part.block]
        key = (block, rec.paper_label, rec.method, rank, rec.variant, rec.metric if part.row_metric else None)
        if key not in rows:
            rows[key] = PaperRow(block, rec.paper_label, rec.method, rank, rec.variant,
                                 rec.metric if part.row_metric else None, rec.model, bool(rec.suite_supported))
    return list(rows.values())


def _paper_lookup(paper: pd.DataFrame, table: int) -> dict:
    out = {}
    for rec in paper[paper.table == table].itertuples(index=False):
        out[(rec.model, rec.task, rec.paper_label, rec.method, _rank_of(rec.rank), rec.variant, rec.metric)] = rec
    return out


def _paper_text(rec, metric: str) -> str:
    if rec is None:
        return ""
    if metric == "train_time_s":
        text = fmt_num(float(rec.value), metric=metric)
    else:
        text = rec.value_str
    if rec.std_str:
        text += f" ({rec.std_str})"
    return text


def render_paper_table(number: int, paper: pd.DataFrame, groups: dict[tuple, Group],
                       split: str | None = None, ranks: dict[str, int] | None = None) -> Rendered:
    """One paper table with the same rows and columns as the paper; every cell shows
    ``paper vs suite mean ± std (n); Δ suite - paper``, ``paper vs -`` when the suite has not run the cell,
    and only the paper's number for methods the suite cannot run (their label says so).

    Rows whose rank the paper does not print (baselines, Table 7's RoCoFT) use ``ranks[method]`` when
    given, else the suite's rank with the most runs on the table's tasks (ties: the larger rank); the label
    names it, e.g. ``LoRA [suite r=8]``."""
    spec = SPECS[number]
    index = SuiteIndex(groups, split)
    lookup = _paper_lookup(paper, number)
    multi = len(spec.parts) > 1
    has_block = any(p.block != "none" for p in spec.parts)
    block_head = {"model": "LM", "variant": "Setting", "rank": "Rank", "none": ""}
    first = spec.parts[0]
    header = ([block_head[first.block]] if has_block else []) + ["Method"]
    n_cols = max(len(p.columns) for p in spec.parts)
    if multi:
        header += [f"({i + 1})" for i in range(n_cols)]
    else:
        header += [c.header for c in first.columns]
    display: list = []
    records: list = []
    any_suite = False
    for part in spec.parts:
        if multi:
            display.append(None)
            display.append(([""] if has_block else []) + [f"**{part.title}**"]
                           + [c.header for c in part.columns] + [""] * (n_cols - len(part.columns)))
        prev_block = None
        for row in _paper_rows(paper, spec, part):
            if prev_block is not None and row.block != prev_block and part.block != "none":
                display.append(None)
            block_text = ""
            if row.block != prev_block:
                block_text = MODEL_LABEL.get(row.block, row.block) if part.block == "model" else (
                    f"r={row.block}" if part.block == "rank" else row.block)
            prev_block = row.block
            suite_ranks: dict[str, int | None] = {}
            cells = []
            for col in part.columns:
                model = col.model or row.model
                metric = col.metric or row.metric
                rec = lookup.get((model, col.task or "", row.label, row.method, row.rank, row.variant, metric))
                ptext = _paper_text(rec, metric)
                pval = None if rec is None else float(rec.value)
                cell, srank = None, row.rank
                if row.supported and rec is not None:
                    if row.rank is None and model not in suite_ranks and row.method in (ranks or {}):
                        suite_ranks[model] = int(ranks[row.method])
                    if row.rank is None and model not in suite_ranks:
                        tasks = [c.task for c in part.columns if c.task and (c.model or row.model) == model
                                 and c.task != "glue_avg"]
                        counts = index.ranks(model, row.method, row.variant, tasks)
                        suite_ranks[model] = (max(counts, key=lambda r: (counts[r], r if r is not None else -1))
                                              if counts else None)
                    srank = row.rank if row.rank is not None else suite_ranks.get(model)
                    cell = _suite_cell(index, spec, part, col, model, row, srank, metric)
                s_mean = None if cell is None else cell.mean * col.scale
                diff = None if (s_mean is None or pval is None) else s_mean - pval
                dec = col.decimals
                if rec is None:
                    text = ""
                elif not row.supported:
                    text = ptext
                elif cell is None:
                    text = f"{ptext} vs -"
                else:
                    any_suite = True
                    scaled = Cell(cell.mean * col.scale, cell.std * col.scale, cell.n)
                    if metric == "trainable_params":      # a count: one value, or the range over tasks/seeds
                        lo, hi = min(cell.values) * col.scale, max(cell.values) * col.scale
                        stext = fmt_num(lo, dec) if fmt_num(lo, dec) == fmt_num(hi, dec) else (
                            f"{fmt_num(lo, dec)}–{fmt_num(hi, dec)}")
                    elif metric == "avg_main":
                        stext = f"{fmt_num(scaled.mean, dec)} (n≥{cell.n})"
                    else:
                        stext = fmt_cell(scaled, dec, metric)
                    text = f"{ptext} vs {stext}; Δ {fmt_diff(diff, dec, metric)}"
                cells.append(text)
                records.append({
                    "table": number, "part": part.title, "block": row.block, "row": row.label,
                    "method": row.method, "rank": row.rank, "variant": row.variant, "model": model,
                    "task": col.task or "", "metric": metric, "column": col.header,
                    "suite_supported": row.supported, "paper": pval,
                    "paper_std": None if rec is None or not rec.std_str else float(rec.std_str),
                    "suite_rank": srank if cell is not None else None,
                    "suite_mean": s_mean, "suite_std": None if cell is None else cell.std * col.scale,
                    "suite_n": None if cell is None else cell.n, "diff": diff,
                })
            label = row.label + (f", p={row.metric[-1]}" if row.metric and row.metric.startswith("kernel_rel")
                                 else "")
            if not row.supported:
                label += f" ({UNSUPPORTED})" if number not in NTK_TABLES else ""
            elif row.rank is None:
                shown = {r for r in suite_ranks.values() if r is not None}
                if shown:
                    label += " [suite r=" + "/".join(str(r) for r in sorted(shown)) + "]"
            block_cells = [block_text] if has_block else []
            display.append(block_cells + [label] + cells + [""] * (n_cols - len(cells)))
    frame = pd.DataFrame.from_records(records)
    notes = ([] if number in NTK_TABLES else ["Cells: paper vs suite mean ± sample std (n = seeds); Δ = suite − "
                                             "paper; '-' = the suite has not run this cell."]) + list(spec.notes)
    if split and number not in NTK_TABLES:
        notes.insert(1, f"Suite split forced to '{split}' where runs have it.")
    if not any_suite and number not in NTK_TABLES:
        notes.append("No suite runs match this table yet.")
    for r in display:
        if r is not None and len(r) != len(header):
            raise AssertionError("row width mismatch")
    return Rendered(f"table{number}", spec.title, header, display, notes, frame, label_cols=1 + has_block)


def _suite_cell(index: SuiteIndex, spec: TableSpec, part: Part, col: Col, model: str, row: PaperRow,
                rank, metric: str) -> Cell | None:
    smetric = col.suite_metric or metric
    if metric == "avg_second":
        return None
    if metric == "avg_main":
        cells = [index.cell(model, t, row.method, rank, row.variant, m) for t, m in GLUE_MAIN]
        if any(c is None for c in cells):
            return None
        means = [c.mean for c in cells]
        return Cell(float(np.mean(means)), 0.0, min(c.n for c in cells), means)
    if col.task is None:   # per-method parameter count over this table's tasks for the model
        tasks = [c.task for c in part.columns if c.task and (c.model or row.model) == model]
        return index.param_cell(model, row.method, rank, row.variant, tasks, smetric)
    return index.cell(model, col.task, row.method, rank, row.variant, smetric)


# ----------------------------------------------------------------------------------------------------------
# The suite's own table (no paper numbers)

HIDDEN_METRICS = {"examples", "unparseable", "loss", "runtime_s"}


def render_suite_table(groups: dict[tuple, Group], split: str | None = None) -> list[Rendered]:
    """One table per (model, task): rows = method / rank (/ variant); columns = the main split's metrics
    (mean ± std, n; best main-metric mean in bold), the validation main metric when the table's split is
    another one, trainable parameters (with / without the task head), parameters added, wall and training
    time, and peak memory."""
    by_mt: dict[tuple, list[Group]] = defaultdict(list)
    for g in groups.values():
        by_mt[(g.model, g.task)].append(g)
    out = []
    for (model, task), gs in sorted(by_mt.items()):
        gs.sort(key=lambda g: (_method_pos(g.method), g.method, -1 if g.rank is None else g.rank, g.variant))
        main = Counter(g.main_metric() for g in gs).most_common(1)[0][0] or "accuracy"
        msplit = Counter(g.split(split) for g in gs).most_common(1)[0][0]
        metric_names: list[str] = []
        for g in gs:
            for r in g.runs:
                s = eval_split(r, split)
                for k, v in (r.metrics.get(s) or {}).items():
                    if k not in metric_names and k not in HIDDEN_METRICS and isinstance(v, (int, float)):
                        metric_names.append(k)
        order = list(metric_names)
        metric_names = sorted(order, key=lambda k: (k != main, order.index(k)))
        val_col = msplit not in (None, "validation") and any(
            isinstance(r.metrics.get("validation"), dict) for g in gs for r in g.runs)
        has_variant = any(g.variant for g in gs)
        best = max((g.cell(main, split).mean for g in gs if g.cell(main, split) is not None), default=None)
        header = ["Method", "Rank"] + (["Variant"] if has_variant else []) + ["n", "Seeds"]
        header += [f"{_metric_name(m)} ({msplit})" for m in metric_names]
        if val_col:
            header.append(f"{_metric_name(main)} (validation)")
        header += ["Trainable", "w/o head", "Added", "Wall time (s)", "Train time (s)", "Peak memory (MB)"]
        rows, records = [], []
        kinds = set()
        for g in gs:
            kinds |= {r.metrics.get("peak_memory_kind") for r in g.runs if r.metrics.get("peak_memory_kind")}
            row = [METHOD_LABEL.get(g.method, g.method), "-" if g.rank is None else str(g.rank)]
            if has_variant:
                sels = {r.selection for r in g.runs if r.selection}
                row.append(g.variant or (f"selection={sels.pop()} (task default)" if len(sels) == 1 else ""))
            row += [str(len(g.runs)), ",".join(str(s) for s in g.seeds)]
            rec = {"model": model, "task": task, "method": g.method, "rank": g.rank, "variant": g.variant,
                   "n": len(g.runs), "seeds": " ".join(str(s) for s in g.seeds), "split": msplit}
            for m in metric_names:
                c = g.cell(m, split)
                text = fmt_cell(c, 2, show_n=False)
                if m == main and c is not None and best is not None and abs(c.mean - best) < 1e-12:
                    text = f"**{text}**"
                row.append(text)
                rec[f"{m}_mean"], rec[f"{m}_std"] = (None, None) if c is None else (c.mean, c.std)
            if val_col:
                c = seed_stats(run_value(r, main, "validation") for r in g.runs
                               if eval_split(r, "validation") == "validation")
                row.append(fmt_cell(c, 2, show_n=False))
                rec[f"validation_{main}_mean"] = None if c is None else c.mean
                rec[f"validation_{main}_std"] = None if c is None else c.std
            for name in ("trainable", "trainable_without_head", "additional"):
                c = g.cell(name)
                row.append("-" if c is None else _int_range(c))
                rec[name] = None if c is None else c.mean
            for name in ("wall_time_s", "train_time_s", "peak_memory_mb"):
                c = g.cell(name)
                row.append(fmt_cell(c, 1 if name != "peak_memory_mb" else 0, show_n=False))
                rec[f"{name}_mean"], rec[f"{name}_std"] = (None, None) if c is None else (c.mean, c.std)
            rows.append(row)
            records.append(rec)
        scale_note = ("x100 (fractions in metrics.json)" if any(is_fraction_scale(r) for g in gs for r in g.runs)
                      else "as stored (already x100)")
        notes = [f"{_metric_name(main)} is the main metric (best mean in bold); metrics {scale_note}, split "
                 f"'{msplit}'. Peak memory: "
                 + ("; ".join(MEMORY_KINDS.get(k, k) for k in sorted(kinds)) or "unknown") + "."]
        title = f"Suite: {MODEL_LABEL.get(model, model)} on {task}"
        out.append(Rendered(f"suite_{task}_{model}", title, header, rows, notes, pd.DataFrame.from_records(records),
                            label_cols=2 + has_variant))
    return out


def render_suite_overview(groups: dict[tuple, Group], split: str | None = None) -> list[Rendered]:
    """Per model with two or more tasks: rows = method / rank (/ variant), one column per task with its main
    metric (mean ± std (n); best per task in bold), then the parameter counts."""
    by_model: dict[str, list[Group]] = defaultdict(list)
    for g in groups.values():
        by_model[g.model].append(g)
    out = []
    for model, gs in sorted(by_model.items()):
        tasks = sorted({g.task for g in gs})
        if len(tasks) < 2:
            continue
        rows_keys = sorted({(g.method, g.rank, g.variant) for g in gs},
                           key=lambda k: (_method_pos(k[0]), k[0], -1 if k[1] is None else k[1], k[2]))
        has_variant = any(k[2] for k in rows_keys)
        mains, best = {}, {}
        for t in tasks:
            tg = [g for g in gs if g.task == t]
            mains[t] = Counter(g.main_metric() for g in tg).most_common(1)[0][0] or "accuracy"
            splits = Counter(g.split(split) for g in tg).most_common(1)[0][0]
            mains[t] = (mains[t], splits)
            best[t] = max((c.mean for g in tg if (c := g.cell(mains[t][0], split)) is not None), default=None)
        header = ["Method", "Rank"] + (["Variant"] if has_variant else [])
        header += [f"{t}: {_metric_name(m)} ({sp})" for t, (m, sp) in mains.items()]
        header += ["Trainable", "w/o head", "Added"]
        rows, records = [], []
        for method, rank, variant in rows_keys:
            row = [METHOD_LABEL.get(method, method), "-" if rank is None else str(rank)]
            if has_variant:
                row.append(variant)
            rec = {"model": model, "method": method, "rank": rank, "variant": variant}
            counts: list = []
            for t in tasks:
                g = groups.get((model, t, method, rank, variant))
                c = None if g is None else g.cell(mains[t][0], split)
                text = fmt_cell(c)
                if c is not None and best[t] is not None and abs(c.mean - best[t]) < 1e-12:
                    text = f"**{text}**"
                row.append(text)
                rec[f"{t}_{mains[t][0]}_mean"] = None if c is None else c.mean
                rec[f"{t}_{mains[t][0]}_std"] = None if c is None else c.std
                rec[f"{t}_n"] = 0 if c is None else c.n
                if g is not None:
                    counts.append(g)
            for name in ("trainable", "trainable_without_head", "additional"):
                c = seed_stats(v for g in counts for v in g.cell(name).values) if counts and all(
                    g.cell(name) is not None for g in counts) else None
                row.append("-" if c is None else _int_range(c))
                rec[name] = None if c is None else c.mean
            rows.append(row)
            records.append(rec)
        notes = ["Main metric per task: mean ± sample std (n = seeds); best per task in bold. Parameter counts "
                 "over all tasks of the row (a range when the task heads differ)."]
        out.append(Rendered(f"suite_overview_{model}", f"Suite overview: {MODEL_LABEL.get(model, model)}", header,
                            rows, notes, pd.DataFrame.from_records(records), label_cols=2 + has_variant))
    return out


def _metric_name(m: str) -> str:
    return {"accuracy": "Accuracy", "f1": "F1", "matthews_corr": "MCC", "pearson": "Pearson",
            "spearman": "Spearman", "exact_match": "EM", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
            "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum", "loglik_acc": "Log-lik acc"}.get(m, m)


def _int_range(c: Cell) -> str:
    lo, hi = int(round(min(c.values))), int(round(max(c.values)))
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


SUITE_NOTES = [
    "One table per (model, task) found under the results tree; rows = method / rank (/ variant). Cells: mean ± "
    "sample std over seeds (n = number of seeds, listed under Seeds).",
    "Trainable = params.trainable (with the task head); w/o head = params.trainable_without_head; Added = "
    "params.additional (parameters the method adds to the model: 0 for RoCoFT, BitFit and full FT). Counts are "
    "exact; a range means the seeds differ. Times in seconds (wall = whole run, train = training loop)."]


def suite_markdown(tables: list[Rendered]) -> str:
    head = "## Suite runs\n\n" + "\n".join(f"- {n}" for n in SUITE_NOTES) + "\n"
    return "\n".join([head] + [t.to_markdown() for t in tables])


def write_suite(tables: list[Rendered], out_dir: Path, formats) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in formats:
        p = out_dir / "suite.md"
        p.write_text(suite_markdown(tables), encoding="utf-8")
        written.append(p)
    if "latex" in formats:
        p = out_dir / "suite.tex"
        p.write_text("% " + "\n% ".join(SUITE_NOTES) + "\n" + "\n".join(t.to_latex() for t in tables),
                     encoding="utf-8")
        written.append(p)
    if "csv" in formats:   # two schemas: per (model, task) rows, and the per-model overviews
        for stem, parts in (("suite", [t for t in tables if not t.name.startswith("suite_overview")]),
                            ("suite_overview", [t for t in tables if t.name.startswith("suite_overview")])):
            if parts:
                p = out_dir / f"{stem}.csv"
                pd.concat([t.frame for t in parts], ignore_index=True).to_csv(p, index=False)
                written.append(p)
    return written


# ----------------------------------------------------------------------------------------------------------
# Figures


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


def plot_memory_time(groups: dict[tuple, Group], out_dir: Path) -> tuple[list[Path], list[str]]:
    """Figure 2: peak memory (left) and training time (right) per method, bars grouped by task; one
    figure per model."""
    by_model: dict[str, list[Group]] = defaultdict(list)
    for g in groups.values():
        if not g.variant and (g.cell("peak_memory_mb") is not None or g.cell("train_time_s") is not None):
            by_model[g.model].append(g)
    if not by_model:
        return [], ["Figure 2 (memory / time per method): skipped, no runs with peak_memory_mb / train_time_s."]
    plt = _plt()
    written = []
    for model, gs in sorted(by_model.items()):
        methods = sorted({(g.method, g.rank, g.variant) for g in gs},
                         key=lambda k: (_method_pos(k[0]), k[0], -1 if k[1] is None else k[1], k[2]))
        tasks = sorted({g.task for g in gs})
        kinds = {r.metrics.get("peak_memory_kind") for g in gs for r in g.runs}
        fig, axes = plt.subplots(1, 2, figsize=(min(24, max(9, 1.1 * len(methods) + 5)), 4.2))
        width = 0.8 / len(tasks)
        x = np.arange(len(methods))
        for ax, metric, ylabel in ((axes[0], "peak_memory_mb", "peak memory (MB)"),
                                   (axes[1], "train_time_s", "training time (s)")):
            for i, task in enumerate(tasks):
                means, stds = [], []
                for m in methods:
                    g = groups.get((model, task, *m))
                    c = None if g is None else g.cell(metric)
                    means.append(np.nan if c is None else c.mean)
                    stds.append(0.0 if c is None else c.std)
                ax.bar(x + (i - (len(tasks) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=task)
            ax.set_xticks(x, [method_label(*m) for m in methods], rotation=35, ha="right", fontsize=8)
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_title("Peak memory" + (f" ({', '.join(sorted(k for k in kinds if k))})" if kinds else ""),
                          fontsize=9)
        axes[1].set_title("Training time (mean ± std over seeds)", fontsize=9)
        axes[1].legend(fontsize=8, title="task")
        fig.suptitle(f"Figure 2 (suite): memory and time per method, {MODEL_LABEL.get(model, model)}")
        fig.tight_layout()
        written += _save(fig, out_dir, f"fig2_memory_time_{model}")
    return written, []


def plot_selection(runs: list[Run], out_dir: Path, rank: int = 4, split: str | None = None
                   ) -> tuple[list[Path], list[str]]:
    """Figure 4: main metric per row/column selection strategy (max / min / mixed / random) at rank
    ``rank``: RoCoFT row and column runs grouped by ``method.selection`` from their config.yaml."""
    sel_runs = [r for r in runs if r.method in ("rocoft_row", "rocoft_col") and r.rank == rank and r.selection]
    if not sel_runs:
        return [], [f"Figure 4 (selection strategies at r={rank}): skipped, no RoCoFT row/column runs at rank "
                    f"{rank} with method.selection in config.yaml."]
    plt = _plt()
    written = []
    by_model: dict[str, list[Run]] = defaultdict(list)
    for r in sel_runs:
        by_model[r.model].append(r)
    for model, rs in sorted(by_model.items()):
        tasks = sorted({r.task for r in rs})
        sels = [s for s in SELECTIONS if any(r.selection == s for r in rs)]
        sels += sorted({r.selection for r in rs} - set(sels))
        fig, axes = plt.subplots(1, 2, figsize=(max(7, 1.6 * len(tasks) + 4), 4), sharey=True)
        width = 0.8 / len(sels)
        x = np.arange(len(tasks))
        lows: list = []
        highs: list = []
        for ax, method in zip(axes, ("rocoft_row", "rocoft_col")):
            for i, s in enumerate(sels):
                means, stds = [], []
                for t in tasks:
                    c = seed_stats(run_value(r, r.metrics.get("main_metric") or "accuracy", split)
                                   for r in rs if r.task == t and r.method == method and r.selection == s)
                    means.append(np.nan if c is None else c.mean)
                    stds.append(0.0 if c is None else c.std)
                ax.bar(x + (i - (len(sels) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=s)
            ax.set_xticks(x, tasks)
            ax.set_title(f"{METHOD_LABEL[method]}, r={rank}", fontsize=9)
            lows += [m - s for m, s in zip(means, stds) if np.isfinite(m)]
            highs += [m + s for m, s in zip(means, stds) if np.isfinite(m)]
            ax.grid(axis="y", alpha=0.3)
        if lows:   # zoom on the bars: the strategies differ by fractions of a point
            span = max(highs) - min(lows)
            axes[0].set_ylim(max(0.0, min(lows) - max(2.0, 0.5 * span)), max(highs) + max(1.0, 0.2 * span))
        axes[0].set_ylabel("main metric (%)")
        axes[1].legend(fontsize=8, title="selection", loc="lower right")
        fig.suptitle(f"Figure 4 (suite): selection strategies, {MODEL_LABEL.get(model, model)}")
        fig.tight_layout()
        written += _save(fig, out_dir, f"fig4_selection_{model}")
    return written, []


def plot_rank_ablation(groups: dict[tuple, Group], out_dir: Path, split: str | None = None,
                       methods=("rocoft_row", "rocoft_col", "lora")) -> tuple[list[Path], list[str]]:
    """Main metric vs rank for RoCoFT row / column and LoRA, one figure per (model, task) where at least
    one of these methods has two or more ranks."""
    cells: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
    for g in groups.values():
        if g.method in methods and g.rank is not None and not g.variant:
            c = g.cell(g.main_metric() or "accuracy", split)
            if c is not None:
                cells[(g.model, g.task)][g.method][g.rank] = c
    targets = {k: v for k, v in cells.items() if any(len(r) >= 2 for r in v.values())}
    if not targets:
        return [], ["Rank ablation (accuracy vs rank): skipped, no (model, task) with a RoCoFT row/column or LoRA "
                    "method at two or more ranks."]
    plt = _plt()
    written = []
    for (model, task), per in sorted(targets.items()):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ranks_all = set()
        for method in methods:
            if method not in per:
                continue
            rs = sorted(per[method])
            ranks_all |= set(rs)
            ax.errorbar(rs, [per[method][r].mean for r in rs], yerr=[per[method][r].std for r in rs],
                        marker="o", capsize=3, label=METHOD_LABEL[method])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ranks_all), [str(r) for r in sorted(ranks_all)])
        ax.set_xlabel("rank r")
        ax.set_ylabel("main metric (%)")
        ax.set_title(f"Rank ablation (suite): {MODEL_LABEL.get(model, model)} on {task}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written += _save(fig, out_dir, f"rank_ablation_{task}_{model}")
    return written, []


# ----------------------------------------------------------------------------------------------------------
# Everything at once


def issues_markdown(issues: list[Issue], root: Path | None = None, limit: int = 20) -> str:
    if not issues:
        return ""
    counts = Counter(i.status for i in issues)
    lines = ["### Run directories not used (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")", ""]
    for i in issues[:limit]:
        lines.append(f"- {i.line(root)}")
    if len(issues) > limit:
        lines.append(f"- ... and {len(issues) - limit} more (see issues.csv)")
    return "\n".join(lines) + "\n"


def build_report(results: str | os.PathLike, out: str | os.PathLike, tables=("all",),
                 formats=("md", "latex", "csv"), split: str | None = None, paper: pd.DataFrame | None = None,
                 plots: bool = True, ranks: dict[str, int] | None = None) -> dict:
    """Scan ``results``, write every requested table and figure under ``out``; returns
    {"markdown": str, "written": [paths], "issues": [Issue], "notes": [str], "runs": [Run]}."""
    results, out = Path(results), Path(out)
    runs, issues = scan_results(results)
    # the output folder may sit inside the results tree: it holds no run directories, nothing to skip
    groups = aggregate(runs)
    paper = load_paper_numbers() if paper is None else paper
    want = {str(t) for t in tables}
    everything = "all" in want
    numbers = [n for n in PAPER_TABLES if everything or str(n) in want]
    written: list[Path] = []
    md_parts = [f"# RoCoFT tables: {len(runs)} finished runs in {len(groups)} cells under {results}\n"]
    if issues:
        md_parts.append(issues_markdown(issues, results))
    notes: list[str] = []
    if everything or "suite" in want:
        suite = render_suite_overview(groups, split) + render_suite_table(groups, split)
        if suite:
            written += write_suite(suite, out, formats)
            md_parts.append(suite_markdown(suite))
        else:
            notes.append("Suite table: skipped, no finished runs.")
    for n in numbers:
        t = render_paper_table(n, paper, groups, split, ranks)
        written += t.write(out, formats)
        md_parts.append(t.to_markdown())
    if plots and (everything or want & {"figures", "plots", "fig2", "fig4", "ranks"}):
        fig_dir = out / "figures"
        for name, fn in (("fig2", lambda: plot_memory_time(groups, fig_dir)),
                         ("fig4", lambda: plot_selection(runs, fig_dir, split=split)),
                         ("ranks", lambda: plot_rank_ablation(groups, fig_dir, split=split))):
            if everything or want & {"figures", "plots", name}:
                paths, skipped = fn()
                written += paths
                notes += skipped
    if notes:
        md_parts.append("### Notes\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    markdown = "\n".join(md_parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    written.append(out / "report.md")
    pd.DataFrame([{"path": str(i.path), "status": i.status, "detail": i.detail} for i in issues],
                 columns=["path", "status", "detail"]).to_csv(out / "issues.csv", index=False)
    written.append(out / "issues.csv")
    return {"markdown": markdown, "written": written, "issues": issues, "notes": notes, "runs": runs,
            "groups": groups}
