"""Checkpoints that make a killed or preempted run resume exactly where it stopped.

``<run>/checkpoints/step_<N>/`` holds the trainable tensors only (small for PEFT methods; RoCoFT's
trained slices and their indices), the optimizer and scheduler states, the RNG states and the
run's :class:`Position` (step, epoch, batches consumed, validation history, time so far). Each is written to a temporary folder and renamed into
place, so a kill mid-write leaves the previous checkpoint intact; the last ``keep`` are kept.
SIGTERM / SIGUSR1 (what SLURM sends before preemption or the time limit) make the loop write a
checkpoint at the next step and stop.
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


class Preempted(Exception):
    """Raised by the loop after it saved a checkpoint on SIGTERM / SIGUSR1."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved")
        self.signum, self.step = signum, step


class StopSignals:
    """Turn SIGTERM / SIGUSR1 into a flag the training loop checks after each step."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self.previous = {}

    def __enter__(self):
        for s in self.SIGNALS:
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        StopSignals._last_previous = dict(self.previous)

    _last_previous: dict = {}

    @staticmethod
    def forward_to_previous(signum: int) -> None:
        """Pass a signal on to whoever handled it before the loop (e.g. submitit, which then requeues)."""
        handler = StopSignals._last_previous.get(signum)
        if callable(handler) and handler not in (signal.default_int_handler,):
            handler(signum, None)


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
