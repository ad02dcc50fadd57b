"""scripts/ntk.py end to end (tiny random-init masked and causal LMs, a hand-made MR file), kernel reuse, and
the paper's Tables 4 / 5 rendered from such runs."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF, ROOT
from rocoft.models import build_model, load_tokenizer
from rocoft.ntk import brute_force_kernel, causal_lm_logits, masked_lm_logits, rocoft_set
from rocoft.ntk.experiment import execute
from rocoft.ntk.solvers import reference_logistic
from rocoft.tasks import build_task

POS = ["great fun", "a wonderful film", "moving and smart", "brilliant acting", "a joy to watch", "superb story"]
NEG = ["dull and slow", "a boring mess", "badly acted", "tedious plot", "a waste of time", "flat and lifeless"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """LM-BFF's MR layout (header-less label,text CSVs): 16 train and 8 test rows, texts of different lengths."""
    folder = tmp_path_factory.mktemp("mr")
    for name, n in (("train.csv", 16), ("test.csv", 8)):
        with open(folder / name, "w", newline="") as f:
            csv.writer(f).writerows((i % 2, f"{(POS if i % 2 else NEG)[i % 6]}{' indeed' * (i % 3)} take {i}")
                                    for i in range(n))
    return folder


def overrides(data, results, model, *extra):
    return [f"model={model}", "task=mr_prompt", "k=5", "seed=13", f"results_dir={results}", "batch_size=3",
            f"task.data_files.train={data / 'train.csv'}", f"task.data_files.test={data / 'test.csv'}", *extra]


def ntk_config(overrides_):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="ntk", overrides=list(overrides_))


def run_dir(cfg):
    return ROOT / str(cfg.output_dir)  # absolute in the tests (results_dir=tmp_path)


def brute_force_check(cfg, metrics, set_name="rows"):
    """The run's kernels and accuracy of one set against explicit per-example gradients on the same prompts
    (one example per batch: no padding) and the solver called directly."""
    task = build_task(cfg.task, cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    splits = task.load()
    prompts = {s: task.prompts(splits[s], tokenizer, int(cfg.data.max_length), task.kind) for s in ("train", "test")}
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, task.kind, tokenizer=tokenizer).eval()
    fn = (masked_lm_logits if task.kind == "masked_lm" else causal_lm_logits)(model, prompts["train"].label_word_ids)
    key = "mask_pos" if task.kind == "masked_lm" else "target_pos"
    singles = {s: [{"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                    key: torch.tensor([pos])} for ids, pos in zip(p.input_ids, p.positions)]
               for s, p in prompts.items()}
    pset = rocoft_set(model, "row" if set_name == "rows" else "column", int(cfg.rank), seed=int(cfg.seed),
                      target_modules=list(cfg.model.target_modules))
    k_train = brute_force_kernel(model, fn, pset, singles["train"])
    k_test = brute_force_kernel(model, fn, pset, singles["train"], singles["test"])
    stored = torch.load(run_dir(cfg) / "kernels" / f"{set_name}.pt", weights_only=True)["kernels"]
    scale = k_train.abs().max()
    assert (stored["train"] - k_train).abs().max() <= 1e-4 * scale
    assert (stored["test"] - k_test).abs().max() <= 1e-4 * scale
    direct = reference_logistic(k_train, prompts["train"].labels, k_test, prompts["test"].labels)
    assert metrics["accuracy"][set_name]["reference"]["accuracy"] == direct.accuracy
    assert metrics["n_train"] == 10 and metrics["n_test"] == 8


def test_ntk_script_end_to_end_masked_lm(data, tmp_path):
    """Through the command line: metrics.json with the rows kernel and KLR accuracy of a brute-force kernel."""
    args = overrides(data, tmp_path, "tiny_encoder", "sets=[full,rows,cols,lora,groups]")
    proc = subprocess.run([sys.executable, "scripts/ntk.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = ntk_config(args)
    metrics = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert json.loads((run_dir(cfg) / "status.json").read_text())["status"] == "complete"
    brute_force_check(cfg, metrics, "rows")
    # every subset's relative differences against the full kernel, recomputed from the stored kernels
    full = torch.load(run_dir(cfg) / "kernels" / "full.pt", weights_only=True)["kernels"]["train"].flatten()
    sub = torch.load(run_dir(cfg) / "kernels" / "cols.pt", weights_only=True)["kernels"]["train"].flatten()
    for p in (1, 2):
        want = float(torch.linalg.vector_norm(sub / sub.norm(p) - full / full.norm(p), p))
        assert metrics["relative_difference"]["cols"][f"l{p}"] == pytest.approx(want, rel=1e-9)
    # the group kernels add up to the full one; the counts are the model's parameters
    groups = [n for n in metrics["params"] if n.startswith("group_")]
    total = sum(torch.load(run_dir(cfg) / "kernels" / f"{g}.pt", weights_only=True)["kernels"]["train"]
                for g in groups)
    assert torch.allclose(total.flatten(), full, rtol=1e-6, atol=1e-6 * full.abs().max())
    assert sum(metrics["params"][g]["total"] for g in groups) == metrics["params"]["full"]["total"]
    assert metrics["sets"]["rows"] == {"method": "ntk_rocoft_row", "rank": 1}
    assert len(metrics["eigenvalues"]["full"]) == 20  # N * C = 10 x 2 (fewer than the 64 kept)


def test_ntk_causal_lm_and_kernel_reuse(data, tmp_path):
    """In process on a causal LM: the cols kernel against brute force; a forced re-run reuses every kernel file;
    a changed input (a different test set) recomputes them."""
    args = overrides(data, tmp_path, "tiny_decoder", "sets=[full,cols]", "solvers=[reference,klr]")
    cfg = ntk_config(args)
    execute(cfg)
    metrics = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert metrics["head"] == "causal_lm" and metrics["kernels_reused"] == {"full": False, "cols": False}
    brute_force_check(cfg, metrics, "cols")
    stamp = (run_dir(cfg) / "kernels" / "cols.pt").stat().st_mtime_ns
    execute(ntk_config(args + ["force=true"]))
    again = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert again["kernels_reused"] == {"full": True, "cols": True}
    assert again["accuracy"] == metrics["accuracy"]
    assert (run_dir(cfg) / "kernels" / "cols.pt").stat().st_mtime_ns == stamp
    execute(ntk_config(args + ["force=true", "max_test=5"]))
    changed = json.loads((run_dir(cfg) / "metrics.json").read_text())
    assert changed["kernels_reused"] == {"full": False, "cols": False} and changed["n_test"] == 5


def test_bad_ntk_setting_is_one_message_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/ntk.py", "model=tiny_encoder", "task=mr_prompt",
                           "sets=[full,bogus]", "k=3", f"results_dir={tmp_path}/r"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "sets=['full', 'bogus']" in proc.stderr and "k=3" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_bad_ntk_setting_in_a_sweep_is_recorded_and_returns_none(data, tmp_path):
    """A sweep's point with a bad setting: None (the others go on), its status.json says why; nothing else."""
    cfg = ntk_config(overrides(data, tmp_path, "tiny_encoder", "k=3"))  # the reference solver needs k >= 5
    assert execute(cfg, multirun=True) is None
    status = json.loads((run_dir(cfg) / "status.json").read_text())
    assert status["status"] == "failed" and status["kind"] == "user_error" and "k=3" in status["error"]
    assert sorted(p.name for p in run_dir(cfg).iterdir()) == ["status.json"]


def test_sigterm_stops_an_ntk_run_at_once_and_a_rerun_completes(data, tmp_path):
    """A real SIGTERM to scripts/ntk.py once its status.json says running: exit code 128 + 15, status preempted
    (no traceback, no metrics.json); the same command again completes. 400 test rows one at a time: the run
    takes far longer than the signal needs to arrive, on any machine."""
    big = tmp_path / "big"
    big.mkdir()
    (big / "train.csv").write_text((data / "train.csv").read_text())
    (big / "test.csv").write_text("".join(f"{i % 2},{'a fine film' if i % 2 else 'a dull film'} take {i}\n"
                                          for i in range(400)))
    args = overrides(big, tmp_path, "tiny_encoder", "sets=[full,rows]", "batch_size=1")
    cmd = [sys.executable, "scripts/ntk.py", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    status_file = run_dir(ntk_config(args)) / "status.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline, status = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None and status != "running":
        time.sleep(0.02)
        try:
            status = json.loads(status_file.read_text())["status"]
        except (OSError, ValueError, KeyError):
            pass
    assert status == "running", f"the run never said running (exit code {proc.poll()})"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = json.loads(status_file.read_text())
    assert stopped["status"] == "preempted" and stopped["signal"] == "SIGTERM" and stopped["step"] is None
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    assert not (status_file.parent / "metrics.json").exists()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(status_file.read_text())["status"] == "complete"
    assert set(json.loads((status_file.parent / "metrics.json").read_text())["accuracy"]) == {"full", "rows"}


def test_tables_4_and_5_from_ntk_runs(data, tmp_path):
    """Two seeds of eNTK runs and a prompt fine-tuning run's metrics, scanned and rendered in Tables 4 / 5: each
    suite cell is numpy's mean and sample std over the seeds' metrics.json values."""
    import rocoft.reporting as rp
    from rocoft.reporting.figures import plot_kernels, plot_spectra

    seeds = (13, 21)
    for seed in seeds:
        execute(ntk_config(overrides(data, tmp_path, "tiny_encoder", "sets=[full,rows,cols,lora]", f"seed={seed}")))
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.rglob("metrics.json"))]
    assert sorted(m["seed"] for m in runs) == list(seeds)
    raw = pd.read_csv(ROOT / "rocoft" / "paper_numbers.csv", dtype=str, keep_default_na=False)
    csv_path = tmp_path / "paper.csv"
    raw = raw[raw.table.isin(["4", "5"]) & raw.variant.eq("k=16")]  # these runs: tiny_encoder, k=5
    raw.assign(model="tiny_encoder", variant="k=5").to_csv(csv_path, index=False)
    paper = rp.load_paper_numbers(csv_path)
    frame, issues = rp.scan_results(tmp_path)
    assert not [i for i in issues if i.status != "warning"], issues
    t4, t5 = rp.render_paper_table(4, paper, frame).frame, rp.render_paper_table(5, paper, frame).frame
    for table, method, rank, metric, get, scale in (
            (t4, "ntk_rocoft_col", 1, "few_shot_accuracy", lambda m: m["accuracy"]["cols"]["reference"]["accuracy"],
             100),
            (t4, "ntk_lora", None, "few_shot_accuracy", lambda m: m["accuracy"]["lora"]["reference"]["accuracy"], 100),
            (t5, "ntk_rocoft_row", 1, "kernel_rel_diff_l2", lambda m: m["relative_difference"]["rows"]["l2"], 1),
            (t5, "ntk_lora", None, "kernel_rel_diff_l1", lambda m: m["relative_difference"]["lora"]["l1"], 1)):
        values = np.array([get(m) for m in sorted(runs, key=lambda m: m["seed"])]) * scale
        cell = table[(table.task == "mr") & (table.method == method) & (table.metric == metric)
                     & (table.variant == "k=5")].iloc[0]
        assert cell.suite_n == 2 and cell.suite_mean == pytest.approx(values.mean())
        assert cell.suite_std == pytest.approx(values.std(ddof=1))
        assert cell["rank"] == rank or (rank is None and pd.isna(cell["rank"]))
    assert t4[(t4.task == "sst2")].suite_n.isna().all()       # not run: no suite number
    # --as-model: the same runs in the cells of another model of the paper's table (here a relabelled copy)
    raw.assign(model="roberta_base", variant="k=5").to_csv(csv_path, index=False)
    other = rp.load_paper_numbers(csv_path)
    values = np.array([m["relative_difference"]["rows"]["l2"] for m in sorted(runs, key=lambda m: m["seed"])])
    for as_model, want in (({}, None), ({"tiny_encoder": "roberta_base"}, values.mean())):
        report = rp.build_report(tmp_path, tmp_path / "as", tables=["5"], formats=("csv",), plots=False,
                                 paper=other, as_model=as_model)
        long = pd.read_csv(tmp_path / "as" / "table5.csv")
        cell = long[(long.task == "mr") & (long.method == "ntk_rocoft_row")
                    & (long.metric == "kernel_rel_diff_l2")].iloc[0]
        assert cell.model == "roberta_base"
        assert (np.isnan(cell.suite_mean) if want is None else cell.suite_mean == pytest.approx(want))
        assert ("Suite cells of RoBERTa-base: the suite's runs of" in report["markdown"]) == bool(as_model)
    written, notes = plot_kernels(frame, tmp_path / "fig")
    assert [p.name for p in written] == ["ntk_kernels_tiny_encoder_mr_k5.png", "ntk_kernels_tiny_encoder_mr_k5.pdf"]
    written, notes = plot_spectra(frame, tmp_path / "fig")
    assert written and not notes


def test_ntk_sweep_from_the_command_line_runs_every_point_and_skips_complete_ones(data, tmp_path):
    """`scripts/ntk.py -m seed=13,21` as a user types it: one complete run per seed (its own k-shot split), and
    the same sweep again skips both without touching them."""
    args = [a for a in overrides(data, tmp_path, "tiny_decoder", "sets=[full,rows]") if not a.startswith("seed=")]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "scripts/ntk.py", "-m", *args, "seed=13,21"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stamps, splits = {}, {}
    for seed in (13, 21):
        folder = tmp_path / "mr_prompt" / "tiny_decoder" / "k5" / f"seed{seed}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert json.loads((folder / "status.json").read_text())["status"] == "complete"
        assert metrics["seed"] == seed and set(metrics["accuracy"]) == {"full", "rows"}
        stamps[seed] = (folder / "metrics.json").stat().st_mtime_ns
        splits[seed] = torch.load(folder / "kernels" / "full.pt", weights_only=True)["kernels"]["train"]
    assert not torch.equal(splits[13], splits[21])  # another seed, another k-shot split
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is complete: skipping") == 2, again.stdout[-2000:]
    for seed in (13, 21):
        assert (tmp_path / "mr_prompt" / "tiny_decoder" / "k5" / f"seed{seed}" / "metrics.json").stat().st_mtime_ns \
            == stamps[seed]
