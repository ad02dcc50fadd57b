"""A run directory's safety: one process at a time, a fresh start that can be undone, a true ``status.json``.

Shared by ``train.py`` runs (:mod:`rocoft.runs`) and ``scripts/ntk.py`` runs (:mod:`rocoft.ntk.experiment`).

Lock: rank 0 holds ``<run>/.lock`` (:class:`RunClaim`, over :class:`rocoft.utils.DirectoryLock`: an ``flock``
that dies with its process) from before the directory is opened until the run ends; a second process on the
directory stops with exit code 2, naming the holder, and touches nothing in it (:class:`RunDirRefused`, as
for a directory holding a run of other settings: :func:`check_run_dir`). Skipping a complete run only
reads: no lock.

A fresh start in a directory that holds a previous run (``force=true``, or ``train.resume=false`` with its
checkpoints there) moves the previous run's files into ``<run>/.previous_run/`` first (:func:`put_aside`), so
that the new run starts from nothing (no checkpoint of the previous run is resumed). Hydra's ``.hydra/`` and
``train.log``, the trackers' ``wandb/`` and ``tensorboard/`` and scripts/ntk.py's ``kernels/`` stay in place
(:data:`KEPT`). Then (:func:`settle`, when the claim is released):

- the new run completes: the previous run's files are dropped; its ``metrics.json``, if it had one, is kept
  as ``metrics.replaced.json``;
- the new run fails or is refused (any error, before or after its first checkpoint) or stops before its first
  checkpoint (a stop signal, Ctrl-C, a kill: then at the next start in the directory): the new run's files
  are removed and the previous run's are put back, byte for byte;
- the new run stops (preempted) with a checkpoint: the checkpoint owns the directory (running the command
  again without ``force=true`` resumes it); a complete previous run is kept in ``<run>/.replaced_run/`` until
  the new one completes (then as ``metrics.replaced.json``), an unfinished one is dropped.

``force=true`` always starts afresh: a forced job that is preempted and requeued with ``force=true`` starts
over; submit long forced runs without ``force=true`` once their first attempt has started.

``<run>/status.json`` (:func:`write_status`) says ``running``, ``complete``, ``preempted``, ``interrupted``
(Ctrl-C) or ``failed`` (with the error and, for unexpected errors, the traceback): :func:`run_recorded` writes
the last three, for both kinds of run. A failed job of a sweep does not stop the others.
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

from .checkpoint import Preempted, hand_on
from .distributed import is_main_process
from .errors import UserError
from .utils import (DirectoryLock, atomic_write_json, atomic_write_text, fsync_dir, run_settings,
                    settings_differences)

USER_ERROR_EXIT = 2
ASIDE = ".previous_run"  # a fresh start's previous run, until the new run has a checkpoint or completes
REPLACED = ".replaced_run"  # a complete run replaced by a forced one that stopped unfinished
# in a run directory, never moved aside: the lock, the folders above, and what every invocation adds to
# (and scripts/ntk.py's kernels/: each kernel file is reused only while its inputs hash matches)
KEPT = {DirectoryLock.NAME, ASIDE, ASIDE + ".partial", REPLACED, ".hydra", "wandb", "tensorboard", "kernels"}


class RunDirRefused(UserError):
    """This run may not use its directory (another process holds it, or it holds a run of other settings):
    nothing in it is touched."""


def changed_settings(run_dir: Path, cfg) -> list[str]:
    """``key: old -> new`` for each setting of ``cfg`` that differs from the run already in ``run_dir``."""
    from omegaconf import OmegaConf

    try:
        old = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    except Exception:  # noqa: BLE001 - no or unreadable config: nothing to compare
        return []
    return settings_differences(run_settings(old), run_settings(cfg))


def check_run_dir(run_dir: Path, cfg) -> dict | None:
    """What ``run_dir`` already holds, for ``cfg``: the metrics of a complete run to skip to (None: run), or
    :class:`RunDirRefused` when it holds a run (complete or started) of other settings and not ``force``."""
    done = read_json(run_dir / "metrics.json")
    if cfg.force:
        return None
    if done is not None or (run_dir / "checkpoints").is_dir():
        changed = changed_settings(run_dir, cfg)
        if changed:  # never skip to, or resume, a run of other settings
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            raise RunDirRefused(
                f"{run_dir} already holds a {'complete' if done is not None else 'started'} run with other "
                f"settings ({shown}). Give this run its own directory (to sweep a setting that is not in the path, "
                f"put it there: output_dir='${{results_dir}}/${{task.name}}/${{model.name}}/${{method.tag}}/"
                f"lr${{train.lr}}/seed${{seed}}'), or force=true to replace that run.")
    return done


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
    """Delete a run directory this failed run created (no metrics, no checkpoints, no previous run kept aside),
    and empty parents."""
    if not run_dir.is_dir() or any((run_dir / name).exists() for name in
                                   ("metrics.json", "checkpoints", ASIDE, ASIDE + ".partial", REPLACED)):
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
    """Before training: a writable directory, a previous run moved aside for a fresh start, the config, status."""
    from omegaconf import OmegaConf

    check_output_dir(run_dir)
    if cfg.force or not OmegaConf.select(cfg, "train.resume", default=True):  # (scripts/ntk.py: no train.*)
        put_aside(run_dir)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_status(run_dir, "running")


def _previous_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.iterdir() if p.name not in KEPT and not (p.is_file() and p.suffix == ".log")]


def put_aside(run_dir: Path) -> None:
    """A fresh start: move the previous run's files (all but :data:`KEPT`) into ``<run>/.previous_run/`` (via
    ``.previous_run.partial/``, renamed when all are in: a kill midway is undone by :func:`settle`)."""
    entries = _previous_files(run_dir)
    if not entries:
        return
    partial = run_dir / (ASIDE + ".partial")
    partial.mkdir()
    for entry in entries:
        os.rename(entry, partial / entry.name)
    fsync_dir(partial)
    partial.rename(run_dir / ASIDE)
    fsync_dir(run_dir)
    print(f"{run_dir}: starting afresh; the previous run's files are kept in {ASIDE}/ (put back if this run fails "
          f"or stops before its first checkpoint)", flush=True)


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step_*/state.json"))


def _put_back(run_dir: Path, aside: Path) -> None:
    """The new run's files out, the previous run's back. ``checkpoints/`` goes first and comes back last, so that a
    kill midway leaves no checkpoint in the run directory: the next :func:`settle` puts back the rest."""
    for entry in sorted(_previous_files(run_dir), key=lambda p: p.name != "checkpoints"):
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in sorted(aside.iterdir(), key=lambda p: p.name == "checkpoints"):
        os.rename(entry, run_dir / entry.name)
    aside.rmdir()
    fsync_dir(run_dir)


def settle(run_dir: Path, outcome: str) -> None:
    """After a run (``outcome``: ``complete``, ``failed`` or ``stopped``; a killed run's leftovers are settled as
    ``stopped`` at the next start): decide what a previous run moved aside becomes (see the module docstring)."""
    if not run_dir.is_dir():
        return
    partial = run_dir / (ASIDE + ".partial")
    if partial.is_dir():  # killed while moving aside: the new run never started
        _put_back(run_dir, partial)
    complete = (run_dir / "metrics.json").is_file()
    aside, replaced = run_dir / ASIDE, run_dir / REPLACED
    if aside.is_dir():
        if not complete and (outcome == "failed" or not _has_checkpoint(run_dir)):
            _put_back(run_dir, aside)
            why = "failed" if outcome == "failed" else "stopped before its first checkpoint"
            print(f"{run_dir}: the fresh start {why}; the previous run is back as it was", file=sys.stderr, flush=True)
            return
        if (aside / "metrics.json").is_file():
            shutil.rmtree(replaced, ignore_errors=True)
            aside.rename(replaced)
        else:  # an unfinished previous run: the new run's checkpoints supersede its own
            shutil.rmtree(aside)
    if complete and replaced.is_dir():
        if (replaced / "metrics.json").is_file():
            os.replace(replaced / "metrics.json", run_dir / "metrics.replaced.json")
        shutil.rmtree(replaced)


class RunClaim:
    """Rank 0's hold on one run directory for one run: :meth:`acquire` takes its lock (or refuses), settles what
    a killed run left and decides again (skip / refuse / run: another process may have changed it meanwhile);
    :meth:`release` settles the run's ``outcome`` (set by :func:`run`; ``failed`` unless told otherwise) and
    unlocks. Other ranks hold nothing (``held`` stays False)."""

    def __init__(self, run_dir: Path):
        self.dir, self.lock, self.outcome = Path(run_dir), DirectoryLock(run_dir), "failed"

    @property
    def held(self) -> bool:
        return self.lock.held

    def acquire(self, cfg) -> dict | None:
        """Lock; None (go on) or the metrics of a run completed meanwhile (skip to it)."""
        check_output_dir(self.dir)
        holder = self.lock.acquire()
        if holder is not None:
            raise RunDirRefused(f"{self.dir} is in use by {holder}: one run directory takes one process at a time. "
                                f"Wait for it to end (or stop it), or give this run another output_dir=...")
        settle(self.dir, "stopped")
        return check_run_dir(self.dir, cfg)

    def release(self) -> None:
        if self.held:
            try:
                settle(self.dir, self.outcome)
            finally:
                self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def run_recorded(cfg, claim: RunClaim, multirun: bool, body, remove_partial: bool = False):
    """``body()``: a run's decisions and work in ``cfg.output_dir`` under ``claim``, with how it ended recorded in
    ``status.json`` the same way for every kind of run; returns what ``body`` returns, or None for a failed point
    of a sweep (``multirun``: the other points go on). ``claim`` is released last, after this bookkeeping (a
    failed fresh start puts the previous run back).

    - refused (:class:`RunDirRefused`): the message, nothing touched; exit code 2 (a sweep: None);
    - a user error: the message, status ``failed`` (``kind: user_error``); exit code 2 (a sweep: None, its
      directory made if need be: it says why that point failed). ``remove_partial``: a single run's directory
      that this run created and that holds nothing to keep is removed instead (:func:`_remove_partial`);
    - a stop signal (:class:`rocoft.checkpoint.Preempted`): status ``preempted`` (Ctrl-C: ``interrupted``) unless
      the run is complete, the job handed on to be requeued (:func:`rocoft.checkpoint.hand_on`), exit code
      128 + signal; Ctrl-C twice, or a SystemExit (submitit's handler), while it runs: the same status;
    - any other error: status ``failed`` with the traceback; re-raised (a sweep: None)."""
    run_dir = Path(cfg.output_dir)
    try:
        return body()
    except RunDirRefused as e:  # in use by another process, or a run of other settings: nothing touched
        print(f"\nerror: {e}", file=sys.stderr)
        if multirun:
            return None
        sys.exit(USER_ERROR_EXIT)
    except Preempted as e:
        if e.main and claim.held and not (run_dir / "metrics.json").exists():  # (a forced re-run stopped before
            write_status(run_dir, "interrupted" if e.interrupted else "preempted", step=e.step, stage=e.stage,
                         signal=signal.Signals(e.signum).name)  # it began: untouched)
            again = "again without force=true" if cfg.force and e.step is not None else "again"
            print(f"\n{run_dir}: {e}. Run the same command {again} to "
                  f"{'resume' if e.step is not None else 'start it'}"
                  f"{'' if e.interrupted else ' (a SLURM job is requeued)'}.", file=sys.stderr, flush=True)
        if not e.interrupted:
            hand_on(e)  # under SLURM: the job requeued (submitit's handler, which exits, or scontrol requeue)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:  # Ctrl-C twice: stopped at once, without a checkpoint of the latest step
        if claim.held and (read_json(run_dir / "status.json") or {}).get("status") == "running":
            write_status(run_dir, "interrupted", error="Ctrl-C twice: stopped before a checkpoint", step=None)
        print(f"\n{run_dir}: interrupted (Ctrl-C twice); no checkpoint of the latest step.", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except SystemExit as e:  # submitit's signal handler exiting outside the loop
        if claim.held and (read_json(run_dir / "status.json") or {}).get("status") == "running":
            write_status(run_dir, "preempted", error=f"SystemExit (exit code {e.code}) before a checkpoint", step=None)
        raise
    except UserError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        if is_main_process():
            if multirun:  # keep the directory: it says why this grid point failed
                run_dir.mkdir(parents=True, exist_ok=True)
            elif remove_partial:
                _remove_partial(run_dir, Path(cfg.results_dir))
            if run_dir.is_dir():  # (a single run's: kept for its checkpoints or its previous run)
                write_status(run_dir, "failed", error=str(e), kind="user_error")
        if multirun:
            return None
        sys.exit(USER_ERROR_EXIT)
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised for single runs
        if is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, "failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if multirun:
            print(f"\nerror in {run_dir}: {type(e).__name__}: {e} (see status.json)", file=sys.stderr)
            return None
        raise
    finally:
        claim.release()
