"""rocoft.reporting, paper side: the paper's tables with the suite's numbers joined in, their LaTeX / CSV
output, and spot checks of the transcribed paper numbers (rocoft/paper_numbers.csv)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tables_tree import SST2_LORA, SST2_ROW3, build_tree, mean_std, row_of

from rocoft import reporting as rp

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    return rp.scan_results(build_tree(tmp_path_factory.mktemp("results")))[0]


@pytest.fixture(scope="module")
def paper():
    return rp.load_paper_numbers()


def test_table1_cells_paper_suite_and_difference(frame, paper):
    t1 = rp.render_paper_table(1, paper, frame)
    row, header = row_of(t1, "LoRA")
    sst2 = row[header.index("SST-2")]
    m, s, n = mean_std(SST2_LORA)
    assert sst2 == f"93.31 vs {m:.2f} ± {s:.2f} (n={n}); Δ {m - 93.31:+.2f}"
    assert "[suite r=8]" in row[1]                      # the paper omits LoRA's rank: the suite's is named
    assert row[header.index("CoLA (MCC)")] == "60.09 vs -"
    assert row[header.index("#TTPs (M)")] == f"0.89 vs 0.887; Δ {0.887042 - 0.89:+.3f}"
    row3, _ = row_of(t1, "RoCoFT_{3-Row}")
    m3, s3, _ = mean_std(SST2_ROW3)
    assert row3[header.index("SST-2")] == f"94.92 vs {m3:.2f} ± {s3:.2f} (n=3); Δ {m3 - 94.92:+.2f}"
    assert row3[header.index("MRPC acc")] == f"89.71 vs 89.00 (n=1); Δ {89.00 - 89.71:+.2f}"
    assert row3[header.index("MRPC F1")] == f"90.74 vs 90.50 (n=1); Δ {90.50 - 90.74:+.2f}"
    assert row3[header.index("RTE")] == "78.31 vs -"
    assert row3[header.index("Avg. (main)")] == "85.65 vs -"       # not all 8 tasks run
    mam, _ = row_of(t1, "MAM Adapter")
    assert "not run by the suite" not in mam[1] and mam[header.index("SST-2")] == "94.24 vs -"  # run by the suite now
    # the long CSV frame: one record per cell, with the difference
    f = t1.frame
    rec = f[(f.row == "LoRA") & (f.task == "sst2") & (f.metric == "accuracy")].iloc[0]
    assert rec.paper == 93.31 and rec.suite_n == 2 and rec.suite_rank == 8
    assert rec["diff"] == pytest.approx(m - 93.31)
    filled = f[f.suite_mean.notna() & (f.metric != "trainable_params")]
    assert set(zip(filled.row, filled.task, filled.metric)) == {
        ("LoRA", "sst2", "accuracy"), ("RoCoFT_{3-Row}", "sst2", "accuracy"),
        ("RoCoFT_{3-Row}", "mrpc", "accuracy"), ("RoCoFT_{3-Row}", "mrpc", "f1"),
        ("RoCoFT_{1-Row}", "sst2", "accuracy")}
    assert len(f) == 22 * 14                            # every paper number of Table 1 has a record
    pinned = rp.render_paper_table(1, paper, frame, ranks={"lora": 1})
    row, _ = row_of(pinned, "LoRA")
    assert "[suite r=1]" in row[1] and row[header.index("SST-2")] == "93.31 vs 90.50 (n=1); Δ -2.81"
    # a per-method #TTPs cell counts each run once, though MRPC has two columns
    ttp = f[(f.row == "RoCoFT_{3-Row}") & (f.metric == "trainable_params")].iloc[0]
    assert ttp.suite_n == 3 + 1 and ttp.suite_mean == pytest.approx(0.84173)


def test_table8_llm_and_random_entry_tables(frame, paper):
    t8 = rp.render_paper_table(8, paper, frame)
    rows = [r for r in t8.rows if r is not None]
    r1 = rows[1]                                        # rank 1, RoCoFT_{row}
    assert r1[1] == "RoCoFT_{row}"
    assert r1[2] == "3:00 vs 2:55 ± 7 s (n=2); Δ -5 s"
    acc = np.mean([0.91, 0.92])
    assert r1[3] == f"0.913 vs {acc:.3f} ± {np.std([0.91, 0.92], ddof=1):.3f} (n=2); Δ {acc - 0.913:+.3f}"
    assert r1[4].startswith("0.022 vs 0.083")          # trainable without head, millions
    assert rows[0][2].startswith("3:12 vs 3:20 (n=1)")  # LoRA r=1
    rec = t8.frame[(t8.frame.row == "RoCoFT_{row}") & (t8.frame.metric == "accuracy") & (t8.frame["rank"] == 1)]
    assert rec.suite_mean.item() == pytest.approx(acc)  # the paper's unit (fraction): the stored fraction
    t2 = rp.render_paper_table(2, paper, frame)
    rows2 = [r for r in t2.rows if r is not None]
    start = next(i for i, r in enumerate(rows2) if r[0] == "LLaMA-2-7B")
    llama = rows2[start + 4]                            # LLaMA-2-7B block: Prefix, AdaLoRA, (IA)³, LoRA, 3-Row
    assert llama[1] == "RoCoFT_{3-Row}" and llama[t2.header.index("BoolQ")] == "69.36 vs 69.50 (n=1); Δ +0.14"
    assert rows2[start + 5][t2.header.index("BoolQ")] == "69.32 vs -"
    assert len(rows2) == 24 and t2.rows.count(None) == 3  # 4 LLM blocks separated by rules
    t11 = rp.render_paper_table(11, paper, frame)
    base = [r for r in t11.rows if r is not None][0]
    assert base[t11.header.index("RTE")] == "80.01 vs 80.00 (n=1); Δ -0.01"


def test_ntk_tables_without_runs_show_the_paper_vs_nothing(paper):
    t4 = rp.render_paper_table(4, paper, rp.make_frame([]))
    text = t4.to_markdown()
    assert "89.0 (1.5) vs -" in text and "scripts/ntk.py" in text
    t5 = rp.render_paper_table(5, paper, rp.make_frame([]))
    assert "0.181 (0.007) vs -" in t5.to_markdown() and "K_θR, p=1" in t5.to_markdown()


def test_latex_and_csv_outputs(frame, paper, tmp_path):
    t1 = rp.render_paper_table(1, paper, frame)
    paths = t1.write(tmp_path, ("md", "latex", "csv"))
    tex = (tmp_path / "table1.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"$\pm$" in tex and r"\textsubscript{3-Row}" in tex and tex.isascii()
    for n in rp.PAPER_TABLES:                           # every table's LaTeX is plain ASCII (escaped)
        assert rp.render_paper_table(n, paper, frame).to_latex().isascii(), n
    back = pd.read_csv(tmp_path / "table1.csv")
    assert len(back) == len(t1.frame)
    rec = back[(back.row == "LoRA") & (back.task == "sst2")].iloc[0]
    assert rec.paper == 93.31 and rec.suite_mean == pytest.approx(np.mean(SST2_LORA) * 100)
    assert {p.suffix for p in paths} == {".md", ".tex", ".csv"}


@pytest.mark.parametrize("table,model,task,method,rank,variant,metric,value", [
    (1, "roberta_base", "sst2", "lora", None, "", "accuracy", 93.31),
    (1, "roberta_base", "mrpc", "lora", None, "", "f1", 88.68),
    (1, "roberta_base", "cola", "rocoft_row", 3, "", "matthews_corr", 63.53),
    (1, "roberta_base", "stsb", "rocoft_col", 3, "", "spearman", 90.45),
    (1, "roberta_base", "", "rocoft_row", 1, "", "trainable_params", 0.083),
    (1, "roberta_base", "glue_avg", "full_ft", None, "", "avg_main", 83.56),
    (6, "roberta_large", "rte", "rocoft_row", 3, "", "accuracy", 87.83),
    (6, "roberta_large", "qqp", "rocoft_col", 3, "", "accuracy", 91.38),
    (2, "bloomz_7b", "siqa", "rocoft_row", 3, "", "accuracy", 73.56),
    (2, "llama2_7b", "gsm8k", "rocoft_row", 3, "", "accuracy", 77.37),
    (2, "gptj_6b", "", "lora", None, "", "trainable_params", 20.02),
    (2, "llama2_13b", "svamp", "rocoft_col", 3, "", "accuracy", 66.63),
    (7, "deberta_v3_base", "squad", "rocoft_row", None, "", "exact_match", 81.70),
    (7, "bart_large", "xsum", "rocoft_col", None, "", "rouge2", 18.54),
    (7, "bart_large", "cnn_dailymail", "full_ft", None, "", "rougeLsum", 37.04),
    (8, "roberta_base", "sst2", "rocoft_row", 64, "", "accuracy", 0.934),
    (8, "roberta_base", "sst2", "lora", 64, "", "peak_memory_mb", 2993),
    (8, "roberta_base", "sst2", "lora", 1, "", "train_time_s", 192),
    (11, "roberta_large", "qnli", "rocoft_random", None, "p=0.1", "accuracy", 95.06),
    (12, "llama2_13b", "", "rocoft_random", None, "p=0.01", "trainable_params", 129.8),
    (4, "roberta_base", "mnli", "ntk_rocoft_row", 1, "k=16", "few_shot_accuracy", 51.1),
    (5, "roberta_base", "trec", "ntk_lora", None, "k=16", "kernel_rel_diff_l2", 0.151),
    (13, "roberta_base", "qqp", "ntk_rocoft_col", 1, "k=64", "kernel_rel_diff_l2", 0.099),
])
def test_paper_spot_checks(paper, table, model, task, method, rank, variant, metric, value):
    assert rp.paper_value(paper, table, model, task, method, metric, rank, variant) == pytest.approx(value)


def test_paper_numbers_shape_and_names(paper):
    counts = paper.groupby("table").size().to_dict()
    assert counts == {1: 22 * 14, 2: 24 * 14, 4: 108, 5: 78, 6: 17 * 12, 7: 10 * 12, 8: 15 * 4, 11: 24, 12: 56,
                      13: 52}
    assert paper.loc[(paper.table == 4) & (paper.task == "sst2") & (paper.method == "full_ft")
                     & (paper.variant == "k=16"), "std"].item() == 1.5
    # method, model and task names match the suite's configs wherever the suite can run the row
    conf = ROOT / "conf"
    sup = paper[paper.suite_supported]
    kernel = sup.table.isin([4, 5, 13])  # scripts/ntk.py's kernels (ntk_*) and prompt fine-tuning on <task>_prompt
    assert set(sup[~kernel].method) <= {p.stem for p in (conf / "method").glob("*.yaml")}
    assert set(sup[kernel].method) == {"full_ft", "ntk_full", "ntk_rocoft_row", "ntk_rocoft_col", "ntk_lora"}
    assert set(sup.model) <= {p.stem for p in (conf / "model").glob("*.yaml")}
    assert set(sup[~kernel].task) - {"", "glue_avg"} <= {p.stem for p in (conf / "task").glob("*.yaml")}
    assert {f"{t}_prompt" for t in sup[kernel].task} <= {p.stem for p in (conf / "task").glob("*.yaml")}
    assert sup[kernel].shape[0] == 108 + 78 + 52  # every row of Tables 4, 5, 13
    # every Table 1 / 6 method is run by the suite
    assert set(paper[~paper.suite_supported & paper.table.isin([1, 6])].method) == set()
    assert paper.value.notna().all()
    # one number per key: the paper tables join on it
    keys = ["table", "model", "task", "paper_label", "method", "rank", "variant", "metric"]
    assert not paper.duplicated(keys).any()
    # every paper model has a display label in its config (Table 2's row blocks)
    assert {rp.model_label(m) for m in paper.model.unique()} >= {"LLaMA-2-7B", "BLOOMz-7B", "GPT-J-6B"}
