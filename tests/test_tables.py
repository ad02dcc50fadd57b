"""scripts/tables.py and rocoft.reporting: results scanning, seed aggregation, paper tables, figures, and
spot checks of the transcribed paper numbers (rocoft/paper_numbers.csv)."""

import importlib.util
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from rocoft import reporting as rp

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------- fake tree

KINDS = {"boolq": "instruction", "squad": "question_answering"}


def write_run(root, model, task, method, rank, seed, split_metrics, *, selection=None, task_selection=None,
              p=None, trainable=1000, without_head=100, additional=0, train_time=10.0, memory=500.0,
              subdir="", main_metric=None):
    """A run directory like train.py writes: metrics.json (same keys) and a resolved config.yaml."""
    tag = method if rank is None else f"{method}_r{rank}"
    if p is not None:
        tag = f"{method}_p{p}"
    run_dir = Path(root) / subdir / task / model / tag / f"seed{seed}"
    run_dir.mkdir(parents=True)
    kind = KINDS.get(task, "classification")
    method_cfg = {"name": method, "kind": "rocoft" if method.startswith("rocoft") else "peft", "tag": tag,
                  "rank": rank, "lr": 5e-3}
    if selection is not None:
        method_cfg["selection"] = selection
    if p is not None:
        method_cfg["p"] = p
    first_metric = next(iter(next(iter(split_metrics.values()))))
    task_cfg = {"name": task, "kind": kind, "main_metric": main_metric or first_metric}
    if task_selection is not None:
        task_cfg["rocoft"] = {"bias": "none", "selection": task_selection}
    config = {"model": {"name": model}, "task": task_cfg, "method": method_cfg, "rank": rank, "seed": seed}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "train.log").write_text("")
    metrics = {"model": model, "task": task, "method": method, "rank": rank, "seed": seed,
               "main_metric": task_cfg["main_metric"], **split_metrics, "eval_splits": list(split_metrics),
               "validation_history": [],
               "params": {"trainable": trainable, "trainable_without_head": without_head, "total": 10**6,
                          "additional": additional, "trainable_percent": 100 * trainable / 10**6},
               "steps": 10, "train_examples": 64, "wall_time_s": train_time + 2, "train_time_s": train_time,
               "peak_memory_mb": memory, "peak_memory_kind": "cpu_max_rss", "device": "cpu", "num_processes": 1,
               "mixed_precision": "no", "git": {"commit": None, "dirty": None}, "versions": {}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run_dir


SST2_LORA = [0.9350, 0.9420]                    # 2 seeds: LoRA r=8, RoBERTa-base SST-2
SST2_ROW3 = [0.9450, 0.9480, 0.9510]            # 3 seeds: RoCoFT rows r=3
MRPC_ROW3 = (0.8900, 0.9050)                    # 1 seed: accuracy, f1
RT = {"rocoft_row": [0.78, 0.80, 0.79], "full_ft": [0.84, 0.85, 0.83]}


def build_tree(root):
    root = Path(root)
    for seed, acc in enumerate(SST2_LORA):
        write_run(root, "roberta_base", "sst2", "lora", 8, seed, {"validation": {"accuracy": acc, "f1": acc}},
                  trainable=887_042, without_head=294_912, additional=294_912)
    for seed, acc in enumerate(SST2_ROW3):
        write_run(root, "roberta_base", "sst2", "rocoft_row", 3, seed, {"validation": {"accuracy": acc}},
                  task_selection="max", selection="max", trainable=841_730, without_head=248_832)
    write_run(root, "roberta_base", "mrpc", "rocoft_row", 3, 0,
              {"validation": {"accuracy": MRPC_ROW3[0], "f1": MRPC_ROW3[1]}}, task_selection="random",
              selection="random", trainable=841_730, without_head=248_832)
    # Table 8 (rank ablation) cells and the rank curve: rows r=1 and r=3 on SST-2 plus LoRA r=1
    for seed in (0, 1):
        write_run(root, "roberta_base", "sst2", "rocoft_row", 1, seed, {"validation": {"accuracy": 0.91 + 0.01 * seed}},
                  task_selection="max", selection="max", trainable=675_074, without_head=82_944,
                  train_time=170.0 + 10 * seed, memory=2300.0)
    write_run(root, "roberta_base", "sst2", "lora", 1, 0, {"validation": {"accuracy": 0.905}},
              trainable=647_426, without_head=55_296, additional=55_296, train_time=200.0, memory=2700.0)
    # Figure 4: selection strategies at r=4 (different output folders: the method tag does not name them)
    for i, sel in enumerate(("max", "min", "mixed", "random")):
        for axis in ("rocoft_row", "rocoft_col"):
            write_run(root, "roberta_base", "sst2", axis, 4, 0, {"validation": {"accuracy": 0.92 + 0.002 * i}},
                      task_selection="max", selection=sel, subdir=f"ablation/{sel}")
    # Table 2 (LLM): accuracies already x100
    write_run(root, "llama2_7b", "boolq", "rocoft_row", 3, 0, {"validation": {"accuracy": 70.0},
                                                               "test": {"accuracy": 69.5, "examples": 3270.0}},
              task_selection="random", selection="random", trainable=13_470_000, without_head=13_470_000)
    # Table 11: random entries p=0.1
    write_run(root, "roberta_base", "rte", "rocoft_random", None, 0, {"validation": {"accuracy": 0.80}}, p=0.1)
    # the suite's own mini reproduction: MiniLM on rotten_tomatoes, 3 seeds
    for method, accs in RT.items():
        rank = 3 if method == "rocoft_row" else None
        for seed, acc in enumerate(accs):
            write_run(root, "minilm_l6", "rotten_tomatoes", method, rank, seed,
                      {"validation": {"accuracy": acc - 0.01, "f1": acc}, "test": {"accuracy": acc, "f1": acc}},
                      task_selection=None, selection="first" if rank else None,
                      trainable=210_818 if rank else 22_713_986, without_head=62_208 if rank else 22_565_376)
    # broken run directories
    bad = root / "sst2" / "roberta_base" / "bitfit" / "seed0"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text('{"model": "roberta_base", "task": ')           # corrupt (truncated)
    unfinished = root / "sst2" / "roberta_base" / "ia3" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("seed: 0\n")
    (unfinished / "status.json").write_text(json.dumps({"status": "running"}))
    crashed = root / "sst2" / "roberta_base" / "full_ft" / "seed1"                  # no status.json at all
    crashed.mkdir(parents=True)
    (crashed / "config.yaml").write_text("seed: 1\n")
    (crashed / "train.log").write_text("")
    failed = root / "sst2" / "roberta_base" / "adalora_r8" / "seed0"
    failed.mkdir(parents=True)
    (failed / "config.yaml").write_text("seed: 0\n")
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "CUDA out of memory"}))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def paper():
    return rp.load_paper_numbers()


def mean_std(values):
    arr = 100 * np.asarray(values, dtype=float)
    return arr.mean(), (arr.std(ddof=1) if len(arr) > 1 else 0.0), len(arr)


def row_of(rendered, label_start):
    rows = [r for r in rendered.rows if r is not None and any(str(c).startswith(label_start) for c in r[:2])]
    assert rows, label_start
    return rows[0], rendered.header

# ---------------------------------------------------------------------------------------------- scanning


def test_scan_reports_broken_runs_and_keeps_the_rest(tree):
    runs, issues = rp.scan_results(tree)
    status = {i.path.relative_to(tree).as_posix(): i for i in issues}
    assert status["sst2/roberta_base/bitfit/seed0"].status == "corrupt"
    assert status["sst2/roberta_base/ia3/seed0"].status == "unfinished"
    assert status["sst2/roberta_base/full_ft/seed1"].status == "unfinished"
    failed = status["sst2/roberta_base/adalora_r8/seed0"]
    assert failed.status == "failed" and "CUDA out of memory" in failed.detail
    assert len(issues) == 4
    assert len(runs) == 2 + 3 + 1 + 2 + 1 + 8 + 1 + 1 + 6
    # variants: the task default selection is "", others are named
    sel = {r.selection: r.variant for r in runs if r.rank == 4 and r.method == "rocoft_row"}
    assert sel == {"max": "", "min": "selection=min", "mixed": "selection=mixed", "random": "selection=random"}
    assert {r.variant for r in runs if r.method == "rocoft_random"} == {"p=0.1"}


def test_scan_missing_or_empty_root(tmp_path):
    runs, issues = rp.scan_results(tmp_path / "nope")
    assert runs == [] and issues[0].status == "missing"
    assert rp.scan_results(tmp_path) == ([], [])


def test_aggregation_mean_std_n(tree):
    groups = rp.aggregate(rp.scan_results(tree)[0])
    c = groups[("roberta_base", "sst2", "lora", 8, "")].cell("accuracy")
    m, s, n = mean_std(SST2_LORA)
    assert (c.n, c.mean, c.std) == (n, pytest.approx(m), pytest.approx(s))
    c = groups[("roberta_base", "sst2", "rocoft_row", 3, "")].cell("accuracy")
    m, s, n = mean_std(SST2_ROW3)
    assert (c.n, c.mean, c.std) == (3, pytest.approx(m), pytest.approx(s))
    one = groups[("roberta_base", "mrpc", "rocoft_row", 3, "")].cell("f1")
    assert (one.n, one.std) == (1, 0.0) and one.mean == pytest.approx(100 * MRPC_ROW3[1])
    assert rp.fmt_cell(one) == f"{100 * MRPC_ROW3[1]:.2f} (n=1)"
    llm = groups[("llama2_7b", "boolq", "rocoft_row", 3, "")].cell("accuracy")
    assert llm.mean == pytest.approx(69.5)          # test split, already x100: not scaled again

# ---------------------------------------------------------------------------------------------- paper tables


def test_table1_cells_paper_suite_and_difference(tree, paper):
    groups = rp.aggregate(rp.scan_results(tree)[0])
    t1 = rp.render_paper_table(1, paper, groups)
    row, header = row_of(t1, "LoRA")
    sst2 = row[header.index("SST-2")]
    m, s, n = mean_std(SST2_LORA)
    assert sst2 == f"93.31 vs {m:.2f} ± {s:.2f} (n={n}); Δ {m - 93.31:+.2f}"
    assert "[suite r=8]" in row[1]                      # the paper omits LoRA's rank: the suite's is named
    assert row[header.index("CoLA (MCC)")] == "60.09 vs -"
    assert row[header.index("#TTPs (M)")] == f"0.89 vs 0.887; Δ {0.887042 - 0.89:+.3f}"
    row3, _ = row_of(t1, "RoCoFT_{3-Row}")
    m3, s3, n3 = mean_std(SST2_ROW3)
    assert row3[header.index("SST-2")] == f"94.92 vs {m3:.2f} ± {s3:.2f} (n=3); Δ {m3 - 94.92:+.2f}"
    assert row3[header.index("MRPC acc")] == f"89.71 vs 89.00 (n=1); Δ {89.00 - 89.71:+.2f}"
    assert row3[header.index("MRPC F1")] == f"90.74 vs 90.50 (n=1); Δ {90.50 - 90.74:+.2f}"
    assert row3[header.index("RTE")] == "78.31 vs -"
    assert row3[header.index("Avg. (main)")] == "85.65 vs -"       # not all 8 tasks run
    mam, _ = row_of(t1, "MAM Adapter")
    assert "not run by the suite" in mam[1] and mam[header.index("SST-2")] == "94.24"
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
    pinned = rp.render_paper_table(1, paper, groups, ranks={"lora": 1})
    row, _ = row_of(pinned, "LoRA")
    assert "[suite r=1]" in row[1] and row[header.index("SST-2")] == "93.31 vs 90.50 (n=1); Δ -2.81"


def test_table8_llm_and_random_entry_tables(tree, paper):
    groups = rp.aggregate(rp.scan_results(tree)[0])
    t8 = rp.render_paper_table(8, paper, groups)
    rows = [r for r in t8.rows if r is not None]
    r1 = rows[1]                                        # rank 1, RoCoFT_{row}
    assert r1[1] == "RoCoFT_{row}"
    assert r1[2] == "3:00 vs 2:55 ± 7 s (n=2); Δ -5 s"
    acc = np.mean([0.91, 0.92])
    assert r1[3] == f"0.913 vs {acc:.3f} ± {np.std([0.91, 0.92], ddof=1):.3f} (n=2); Δ {acc - 0.913:+.3f}"
    assert r1[4].startswith("0.022 vs 0.083")          # trainable without head, millions
    assert rows[0][2].startswith("3:12 vs 3:20 (n=1)")  # LoRA r=1
    t2 = rp.render_paper_table(2, paper, groups)
    rows2 = [r for r in t2.rows if r is not None]
    start = next(i for i, r in enumerate(rows2) if r[0] == "LLaMA-2-7B")
    llama = rows2[start + 4]                            # LLaMA-2-7B block: Prefix, AdaLoRA, (IA)³, LoRA, 3-Row
    assert llama[1] == "RoCoFT_{3-Row}" and llama[t2.header.index("BoolQ")] == "69.36 vs 69.50 (n=1); Δ +0.14"
    assert rows2[start + 5][t2.header.index("BoolQ")] == "69.32 vs -"
    assert len(rows2) == 24 and t2.rows.count(None) == 3  # 4 LLM blocks separated by rules
    t11 = rp.render_paper_table(11, paper, groups)
    base = [r for r in t11.rows if r is not None][0]
    assert base[t11.header.index("RTE")] == "80.01 vs 80.00 (n=1); Δ -0.01"


def test_ntk_tables_render_paper_only(paper):
    t4 = rp.render_paper_table(4, paper, {})
    text = t4.to_markdown()
    assert "89.0 (1.5)" in text and "not implemented" in text
    assert not any(" vs " in c for r in t4.rows if r is not None for c in r)
    t5 = rp.render_paper_table(5, paper, {})
    assert "0.181 (0.007)" in t5.to_markdown() and "K_θR, p=1" in t5.to_markdown()


def test_latex_and_csv_outputs(tree, paper, tmp_path):
    groups = rp.aggregate(rp.scan_results(tree)[0])
    t1 = rp.render_paper_table(1, paper, groups)
    paths = t1.write(tmp_path, ("md", "latex", "csv"))
    tex = (tmp_path / "table1.tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"$\pm$" in tex and r"\textsubscript{3-Row}" in tex and tex.isascii()
    for n in rp.PAPER_TABLES:                           # every table's LaTeX is plain ASCII (escaped)
        assert rp.render_paper_table(n, paper, groups).to_latex().isascii(), n
    back = pd.read_csv(tmp_path / "table1.csv")
    assert len(back) == len(t1.frame)
    rec = back[(back.row == "LoRA") & (back.task == "sst2")].iloc[0]
    assert rec.paper == 93.31 and rec.suite_mean == pytest.approx(np.mean(SST2_LORA) * 100)
    assert {p.suffix for p in paths} == {".md", ".tex", ".csv"}


def test_suite_table(tree):
    groups = rp.aggregate(rp.scan_results(tree)[0])
    tables = {t.name: t for t in rp.render_suite_table(groups)}
    rt = tables["suite_rotten_tomatoes_minilm_l6"]
    h = rt.header
    assert h[:4] == ["Method", "Rank", "n", "Seeds"] and "Accuracy (test)" in h and "Accuracy (validation)" in h
    ft = next(r for r in rt.rows if r[0] == "Full FT")
    m, s, n = mean_std(RT["full_ft"])
    assert ft[h.index("Accuracy (test)")] == f"**{m:.2f} ± {s:.2f}**"      # best main metric in bold
    assert ft[h.index("n")] == "3" and ft[h.index("Trainable")] == "22,713,986"
    row = next(r for r in rt.rows if r[0] == "RoCoFT row")
    m, s, _ = mean_std(RT["rocoft_row"])
    assert row[h.index("Accuracy (test)")] == f"{m:.2f} ± {s:.2f}" and row[h.index("Rank")] == "3"
    assert row[h.index("Added")] == "0"
    sel = tables["suite_sst2_roberta_base"]
    assert "Variant" in sel.header and any("selection=min" in r for r in sel.rows)
    assert r"\toprule" in sel.to_latex() and all(t.to_latex().isascii() for t in tables.values())


def test_plots_written_and_skipped(tree, tmp_path):
    runs, _ = rp.scan_results(tree)
    groups = rp.aggregate(runs)
    paths, notes = rp.plot_memory_time(groups, tmp_path)
    paths += rp.plot_selection(runs, tmp_path)[0]
    paths += rp.plot_rank_ablation(groups, tmp_path)[0]
    names = {p.name for p in paths}
    assert {"fig2_memory_time_roberta_base.png", "fig4_selection_roberta_base.pdf",
            "rank_ablation_sst2_roberta_base.png"} <= names
    assert all(p.stat().st_size > 1000 for p in paths) and not notes
    empty = tmp_path / "empty"
    for fn in (lambda: rp.plot_memory_time({}, empty), lambda: rp.plot_selection([], empty),
               lambda: rp.plot_rank_ablation({}, empty)):
        written, skipped = fn()
        assert written == [] and "skipped" in skipped[0]


def test_cli_end_to_end(tree, tmp_path):
    spec = importlib.util.spec_from_file_location("tables_cli", ROOT / "scripts" / "tables.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "tables"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli.main(["--results", str(tree), "--out", str(out), "--table", "1", "suite", "fig4"]) == 0
    printed = buf.getvalue()
    assert "### Table 1: GLUE, RoBERTa-base" in printed and "Suite: MiniLM-L6 on rotten_tomatoes" in printed
    assert "1 corrupt" in printed and "1 failed" in printed and "CUDA out of memory" in printed
    for name in ("table1.md", "table1.tex", "table1.csv", "suite.md", "suite.tex", "suite.csv", "report.md",
                 "issues.csv", "figures/fig4_selection_roberta_base.png"):
        assert (out / name).is_file(), name
    assert not (out / "table2.md").exists()
    assert len(pd.read_csv(out / "issues.csv")) == 4
    with redirect_stdout(io.StringIO()):
        assert cli.main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "t2"), "--quiet"]) == 0
    assert (tmp_path / "t2" / "table12.csv").is_file()

# ---------------------------------------------------------------------------------------------- paper numbers


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
    assert set(sup.method) <= {p.stem for p in (conf / "method").glob("*.yaml")}
    assert set(sup.model) <= {p.stem for p in (conf / "model").glob("*.yaml")}
    assert set(sup.task) - {"", "glue_avg"} <= {p.stem for p in (conf / "task").glob("*.yaml")}
    assert set(paper[~paper.suite_supported & paper.table.isin([1, 6])].method) == {
        "houlsby_adapter", "mam_adapter", "propetl_adapter", "propetl_prefix", "propetl_lora", "moslora",
        "lora_xs", "sft", "diff_pruning"}
    assert paper.value.notna().all()


def test_real_tiny_runs_are_read(tmp_path):
    """Two real (2-step) runs written by rocoft.training.run: the scanner reads the files the suite writes."""
    from conftest import compose_config, small_run_overrides
    from rocoft.training import run

    written = [run(compose_config(["model=tiny_encoder", "method=rocoft_col", "rank=1", f"seed={seed}",
                                   *small_run_overrides(tmp_path, steps=2, train=32, evals=16)]))
               for seed in (0, 1)]
    runs, issues = rp.scan_results(tmp_path)
    assert issues == [] and len(runs) == 2
    assert {r.kind for r in runs} == {"classification"} and {r.variant for r in runs} == {""}
    groups = rp.aggregate(runs)
    g = groups[("tiny_encoder", "rotten_tomatoes", "rocoft_col", 1, "")]
    m, s, n = mean_std([w["test"]["accuracy"] for w in written])
    c = g.cell("accuracy")
    assert (c.n, c.mean, c.std) == (n, pytest.approx(m), pytest.approx(s))
    assert g.cell("trainable").mean == written[0]["params"]["trainable"]
    suite = rp.render_suite_table(groups)[0]
    assert suite.rows[0][:4] == ["RoCoFT column", "1", "2", "0,1"]
