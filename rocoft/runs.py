"""One run's life in its directory, owned here from start to end.

:func:`execute` decides: skip a complete run, refuse a directory holding a run of other settings,
else :func:`run` it. :func:`run` opens the directory (writable? ``config.yaml``, ``status.json``;
a forced re-run keeps the old results as ``metrics.replaced.json``), has
:func:`rocoft.training.train_and_evaluate` fit and evaluate (it writes only ``log.jsonl`` and
``checkpoints/`` while it trains, and returns the results), then writes the predictions, the
method's artifact and ``metrics.json`` (atomically, last), marks the run complete and removes its
checkpoints.

``<run>/status.json`` says ``running``, ``complete``, ``preempted``, ``interrupted`` (Ctrl-C) or ``failed``
(with the error and, for unexpected errors, the traceback). Since ``metrics.json`` is written last, a run directory with
it is complete: re-launching the same command (or sweep) skips it unless ``force=true``. A failed
job of a sweep does not stop the others. A user error (bad config or data) of a single run leaves
nothing half-written in results/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from .checkpoint import Preempted, StopSignals, hand_on
from .distributed import export_slurm_environment, is_main_process, quiet_other_ranks
from .errors import UserError
from .utils import atomic_write_json, atomic_write_text, flat_dict, git_info, package_versions

USER_ERROR_EXIT = 2
METRICS_FORMAT = 2  # metrics.json version: 2 = every score a fraction (1, unversioned: QA/ROUGE/LLM in percent)
# settings that do not change what a run computes: a run directory may be resumed or skipped across them
NEUTRAL = {"force", "results_dir", "output_dir", "device", "logger", "save", "hydra", "train.resume",
           "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.eval_batch_size",
           "train.stop_signals"}


def changed_settings(run_dir: Path, cfg) -> list[str]:
    """``key: old -> new`` for each setting of ``cfg`` that differs from the run already in ``run_dir``."""
    from omegaconf import OmegaConf

    try:
        old = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    except Exception:  # noqa: BLE001 - no or unreadable config: nothing to compare
        return []
    new = OmegaConf.to_container(cfg, resolve=True)
    a, b = flat_dict(old or {}), flat_dict(new)
    neutral = lambda k: any(k == n or k.startswith(n + ".") for n in NEUTRAL)  # noqa: E731
    # keys in only one of them come from another version of the suite (a new option at its default): not compared
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if not neutral(k) and a[k] != b[k]]


def write_status(run_dir: Path, status: str, **extra) -> None:
    """``<run>/status.json``; written by the main process only (rank 0 of a multi-process run)."""
    if not is_main_process():
        return
    atomic_write_json(run_dir / "status.json", {"status": status, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                "host": socket.gethostname(), **extra})


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _remove_partial(run_dir: Path, stop: Path) -> None:
    """Delete a run directory this failed run created (no metrics, no checkpoints), and empty parents."""
    if not run_dir.is_dir() or (run_dir / "metrics.json").exists() or (run_dir / "checkpoints").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent
    while parent != stop and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def check_output_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"Cannot write to output_dir={run_dir} ({e.strerror}); "
                        f"choose another with output_dir=... or results_dir=...") from None


def open_run_dir(run_dir: Path, cfg) -> None:
    """Before training: a writable directory, the old results of a forced re-run kept aside, the config, status."""
    from omegaconf import OmegaConf

    check_output_dir(run_dir)
    if (run_dir / "metrics.json").exists():  # a forced re-run: no stale results, but the old ones kept aside
        os.replace(run_dir / "metrics.json", run_dir / "metrics.replaced.json")
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_status(run_dir, "running")


def close_run_dir(run_dir: Path, cfg, result, metrics: dict) -> None:
    """After training: predictions, the method's artifact, metrics.json (last), status; checkpoints removed."""
    for split, records in result.records.items():
        if records is not None:
            atomic_write_text(run_dir / f"predictions_{split}.jsonl",
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    save_artifacts(result.model, result.method, cfg, run_dir)
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_status(run_dir, "complete")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is done: results + adapter stay


def save_artifacts(model, method, cfg, run_dir: Path) -> None:
    """The method's artifact in <run>/adapter (for RoCoFT: peft format); optionally a merged model."""
    if cfg.save.adapter:
        method.save(model, run_dir / "adapter")
    if cfg.save.merged:
        merged = method.merged(model)
        if merged is None:
            print(f"note: method={method.name} cannot be merged into the weights; no merged model written")
        else:
            merged.save_pretrained(run_dir / "merged")


def run(cfg, stop: StopSignals | None = None) -> dict:
    """Train and evaluate ``cfg`` in its directory (``cfg.output_dir``), resuming from its latest checkpoint;
    returns the metrics written to ``metrics.json``. ``stop``: the run's stop signals (see execute)."""
    from .training import build_accelerator, train_and_evaluate  # heavy imports only when a run really starts
    from .validation import validate_config

    validate_config(cfg)  # before anything is written (from the command line: also before Hydra's directory)
    run_dir = Path(cfg.output_dir)
    accelerator = build_accelerator(cfg)
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()  # every rank has read the directory (execute's skip/refuse) before rank 0 writes
    if main:
        open_run_dir(run_dir, cfg)
    result = train_and_evaluate(cfg, accelerator, run_dir, stop)
    metrics = {**result.metrics, "metrics_format": METRICS_FORMAT, "git": git_info(), "versions": package_versions()}
    if main:
        close_run_dir(run_dir, cfg, result, metrics)
        print_summary(metrics, run_dir)
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
    done = read_json(run_dir / "metrics.json")
    if not cfg.force and (done is not None or (run_dir / "checkpoints").is_dir()):
        changed = changed_settings(run_dir, cfg)
        if changed:  # never skip to, or resume, a run of other settings
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            print(f"\nerror: {run_dir} already holds a {'complete' if done is not None else 'started'} run with "
                  f"other settings ({shown}). Give this run its own directory (to sweep a setting that is not "
                  f"in the path, put it there: output_dir='${{results_dir}}/${{task.name}}/${{model.name}}/"
                  f"${{method.tag}}/lr${{train.lr}}/seed${{seed}}'), or force=true to replace that run.",
                  file=sys.stderr)
            if multirun:
                return None
            sys.exit(USER_ERROR_EXIT)
    if done is not None and not cfg.force:
        print(f"{run_dir} is complete: skipping (force=true re-runs it).")
        return main_value(done)
    try:
        metrics = run(cfg, stop)
    except Preempted as e:
        if e.main and not (run_dir / "metrics.json").exists():  # (a forced re-run stopped before it began: untouched)
            write_status(run_dir, "interrupted" if e.interrupted else "preempted", step=e.step, stage=e.stage,
                         signal=signal.Signals(e.signum).name)
            print(f"\n{run_dir}: {e}. Run the same command again to "
                  f"{'resume' if e.step is not None else 'start it'}"
                  f"{'' if e.interrupted else ' (a SLURM job is requeued)'}.", file=sys.stderr, flush=True)
        if not e.interrupted:
            hand_on(e)  # under SLURM: the job requeued (submitit's handler, which exits, or scontrol requeue)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # Ctrl-C twice: stopped at once, without a checkpoint of the latest step
        if (read_json(run_dir / "status.json") or {}).get("status") == "running":
            write_status(run_dir, "interrupted", error="Ctrl-C twice: stopped before a checkpoint", step=None)
        print(f"\n{run_dir}: interrupted (Ctrl-C twice); no checkpoint of the latest step.", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except SystemExit as e:  # submitit's signal handler exiting outside the loop
        if (read_json(run_dir / "status.json") or {}).get("status") == "running":
            write_status(run_dir, "preempted", error=f"SystemExit (exit code {e.code}) before a checkpoint", step=None)
        raise
    except UserError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        if multirun:  # keep the directory: it says why this grid point failed
            if is_main_process():
                run_dir.mkdir(parents=True, exist_ok=True)
                write_status(run_dir, "failed", error=str(e), kind="user_error")
            return None
        if is_main_process():
            _remove_partial(run_dir, Path(cfg.results_dir))
        if run_dir.is_dir():  # kept for its checkpoints: say why it stopped
            write_status(run_dir, "failed", error=str(e), kind="user_error")
        sys.exit(USER_ERROR_EXIT)
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised for single runs
        if is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if multirun:
            print(f"\nerror in {run_dir}: {type(e).__name__}: {e} (see status.json)", file=sys.stderr)
            return None
        raise
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
