"""Checkpoints that make a killed or preempted run resume exactly where it stopped.

``<run>/checkpoints/step_<N>/`` holds the trainable tensors only (small for PEFT methods; RoCoFT's
trained slices and their indices), the optimizer and scheduler states, the RNG states and the
run's :class:`Position` (step, epoch, batches consumed, validation history, time so far) and the settings
it was made with (:func:`rocoft.utils.run_settings`). Each is written to a temporary folder, flushed to disk
(files, then the folder) and renamed into place, so a kill or a node crash mid-write leaves the previous
checkpoint intact; the just-written one and the ``keep - 1`` before it are kept. Loading validates: a
checkpoint that cannot be read (a truncated file, an empty ``state.json``, a missing file) or that was made
with other settings is skipped, with a message saying which and why, for the newest one that can.
The stop signals (``train.stop_signals``, default SIGTERM, SIGUSR1, SIGUSR2: what SLURM sends on
preemption and, through submitit, before the time limit) and Ctrl-C make the loop write a checkpoint at
the next step and stop (before training: stop at once); :func:`hand_on` then gets the job requeued.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .utils import fsync_dir, respect_umask, settings_differences


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
                 else f"during {stage}, before any checkpoint; nothing to save")
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
    def from_dict(cls, data: dict) -> Position:
        """From a checkpoint's ``state.json`` (keys of other versions, and ``settings``, ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Resumed:
    """The latest checkpoint, put back into the model, optimizer, scheduler and RNGs."""

    position: Position
    path: Path
    method_state: dict | None  # what Method.extra_state returned (None: nothing)


class Unusable(Exception):
    """A checkpoint that cannot be resumed from (why, in words)."""


def _save_durably(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _step(path: Path) -> int:
    return int(path.name.split("_")[1])


class Checkpointer:
    """``<run>/checkpoints/step_<N>/`` of one run. ``settings``: the run's (:func:`rocoft.utils.run_settings`),
    recorded in each checkpoint; only a checkpoint of the same settings is resumed (None: not checked).

    ``sharded``: the model is sharded across processes (FSDP2); every rank then calls :meth:`save` and
    :meth:`load_latest` (collectives) and writes its own shards and RNG states (:mod:`rocoft.sharded`), and
    the ranks agree on which checkpoint is usable; otherwise only the main process writes (``enabled``)."""

    def __init__(self, directory: Path, keep: int = 2, enabled: bool = True, settings: dict | None = None,
                 sharded: bool = False):
        self.dir, self.keep, self.enabled, self.settings = Path(directory), max(1, int(keep)), enabled, settings
        self.sharded = sharded

    def checkpoints(self) -> list[Path]:
        found = [p for p in self.dir.glob("step_*") if p.name[5:].isdigit() and (p / "state.json").is_file()]
        return sorted(found, key=_step)

    def save(self, model, optimizer, scheduler, position: Position, method_state: dict | None = None) -> Path | None:
        if not self.enabled:
            return None
        if self.sharded:
            return self._save_sharded(model, optimizer, scheduler, position, method_state)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=".tmp-"))
        _save_durably(trainable_state(model), tmp / "trainable.pt")
        _save_durably({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
                      tmp / "training_state.pt")
        return self._finish(tmp, position, method_state)

    def _finish(self, tmp: Path, position: Position, method_state) -> Path:
        """Main process: the method state and ``state.json`` (last: marks a complete folder), the rename, pruning."""
        if method_state is not None:
            _save_durably(method_state, tmp / "method_state.pt")
        state = {**asdict(position), **({} if self.settings is None else {"settings": self.settings})}
        with open(tmp / "state.json", "w") as f:  # written last: marks a complete folder
            f.write(json.dumps(state))
            f.flush()
            os.fsync(f.fileno())
        respect_umask(tmp)  # mkdtemp made it 0700
        fsync_dir(tmp)
        target = self.dir / f"step_{position.step}"
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        fsync_dir(self.dir)
        self._prune(target)
        return target

    def _save_sharded(self, model, optimizer, scheduler, position: Position, method_state) -> Path:
        from . import sharded

        main = sharded.rank() == 0
        tmp = [None]
        if main:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = [str(tempfile.mkdtemp(dir=self.dir, prefix=".tmp-"))]
        if torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(tmp, src=0)
        tmp = Path(tmp[0])
        sharded.save_sharded(tmp, model, optimizer)  # every rank its shards (DCP syncs its files)
        _save_durably(rng_state(), sharded.rng_file(tmp))
        if main:
            _save_durably({"scheduler": scheduler.state_dict()}, tmp / "training_state.pt")
        sharded.barrier()  # every rank's files are in place before the folder is marked complete
        target = self._finish(tmp, position, method_state) if main else self.dir / f"step_{position.step}"
        sharded.barrier()
        return target

    def _prune(self, target: Path) -> None:
        """Keep ``target`` and the ``keep - 1`` checkpoints before it. Any of a later step is from a line this run
        left (one skipped as unreadable, or of other settings): never resumed again, removed too."""
        others = [p for p in self.checkpoints() if p != target]
        earlier = [p for p in others if _step(p) < _step(target)]
        stale = [p for p in others if _step(p) > _step(target)] + earlier[:max(0, len(earlier) - (self.keep - 1))]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)

    def _read(self, path: Path) -> tuple[Position, dict, dict, dict | None]:
        """The contents of checkpoint ``path``, all read before anything is put back; :class:`Unusable` if not."""
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError) as e:
            raise Unusable(f"state.json is unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise Unusable("state.json holds no position (no step)")
        position = Position.from_dict(state)
        if self.settings is not None and state.get("settings") is not None:
            changed = settings_differences(state["settings"], self.settings)
            if changed:
                raise Unusable(f"made with other settings ({'; '.join(changed[:3])})")
        if self.sharded:
            return self._read_sharded(path, position)
        loaded = {}
        for name in ("trainable.pt", "training_state.pt", "method_state.pt"):
            if name == "method_state.pt" and not (path / name).exists():
                loaded[name] = None
                continue
            try:
                loaded[name] = torch.load(path / name, weights_only=False)
            except Exception as e:  # noqa: BLE001 - truncated, missing or garbled: all make it unusable
                raise Unusable(f"{name} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        training = loaded["training_state.pt"]
        if not (isinstance(training, dict) and {"optimizer", "scheduler", "rng"} <= training.keys()):
            raise Unusable("training_state.pt lacks the optimizer, scheduler or RNG state")
        return position, upgrade_names(loaded["trainable.pt"]), training, loaded["method_state.pt"]

    def _read_sharded(self, path: Path, position: Position):
        """This rank's part of a sharded checkpoint (its RNG states; the scheduler), checked before the collective
        load: the shards themselves are read by :func:`rocoft.sharded.load_sharded`."""
        from . import sharded

        if not (path / sharded.MODEL_DIR / ".metadata").is_file():
            raise Unusable(f"{sharded.MODEL_DIR}/.metadata is missing")
        try:
            training = torch.load(path / "training_state.pt", weights_only=False)
            rng = torch.load(sharded.rng_file(path), weights_only=False)
            method_state = (torch.load(path / "method_state.pt", weights_only=False)
                            if (path / "method_state.pt").exists() else None)
        except Exception as e:  # noqa: BLE001 - truncated, missing or garbled
            raise Unusable(f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        if not (isinstance(training, dict) and "scheduler" in training):
            raise Unusable("training_state.pt lacks the scheduler state")
        return position, None, {"scheduler": training["scheduler"], "rng": rng}, method_state

    def _agreed(self, usable: bool) -> bool:
        """Sharded: a checkpoint is used only if every rank can read its part (they load it together)."""
        if not (self.sharded and torch.distributed.is_initialized()):
            return usable
        flag = torch.tensor([int(usable)])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item())

    def load_latest(self, model, optimizer, scheduler) -> Resumed | None:
        """Put back the newest usable checkpoint (see the module's docstring); None if there is none."""
        for path in reversed(self.checkpoints()):
            try:
                position, state, training, method_state = self._read(path)
                why = None
            except Unusable as e:
                why = e
            if not self._agreed(why is None):
                if self.enabled and (why is not None or self.sharded):
                    print(f"warning: skipping checkpoint {path}: {why or 'another rank cannot read its part'}",
                          file=sys.stderr, flush=True)
                continue
            if self.sharded:
                from . import sharded

                sharded.load_sharded(path, model, optimizer)
                scheduler.load_state_dict(training["scheduler"])
                set_rng_state(training["rng"])
                return Resumed(position, path, method_state)
            result = model.load_state_dict(state, strict=False)
            if result.unexpected_keys:
                raise RuntimeError(f"Checkpoint {path} does not fit this model: {result.unexpected_keys[:3]}")
            optimizer.load_state_dict(training["optimizer"])
            scheduler.load_state_dict(training["scheduler"])
            set_rng_state(training["rng"])
            return Resumed(position, path, method_state)
        return None


def upgrade_names(state: dict) -> dict:
    """Checkpoints of suite versions before the one-layer RoCoFT named a layer's trained values
    ``<layer>.rocoft.weight|index``; the layer now holds them per adapter, ``<layer>.rocoft_slices.default.*``."""
    return {k.replace(".rocoft.", ".rocoft_slices.default.") if k.endswith((".rocoft.weight", ".rocoft.index"))
            else k: v for k, v in state.items()}
