"""Experiments expand to the paper's grids; sweeps survive failed points and skip finished ones."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF, ROOT

EXPECTED_JOBS = {
    "table1": 8 * (15 + 9) * 3, "table6": 8 * (15 + 6) * 3, "table2": 4 * 13 * 5, "table7": 2 * 10,
    "table7_summarization": 2 * 10, "table8": 3 * 5, "table11": 2 * 8, "table12": 4 * 13, "fig2": 13,
    "fig4": 4 * 2 * 4, "mini_table": 2 * 12 * 3,
    # Section 5: eNTK runs (scripts/ntk.py, config conf/ntk.yaml) and prompt-based fine-tuning (train.py)
    "table4_ntk": 12 * 2 * 5, "table5_ntk": 13 * 5, "table13_ntk": 13 * 5, "table4_ft": 12 * 2 * 5,
}


def sweep_params(experiment):
    GlobalHydra.instance().clear()
    name = "ntk" if experiment.endswith("_ntk") else "config"  # the entry point the experiment is for
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"+experiment={experiment}"], return_hydra_config=True)
    return cfg, dict(cfg.hydra.sweeper.params)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_experiment_composes_and_expands_to_the_grid(experiment):
    cfg, params = sweep_params(experiment)
    jobs = math.prod(len(str(v).split(",")) for v in params.values())
    assert jobs == EXPECTED_JOBS[experiment]
    for key, values in params.items():  # every swept option exists
        if key in ("task", "model", "method"):
            for option in str(values).split(","):
                assert (CONF / key / f"{option}.yaml").is_file(), f"{experiment}: no {key}={option}"


def test_every_experiment_point_composes():
    """Compose each grid point of the small experiments, as the launcher would."""
    for experiment in ("table8", "fig4", "table7", "table5_ntk", "table4_ft"):
        _, params = sweep_params(experiment)
        first = {k: str(v).split(",")[0] for k, v in params.items()}
        last = {k: str(v).split(",")[-1] for k, v in params.items()}
        for point in (first, last):
            GlobalHydra.instance().clear()
            with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
                cfg = compose(config_name="ntk" if experiment.endswith("_ntk") else "config",
                              overrides=[f"+experiment={experiment}"] + [f"{k}={v}" for k, v in point.items()])
                assert cfg.task.name == point.get("task", cfg.task.name)


def tiny_sweep(tmp_path, *grid, launcher=None):
    cmd = [sys.executable, "train.py", "-m", "model=tiny_encoder", "train.max_steps=2", "data.max_train_samples=48",
           "data.max_eval_samples=24", "train.batch_size=16", f"results_dir={tmp_path}", "device=cpu", *grid]
    if launcher:
        cmd.append(f"hydra/launcher={launcher}")
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_failed_point_does_not_stop_the_sweep_and_relaunch_skips_finished(tmp_path):
    out = tiny_sweep(tmp_path, "rank=1000,2")
    assert out.returncode == 0, out.stderr[-2000:]
    failed = tmp_path / "rotten_tomatoes" / "tiny_encoder" / "rocoft_row_r1000" / "seed0"
    done = tmp_path / "rotten_tomatoes" / "tiny_encoder" / "rocoft_row_r2" / "seed0"
    status = json.loads((failed / "status.json").read_text())
    assert status["status"] == "failed" and "rank 1000 exceeds" in status["error"]
    assert not (failed / "metrics.json").exists()
    assert json.loads((done / "status.json").read_text())["status"] == "complete"
    stamp = (done / "metrics.json").stat().st_mtime_ns
    again = tiny_sweep(tmp_path, "rank=1000,2")
    assert "is complete: skipping" in again.stdout and (done / "metrics.json").stat().st_mtime_ns == stamp
    forced = tiny_sweep(tmp_path, "rank=2", "force=true")
    assert forced.returncode == 0 and (done / "metrics.json").stat().st_mtime_ns != stamp


def test_submitit_local_launcher_runs_a_tiny_grid(tmp_path):
    out = tiny_sweep(tmp_path, "method=rocoft_row,bitfit", "seed=0,1", launcher="local_jobs")
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("metrics.json"))
    assert runs == [f"rotten_tomatoes/tiny_encoder/{m}/seed{s}" for m in ("bitfit", "rocoft_row_r3") for s in (0, 1)]
    assert list(tmp_path.glob(".submitit/*"))  # the jobs went through submitit
    tables = subprocess.run([sys.executable, "scripts/tables.py", "--results", str(tmp_path), "--table", "suite",
                             "--out", str(tmp_path / "tables"), "--no-plots", "--quiet"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert tables.returncode == 0, tables.stderr[-2000:]
    table = (tmp_path / "tables" / "suite.md").read_text()
    for method, label in (("rocoft_row_r3", "RoCoFT row"), ("bitfit", "BitFit")):
        accs = [100 * json.loads((tmp_path / "rotten_tomatoes" / "tiny_encoder" / method / f"seed{s}" /
                                  "metrics.json").read_text())["test"]["accuracy"] for s in (0, 1)]
        row = next(line for line in table.splitlines() if line.startswith(f"| {label} "))
        cells = [c.strip().strip("*") for c in row.split("|")]
        assert cells[3] == "2"  # n seeds
        mean, std = float(np.mean(accs)), float(np.std(accs, ddof=1))
        assert f"{mean:.2f}" in row and (std == 0 or f"{std:.2f}" in row), row
