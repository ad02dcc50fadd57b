"""Sweeps on a real SLURM (issue 12), through the real command line: `python train.py -m hydra/launcher=slurm ...`.

Needs a running SLURM with an idle node: `sudo bash scripts/local_slurm.sh start` sets up a single-node one on
this machine (.ci/run does). Without one these tests are skipped with the reason; with ROCOFT_REQUIRE_SLURM=1
(CI) they fail instead. Partition: $ROCOFT_SLURM_PARTITION, else the cluster's default partition.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.slurm

START_HINT = "start one with: sudo bash scripts/local_slurm.sh start"


def _slurm_partition():
    """(partition, None) when a job can be scheduled there now, else (None, why not)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return None, f"no SLURM here: `sinfo`/`sbatch` not on PATH ({START_HINT})"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %a %t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return None, f"no SLURM reachable: `sinfo` did not answer in 20 s ({START_HINT})"
    if out.returncode != 0:
        return None, f"no SLURM reachable: `sinfo` failed: {out.stderr.strip()[:300]} ({START_HINT})"
    rows = [line.split() for line in out.stdout.splitlines() if len(line.split()) == 3]
    wanted = os.environ.get("ROCOFT_SLURM_PARTITION")
    if wanted is None:
        default = [p for p, _, _ in rows if p.endswith("*")]
        if not default:
            return None, "SLURM has no default partition: set ROCOFT_SLURM_PARTITION"
        wanted = default[0]
    wanted = wanted.rstrip("*")
    states = [t for p, a, t in rows if p.rstrip("*") == wanted and a == "up"]
    if not any(t.startswith(("idle", "mix")) for t in states):
        return None, f"SLURM partition {wanted!r} has no idle node (states: {states or 'none/down'}; {START_HINT})"
    return wanted, None


@pytest.fixture(scope="module")
def partition():
    name, why = _slurm_partition()
    if name is None:
        if os.environ.get("ROCOFT_REQUIRE_SLURM") == "1":
            pytest.fail(f"ROCOFT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    return name


SMALL = ["model=tiny_encoder", "task=rotten_tomatoes", "data.max_train_samples=64", "data.max_eval_samples=32",
         "train.max_steps=3", "train.batch_size=16", "device=cpu"]


def slurm_sweep(results, partition, *grid, timeout=600, small=SMALL):
    """`python train.py -m hydra/launcher=slurm ...` as a user types it; cancels its jobs if it hangs."""
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", *small, f"results_dir={results}",
           f"hydra.launcher.partition={partition}", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
           *grid]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = set(submitit_jobs(results))
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        new = {j.split("_")[0] for j in set(submitit_jobs(results)) - before}
        if new:
            subprocess.run(["scancel", *sorted(new)], timeout=30)
        raise


def submitit_jobs(results):
    """Submitit's job folders so far: <results>/.submitit/<jobid>_<array index> (one per array task), or
    <jobid> (a one-point sweep is a plain job)."""
    folder = results / ".submitit"
    names = {p.name for p in folder.glob("[0-9]*") if p.is_dir()} if folder.is_dir() else set()
    return sorted(n for n in names if "_" in n or not any(m.startswith(n + "_") for m in names))


def job_output(results, jobs):
    return "".join((results / ".submitit" / j / f"{j}_0_log.out").read_text() for j in jobs
                   if (results / ".submitit" / j / f"{j}_0_log.out").exists())


def test_ntk_sweep_runs_as_a_job_array(tmp_path, partition):
    """`python scripts/ntk.py -m hydra/launcher=slurm ... seed=13,21` (the eNTK entry point, issue 14): one array
    job, one task per seed, each a complete kernel run with its own k-shot split."""
    data = tmp_path / "mr"
    data.mkdir()
    for name, n in (("train.csv", 12), ("test.csv", 6)):  # LM-BFF's MR layout: header-less label,text
        (data / name).write_text("".join(f"{i % 2},{'a fine film' if i % 2 else 'a dull film'} take {i}\n"
                                         for i in range(n)))
    results = tmp_path / "ntk"
    cmd = [sys.executable, "scripts/ntk.py", "-m", "hydra/launcher=slurm", "model=tiny_decoder", "task=mr_prompt",
           "k=5", "sets=[full,cols]", "batch_size=4", f"task.data_files.train={data / 'train.csv'}",
           f"task.data_files.test={data / 'test.csv'}", f"results_dir={results}",
           f"hydra.launcher.partition={partition}", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
           "seed=13,21"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", *{j.split("_")[0] for j in submitit_jobs(results)}], timeout=30)
        raise
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = submitit_jobs(results)
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs}) == 1, jobs  # one array, a task per seed
    kernels = {}
    for seed in (13, 21):
        run = results / "mr_prompt" / "tiny_decoder" / "k5" / f"seed{seed}"
        assert json.loads((run / "status.json").read_text())["status"] == "complete", job_output(results, jobs)
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["n_train"] == 10 and metrics["n_test"] == 6
        assert 0.0 <= metrics["accuracy"]["cols"]["reference"]["accuracy"] <= 1.0
        kernels[seed] = torch.load(run / "kernels" / "full.pt", weights_only=True)["kernels"]["train"]
    assert kernels[13].shape == (10, 2, 10, 2) and not torch.equal(kernels[13], kernels[21])  # two k-shot splits


def test_sweep_runs_as_a_job_array_records_failures_and_skips_complete_points(tmp_path, partition):
    seeds = "seed=0,1,2,-1"  # seed -1 composes, then fails at run time (numpy rejects negative seeds)
    t0 = time.time()
    out = slurm_sweep(tmp_path, partition, seeds)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    first = submitit_jobs(tmp_path)
    array_ids = {j.split("_")[0] for j in first}
    assert len(first) == 4 and len(array_ids) == 1, first  # one array job, one task per grid point
    submission = next((tmp_path / ".submitit").glob("*/*_submission.sh")).read_text()
    assert re.search(r"#SBATCH --array=0-3", submission), submission
    assert f"#SBATCH --partition={partition}" in submission and "--gpus-per-node" not in submission
    assert "--signal=USR2@" in submission  # what submitit sends before the time limit
    assert sys.executable in submission  # the jobs run this (venv) python

    base = tmp_path / "rotten_tomatoes" / "tiny_encoder" / "rocoft_row_r3"
    stamps = {}
    for seed in (0, 1, 2):
        run = base / f"seed{seed}"
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "complete", (seed, status)
        metrics = json.loads((run / "metrics.json").read_text())
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
        stamps[seed] = (run / "metrics.json").stat().st_mtime_ns
    failed = json.loads((base / "seed-1" / "status.json").read_text())
    assert failed["status"] == "failed" and failed.get("error"), failed
    assert not (base / "seed-1" / "metrics.json").exists()
    print(f"first sweep: {time.time() - t0:.0f} s; seed -1 failed with: {failed['error']}")

    again = slurm_sweep(tmp_path, partition, seeds)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second = sorted(set(submitit_jobs(tmp_path)) - set(first))
    assert len(second) == 4, second  # relaunched as a new array ...
    log = job_output(tmp_path, second)
    for seed in (0, 1, 2):  # ... whose complete points are skipped, untouched
        assert f"{base / f'seed{seed}'} is complete: skipping" in log, log[-3000:]
        assert (base / f"seed{seed}" / "metrics.json").stat().st_mtime_ns == stamps[seed]
    assert json.loads((base / "seed-1" / "status.json").read_text())["status"] == "failed"


# ---- time limit and preemption: a signalled job checkpoints, is requeued, resumes and finishes by itself
LONG = ["train.max_steps=600", "train.checkpoint_every=0", "train.eval_every=100"]  # ~15-20 s of training


def _losses(run):
    log = run / "log.jsonl"
    return log.read_text().count('"loss"') if log.exists() else 0


def test_usr2_and_requeue_checkpoint_requeue_resume_and_match_an_uninterrupted_run(tmp_path, partition):
    """seed 0 gets SIGUSR2 (what submitit asks SLURM to send before the time limit) through
    `scancel --signal=USR2`; seed 1 is requeued by `scontrol requeue` (its tasks get SIGTERM, as on a
    preemption). Both checkpoint at the next step, say `preempted`, are requeued, resume from the
    checkpoint and end with exactly the metrics and log of the same runs left alone (local, CPU)."""
    results = tmp_path / "slurm"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", "model=tiny_encoder", "task=rotten_tomatoes",
           "data.max_train_samples=64", "data.max_eval_samples=32", "train.batch_size=16", "device=cpu", *LONG,
           f"results_dir={results}", f"hydra.launcher.partition={partition}", "hydra.launcher.cpus_per_task=1",
           "hydra.launcher.timeout_min=15", "seed=0,1"]  # (submitit counts a USR2 within 10 min as a time-out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    base = results / "rotten_tomatoes" / "tiny_encoder" / "rocoft_row_r3"
    runs = {seed: base / f"seed{seed}" for seed in (0, 1)}
    output = (tmp_path / "sweep.out").open("w")  # files, not pipes: a full pipe would block the process
    sweep = subprocess.Popen(cmd, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=env)
    seen = {0: set(), 1: set()}
    jobs, ref = [], None
    try:
        deadline = time.time() + 150
        while time.time() < deadline and not all(_losses(r) >= 40 for r in runs.values()):
            assert sweep.poll() is None, (tmp_path / "sweep.out").read_text()[-3000:]
            time.sleep(0.2)
        assert all(_losses(r) >= 40 for r in runs.values()), "the jobs did not start training in 150 s"
        jobs = submitit_jobs(results)
        assert len(jobs) == 2, jobs
        assert all(_losses(r) < 600 for r in runs.values()), "trained to the end before the signal: raise max_steps"
        subprocess.run(["scancel", "--signal=USR2", jobs[0]], check=True, timeout=30)
        subprocess.run(["scontrol", "requeue", jobs[1]], check=True, timeout=30)
        # the local reference runs meanwhile: same settings, no signal
        ref = subprocess.Popen([sys.executable, "train.py", "-m", "model=tiny_encoder", "task=rotten_tomatoes",
                                "data.max_train_samples=64", "data.max_eval_samples=32", "train.batch_size=16",
                                "device=cpu", *LONG, f"results_dir={tmp_path / 'ref'}", "seed=0,1"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "ref.err").open("w"), env=env)
        deadline = time.time() + 180
        while time.time() < deadline and (sweep.poll() is None or ref.poll() is None):
            for seed, run in runs.items():
                status = (read_status(run) or {}).get("status")
                if status:
                    seen[seed].add(status)
            time.sleep(0.2)
        assert sweep.poll() is not None, "the requeued jobs did not finish in 180 s"
        assert ref.poll() == 0, (tmp_path / "ref.err").read_text()[-3000:]
    finally:
        if ref is not None and ref.poll() is None:
            ref.kill()
        if sweep.poll() is None:
            sweep.kill()
            if jobs:
                subprocess.run(["scancel", *{j.split("_")[0] for j in jobs}], timeout=30)
    assert sweep.returncode == 0, (tmp_path / "sweep.out").read_text()[-3000:]
    assert submitit_jobs(results) == jobs  # requeued under the same job ids, no new submission
    log = {seed: job_output(results, [job]) for seed, job in zip((0, 1), jobs)}
    for seed, run in runs.items():
        assert "preempted" in seen[seed], (seed, seen[seed], log[seed][-3000:])
        assert "running" in seen[seed] and read_status(run)["status"] == "complete"
        resumed = re.search(r"Resuming from \S+step_(\d+) \(step (\d+)\)", log[seed])
        assert resumed and 0 < int(resumed.group(2)) < 600, log[seed][-3000:]
        ref_run = tmp_path / "ref" / run.relative_to(results)
        a, b = (json.loads((r / "metrics.json").read_text()) for r in (run, ref_run))
        assert a["resumed"] and not b["resumed"]
        for key in ("validation", "test", "validation_history", "steps"):
            assert a[key] == b[key], (seed, key, a[key], b[key])
        assert (run / "log.jsonl").read_text() == (ref_run / "log.jsonl").read_text()  # every loss, lr, validation
    assert "Caught signal SIGUSR2" in log[0] and "Requeued job" in log[0]  # submitit's handler, after the checkpoint
    errors = {seed: (results / ".submitit" / job / f"{job}_0_log.err").read_text() for seed, job in zip((0, 1), jobs)}
    assert "stopped by SIGUSR2" in errors[0] and "stopped by SIGTERM" in errors[1]
    print(f"seed 0 (USR2): {resumed_at(log[0])}; seed 1 (scontrol requeue): {resumed_at(log[1])}")


def read_status(run):
    try:
        return json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return None


def resumed_at(text):
    m = re.search(r"Resuming from \S+ \(step (\d+)\)", text)
    return f"resumed from step {m.group(1)}" if m else "not resumed"


def test_a_job_of_two_tasks_is_one_distributed_run_with_the_metrics_of_one_process(tmp_path, partition):
    # dropout 0 and no length grouping: the two ranks then compute exactly the slices of one process's batches
    small = ["model=tiny_encoder", "task=rotten_tomatoes", "data.max_train_samples=64", "data.max_eval_samples=32",
             "train.max_steps=6", "train.batch_size=16", "dropout=0.0", "train.group_by_length=false", "device=cpu",
             "seed=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "train.py", *small, f"results_dir={tmp_path / 'one'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    t0 = time.time()
    two = slurm_sweep(tmp_path / "two", partition, "hydra.launcher.tasks_per_node=2", timeout=300, small=small)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    jobs = submitit_jobs(tmp_path / "two")
    assert len(jobs) == 1, jobs
    job = tmp_path / "two" / ".submitit" / jobs[0]
    assert "#SBATCH --ntasks-per-node=2" in (job / f"{jobs[0]}_submission.sh").read_text()
    for task in (0, 1):  # both tasks ran the job (one rank each) and finished it
        assert "Job completed successfully" in (job / f"{jobs[0]}_{task}_log.out").read_text()

    run_one, run_two = (tmp_path / d / "rotten_tomatoes" / "tiny_encoder" / "rocoft_row_r3" / "seed0"
                        for d in ("one", "two"))
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (run_one, run_two))
    assert b["num_processes"] == 2 and a["num_processes"] == 1 and b["steps"] == a["steps"] == 6
    assert json.loads((run_two / "status.json").read_text())["status"] == "complete"
    records = [json.loads(line) for line in (run_two / "log.jsonl").read_text().splitlines()]  # every line parses
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 7)), steps  # one writer: each step once, in order
    assert sum(1 for r in records if r.get("final")) == 2  # validation and test, once each
    # Hydra's job log in the run directory: rank 0's lines only
    assert (run_two / "train.log").read_text().count("Job completed successfully") == 1

    # the README's tolerance for several processes: losses to 1e-4 (relative), scores within one example
    losses = [[r["loss"] for r in map(json.loads, (r / "log.jsonl").read_text().splitlines()) if "loss" in r]
              for r in (run_one, run_two)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
    for split in ("validation", "test"):
        assert a[split]["accuracy"] == pytest.approx(b[split]["accuracy"], abs=1 / 32 + 1e-9)
    print(f"2-task SLURM job: {time.time() - t0:.0f} s; losses {losses[1]}")
