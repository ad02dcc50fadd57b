"""A fake results tree for the reporting tests: run directories as train.py writes them (metrics.json with
the same keys, a resolved config.yaml), plus broken ones."""

import json
from pathlib import Path

import numpy as np
import yaml

KINDS = {"boolq": "instruction", "squad": "question_answering"}


def write_run(root, model, task, method, rank, seed, split_metrics, *, selection=None, task_selection=None,
              p=None, trainable=1000, without_head=100, additional=0, train_time=10.0, memory=500.0,
              subdir="", main_metric=None, metrics_format=None, labels=None, config=True, kind=None,
              train=None, leaf=""):
    """One run directory. ``metrics_format=None`` writes a format-1 file (the previous version's: no
    "metrics_format" key); ``labels`` = {"method": ..., "model": ...} as a new run's config.yaml carries them;
    ``train`` = the config's train settings (e.g. {"lr": 1e-3}); ``leaf`` = a folder between the method tag
    and ``seed<N>`` (the ``lr${train.lr}`` layout of a swept setting)."""
    tag = method if rank is None else f"{method}_r{rank}"
    if p is not None:
        tag = f"{method}_p{p}"
    run_dir = Path(root) / subdir / task / model / tag / leaf / f"seed{seed}"
    run_dir.mkdir(parents=True)
    kind = kind or KINDS.get(task, "classification")
    method_cfg = {"name": method, "kind": "rocoft" if method.startswith("rocoft") else "peft", "tag": tag,
                  "rank": rank, "lr": 5e-3}
    model_cfg = {"name": model}
    if labels:
        method_cfg["label"], model_cfg["label"] = labels.get("method"), labels.get("model")
    if selection is not None:
        method_cfg["selection"] = selection
    if p is not None:
        method_cfg["p"] = p
    first_metric = next(iter(next(iter(split_metrics.values()))))
    task_cfg = {"name": task, "kind": kind, "main_metric": main_metric or first_metric}
    if task_selection is not None:
        task_cfg["rocoft"] = {"bias": "none", "selection": task_selection}
    if config:
        cfg = {"model": model_cfg, "task": task_cfg, "method": method_cfg, "rank": rank, "seed": seed,
               "output_dir": str(run_dir), "train": {"lr": 5e-3, "log_every": 1, **(train or {})}}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "train.log").write_text("")
    metrics = {"model": model, "task": task, "method": method, "rank": rank, "seed": seed,
               "main_metric": task_cfg["main_metric"], **split_metrics, "eval_splits": list(split_metrics),
               "validation_history": [],
               "params": {"trainable": trainable, "trainable_without_head": without_head, "total": 10**6,
                          "additional": additional, "trainable_percent": 100 * trainable / 10**6},
               "steps": 10, "train_examples": 64, "wall_time_s": train_time + 2, "train_time_s": train_time,
               "peak_memory_mb": memory, "peak_memory_kind": "cpu_max_rss", "device": "cpu", "num_processes": 1,
               "mixed_precision": "no", "git": {"commit": None, "dirty": None}, "versions": {}}
    if metrics_format is not None:
        metrics["metrics_format"] = metrics_format
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run_dir


def write_killed_at_startup(job_dir, cfg: dict, cwd) -> Path:
    """A Hydra job folder of a process killed while it started (before the run wrote config.yaml): what
    Hydra writes first, ``.hydra/{config,hydra,overrides}.yaml`` (``config.yaml`` unresolved: ``output_dir``
    may be an interpolation, relative to ``hydra.runtime.cwd``) and an empty ``train.log``."""
    job_dir = Path(job_dir)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(
        {"hydra": {"mode": "MULTIRUN", "runtime": {"cwd": str(cwd), "output_dir": str(job_dir)}}}))
    (job_dir / ".hydra" / "overrides.yaml").write_text("[]\n")
    (job_dir / "train.log").write_text("")
    return job_dir


SST2_LORA = [0.9350, 0.9420]                    # 2 seeds: LoRA r=8, RoBERTa-base SST-2
SST2_ROW3 = [0.9450, 0.9480, 0.9510]            # 3 seeds: RoCoFT rows r=3
MRPC_ROW3 = (0.8900, 0.9050)                    # 1 seed: accuracy, f1
RT = {"rocoft_row": [0.78, 0.80, 0.79], "full_ft": [0.84, 0.85, 0.83]}
N_RUNS = 2 + 3 + 1 + 2 + 1 + 8 + 1 + 1 + 6


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
    # Table 2 (LLM): a format-1 file (the previous version stored LLM accuracies x100)
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


def mean_std(values):
    arr = 100 * np.asarray(values, dtype=float)
    return arr.mean(), (arr.std(ddof=1) if len(arr) > 1 else 0.0), len(arr)


def row_of(rendered, label_start):
    rows = [r for r in rendered.rows if r is not None and any(str(c).startswith(label_start) for c in r[:2])]
    assert rows, label_start
    return rows[0], rendered.header
