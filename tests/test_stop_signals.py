"""A stop signal (SIGTERM) or Ctrl-C (SIGINT) at any stage of a real run leaves a true status.json and, once
training started, a checkpoint of the latest step; real subprocesses, real signals, sent when the run
prints that it enters a stage (each stage is made long enough with real work: a large data file, a
larger model, a large evaluation split)."""

import json
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT

RUN = ("text_classification", "tiny_encoder", "rocoft_row_r3", "seed0")


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """60,000 short reviews: reading, splitting and tokenising them takes seconds."""
    rng = random.Random(0)
    words = "good bad movie plot actor scene boring great awful fine".split()
    path = tmp_path_factory.mktemp("data") / "train.csv"
    pd.DataFrame({"text": [" ".join(rng.choices(words, k=20)) for _ in range(60_000)],
                  "label": [i % 2 for i in range(60_000)]}).to_csv(path, index=False)
    return path


def start(results, data, *args):
    cmd = [sys.executable, "train.py", f"results_dir={results}", "model=tiny_encoder", "device=cpu",
           "task=text_classification", f"task.data_files.train={data}", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_at(proc, marker: str, signum, after_lines: int = 0):
    """Send ``signum`` once the run printed ``marker`` (and ``after_lines`` more lines); its stdout, stderr."""
    seen, lines = None, []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if seen is None and line.strip() == marker:
            seen = len(lines)
        if seen is not None and len(lines) - seen >= after_lines:
            proc.send_signal(signum)
            break
    out, err = proc.communicate(timeout=300)
    assert seen is not None, "".join(lines) + out + err
    return "".join(lines) + out, err


def status_of(results):
    return json.loads(results.joinpath(*RUN, "status.json").read_text())


def test_sigterm_during_data_preparation(tmp_path, big_csv):
    proc = start(tmp_path, big_csv, "train.max_steps=2", "data.max_eval_samples=50")
    out, err = signal_at(proc, "[data preparation]", signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    status = status_of(tmp_path)
    assert status["status"] == "preempted" and status["stage"] == "data preparation" and status["step"] is None
    assert "Traceback" not in err and "during data preparation, before any checkpoint" in err
    assert not tmp_path.joinpath(*RUN, "checkpoints").exists() and "[model loading]" not in out


def test_sigterm_during_model_loading(tmp_path, big_csv):
    big = ["model.config.hidden_size=768", "model.config.num_hidden_layers=12", "model.config.num_attention_heads=12",
           "model.config.intermediate_size=3072"]  # BERT-base's size, random: seconds to initialise
    proc = start(tmp_path, big_csv, "train.max_steps=2", "data.max_train_samples=64", "data.max_eval_samples=16", *big)
    out, err = signal_at(proc, "[model loading]", signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    status = status_of(tmp_path)
    assert status["status"] == "preempted" and status["stage"] == "model loading" and status["step"] is None
    assert "Traceback" not in err and "[training]" not in out


def test_sigterm_during_final_evaluation_checkpoints_the_last_step_then_resumes(tmp_path, big_csv):
    args = ["train.max_steps=5", "train.checkpoint_every=0", "data.max_train_samples=64", "train.batch_size=8",
            "train.eval_batch_size=4"]  # 6,000 validation and test examples each, 4 at a time: seconds
    proc = start(tmp_path, big_csv, *args)
    out, err = signal_at(proc, "[final evaluation]", signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    run_dir = tmp_path.joinpath(*RUN)
    status = status_of(tmp_path)
    assert status["status"] == "preempted" and status["stage"] == "final evaluation" and status["step"] == 5
    assert (run_dir / "checkpoints" / "step_5" / "state.json").is_file() and not (run_dir / "metrics.json").exists()
    again = subprocess.run([sys.executable, "train.py", f"results_dir={tmp_path}", "model=tiny_encoder", "device=cpu",
                            "task=text_classification", f"task.data_files.train={big_csv}", *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Resuming from" in again.stdout, again.stderr[-3000:]
    assert status_of(tmp_path)["status"] == "complete"
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 5


def test_ctrl_c_while_training_checkpoints_the_latest_step(tmp_path, big_csv):
    proc = start(tmp_path, big_csv, "train.max_steps=3000", "train.checkpoint_every=0", "data.max_train_samples=256",
                 "data.max_eval_samples=16", "train.batch_size=8")
    _, err = signal_at(proc, "[training]", signal.SIGINT)
    assert proc.returncode == 130, err[-3000:]
    status = status_of(tmp_path)
    assert status["status"] == "interrupted" and status["signal"] == "SIGINT" and 0 < status["step"] < 3000
    assert tmp_path.joinpath(*RUN, "checkpoints", f"step_{status['step']}", "state.json").is_file()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_ctrl_c_before_training(tmp_path, big_csv):
    proc = start(tmp_path, big_csv, "train.max_steps=2", "data.max_eval_samples=50")
    _, err = signal_at(proc, "[data preparation]", signal.SIGINT)
    assert proc.returncode == 130, err[-3000:]
    status = status_of(tmp_path)
    assert status["status"] == "interrupted" and status["stage"] == "data preparation" and status["step"] is None
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
