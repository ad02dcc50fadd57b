"""rocoft.reporting, reading side: results scanning into the tidy frame, metrics units (format 1 and 2),
labels from the configs, seed aggregation."""

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from tables_tree import (MRPC_ROW3, N_RUNS, SST2_LORA, SST2_ROW3, build_tree, mean_std, write_killed_at_startup,
                         write_run)

from rocoft import reporting as rp
from rocoft.metrics import UNSCALED


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("results"))


def test_scan_reports_broken_runs_and_keeps_the_rest(tree):
    frame, issues = rp.scan_results(tree)
    status = {i.path.relative_to(tree).as_posix(): i for i in issues}
    assert status["sst2/roberta_base/bitfit/seed0"].status == "corrupt"
    assert status["sst2/roberta_base/ia3/seed0"].status == "unfinished"
    assert status["sst2/roberta_base/full_ft/seed1"].status == "unfinished"
    failed = status["sst2/roberta_base/adalora_r8/seed0"]
    assert failed.status == "failed" and "CUDA out of memory" in failed.detail
    assert len(issues) == 4
    runs = rp.run_table(frame)
    assert len(runs) == N_RUNS
    # variants: the task default selection is "", others are named
    r4 = runs[runs["rank"].eq(4).fillna(False) & (runs.method == "rocoft_row")]
    sel = dict(zip(r4.selection, r4.variant))
    assert sel == {"max": "", "min": "selection=min", "mixed": "selection=mixed", "random": "selection=random"}
    assert set(runs.variant[runs.method == "rocoft_random"]) == {"p=0.1"}


def test_scan_missing_or_empty_root(tmp_path):
    frame, issues = rp.scan_results(tmp_path / "nope")
    assert frame.empty and issues[0].status == "missing"
    frame, issues = rp.scan_results(tmp_path)
    assert frame.empty and issues == [] and list(frame.columns) == rp.COLUMNS


def test_tidy_frame_one_row_per_run_split_metric(tree):
    frame, _ = rp.scan_results(tree)
    assert list(frame.columns) == rp.COLUMNS
    assert not frame.duplicated(["run", "split", "metric"]).any()
    one = frame[frame.run.str.endswith("mrpc/roberta_base/rocoft_row_r3/seed0")]
    scores = one[one.split == "validation"].set_index("metric")
    assert set(scores.index) == {"accuracy", "f1"}
    assert scores.loc["f1", "value"] == MRPC_ROW3[1] and scores.loc["f1", "shown"] == 100 * MRPC_ROW3[1]
    run_level = one[one.split == ""].set_index("metric")
    assert run_level.loc["trainable", "shown"] == 841_730 and run_level.loc["trainable_params", "shown"] == 0.84173
    assert (one[["model", "task", "method", "seed", "status"]].drop_duplicates().values.tolist()
            == [["roberta_base", "mrpc", "rocoft_row", 0, "complete"]])
    assert one["rank"].iloc[0] == 3 and str(frame["rank"].dtype) == "Int64"


def test_aggregation_mean_std_n(tree):
    cells = rp.cells(rp.scan_results(tree)[0])
    c = cells[("roberta_base", "sst2", "lora", 8, "", "accuracy")]
    m, s, n = mean_std(SST2_LORA)
    assert (c.n, c.mean, c.std) == (n, pytest.approx(m), pytest.approx(s))
    c = cells[("roberta_base", "sst2", "rocoft_row", 3, "", "accuracy")]
    m, s, n = mean_std(SST2_ROW3)
    assert (c.n, c.mean, c.std) == (3, pytest.approx(m), pytest.approx(s))
    one = cells[("roberta_base", "mrpc", "rocoft_row", 3, "", "f1")]
    assert (one.n, one.std) == (1, 0.0) and one.mean == pytest.approx(100 * MRPC_ROW3[1])
    assert rp.fmt_cell(one) == f"{100 * MRPC_ROW3[1]:.2f} (n=1)"
    llm = cells[("llama2_7b", "boolq", "rocoft_row", 3, "", "accuracy")]
    assert llm.mean == pytest.approx(69.5)          # test split, a format-1 percent: not scaled again
    # the groupby aggregation equals numpy's mean / sample std over the seeds, fractions alongside
    stats = rp.aggregate(rp.shown_rows(rp.scan_results(tree)[0]))
    row = stats[(stats.task == "sst2") & (stats.method == "rocoft_row") & stats["rank"].eq(3).fillna(False)
                & (stats.metric == "accuracy")].iloc[0]
    assert row["mean"] == np.mean(100 * np.asarray(SST2_ROW3)) and row["std"] == np.std(100 * np.asarray(SST2_ROW3), ddof=1)
    assert row.fmean == pytest.approx(np.mean(SST2_ROW3)) and row.n == 3
    g = rp.groups(rp.scan_results(tree)[0]).set_index(["task", "method"]).loc[("rotten_tomatoes", "full_ft")]
    assert (g.n, g.seeds, g.main_metric, g.split, g.method_label) == (3, [0, 1, 2], "accuracy", "test", "Full FT")


SQUAD_V2 = {"exact_match": 80.5, "f1": 83.25, "HasAns_exact": 78.5, "HasAns_f1": 84.25, "HasAns_total": 5928,
            "NoAns_exact": 81.75, "NoAns_f1": 81.75, "NoAns_total": 5945}
LLM = {"accuracy": 69.5, "loglik_acc": 71.0, "loglik_acc_norm": 70.25, "unparseable": 3.0, "examples": 400.0}
ROUGE = {"rouge1": 40.5, "rouge2": 18.25, "rougeL": 33.0, "rougeLsum": 33.5, "gen_words": 21.5}
CLM = {"loss": 3.25, "perplexity": 25.79}


def _fraction(split: dict) -> dict:
    return {k: v if k in UNSCALED else v / 100 for k, v in split.items()}


@pytest.mark.parametrize("task,kind,scores", [("squad_v2", "question_answering", SQUAD_V2),
                                              ("boolq", "instruction", LLM), ("xsum", "summarization", ROUGE),
                                              ("rotten_tomatoes_lm", "causal_lm", CLM)])
def test_format1_percent_files_read_as_format2_fractions(tmp_path, task, kind, scores):
    """The previous version stored SQuAD, ROUGE and LLM-Adapters scores in percent (format 1, no
    "metrics_format" key); this version stores fractions ("metrics_format": 2). Both read the same."""
    old = write_run(tmp_path / "old", "tiny_decoder", task, "lora", 8, 0, {"test": scores}, kind=kind)
    write_run(tmp_path / "new", "tiny_decoder", task, "lora", 8, 0, {"test": _fraction(scores)}, kind=kind,
                    metrics_format=2)
    write_run(tmp_path / "nocfg", "tiny_decoder", task, "lora", 8, 0, {"test": scores}, config=False)
    assert "metrics_format" not in json.loads((old / "metrics.json").read_text())
    read = {}
    for name in ("old", "new", "nocfg"):
        frame, issues = rp.scan_results(tmp_path / name)
        assert issues == []
        read[name] = frame[frame.split == "test"].set_index("metric")
    for name, f in read.items():
        for k, v in scores.items():
            assert f.loc[k, "shown"] == pytest.approx(v), (name, k)          # display: x100 / counts as they are
            assert f.loc[k, "value"] == pytest.approx(v if k in UNSCALED else v / 100), (name, k)
    assert set(read["old"].stored) <= {"percent", ""} and set(read["new"].stored) <= {"fraction", ""}
    assert read["old"].loc[next(iter(scores)), "shown"] == next(iter(scores.values()))   # no round trip


def test_format1_classification_was_already_fractions(tmp_path):
    metrics = {"task": "sst2", "test": {"accuracy": 0.93, "matthews_corr": -0.25, "loss": 0.3}}
    for kind in ("classification", None):
        rows = {m: (u, v, d) for _, m, u, v, d in rp.split_rows(metrics, kind)}
        assert rows["accuracy"] == ("fraction", 0.93, 93.0) and rows["matthews_corr"] == ("fraction", -0.25, -25.0)
        assert rows["loss"] == ("", 0.3, 0.3)
    assert not rp.stored_in_percent(metrics, None)
    # an unknown task without a config: the metric names tell (exact_match, ROUGE, loglik accuracies)
    assert rp.stored_in_percent({"task": "my_qa", "test": {"exact_match": 80.0}}, None)
    assert not rp.stored_in_percent({"task": "my_qa", "metrics_format": 2, "test": {"exact_match": 0.8}}, None)
    assert not rp.stored_in_percent({"task": "my_cls", "test": {"accuracy": 0.8}}, None)
    assert {"loss", "perplexity", "examples", "unparseable", "gen_words", "HasAns_total", "NoAns_total"} <= UNSCALED


def test_labels_from_configs(tmp_path):
    """Display labels: the run's config.yaml, else conf/<group>/<name>.yaml, else the name."""
    write_run(tmp_path, "tiny_encoder", "sst2", "lora", 8, 0, {"validation": {"accuracy": 0.9}},
              labels={"method": "LoRA (mine)", "model": "Tiny"})
    write_run(tmp_path, "tiny_encoder", "sst2", "bitfit", None, 0, {"validation": {"accuracy": 0.8}})
    write_run(tmp_path, "my_model", "sst2", "my_method", None, 0, {"validation": {"accuracy": 0.7}})
    runs = rp.run_table(rp.scan_results(tmp_path)[0]).set_index("method")
    assert runs.loc["lora", ["method_label", "model_label"]].tolist() == ["LoRA (mine)", "Tiny"]
    assert runs.loc["bitfit", ["method_label", "model_label"]].tolist() == ["BitFit", "tiny encoder"]
    assert runs.loc["my_method", ["method_label", "model_label"]].tolist() == ["my_method", "my_model"]
    assert rp.method_label("rocoft_col") == "RoCoFT column" and rp.model_label("llama2_13b") == "LLaMA-2-13B"
    assert rp.setting_label("rocoft_row", 4, "selection=min") == "RoCoFT row r=4 (selection=min)"
    suite = {t.name: t for t in rp.render_suite_table(rp.scan_results(tmp_path)[0])}
    rows = suite["suite_sst2_tiny_encoder"].rows
    assert [r[0] for r in rows] == ["BitFit", "LoRA (mine)"] and suite["suite_sst2_tiny_encoder"].title == \
        "Suite: tiny encoder on sst2"
    assert [r[0] for r in suite["suite_sst2_my_model"].rows] == ["my_method"]


def test_every_method_and_model_config_has_a_label():
    from rocoft.reporting.labels import CONF, conf_entry
    for group in ("method", "model"):
        for path in (CONF / group).glob("*.yaml"):
            entry = conf_entry(group, path.stem)
            if "name" in entry:                   # rocoft_row_r3 etc. inherit name and label via defaults
                assert isinstance(entry.get("label"), str) and entry["label"], path


def test_real_tiny_runs_are_read(tmp_path):
    """Two real (2-step) runs written by rocoft.training.run: the scanner reads the files the suite writes."""
    from conftest import compose_config, small_run_overrides

    from rocoft.runs import run

    written = [run(compose_config(["model=tiny_encoder", "method=rocoft_col", "rank=1", f"seed={seed}",
                                   *small_run_overrides(tmp_path, steps=2, train=32, evals=16)]))
               for seed in (0, 1)]
    frame, issues = rp.scan_results(tmp_path)
    runs = rp.run_table(frame)
    assert issues == [] and len(runs) == 2
    assert set(runs.kind) == {"classification"} and set(runs.variant) == {""}
    cells = rp.cells(frame)
    c = cells[("tiny_encoder", "rotten_tomatoes", "rocoft_col", 1, "", "accuracy")]
    m, s, n = mean_std([w["test"]["accuracy"] for w in written])
    assert (c.n, c.mean, c.std) == (n, pytest.approx(m), pytest.approx(s))
    assert cells[("tiny_encoder", "rotten_tomatoes", "rocoft_col", 1, "", "trainable")].mean == \
        written[0]["params"]["trainable"]
    suite = rp.render_suite_table(frame)[0]
    assert suite.rows[0][:4] == ["RoCoFT column", "1", "2", "0,1"]
    assert isinstance(frame, pd.DataFrame) and set(runs.method_label) == {"RoCoFT column"}


def _suite_row(frame, method):
    table = rp.render_suite_table(frame)[0]
    rows = [dict(zip(table.header, r)) for r in table.rows if r is not None and r[0] == rp.method_label(method)]
    return rows


def test_nan_seed_counts_out_of_n_and_is_marked(tmp_path):
    """A seed whose score is NaN (json's NaN) or null: the mean and std are over the finite seeds, n counts
    those only, and the cell says how many seeds had no number; a cell of NaNs only reads NaN, not '-'."""
    accs = [0.90, math.nan, 0.80]
    for seed, acc in enumerate(accs):
        write_run(tmp_path, "tiny_encoder", "sst2", "lora", 8, seed, {"validation": {"accuracy": acc}})
    for seed in (0, 1):
        write_run(tmp_path, "tiny_encoder", "sst2", "bitfit", None, seed, {"validation": {"accuracy": None}})
    assert "NaN" in (tmp_path / "sst2/tiny_encoder/lora_r8/seed1/metrics.json").read_text()
    frame, issues = rp.scan_results(tmp_path)
    assert issues == []
    (lora,) = _suite_row(frame, "lora")
    assert lora["n"] == "3" and lora["Seeds"] == "0,1,2"          # three runs ...
    assert lora["Accuracy (validation)"].strip("*").endswith("(n=2; 1 NaN)")   # ... the mean of two, said
    (bitfit,) = _suite_row(frame, "bitfit")
    assert bitfit["Accuracy (validation)"] == "NaN (n=0; 2 NaN)"
    c = rp.cells(frame)[("tiny_encoder", "sst2", "lora", 8, "", "accuracy")]
    finite = 100 * np.array([0.90, 0.80])
    assert (c.n, c.n_nan) == (2, 1)
    assert c.mean == pytest.approx(finite.mean()) and c.std == pytest.approx(finite.std(ddof=1))
    assert rp.fmt_cell(c) == f"{finite.mean():.2f} ± {finite.std(ddof=1):.2f} (n=2; 1 NaN)"


def test_swept_setting_folders_are_separate_cells_not_duplicates(tmp_path):
    """Runs of one method that differ in a setting (the lr${train.lr} layout the refusal message recommends)
    are separate cells named by that setting; only the same settings and seed twice is a duplicate. Settings
    that do not change what a run computes (rocoft.utils.NEUTRAL: log_every, output_dir) do not split."""
    accs = {1e-3: [0.81, 0.83], 1e-2: [0.71, 0.75]}
    for lr, values in accs.items():
        for seed, acc in enumerate(values):
            write_run(tmp_path, "tiny_encoder", "sst2", "lora", 8, seed, {"validation": {"accuracy": acc}},
                      train={"lr": lr, "log_every": 1 + seed}, leaf=f"lr{lr}")
    old = write_run(tmp_path, "tiny_encoder", "sst2", "lora", 8, 0, {"validation": {"accuracy": 0.5}},
                    train={"lr": 1e-3}, leaf="lr0.001", subdir="copy")
    os.utime(old / "metrics.json", (1, 1))                                # the older copy of lr=1e-3, seed 0
    frame, issues = rp.scan_results(tmp_path)
    assert [(i.path, i.status) for i in issues] == [(old, "duplicate")]
    cells = rp.cells(frame)
    for lr, values in accs.items():
        m, s, n = mean_std(values)
        c = cells[("tiny_encoder", "sst2", "lora", 8, f"train.lr={lr:g}", "accuracy")]
        assert (c.n, c.mean, c.std) == (n, pytest.approx(m), pytest.approx(s))
    rows = _suite_row(frame, "lora")
    assert sorted(r["Variant"] for r in rows) == ["train.lr=0.001", "train.lr=0.01"]
    assert all(r["n"] == "2" for r in rows)


def test_failed_status_with_metrics_is_used_and_marked(tmp_path):
    """metrics.json is written last, so a run with it finished its evaluation; when status.json says failed
    (an error after that), train.py skips the run as complete: the tables use its numbers, mark its seed with
    † and list it with the error."""
    for seed, acc in enumerate([0.9, 0.8]):
        write_run(tmp_path, "tiny_encoder", "sst2", "lora", 8, seed, {"validation": {"accuracy": acc}})
    failed = tmp_path / "sst2/tiny_encoder/lora_r8/seed1"
    (failed / "status.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: tracker down"}))
    frame, issues = rp.scan_results(tmp_path)
    assert [(i.path, i.status) for i in issues] == [(failed, "warning")]
    assert "failed" in issues[0].detail and "tracker down" in issues[0].detail
    runs = rp.run_table(frame).set_index("seed")
    assert runs.loc[1, "status"] == "failed" and runs.loc[0, "status"] == "complete"
    assert rp.cells(frame)[("tiny_encoder", "sst2", "lora", 8, "", "accuracy")].n == 2
    (lora,) = _suite_row(frame, "lora")
    assert lora["Seeds"] == "0,1†"


def test_folders_killed_at_startup_are_unfinished(tmp_path):
    """A process killed while it starts leaves Hydra's folder only (.hydra/ and train.log): listed as
    unfinished. A multirun's Hydra job folder whose run lives elsewhere (output_dir=...lr${train.lr}/seed${seed})
    is not a run: silent when that run directory exists, unfinished (naming it) when it was never created."""
    single = tmp_path / "sst2/tiny_encoder/lora_r8/seed0"
    write_killed_at_startup(single, {"seed": 0, "output_dir": str(single)}, cwd=tmp_path)
    layout = "${results_dir}/${task.name}/${model.name}/${method.tag}/lr${train.lr}/seed${seed}"
    base = {"results_dir": "results", "task": {"name": "sst2"}, "model": {"name": "tiny_encoder"},
            "method": {"tag": "lora_r8"}, "train": {"lr": 0.005}, "output_dir": layout}
    done = write_run(tmp_path / "results", "tiny_encoder", "sst2", "lora", 8, 1, {"validation": {"accuracy": 0.9}},
                     leaf="lr0.005")
    write_killed_at_startup(tmp_path / "results/sst2/tiny_encoder/lora_r8/seed1", {**base, "seed": 1}, cwd=tmp_path)
    write_killed_at_startup(tmp_path / "results/sst2/tiny_encoder/lora_r8/seed2", {**base, "seed": 2}, cwd=tmp_path)
    frame, issues = rp.scan_results(tmp_path)
    assert rp.run_table(frame).run.tolist() == [str(done)]
    found = {i.path.relative_to(tmp_path).as_posix(): i for i in issues}
    assert set(found) == {"sst2/tiny_encoder/lora_r8/seed0", "results/sst2/tiny_encoder/lora_r8/seed2"}
    assert all(i.status == "unfinished" for i in issues)
    assert "killed at start-up" in found["sst2/tiny_encoder/lora_r8/seed0"].detail
    assert str(tmp_path / "results/sst2/tiny_encoder/lora_r8/lr0.005/seed2") in \
        found["results/sst2/tiny_encoder/lora_r8/seed2"].detail


def test_real_lr_sweep_in_the_recommended_layout(tmp_path):
    """Real (2-step) runs in the layout train.py's refusal message recommends for a swept setting: one cell
    per learning rate, named by it; their config.yaml differ in nothing else but the seed and output_dir."""
    from conftest import compose_config, small_run_overrides

    from rocoft.runs import run

    layout = "output_dir=${results_dir}/${task.name}/${model.name}/${method.tag}/lr${train.lr}/seed${seed}"
    written = {(lr, seed): run(compose_config(["model=tiny_encoder", "method=rocoft_col", "rank=1", f"seed={seed}",
                                               f"train.lr={lr}", layout,
                                               *small_run_overrides(tmp_path, steps=2, train=32, evals=16)]))
               for lr in (0.001, 0.05) for seed in (0, 1)}
    assert (tmp_path / "rotten_tomatoes/tiny_encoder/rocoft_col_r1/lr0.05/seed1/metrics.json").is_file()
    frame, issues = rp.scan_results(tmp_path)
    assert issues == []
    cells = rp.cells(frame)
    assert {k[4] for k in cells} == {"train.lr=0.001", "train.lr=0.05"}
    for lr in (0.001, 0.05):
        c = cells[("tiny_encoder", "rotten_tomatoes", "rocoft_col", 1, f"train.lr={lr:g}", "accuracy")]
        m, s, n = mean_std([written[(lr, seed)]["test"]["accuracy"] for seed in (0, 1)])
        assert (c.n, c.mean, c.std) == (n, pytest.approx(m), pytest.approx(s))


def test_runs_put_aside_by_a_fresh_start_are_not_read(tmp_path):
    """A forced re-run keeps the run it replaces in <run>/.previous_run (or .replaced_run) until it ends: that
    metrics.json is not a second run (nor a duplicate) of the cell."""
    run = write_run(tmp_path, "tiny_encoder", "sst2", "lora", 8, 0, {"validation": {"accuracy": 0.9}})
    write_run(run / ".previous_run", "tiny_encoder", "sst2", "lora", 8, 0, {"validation": {"accuracy": 0.5}})
    frame, issues = rp.scan_results(tmp_path)
    assert issues == []
    assert set(frame.run) == {str(run)}
    assert frame[(frame.split == "validation") & (frame.metric == "accuracy")].value.tolist() == [0.9]
