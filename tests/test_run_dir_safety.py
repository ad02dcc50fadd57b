"""A run directory is never lost or mixed up: forced re-runs, fresh starts, corrupt checkpoints, two processes,
file modes (issue 13, items 1-5 and 12). Through `python train.py` with real signals and real files."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, compose_config, small_run_overrides

RUN = ("rotten_tomatoes", "tiny_encoder", "rocoft_row_r3", "seed0")
SMALL = ["model=tiny_encoder", "data.max_train_samples=64", "data.max_eval_samples=16", "train.batch_size=8",
         "device=cpu"]
LONG = [*SMALL, "train.max_steps=300", "train.checkpoint_every=2"]  # stopped by a signal long before its end
ASIDE, REPLACED = ".previous_run", ".replaced_run"


def train(results, *args, wait=True, umask=-1, timeout=600):
    cmd = [sys.executable, "train.py", f"results_dir={results}", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, umask=umask)


def losses(run_dir) -> int:
    path = run_dir / "log.jsonl"
    return path.read_text().count('"loss"') if path.exists() else 0


def wait_until(condition, proc, what):
    deadline = time.time() + 300
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.communicate()[1][-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop(proc, signum=signal.SIGTERM):
    proc.send_signal(signum)
    return proc.communicate(timeout=300)


def snapshot(run_dir) -> dict:
    """Every file of a run with its bytes, but Hydra's (rewritten by each invocation) and the lock file."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock" and p.suffix != ".log" and ".hydra" not in p.parts}


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
    """A results tree with one run stopped by SIGTERM past step 30: checkpoints of steps above 30."""
    results = tmp_path_factory.mktemp("preempted")
    proc = train(results, *LONG, wait=False)
    run_dir = results.joinpath(*RUN)
    wait_until(lambda: losses(run_dir) >= 30, proc, "30 steps")
    _, err = stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    return results


def copy_of(preempted, tmp_path):
    shutil.copytree(preempted, tmp_path / "r")
    return tmp_path / "r", tmp_path.joinpath("r", *RUN)


def checkpoint_steps(run_dir) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*"))


# ---- 1: a refused or failed forced re-run leaves the complete run as it was
def test_failed_forced_rerun_leaves_the_complete_run_byte_identical(tmp_path):
    results, run_dir = tmp_path, tmp_path.joinpath(*RUN)
    assert train(results, *SMALL, "train.max_steps=4").returncode == 0
    before = snapshot(run_dir)
    assert "metrics.json" in before and "adapter/adapter_model.safetensors" in before
    # refused at data preparation (a user error before any step)
    out = train(results, *SMALL, "train.max_steps=4", "force=true", "train.batch_size=1000")
    assert out.returncode == 2 and "fewer than one batch" in out.stderr, out.stderr[-2000:]
    assert snapshot(run_dir) == before and not (run_dir / ASIDE).exists()
    # failed after the new run had written checkpoints of its own
    out = train(results, *SMALL, "train.max_steps=6", "force=true", "train.lr=1e12", "train.max_grad_norm=0",
                "train.checkpoint_every=1")
    assert out.returncode == 2 and "diverged" in out.stderr, out.stderr[-2000:]
    assert "previous run is back as it was" in out.stderr
    assert snapshot(run_dir) == before and not (run_dir / ASIDE).exists()


def test_unexpected_error_in_a_forced_rerun_puts_the_previous_run_back(tmp_path, monkeypatch):
    import rocoft.training
    from rocoft.runs import execute

    base = ["model=tiny_encoder", *small_run_overrides(tmp_path, steps=2, train=48, evals=16)]
    execute(compose_config(base))
    run_dir = tmp_path.joinpath(*RUN)
    before = snapshot(run_dir)

    def crash(*args, **kwargs):
        raise RuntimeError("a bug in the final evaluation")

    monkeypatch.setattr(rocoft.training, "final_evaluation", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        execute(compose_config(base + ["force=true", "train.checkpoint_every=1"]))
    assert snapshot(run_dir) == before and not (run_dir / ASIDE).exists()


def test_preempted_forced_rerun_keeps_the_old_run_aside_until_it_completes(tmp_path):
    results, run_dir = tmp_path, tmp_path.joinpath(*RUN)
    assert train(results, *SMALL, "train.max_steps=2").returncode == 0
    before = snapshot(run_dir)
    proc = train(results, *LONG, "force=true", wait=False)
    # 3 losses: the new run's log (the previous one has 2), once it trains
    wait_until(lambda: not (run_dir / "metrics.json").exists() and losses(run_dir) >= 3, proc, "3 steps")
    _, err = stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM and "again without force=true" in err, err[-2000:]
    # the new run's checkpoint owns the directory; the complete previous run is kept, byte for byte
    assert checkpoint_steps(run_dir) and not (run_dir / "metrics.json").exists()
    assert snapshot(run_dir / REPLACED) == before
    out = train(results, *LONG)  # the same settings without force=true: resumes the new run
    assert out.returncode == 0 and "Resuming from" in out.stdout, out.stderr[-2000:]
    assert not (run_dir / REPLACED).exists() and not (run_dir / ASIDE).exists()
    assert (run_dir / "metrics.replaced.json").read_bytes() == before["metrics.json"]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 300


# ---- 2: force=true starts afresh; a checkpoint is resumed only by a run of its settings
def test_forced_rerun_never_resumes_the_old_checkpoint(preempted, tmp_path):
    results, run_dir = copy_of(preempted, tmp_path)
    assert checkpoint_steps(run_dir)[-1] >= 30
    out = train(results, *SMALL, "train.max_steps=6", "train.lr=0.05", "train.warmup_steps=0",
                "train.scheduler=constant", "train.checkpoint_every=2", "force=true")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Resuming" not in out.stdout
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    trained = [r for r in records if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3, 4, 5, 6] and {r["lr"] for r in trained} == {0.05}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed"] is False and metrics["steps"] == 6
    assert not (run_dir / "metrics.replaced.json").exists()  # the previous run had no results to keep
    assert not (run_dir / ASIDE).exists() and not (run_dir / REPLACED).exists()


def tiny_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def test_checkpoint_records_its_settings_and_only_the_same_settings_resume(tmp_path, capsys):
    from rocoft.checkpoint import Checkpointer, Position
    from rocoft.utils import run_settings

    base = run_settings(compose_config(["model=tiny_encoder"]))
    assert run_settings(compose_config(["model=tiny_encoder", "train.checkpoint_every=7", "force=true"])) == base
    other = run_settings(compose_config(["model=tiny_encoder", "train.lr=0.05"]))
    assert other != base and other["train.lr"] == 0.05
    ck = Checkpointer(tmp_path / "ck", settings=base)
    ck.save(*tiny_model(), Position(step=4))
    assert json.loads((tmp_path / "ck/step_4/state.json").read_text())["settings"] == base
    assert Checkpointer(tmp_path / "ck", settings=other).load_latest(*tiny_model()) is None
    assert "step_4: made with other settings (train.lr: " in capsys.readouterr().err
    assert Checkpointer(tmp_path / "ck", settings=dict(base)).load_latest(*tiny_model()).position.step == 4


# ---- 3: train.resume=false keeps the checkpoints it writes
def test_resume_false_with_older_checkpoints_keeps_its_own(preempted, tmp_path):
    results, run_dir = copy_of(preempted, tmp_path)
    old, logged = checkpoint_steps(run_dir), losses(run_dir)
    proc = train(results, *LONG, "train.resume=false", wait=False)
    # the new run's log: fewer losses than the previous one's (>= 30), once it trains
    wait_until(lambda: 3 <= losses(run_dir) < logged, proc, "3 steps of the fresh run")
    out, err = stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM and "Resuming" not in out, err[-2000:]
    step = json.loads((run_dir / "status.json").read_text())["step"]
    assert step < old[0], "the fresh run went past the old checkpoints: this test shows nothing"
    kept = checkpoint_steps(run_dir)
    assert kept and kept[-1] == step and max(kept) <= step, (kept, step, old)
    assert not (run_dir / ASIDE).exists()  # the previous, unfinished run: superseded by the new checkpoints


def test_keep_last_k_never_removes_the_checkpoint_just_written(tmp_path):
    from rocoft.checkpoint import Checkpointer, Position

    ck = Checkpointer(tmp_path / "ck", keep=2)
    for step in (10, 12, 2):  # 10 and 12: a line the run left (e.g. a skipped corrupt checkpoint)
        ck.save(*tiny_model(), Position(step=step))
    assert [p.name for p in ck.checkpoints()] == ["step_2"]
    ck.save(*tiny_model(), Position(step=4))
    ck.save(*tiny_model(), Position(step=6))
    assert [p.name for p in ck.checkpoints()] == ["step_4", "step_6"]


# ---- 4: a corrupt latest checkpoint is skipped, said so, and the newest good one resumed
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(preempted, tmp_path):
    results, run_dir = copy_of(preempted, tmp_path)
    steps = checkpoint_steps(run_dir)
    assert len(steps) == 2
    latest = run_dir / "checkpoints" / f"step_{steps[-1]}" / "trainable.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a node crash mid-write, unsynced
    out = train(results, *LONG)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"skipping checkpoint {latest.parent}: trainable.pt is unreadable" in out.stderr
    assert f"Resuming from {run_dir / 'checkpoints' / f'step_{steps[0]}'} (step {steps[0]})" in out.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 300


def test_corrupt_checkpoints_on_load(tmp_path, capsys):
    from rocoft.checkpoint import Checkpointer, Position

    ck = Checkpointer(tmp_path / "ck", keep=4)
    trained, opt, sched = tiny_model()
    for step in (2, 4, 6, 8):
        with torch.no_grad():
            trained.weight.add_(1.0)
        ck.save(trained, opt, sched, Position(step=step))
    (tmp_path / "ck/step_8/state.json").write_text("")  # empty
    (tmp_path / "ck/step_6/training_state.pt").unlink()  # missing
    trainable = tmp_path / "ck/step_4/trainable.pt"
    trainable.write_bytes(trainable.read_bytes()[:100])  # truncated
    model, opt2, sched2 = tiny_model()
    resumed = Checkpointer(tmp_path / "ck").load_latest(model, opt2, sched2)
    err = capsys.readouterr().err
    assert resumed.position.step == 2 and torch.equal(model.weight, tiny_model()[0].weight + 1.0)
    assert "step_8: state.json is unreadable" in err and "step_6: training_state.pt is unreadable" in err
    assert "step_4: trainable.pt is unreadable" in err


def test_checkpoint_files_and_folders_are_flushed_before_the_rename(tmp_path, monkeypatch):
    import rocoft.checkpoint as checkpoint
    import rocoft.utils as utils

    synced, real_fsync, real_rename = [], os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    renamed = []
    monkeypatch.setattr(checkpoint.Path, "rename", lambda self, target: (renamed.append(len(synced)),
                                                                        real_rename(self, target)))
    assert checkpoint.os.fsync is utils.os.fsync is os.fsync
    checkpoint.Checkpointer(tmp_path / "ck").save(*tiny_model(), checkpoint.Position(step=3))
    before = [os.path.basename(p) for p in synced[:renamed[0]]]
    assert {"trainable.pt", "training_state.pt", "state.json"} <= set(before)
    assert any(b.startswith(".tmp-") for b in before)  # the folder itself, then the rename, then its parent
    assert synced[renamed[0]:] == [str(tmp_path / "ck")]


# ---- 5: one process per run directory
def test_second_process_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    results, run_dir = tmp_path, tmp_path.joinpath(*RUN)
    args = [*SMALL, "train.max_steps=100000", "train.checkpoint_every=2"]
    holder = train(results, *args, wait=False)
    try:
        wait_until(lambda: losses(run_dir) >= 3, holder, "the first process trains")
        try:
            second = train(results, *args, timeout=120)  # refused at start-up, long before
        except subprocess.TimeoutExpired:
            pytest.fail("the second process was not refused: it trained alongside the first")
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by process {holder.pid} on " in second.stderr and "since 20" in second.stderr
        assert "Traceback" not in second.stderr
        assert json.loads((run_dir / "status.json").read_text())["status"] == "running"
        assert holder.poll() is None  # the holder trains on
    finally:
        holder.kill()  # kill -9: no handler runs, the lock file stays
        holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL and (run_dir / ".lock").exists()
    again = train(results, *SMALL, "train.max_steps=4", "force=true")  # a requeue is not blocked by a dead holder
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 4


# ---- 12: files and folders get the mode the umask gives
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_run_files_respect_the_umask(tmp_path, umask):
    from rocoft.checkpoint import Checkpointer, Position

    out = train(tmp_path, *SMALL, "train.max_steps=2", umask=umask)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = tmp_path.joinpath(*RUN)
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    previous = os.umask(umask)
    try:
        Checkpointer(tmp_path / "ck").save(*tiny_model(), Position(step=1))
    finally:
        os.umask(previous)
    for path in [*run_dir.rglob("*"), *(tmp_path / "ck").rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, (path, oct(path.stat().st_mode))
