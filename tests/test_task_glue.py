"""GLUE tasks and the generic text_classification task on small files in the official formats."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import compose_config, small_run_overrides
from rocoft.errors import UserError
from rocoft.runs import run

WORDS = "good bad great awful fine poor nice dull".split()
# task -> (text columns, label kind, metric keys of the paper's Table 1)
GLUE = {
    "cola": (["sentence"], 2, {"matthews_corr", "accuracy"}),
    "sst2": (["sentence"], 2, {"accuracy"}),
    "mrpc": (["sentence1", "sentence2"], 2, {"accuracy", "f1"}),
    "stsb": (["sentence1", "sentence2"], 1, {"pearson", "spearman"}),
    "qqp": (["question1", "question2"], 2, {"accuracy", "f1"}),
    "mnli": (["premise", "hypothesis"], 3, {"accuracy"}),
    "qnli": (["question", "sentence"], 2, {"accuracy"}),
    "rte": (["sentence1", "sentence2"], 2, {"accuracy"}),
}


def glue_rows(columns, n_labels, n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {c: " ".join(rng.choice(WORDS, 6)) for c in columns}
        row["label"] = round(float(rng.uniform(0, 5)), 3) if n_labels == 1 else int(rng.integers(n_labels))
        row["idx"] = i
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("task", sorted(GLUE))
def test_glue_pipeline_on_official_columns(tmp_path, task):
    columns, n_labels, metric_keys = GLUE[task]
    cfg = compose_config([f"task={task}"])
    files = {"train": tmp_path / "train.tsv"}
    glue_rows(columns, n_labels, 48, 0).to_csv(files["train"], sep="\t", index=False)
    for i, split in enumerate(cfg.task.eval_splits):
        files[split] = tmp_path / f"{split}.tsv"
        glue_rows(columns, n_labels, 20, i + 1).to_csv(files[split], sep="\t", index=False)
    overrides = small_run_overrides(tmp_path / "runs", steps=2) + [
        "model=tiny_encoder", f"task={task}", *[f"++task.data_files.{s}={p}" for s, p in files.items()],
        "data.max_length=128"]  # GLUE's protocol length (512) is above the tiny model's 128 positions: refused
    metrics = run(compose_config(overrides))
    assert metrics["eval_splits"] == list(cfg.task.eval_splits)
    for split in cfg.task.eval_splits:
        assert set(metrics[split]) == metric_keys
        for key, value in metrics[split].items():
            assert np.isfinite(value) or key in ("pearson", "spearman", "matthews_corr")
    assert metrics["main_metric"] == cfg.task.main_metric
    if task == "mnli":
        assert {"validation_matched", "validation_mismatched"} <= set(metrics)


def test_glue_configs_carry_table10_hyperparameters():
    cfg = compose_config(["task=cola", "method=rocoft_row"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.weight_decay) == (2e-4, 20, 32, 0.1)
    assert cfg.method.selection == "min" and cfg.method.bias == "rocoft_only" and cfg.dropout == 0.1
    mnli = compose_config(["task=mnli", "method=rocoft_col"])
    assert (mnli.train.lr, mnli.train.epochs, mnli.train.batch_size, mnli.train.weight_decay) == (1e-3, 2, 16, 0.001)
    assert mnli.method.selection == "random" and mnli.method.bias == "none"
    lora = compose_config(["task=cola", "method=lora"])  # Table 10's lr is RoCoFT's: other methods keep theirs
    assert lora.train.lr == lora.method.lr and lora.train.epochs == 20


def test_hub_only_task_offline_without_files_is_one_clear_error(tmp_path):
    with pytest.raises(UserError) as err:
        run(compose_config(small_run_overrides(tmp_path) + ["model=tiny_encoder", "task=rte"]))
    msg = str(err.value)
    assert "nyu-mll/glue" in msg and "task.data_files.train=" in msg and "sentence1" in msg


def test_text_classification_with_label_names_inferred(tmp_path):
    rows = [{"review": f"{w} film {i}", "sentiment": "pos" if w in ("good", "great", "nice", "fine") else "neg"}
            for i, w in enumerate(WORDS * 8)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = small_run_overrides(tmp_path / "runs", steps=2) + [
        "model=tiny_encoder", "task=text_classification", f"++task.data_files.train={path}",
        "task.text_fields=[review]", "task.label_field=sentiment"]
    metrics = run(compose_config(overrides))
    assert set(metrics["test"]) == {"accuracy", "f1"} and metrics["params"]["trainable"] > 0
    bad = tmp_path / "bad_test.csv"
    pd.DataFrame([{"review": "x", "sentiment": "meh"}]).to_csv(bad, index=False)
    with pytest.raises(UserError, match="outside the label set"):
        run(compose_config([o.replace(str(tmp_path / "runs"), str(tmp_path / "runs_bad")) for o in overrides]
                           + [f"++task.data_files.test={bad}"]))  # its own directory: other settings


def test_regression_target_must_be_numeric(tmp_path):
    train = glue_rows(["sentence1", "sentence2"], 1, 40, 0)
    train["label"] = train["label"].astype(object)
    train.loc[3, "label"] = "high"
    path = tmp_path / "train.tsv"
    train.to_csv(path, sep="\t", index=False)
    with pytest.raises(UserError, match="not a number"):
        run(compose_config(small_run_overrides(tmp_path) + ["model=tiny_encoder", "task=stsb",
                                                             f"++task.data_files.train={path}",
                                                             f"++task.data_files.validation={path}"]))
