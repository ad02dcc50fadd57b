"""Checkpoints that make a killed or preempted run resume exactly where it stopped.

``<run>/checkpoints/step_<N>/`` holds the trainable tensors only (small for PEFT methods; RoCoFT's
trained slices and their indices), the optimizer and scheduler states, the RNG states and the
run's :class:`Position` (step, epoch, batches consumed, validation history, time so far). Each is written to a temporary folder and renamed into
place, so a kill mid-write leaves the previous checkpoint intact; the last ``keep`` are kept.
The stop signals (``train.stop_signals``, default SIGTERM, SIGUSR1, SIGUSR2: what SLURM sends on
preemption and, through submitit, before the time limit) and Ctrl-C make the loop write a checkpoint at
the next step and stop (before training: stop at once); :func:`hand_on` then gets the job requeued.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch


class Preempted(BaseException):
    """A stop signal ended the run: raised by the loop after it saved a checkpoint of the latest step
    (``train.stop_signals``, or SIGINT: Ctrl-C), or at once, by the signal handler, before training started
    (``step`` None: there is nothing to save).

    ``previous`` is the handler the signal had before the run took it (under SLURM: submitit's, which
    requeues the job on SIGUSR2); ``main``: raised on the main process (rank 0), which alone writes files;
    ``stage``: what the run was doing. A BaseException, as KeyboardInterrupt: ``except Exception`` in a
    library does not swallow it."""

    def __init__(self, signum: int, step: int | None, previous=None, main: bool = True, stage: str = "training"):
        where = (f"at step {step}; checkpoint saved" if step is not None
                 else f"during {stage}, before training started; nothing to save")
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")
        self.signum, self.step, self.previous, self.main, self.stage = signum, step, previous, main, stage

    @property
    def interrupted(self) -> bool:
        """Ctrl-C (SIGINT): a person stopped the run (status ``interrupted``, never requeued)."""
        return self.signum == signal.SIGINT


DEFAULT_STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


def parse_signals(names) -> tuple[signal.Signals, ...]:
    """``["SIGTERM", "USR2", 10]`` -> signal.Signals; a clear error for a name that is no signal."""
    out = []
    for name in names:
        try:
            sig = signal.Signals(name) if isinstance(name, int) else signal.Signals[
                str(name).upper() if str(name).upper().startswith("SIG") else "SIG" + str(name).upper()]
        except (KeyError, ValueError):
            from .errors import UserError

            raise UserError(f"train.stop_signals: {name!r} is not a signal (e.g. SIGTERM, SIGUSR1, SIGUSR2)") from None
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            from .errors import UserError

            raise UserError(f"train.stop_signals: {sig.name} cannot be caught")
        out.append(sig)
    return tuple(dict.fromkeys(out))


class StopSignals:
    """Turn the stop signals into a flag the run checks at step boundaries, for the whole of a run.

    Installed over whatever handled them before (under SLURM: submitit's, whose SIGUSR2 handler would
    otherwise requeue and ``sys.exit`` from inside the signal handler, mid-step); put back on exit.
    ``interrupt``: SIGINT (Ctrl-C) too, in place of KeyboardInterrupt; a second Ctrl-C raises
    KeyboardInterrupt at once. ``immediate`` (before training: nothing to save yet): the handler raises
    :class:`Preempted` at once, wherever the run is (data preparation, model loading); the run sets it to
    False once training starts, and the loop then stops at its next step boundary, after a checkpoint.
    ``stage`` names what the run is doing (for the messages).

    :meth:`agreed` is the flag all processes agree on: with torch.distributed initialised, a max
    all-reduce at each step boundary, so every rank stops at the same step (none is left waiting in a
    collective because it saw the signal one step later)."""

    def __init__(self, signals=DEFAULT_STOP_SIGNALS, device=None, interrupt: bool = False, immediate: bool = False):
        self.signals = parse_signals(signals) + ((signal.SIGINT,) if interrupt else ())
        self.device = device
        self.immediate = immediate
        self.stage = "start-up"
        self.received: int | None = None
        self.previous = {}

    def __enter__(self):
        for s in dict.fromkeys(self.signals):
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            if signum == signal.SIGINT:  # Ctrl-C again: stop now
                raise KeyboardInterrupt
            return
        self.received = signum
        if self.immediate:
            raise Preempted(signum, None, previous=self.previous_handler(signum), stage=self.stage)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}

    def agreed(self) -> int | None:
        """The signal to stop on, the same on every process (None: go on)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return self.received
        flag = torch.tensor([self.received or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None

    def previous_handler(self, signum: int):
        return self.previous.get(signum)


def hand_on(error: Preempted) -> None:
    """After the checkpoint: get the job requeued, if it runs under SLURM.

    A Python handler that held the signal before the loop (submitit's) gets it: on SIGUSR2 submitit
    requeues the job (``scontrol requeue``; counting time-outs against ``max_num_timeout``) and exits
    with SystemExit. Without one, under SLURM (``SLURM_JOB_ID`` set), the main process requeues the
    job itself on any stop signal but SIGTERM. SIGTERM is not requeued here: SLURM sends it when it
    requeues a job itself (preemption with PreemptMode=REQUEUE, ``scontrol requeue``) and on ``scancel``,
    which means stop."""
    import os
    import subprocess

    handler = error.previous
    if callable(handler) and handler is not signal.default_int_handler:
        handler(error.signum, None)
        return
    job = os.environ.get("SLURM_JOB_ID")
    if job and error.main and error.signum != signal.SIGTERM:
        try:
            subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
            print(f"requeued SLURM job {job}", flush=True)
        except (OSError, subprocess.SubprocessError) as e:
            print(f"warning: could not requeue SLURM job {job}: {e}", flush=True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors, plus each RoCoFT slice's ``index`` (which values it trains: a checkpoint of a
    random or Wanda selection must put back the same rows)."""
    from .core import RoCoFTSlice  # here, not at the top: rocoft.runs imports this module to skip runs cheaply

    state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({f"{n}.index": m.index.detach().cpu().clone() for n, m in model.named_modules()
                  if isinstance(m, RoCoFTSlice)})
    return state


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Position:
    """Where a run stands: the ``state.json`` of a checkpoint, and where a resumed run starts."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch under way
    in_epoch: int = 0  # batches of that epoch already consumed
    history: list[dict] = field(default_factory=list)  # the periodic validation results so far
    elapsed: dict[str, float] = field(  # the run's time and peak memory so far
        default_factory=lambda: {"wall_time_s": 0.0, "train_time_s": 0.0, "peak_memory_mb": 0.0})

    @classmethod
    def from_json(cls, text: str) -> Position:
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Resumed:
    """The latest checkpoint, put back into the model, optimizer, scheduler and RNGs."""

    position: Position
    path: Path
    method_state: dict | None  # what Method.extra_state returned (None: nothing)


class Checkpointer:
    def __init__(self, directory: Path, keep: int = 2, enabled: bool = True):
        self.dir, self.keep, self.enabled = Path(directory), max(1, int(keep)), enabled

    def checkpoints(self) -> list[Path]:
        found = [p for p in self.dir.glob("step_*") if (p / "state.json").is_file()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def save(self, model, optimizer, scheduler, position: Position, method_state: dict | None = None) -> Path | None:
        if not self.enabled:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=".tmp-"))
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "training_state.pt")
        if method_state is not None:
            torch.save(method_state, tmp / "method_state.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(position)))  # written last: marks a complete folder
        target = self.dir / f"step_{position.step}"
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        for old in self.checkpoints()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def load_latest(self, model, optimizer, scheduler) -> Resumed | None:
        found = self.checkpoints()
        if not found:
            return None
        path = found[-1]
        state = upgrade_names(torch.load(path / "trainable.pt", weights_only=False))
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"Checkpoint {path} does not fit this model: {result.unexpected_keys[:3]}")
        training = torch.load(path / "training_state.pt", weights_only=False)
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        set_rng_state(training["rng"])
        method_state = (torch.load(path / "method_state.pt", weights_only=False)
                        if (path / "method_state.pt").is_file() else None)
        return Resumed(Position.from_json((path / "state.json").read_text()), path, method_state)


def upgrade_names(state: dict) -> dict:
    """Checkpoints of suite versions before the one-layer RoCoFT named a layer's trained values
    ``<layer>.rocoft.weight|index``; the layer now holds them per adapter, ``<layer>.rocoft_slices.default.*``."""
    return {k.replace(".rocoft.", ".rocoft_slices.default.") if k.endswith((".rocoft.weight", ".rocoft.index"))
            else k: v for k, v in state.items()}
