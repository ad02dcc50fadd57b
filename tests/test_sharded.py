"""Full fine-tuning under FSDP2: checkpoints and artifacts that hold every rank's shards.

Accelerate runs FSDP only on GPUs, so the sharded path is tested here with torch's own FSDP2
(``fully_shard``) over gloo, in real 2-process runs (torchrun) of tests/sharded_worker.py, which drives
the suite's Checkpointer and FullFT artifact exactly as the training loop does.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT

WORKER = ROOT / "tests" / "sharded_worker.py"


def torchrun(out: Path, mode: str, processes: int = 2, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--standalone",
           str(WORKER), str(out), mode, *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    torchrun(out, "full")
    torchrun(out, "stop")
    torchrun(out, "resume")
    sharded, single = tmp_path_factory.mktemp("nodrop2"), tmp_path_factory.mktemp("nodrop1")
    torchrun(sharded, "full", 2, "--no-dropout")
    torchrun(single, "full", 1, "--no-shard", "--no-dropout")
    return out, (sharded, single)


def test_sharded_checkpoint_holds_every_ranks_state(runs):
    out, _ = runs
    (step,) = (out / "checkpoints").glob("step_*")
    shards = sorted(p.name for p in (step / "model_optimizer").glob("*.distcp"))
    assert len(shards) == 2, shards  # one file of shards per rank
    assert sorted(p.name for p in step.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
    assert (step / "state.json").is_file() and not list((out / "checkpoints").glob(".tmp-*"))


def test_resumed_sharded_run_equals_the_uninterrupted_one(runs):
    out, _ = runs
    full, resumed = torch.load(out / "full.pt"), torch.load(out / "resume.pt")
    assert full.keys() == resumed.keys() and len(full) > 10
    for name in full:  # bitwise: model, AdamW moments, scheduler and every rank's dropout stream put back
        assert torch.equal(full[name], resumed[name]), name


def test_sharded_run_trains_as_one_unsharded_process(runs):
    # 2 ranks, each half of the global batch, gradients averaged by FSDP == 1 process on the whole batch
    # (without dropout, whose streams differ per rank); equal up to float32 summation order
    _, (two, one) = runs
    sharded, single, init = torch.load(two / "full.pt"), torch.load(one / "full.pt"), torch.load(one / "init.pt")
    assert sharded.keys() == single.keys() == init.keys()
    moved = 0
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(single[name], init[name])
    assert moved > 0.9 * len(single)  # the runs trained (nearly every tensor changed)


def test_full_ft_artifact_is_the_gathered_model(runs):
    from transformers import BertForSequenceClassification

    out, _ = runs
    gathered = torch.load(out / "full.pt")
    model = BertForSequenceClassification.from_pretrained(out / "full_model")
    state = model.state_dict()
    for name, value in gathered.items():
        assert torch.equal(state[name], value), name


def test_fsdp_on_cpu_is_refused_not_silently_unsharded(tmp_path):
    # `accelerate launch --use_fsdp --fsdp_version 2 ... method=full_ft` as a user types it, on CPU, where
    # Accelerate cannot shard: one clear error (exit 2), before any training
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
                          "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                          "--dynamo_backend", "no", "train.py", f"results_dir={tmp_path}", "model=tiny_encoder",
                          "method=full_ft", "train.max_steps=2", "data.max_train_samples=32",
                          "data.max_eval_samples=16", "train.batch_size=16", "device=cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "exitcode: 2" in text or out.returncode == 2, text[-3000:]
    assert "FSDP was asked for" in text and "FSDP needs GPUs" in text.replace("\n", " "), text[-3000:]
    assert not list(tmp_path.rglob("log.jsonl")) and not list(tmp_path.rglob("metrics.json"))


def test_engine_rules():
    from accelerate.utils import DistributedType

    from rocoft.distributed import check_engine
    from rocoft.errors import UserError

    v2 = {"FSDP_VERSION": "2"}
    check_engine(DistributedType.FSDP, "full_ft", None, environ=v2)  # the supported case
    with pytest.raises(UserError, match="version 2 only"):
        check_engine(DistributedType.FSDP, "full_ft", None, environ={})
    with pytest.raises(UserError, match="does not run under FSDP: why.*--multi_gpu"):
        check_engine(DistributedType.FSDP, "lora", "why", environ=v2)
    with pytest.raises(UserError, match="full_ft does not run under DeepSpeed"):
        check_engine(DistributedType.DEEPSPEED, "full_ft", None, environ={})
    with pytest.raises(UserError, match="FSDP was asked for"):
        check_engine(DistributedType.MULTI_CPU, "full_ft", None, environ={"ACCELERATE_USE_FSDP": "true", **v2})
    check_engine(None, "full_ft", None, environ={"ACCELERATE_USE_FSDP": "true", **v2})  # judged once built
