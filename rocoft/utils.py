"""Run bookkeeping: atomic files, the run directory's lock, settings, provenance, memory."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def respect_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the mode a plain ``open`` / ``mkdir`` gives under
    the umask (0644 / 0755 under umask 022): ``tempfile.mkdtemp`` makes folders 0700, ``mkstemp`` and the
    safetensors writer make files 0600, which a group-shared results directory could not read."""
    mask, path = _umask(), Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk: after a node crash they are there."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, rename over ``path``, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            from .errors import UserError

            raise UserError(f"The disk is full: could not write {path} ({e.strerror}). Free space or choose "
                            f"another results_dir=...; nothing was left half-written.") from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def flat_dict(tree, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for k, v in tree.items():
        out.update(flat_dict(v, f"{prefix}{k}."))
    return out


class DirectoryLock:
    """One process's exclusive hold on a directory: ``fcntl.flock`` on ``<dir>/.lock``, kept while the file stays
    open. The kernel drops it when the process ends, however it ends (kill -9, a node's crash: then with the
    node), so a stale lock never blocks a requeued job. The holder writes its pid, host and start time into
    the file, for the message of a process it refuses; the file itself stays (removing it would let two
    processes lock two different files)."""

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / self.NAME
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock: None, or (another process holds it) who holds it, in words."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
                    if holder else "another process (it has not recorded itself yet)")
        except OSError as e:  # a file system without locks (some network mounts): run, but say so
            os.close(fd)
            print(f"warning: cannot lock {self.path} ({e.strerror}); nothing stops a second process from "
                  f"using this run directory at the same time", file=sys.stderr)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self.fd = fd
        return None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


# settings that do not change what a run computes: a run directory may be resumed or skipped across them
NEUTRAL = {"force", "results_dir", "output_dir", "device", "logger", "save", "hydra", "train.resume",
           "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.eval_batch_size",
           "train.stop_signals", "kernel_dir"}  # kernel_dir: scripts/ntk.py's kernel files


def run_settings(cfg) -> dict:
    """The settings that decide what a run computes: ``cfg`` (a config, or its plain dict) resolved and
    flattened (``{"train.lr": 0.005, ...}``), without the :data:`NEUTRAL` ones."""
    from omegaconf import DictConfig, OmegaConf

    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {k: v for k, v in flat_dict(tree or {}).items()
            if not any(k == n or k.startswith(n + ".") for n in NEUTRAL)}


def settings_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for each setting (of :func:`run_settings`) that differs. Keys in only one of them
    come from another version of the suite (a new option at its default): not compared."""
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old.keys() & new.keys()) if old[k] != new[k]]


class JsonlLog:
    """Append-only JSON-lines log; each record is one write + flush, so a killed run loses at most the last.

    ``keep_until_step`` (a resumed run): keep the records up to that step and continue after them."""

    def __init__(self, path, enabled: bool = True, keep_until_step: int | None = None):
        self.enabled = enabled
        if not enabled:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by the kill
                if record.get("step", 0) <= keep_until_step and not record.get("final"):  # final: redone
                    kept.append(line + "\n")
        self.f = open(path, "w")
        self.f.writelines(kept)
        self.f.flush()

    def write(self, **record) -> None:
        if self.enabled:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.enabled and not self.f.closed:
            self.f.close()


def git_info(root: Path = PROJECT_ROOT) -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "transformers", "accelerate", "peft", "datasets", "hydra-core", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory window for this run (several runs may share one process in a sweep)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the process's RSS high-water mark (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device, at_least_mb: float | None = None) -> dict:
    """Peak memory in MB since reset_peak_memory: CUDA max allocated on GPU, else the RSS high-water mark
    (``at_least_mb``: the peak of the run before it was resumed, if higher)."""
    if device.type == "cuda":
        mb, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:
        try:
            with open("/proc/self/status") as f:
                mb, kind = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024, \
                    "cpu_rss_high_water"
        except (OSError, StopIteration, ValueError):
            mb, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"
    return {"peak_memory_mb": max(mb, at_least_mb or 0.0), "peak_memory_kind": kind}
