"""The paper's numbers and the layout of its tables.

:func:`load_paper_numbers` reads ``rocoft/paper_numbers.csv``: the published numbers of Tables 1, 2, 4, 5, 6,
7, 8, 11, 12 and 13, one row per number (table, model, task, method, rank, variant, metric, value, std,
unit, suite_supported, paper_label, note). :data:`SPECS` lays each table out as the paper prints it: its
column groups (:class:`Part`) and columns (:class:`Col`); the rows are the paper's own, in the CSV's order.

To add a paper table: transcribe its numbers into the CSV, add a :class:`TableSpec` to :data:`SPECS` (its
columns name the suite's task and metric), and it renders with ``scripts/tables.py --table <N>``. A
column's suite numbers are shown in the paper's unit (the CSV's ``unit``: ``fraction`` = as stored,
otherwise x100 for scores).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd

PAPER_TABLES = (1, 2, 4, 5, 6, 7, 8, 11, 12, 13)
NTK_TABLES = (4, 5, 13)                      # kernel experiments (scripts/ntk.py) and prompt-based fine-tuning
UNSUPPORTED = "not run by the suite"


def load_paper_numbers(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The transcribed paper numbers (``rocoft/paper_numbers.csv``), values kept as printed (strings) in
    ``value_str`` / ``std_str`` and as floats in ``value`` / ``std``; ``rank`` is a nullable integer."""
    if path is None:
        with resources.as_file(resources.files("rocoft").joinpath("paper_numbers.csv")) as p:
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


@dataclass
class Col:
    header: str
    task: str | None            # None: a per-method column (#TTPs)
    metric: str | None          # None: the row's metric (Tables 5 / 13)
    model: str | None = None    # None: the row's model
    decimals: int = 2
    suite_metric: str | None = None   # what the suite shows (default: metric)


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
NTK_NOTE = ("Suite: kernels from `python scripts/ntk.py model=<m> task=<task>_prompt k=<k> seed=<s>` (KLR = the "
            "reference solver, LogisticRegressionCV on kernel rows; rows / columns at the paper's rank 1, LoRA at "
            "its initialisation, rank shown in brackets); Full FT from `python train.py task=<task>_prompt "
            "method=full_ft task.k=<k> seed=<s>` (prompt-based fine-tuning, test accuracy). Tasks match by name "
            "without `_prompt`; seeds 13, 21, 42, 87, 100 in the paper.")


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
                 ["Split: test sets of LLM-Adapters; suite accuracies in %, like the paper's. #TTPs: paper as "
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
                            Col("Accuracy", "sst2", "accuracy", decimals=3),
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
