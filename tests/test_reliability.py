"""Runs survive kills and preemption, results are reproducible, bad input gets one clear error."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from conftest import ROOT, compose_config, small_run_overrides
from rocoft.runs import execute

RUN = ("rotten_tomatoes", "tiny_encoder", "rocoft_row_r3", "seed0")
RESUME_ARGS = ["model=tiny_encoder", "train.max_steps=40", "train.checkpoint_every=0", "data.max_train_samples=200",
               "data.max_eval_samples=48", "train.batch_size=8", "train.eval_every=15", "device=cpu"]


def train(results, *extra, wait=True):
    cmd = [sys.executable, "train.py", f"results_dir={results}", *RESUME_ARGS, *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


# adalora: its importance averages resume too. sft: its trained entries and gradient window; regrowth at steps
# 3, 7, ..., 39 (3 of every 4 steps read gradients; rate 1 so entries move at each), before and after the stop.
# diff_pruning: its masks, projected at step 10 (before the stop), the rest fine-tuning under them.
@pytest.mark.parametrize("method,extra", [("rocoft_row_r3", ()), ("adalora", ()),
                                          ("sft", ("method.regrow_every=4", "method.accumulation_steps=3",
                                                   "method.regrow_rate=1.0")),
                                          ("diff_pruning", ("method.project_at=0.25",))])
def test_sigterm_mid_run_then_resume_gives_the_uninterrupted_metrics(tmp_path, method, extra):
    run = (*RUN[:2], method if method.endswith("_r3") else f"{method}_r3", RUN[3])
    reference = train(tmp_path / "ref", f"method={method}", *extra)
    assert reference.returncode == 0, reference.stderr[-2000:]
    proc = train(tmp_path / "killed", f"method={method}", *extra, wait=False)
    log = tmp_path.joinpath("killed", *run, "log.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until it is past the first epoch's middle, then preempt it
        if log.exists() and sum('"loss"' in line for line in log.read_text().splitlines()) >= 20:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    run_dir = tmp_path.joinpath("killed", *run)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "preempted" and 20 <= status["step"] < 40
    assert not (run_dir / "metrics.json").exists() and list((run_dir / "checkpoints").glob("step_*"))
    before = max(json.loads(p.read_text())["elapsed"]["train_time_s"]
                 for p in (run_dir / "checkpoints").glob("step_*/state.json"))
    stopped = method_state_at_the_stop(run_dir)
    resumed = train(tmp_path / "killed", f"method={method}", *extra)
    assert resumed.returncode == 0 and "Resuming from" in resumed.stdout, resumed.stderr[-2000:]
    a = json.loads((run_dir / "metrics.json").read_text())
    b = json.loads(tmp_path.joinpath("ref", *run, "metrics.json").read_text())
    for key in ("validation", "test", "steps", "validation_history", "params"):
        assert a[key] == b[key], key
    assert (run_dir / "log.jsonl").read_text() == tmp_path.joinpath("ref", *run, "log.jsonl").read_text()
    assert not (run_dir / "checkpoints").exists()  # removed once the run is complete
    assert a["resumed"] and a["train_time_s"] > before > 0  # the time before the kill counts too
    if method in ("sft", "diff_pruning"):
        from safetensors.torch import load_file

        final = {k: v.sort()[0] for k, v in load_file(run_dir / "adapter" / "adapter.safetensors").items()
                 if k.endswith(".indices")}
        at_stop = {n: i.sort()[0] for n, i in stopped["indices" if method == "sft" else "masks"].items()}
        assert len(at_stop) == 12  # 6 matrices x 2 layers: every one carried through the checkpoint
        if method == "sft":  # entries regrown before the stop (from the seeded start) and after it
            from rocoft.methods import build_method
            from rocoft.models import build_model

            cfg = compose_config(["model=tiny_encoder", f"method={method}", *extra])
            sft = build_method(cfg.method, cfg.model, "classification", seed=0)
            start = {n: w.indices.sort()[0] for n, w in sft.wrappers(sft.apply(build_model(
                cfg.model, "classification", 2), total_steps=40))}
            assert all(not torch.equal(start[n], i) for n, i in at_stop.items())
            assert all(not torch.equal(final[f"{n}.indices"], i) for n, i in at_stop.items())
        else:  # the saved diff keeps the entries of the masks the checkpoint carried
            assert all(torch.equal(final[f"{n}.indices"], i) for n, i in at_stop.items())


def method_state_at_the_stop(run_dir):
    """The method's extra state in the stopped run's latest checkpoint."""
    latest = max((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    path = latest / "method_state.pt"
    return torch.load(path, weights_only=False) if path.is_file() else None


def signalled_while_training(tmp_path, signum):
    """A long tiny run in this process, sent ``signum`` once it has logged 3 losses: the SystemExit it ends with."""
    import threading

    cfg = compose_config(small_run_overrides(tmp_path, steps=400, train=96) + [
        "model=tiny_encoder", "train.batch_size=8", "train.checkpoint_every=0"])
    log = tmp_path.joinpath(*RUN, "log.jsonl")

    def send_when_training():
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and log.read_text().count('"loss"') >= 3):
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    threading.Thread(target=send_when_training, daemon=True).start()
    with pytest.raises(SystemExit) as exit_info:
        execute(cfg)
    return exit_info.value


def test_sigusr1_checkpoints_then_hands_the_signal_to_the_previous_handler(tmp_path):
    """Under the SLURM launcher, submitit's SIGUSR1 handler requeues the job: ours must pass it on."""
    import rocoft.training  # noqa: F401 - the heavy imports done before the signal arrives

    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        exit_info = signalled_while_training(tmp_path, signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert exit_info.code == 128 + signal.SIGUSR1 and received == [signal.SIGUSR1]
    status = json.loads(tmp_path.joinpath(*RUN, "status.json").read_text())
    assert status["status"] == "preempted" and list(tmp_path.joinpath(*RUN, "checkpoints").glob("step_*"))


def test_periodic_checkpoints_keep_the_last_k(tmp_path):
    from rocoft.checkpoint import Checkpointer, Position

    cfg = compose_config(small_run_overrides(tmp_path, steps=7) + ["model=tiny_encoder", "train.checkpoint_every=2",
                                                                   "train.keep_checkpoints=2"])
    from rocoft.runs import run

    run(cfg)  # completes: checkpoints are then removed; check the mechanism on a Checkpointer directly
    ck = Checkpointer(tmp_path / "ck", keep=2)
    import torch

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (2, 4, 6):
        ck.save(model, opt, sched, Position(step=step, epoch=0, in_epoch=step))
    assert [p.name for p in ck.checkpoints()] == ["step_4", "step_6"]
    assert not list((tmp_path / "ck").glob(".tmp-*"))
    resumed = Checkpointer(tmp_path / "ck").load_latest(model, opt, sched)
    assert resumed.position == Position(step=6, epoch=0, in_epoch=6) and resumed.method_state is None


def test_provenance_recorded(tmp_path):
    from rocoft.runs import run

    metrics = run(compose_config(small_run_overrides(tmp_path) + ["model=tiny_encoder"]))
    assert set(metrics["git"]) == {"commit", "dirty"} and metrics["device"] == "cpu"
    for package in ("torch", "transformers", "peft", "accelerate", "datasets"):
        assert metrics["versions"][package]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    common = ["model=tiny_encoder", "train.max_steps=4", "data.max_train_samples=96", "data.max_eval_samples=40",
              "train.batch_size=16", "dropout=0.0", "device=cpu", "train.group_by_length=false"]
    one = subprocess.run([sys.executable, "train.py", f"results_dir={tmp_path / 'one'}", *common], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "train.py",
                          f"results_dir={tmp_path / 'two'}", *common], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a = json.loads(tmp_path.joinpath("one", *RUN, "metrics.json").read_text())
    b = json.loads(tmp_path.joinpath("two", *RUN, "metrics.json").read_text())
    assert b["num_processes"] == 2
    losses = [[json.loads(l)["loss"] for l in tmp_path.joinpath(d, *RUN, "log.jsonl").read_text().splitlines()
               if '"loss"' in l] for d in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)  # same batches, synchronised slices
    for split in ("validation", "test"):
        assert a[split]["accuracy"] == pytest.approx(b[split]["accuracy"], abs=1 / 40 + 1e-9)


def test_rocoft_refuses_a_sharded_engine_before_training(tmp_path):
    # `accelerate launch --use_fsdp` as a user types it (on CPU Accelerate cannot shard: the request is refused
    # from its environment flag before the Accelerator is built; on GPUs from the Accelerator's distributed type)
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "1",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "train.py",
                          f"results_dir={tmp_path}", "model=tiny_encoder", "method=rocoft_col", "train.max_steps=2",
                          "data.max_train_samples=32", "data.max_eval_samples=16", "train.batch_size=16", "device=cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "exitcode: 2" in text, text[-3000:]  # the worker's UserError exit code
    assert "method=rocoft_col does not run under FSDP" in text and "accelerate launch --multi_gpu" in text, text
    assert not list(tmp_path.rglob("log.jsonl")) and not list(tmp_path.rglob("metrics.json"))


def test_sharded_engine_rule():
    from accelerate.utils import DistributedType

    from rocoft.distributed import check_engine
    from rocoft.errors import UserError
    from rocoft.methods import method_class

    rocoft = method_class(compose_config(["method=rocoft_random"]).method).sharded_engines_refused
    lora = method_class(compose_config(["method=lora"]).method).sharded_engines_refused
    full = method_class(compose_config(["method=full_ft"]).method).sharded_engines_refused
    assert "silently keep their pretrained values" in rocoft and "rank 0's" in lora and full is None
    for name, refused in (("rocoft_random", rocoft), ("lora", lora)):
        with pytest.raises(UserError, match=f"method={name} does not run under FSDP.*--multi_gpu"):
            check_engine(DistributedType.FSDP, name, refused, environ={"FSDP_VERSION": "2"})
        with pytest.raises(UserError, match=f"method={name} does not run under DeepSpeed"):
            check_engine(DistributedType.DEEPSPEED, name, refused, environ={})
    # DeepSpeed is not installed here: its request is refused from the flag `accelerate launch` sets
    with pytest.raises(UserError, match="under DeepSpeed"):
        check_engine(None, "rocoft_row", rocoft, environ={"ACCELERATE_USE_DEEPSPEED": "true"})
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):  # DDP trains RoCoFT
        check_engine(kind, "rocoft_row", rocoft, environ={})


def test_slurm_tasks_become_ranks_of_one_run():
    from rocoft.distributed import slurm_environment

    step = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
            "SLURM_STEP_NODELIST": "vm", "SLURM_JOB_NODELIST": "vm", "SLURM_NTASKS": "2"}
    env = slurm_environment(step)
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(20000 + 4242 % 40000)}  # one node: loopback
    multi = {**step, "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    env = slurm_environment(multi)
    assert (env["MASTER_ADDR"], env["WORLD_SIZE"], env["RANK"], env["LOCAL_WORLD_SIZE"]) == ("gpu07", "8", "5", "4")
    batch_script = {k: v for k, v in step.items() if not k.startswith("SLURM_STEP")} | {"SLURM_PROCID": "0"}
    assert slurm_environment(batch_script) is None  # sbatch --ntasks=2 running python itself: no srun step
    assert slurm_environment({**step, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert slurm_environment({**step, "RANK": "0"}) is None  # torchrun / accelerate launch set the ranks


# ---- bad input: one clear paragraph, non-zero exit, no traceback, nothing left in results/
def cli(tmp_path, *args):
    return subprocess.run([sys.executable, "train.py", f"results_dir={tmp_path / 'results'}", "device=cpu", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args,message", [
    (["model=no_such_model"], "Could not find 'model/no_such_model'"),
    (["model=tiny_encoder", "rank=0"], "rank must be a positive integer"),
])
def test_bad_configuration_from_the_cli_is_one_clear_error(tmp_path, args, message):
    out = cli(tmp_path, *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


@pytest.mark.parametrize("args,message", [
    (["rank=33"], "exceeds the row count 32"),
    (["method=rocoft_random", "method.p=1.5"], "probability p in (0, 1]"),
    (["device=cuda"], "no CUDA GPU is visible"),
    (["train.mixed_precision=fp16"], "fp16 needs a CUDA GPU"),
    (["data.max_train_samples=10", "train.batch_size=16"], "fewer than one batch"),
])
def test_bad_configuration_is_one_clear_error(tmp_path, capsys, args, message):
    overrides = [o for o in small_run_overrides(tmp_path / "results") if not o.startswith("train.batch_size")]
    cfg = compose_config(overrides + ["model=tiny_encoder", "train.batch_size=16", *args])
    with pytest.raises(SystemExit) as exit_info:
        execute(cfg)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not any((tmp_path / "results").iterdir()) if (tmp_path / "results").exists() else True


def data_case(tmp_path, kind):
    path = tmp_path / "train.csv"
    if kind == "unreadable":
        path = tmp_path / "train.parquet"
        path.write_bytes(b"not a parquet file")
    elif kind == "missing_column":
        pd.DataFrame({"review": [f"a b {i}" for i in range(40)], "label": [0, 1] * 20}).to_csv(path, index=False)
    elif kind == "empty":
        pd.DataFrame({"text": [], "label": []}).to_csv(path, index=False)
    elif kind == "bad_label":
        pd.DataFrame({"text": [f"a b {i}" for i in range(40)], "label": [0, 7] * 20}).to_csv(path, index=False)
    elif kind == "missing":
        path = tmp_path / "nope.csv"
    return path


@pytest.mark.parametrize("kind,message", [("missing", "does not exist"), ("unreadable", "Could not read"),
                                          ("missing_column", "lacks column"), ("empty", "is empty"),
                                          ("bad_label", "outside the label set")])
def test_bad_data_is_one_clear_error(tmp_path, capsys, kind, message):
    path = data_case(tmp_path, kind)
    cfg = compose_config(small_run_overrides(tmp_path / "results") + [
        "model=tiny_encoder", "task=text_classification", "task.num_labels=2", f"task.data_files.train={path}"])
    with pytest.raises(SystemExit) as exit_info:
        execute(cfg)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list((tmp_path / "results").rglob("*.json"))


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = compose_config(small_run_overrides(blocker / "results") + ["model=tiny_encoder"])
    with pytest.raises(SystemExit):
        execute(cfg)
    assert "Cannot write to output_dir" in capsys.readouterr().err


def test_disk_full_while_writing_metrics_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    import rocoft.utils as utils

    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".metrics.json"):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(utils.os, "fsync", fsync)
    cfg = compose_config(small_run_overrides(tmp_path / "results") + ["model=tiny_encoder"])
    with pytest.raises(SystemExit):
        execute(cfg)
    assert calls["n"] == 1 and "disk is full" in capsys.readouterr().err
    assert not list((tmp_path / "results").rglob("metrics.json")) and not list((tmp_path / "results").rglob("*.tmp"))


def test_wandb_offline_logging(tmp_path, monkeypatch):
    from rocoft.runs import run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(small_run_overrides(tmp_path, steps=3) + ["model=tiny_encoder", "logger=wandb"])
    metrics = run(cfg)
    run_dir = tmp_path.joinpath(*RUN)
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3] and metrics["steps"] == 3
    # the W&B run id is the run directory's: a second start of the same run (a requeued job) continues it
    from rocoft.tracking import wandb_run_id

    run_id = wandb_run_id(run_dir)
    assert offline[0].name.endswith("-" + run_id)
    run(compose_config(small_run_overrides(tmp_path, steps=3) + ["model=tiny_encoder", "logger=wandb", "force=true"]))
    again = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(again) == 2 and all(p.name.endswith("-" + run_id) for p in again)
    assert wandb_run_id(run_dir) == wandb_run_id(os.path.relpath(run_dir)) != wandb_run_id(run_dir.parent / "seed1")


def test_tensorboard_logging(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rocoft.runs import run

    run(compose_config(small_run_overrides(tmp_path, steps=3) + ["model=tiny_encoder", "logger=tensorboard"]))
    logs = tmp_path.joinpath(*RUN, "tensorboard")
    events = EventAccumulator(str(logs)).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert "final/test/accuracy" in events.Tags()["scalars"]


# ---- stop signals
def test_stop_signal_names():
    from rocoft.checkpoint import DEFAULT_STOP_SIGNALS, parse_signals
    from rocoft.errors import UserError

    assert parse_signals(DEFAULT_STOP_SIGNALS) == (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
    assert parse_signals(["usr2", "SIGTERM", int(signal.SIGTERM)]) == (signal.SIGUSR2, signal.SIGTERM)
    for bad in ("SIGFOO", "SIGKILL"):
        with pytest.raises(UserError, match="train.stop_signals"):
            parse_signals([bad])


def test_usr2_checkpoints_first_then_submitits_handler_requeues_and_exits(tmp_path):
    """Under SLURM, submitit's USR2 handler requeues the job and raises SystemExit(-1): the loop must see
    USR2 first (checkpoint at the next step), then hand it on; status.json says preempted."""
    import rocoft.training  # noqa: F401 - the heavy imports done before the signal arrives

    received = []

    def submitit_like(signum, frame):  # what submitit's checkpoint_and_try_requeue does, after scontrol requeue
        received.append(signum)
        sys.exit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        exit_info = signalled_while_training(tmp_path, signal.SIGUSR2)
    finally:
        assert signal.getsignal(signal.SIGUSR2) is submitit_like  # put back after the loop
        signal.signal(signal.SIGUSR2, previous)
    assert exit_info.code == -1 and received == [signal.SIGUSR2]
    status = json.loads(tmp_path.joinpath(*RUN, "status.json").read_text())
    assert status["status"] == "preempted" and status["signal"] == "SIGUSR2", status
    assert tmp_path.joinpath(*RUN, "checkpoints", f"step_{status['step']}").is_dir()


def test_exit_outside_the_loop_never_leaves_status_running(tmp_path, monkeypatch):
    """submitit's handler may fire before the loop holds the signals (model loading): SystemExit there."""
    import rocoft.training

    def exits(*args, **kwargs):
        sys.exit(-1)

    monkeypatch.setattr(rocoft.training, "setup_model", exits)
    cfg = compose_config(small_run_overrides(tmp_path) + ["model=tiny_encoder"])
    with pytest.raises(SystemExit):
        execute(cfg)
    assert json.loads(tmp_path.joinpath(*RUN, "status.json").read_text())["status"] == "preempted"


def _agree(rank, init_file, results):
    import torch.distributed as dist

    from rocoft.checkpoint import StopSignals

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    stop = StopSignals(())
    results[rank] = [stop.agreed()]
    stop.received = signal.SIGUSR2 if rank == 1 else None  # only rank 1 saw the signal
    results[rank] = results[rank] + [stop.agreed()]
    dist.destroy_process_group()


def test_all_ranks_agree_to_stop_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_agree, args=(str(tmp_path / "init"), results), nprocs=2)
        assert dict(results) == {0: [None, signal.SIGUSR2], 1: [None, signal.SIGUSR2]}


# ---- run bookkeeping
def _run_dir(cfg):
    from pathlib import Path

    return Path(cfg.output_dir)


def test_a_run_of_other_settings_is_neither_skipped_to_nor_resumed(tmp_path, capsys):
    base = ["model=tiny_encoder", *small_run_overrides(tmp_path, steps=2, train=48, evals=16)]
    cfg = compose_config(base)
    execute(cfg)
    status = json.loads((_run_dir(cfg) / "status.json").read_text())
    assert status["status"] == "complete"
    assert execute(compose_config(base + ["train.eval_batch_size=8"])) is not None  # neutral: skipped to
    other = compose_config(base + ["train.lr=0.123"])
    with pytest.raises(SystemExit) as e:
        execute(other)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "other settings" in err and "train.lr" in err and "0.123" in err
    assert execute(other, multirun=True) is None  # a sweep point: reported, the complete run untouched
    assert json.loads((_run_dir(cfg) / "status.json").read_text()) == status
    first = json.loads((_run_dir(cfg) / "metrics.json").read_text())
    assert execute(compose_config(base + ["train.lr=0.123", "force=true"])) is not None
    assert json.loads((_run_dir(cfg) / "metrics.replaced.json").read_text()) == first  # kept aside, not lost


def test_logged_lr_is_the_lr_each_step_trained_with(tmp_path):
    cfg = compose_config(["model=tiny_encoder", *small_run_overrides(tmp_path, steps=3, train=64, evals=16),
                          "train.scheduler=linear", "train.warmup_steps=0", "train.lr=0.003"])
    execute(cfg)
    lrs = [json.loads(line)["lr"] for line in (_run_dir(cfg) / "log.jsonl").read_text().splitlines()
           if '"lr"' in line]
    assert lrs == pytest.approx([0.003, 0.002, 0.001])  # linear decay to 0 after the last step


def test_weight_decay_rule():
    import torch

    from rocoft import RoCoFTConfig, RoCoFTSlice, apply_rocoft
    from rocoft.engine import build_optimizer, no_decay

    vec, mat = torch.zeros(4), torch.zeros(2, 2)
    assert no_decay("encoder.layer.0.output.dense.bias", vec) and no_decay("encoder.LayerNorm.weight", vec)
    assert not no_decay("encoder.layer.0.output.dense.weight", mat)
    # RoCoFT's trained values decay, whatever their shape (entries are a 1-D vector): found by their module
    model = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 2))
    model = apply_rocoft(model, RoCoFTConfig(axis="entry", p=0.5, target_modules=["0"], bias="all",
                                             modules_to_save=["1", "2"]))
    values = [m.weight for m in model.modules() if isinstance(m, RoCoFTSlice)]
    assert len(values) == 1 and values[0].ndim == 1
    decayed, plain = build_optimizer(model, compose_config(["train.weight_decay=0.1"]).train).param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(values[0]), id(model[2].weight)}
    assert {id(p) for p in plain["params"]} == {id(model[0].base_layer.bias), id(model[1].weight), id(model[1].bias),
                                                id(model[2].bias)}


def test_final_records_are_redone_not_duplicated_on_resume(tmp_path):
    from rocoft.utils import JsonlLog

    path = tmp_path / "log.jsonl"
    log = JsonlLog(path)
    log.write(step=1, loss=0.5)
    log.write(step=2, loss=0.4)
    log.write(step=2, split="validation", final=True, accuracy=0.5)  # then the final evaluation crashed
    log.close()
    JsonlLog(path, keep_until_step=2).close()  # resumed from the step-2 checkpoint
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 1, "loss": 0.5},
                                                                           {"step": 2, "loss": 0.4}]


def test_user_error_after_a_checkpoint_marks_the_kept_run_failed(tmp_path, capsys):
    cfg = compose_config(["model=tiny_encoder", *small_run_overrides(tmp_path, steps=6, train=96, evals=16),
                          "train.lr=1e12", "train.checkpoint_every=1", "train.max_grad_norm=0"])
    with pytest.raises(SystemExit) as e:
        execute(cfg)
    assert e.value.code == 2 and "diverged" in capsys.readouterr().err
    status = json.loads((_run_dir(cfg) / "status.json").read_text())
    assert status["status"] == "failed" and status["kind"] == "user_error"


def test_checkpoint_of_the_previous_layer_names_resumes(tmp_path):
    """Checkpoints written before the one-layer RoCoFT (`<layer>.rocoft.weight|index`) load into today's layer."""
    import torch
    from torch import nn

    from rocoft import RoCoFTConfig, apply_rocoft, rocoft_layers
    from rocoft.checkpoint import Checkpointer, Position

    def model():
        torch.manual_seed(0)
        return apply_rocoft(nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4)), RoCoFTConfig(axis="row", rank=2,
                                                                                      target_modules=["0", "1"]))

    trained, fresh = model(), model()
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with torch.no_grad():
        for _, layer in rocoft_layers(trained):
            layer.slice().weight.add_(1.0)
    ck = Checkpointer(tmp_path / "ck")
    path = ck.save(trained, opt, sched, Position(step=3, epoch=0, in_epoch=3))
    state = torch.load(path / "trainable.pt")
    old = {k.replace(".rocoft_slices.default.", ".rocoft."): v for k, v in state.items()}
    assert any(k.endswith(".rocoft.weight") for k in old) and old.keys() != state.keys()
    torch.save(old, path / "trainable.pt")  # as the previous version wrote it
    opt2 = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad])
    Checkpointer(tmp_path / "ck").load_latest(fresh, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0))
    x = torch.randn(3, 6)
    assert torch.equal(fresh(x), trained(x))
    assert not torch.equal(fresh(x), model()(x))
