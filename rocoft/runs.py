"""One ``train.py`` run's life in its directory, owned here from start to end.

:func:`execute` decides: skip a complete run, refuse a directory holding a run of other settings,
else :func:`run` it. :func:`run` claims the directory (:class:`rocoft.rundir.RunClaim`: a lock, so a second
process on it is refused), opens it (writable? ``config.yaml``, ``status.json``), has
:func:`rocoft.training.train_and_evaluate` fit and evaluate (it writes only ``log.jsonl`` and
``checkpoints/`` while it trains, and returns the results), then writes the predictions, the
method's artifact and ``metrics.json`` (atomically, last), marks the run complete and removes its
checkpoints. The directory's safety (the lock, a fresh start's previous run put aside and back, what
``status.json`` records when a run fails or stops) is :mod:`rocoft.rundir`'s, shared with scripts/ntk.py.

Since ``metrics.json`` is written last, a run directory with it is complete: re-launching the same command
(or sweep) skips it unless ``force=true``. A failed job of a sweep does not stop the others. A user error (bad
config or data) of a single run leaves nothing half-written in results/.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

from .checkpoint import Preempted, StopSignals, hand_on
from .distributed import export_slurm_environment, is_main_process, quiet_other_ranks
from .errors import UserError
from .rundir import USER_ERROR_EXIT, RunClaim, check_run_dir, open_run_dir, run_recorded, write_status
from .utils import atomic_write_json, atomic_write_text, git_info, package_versions, respect_umask

METRICS_FORMAT = 2  # metrics.json version: 2 = every score a fraction (1, unversioned: QA/ROUGE/LLM in percent)


def close_run_dir(run_dir: Path, cfg, result, metrics: dict) -> None:
    """After training: predictions, the method's artifact, metrics.json (last), status; checkpoints removed."""
    for split, records in result.records.items():
        if records is not None:
            atomic_write_text(run_dir / f"predictions_{split}.jsonl",
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    save_artifacts(result.model, result.method, cfg, run_dir)
    atomic_write_json(run_dir / "metrics.json", metrics)  # the old results (if any): settle() keeps them
    write_status(run_dir, "complete")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is done: results + adapter stay


def save_artifacts(model, method, cfg, run_dir: Path) -> None:
    """The method's artifact in <run>/adapter (for RoCoFT: peft format); optionally a merged model."""
    if cfg.save.adapter:
        method.save(model, run_dir / "adapter")
        respect_umask(run_dir / "adapter")  # safetensors writes 0600 whatever the umask
    if cfg.save.merged:
        merged = method.merged(model)
        if merged is None:
            print(f"note: method={method.name} cannot be merged into the weights; no merged model written")
        else:
            merged.save_pretrained(run_dir / "merged")
            respect_umask(run_dir / "merged")


def run(cfg, claim: RunClaim | None = None, stop: StopSignals | None = None) -> dict:
    """Train and evaluate ``cfg`` in its directory (``cfg.output_dir``), resuming from its latest checkpoint;
    returns the metrics written to ``metrics.json``. ``claim``: the caller's (:func:`execute`, which releases
    it after its own bookkeeping), else one held for this call; ``stop``: the run's stop signals (see execute)."""
    from .validation import validate_config

    run_dir = Path(cfg.output_dir)
    if claim is None:
        validate_config(cfg)  # before the lock file is written
        with RunClaim(run_dir) as claim:
            return run(cfg, claim, stop)
    validate_config(cfg)  # before anything is written (from the command line: also before Hydra's directory)
    export_slurm_environment()  # a SLURM task knows its rank before the lock (a no-op otherwise, or if done)
    if is_main_process():  # rank 0 alone locks: the other ranks of the run are not refused by it
        done = claim.acquire(cfg)
        if done is not None:
            print(f"{run_dir} was completed meanwhile: skipping (force=true re-runs it).")
            return done
    from .engine import build_accelerator  # heavy imports only when a run really starts
    from .training import train_and_evaluate

    try:
        accelerator = build_accelerator(cfg)
        main = accelerator.is_main_process
        accelerator.wait_for_everyone()  # every rank has read the directory (execute's skip/refuse) before rank 0 writes
        if main:
            open_run_dir(run_dir, cfg)
        accelerator.wait_for_everyone()  # a fresh start's previous run is moved aside before any rank resumes
        result = train_and_evaluate(cfg, accelerator, run_dir, stop)
        metrics = {**result.metrics, "metrics_format": METRICS_FORMAT, "git": git_info(),
                   "versions": package_versions()}
        result.method.gather(result.model)  # every rank: a sharded (FSDP) model is collected on rank 0 to be saved
        if main:
            close_run_dir(run_dir, cfg, result, metrics)
            print_summary(metrics, run_dir)
        claim.outcome = "complete"
    except (Preempted, KeyboardInterrupt, SystemExit):
        claim.outcome = "stopped"
        raise
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def execute(cfg, multirun: bool = False):
    """Run ``cfg`` unless already complete; returns the main validation metric (for Hydra sweepers).

    The stop signals (``train.stop_signals``) and Ctrl-C are the run's from here to the end: before training
    they stop it at once, status ``preempted`` (Ctrl-C: ``interrupted``), exit code 128 + signal; once it
    trains, after a checkpoint of the latest step (see :class:`rocoft.checkpoint.StopSignals`)."""
    try:
        stop = StopSignals(cfg.train.stop_signals, interrupt=True, immediate=True)
    except UserError as e:  # a bad train.stop_signals
        print(f"\nerror: {e}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    with stop:
        try:
            return _execute(cfg, multirun, stop)
        except Preempted as e:  # before the run began (deciding whether to skip it): nothing to record
            print(f"\n{cfg.output_dir}: {e}.", file=sys.stderr)
            sys.exit(128 + e.signum)


def _execute(cfg, multirun: bool, stop: StopSignals):
    run_dir = Path(cfg.output_dir)
    export_slurm_environment()  # one task of a multi-task SLURM job: a rank of one run (no-op otherwise)
    quiet_other_ranks(run_dir)  # rank 0 alone logs into run_dir
    claim = RunClaim(run_dir)

    def skip_or_run() -> dict:
        done = check_run_dir(run_dir, cfg)  # read only, on every rank; decided again under the lock
        if done is not None:
            print(f"{run_dir} is complete: skipping (force=true re-runs it).")
            return done
        return run(cfg, claim, stop)

    metrics = run_recorded(cfg, claim, multirun, skip_or_run, remove_partial=True)
    if metrics is None:  # a failed point of a sweep (recorded in its status.json)
        return None
    if stop.received is not None:  # a stop signal while the results were written: the run completed first
        print(f"\n{run_dir}: complete; then stopped by {signal.Signals(stop.received).name}.", file=sys.stderr)
        if stop.received != signal.SIGINT:
            hand_on(Preempted(stop.received, metrics["steps"], previous=stop.previous_handler(stop.received)))
        sys.exit(128 + stop.received)
    return main_value(metrics)


def main_value(metrics: dict):
    split = (metrics.get("eval_splits") or ["validation"])[0]
    return (metrics.get(split) or {}).get(metrics.get("main_metric"))


def print_summary(metrics: dict, run_dir: Path) -> None:
    p = metrics["params"]
    print(f"\n{metrics['model']} / {metrics['task']} / {metrics['method']}"
          f"{'' if metrics['rank'] is None else ' r=' + str(metrics['rank'])} / seed {metrics['seed']}")
    for split in metrics["eval_splits"]:
        print(f"  {split:<10} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()))
    print(f"  trainable  {p['trainable']:,} of {p['total']:,} ({p['trainable_percent']:.3f}%), "
          f"{p['trainable_without_head']:,} without the task head; {p['additional']:,} parameters added")
    print(f"  time       {metrics['wall_time_s']:.1f} s wall ({metrics['train_time_s']:.1f} s training), "
          f"peak memory {metrics['peak_memory_mb']:.0f} MB ({metrics['peak_memory_kind']})")
    print(f"  results    {run_dir}")
