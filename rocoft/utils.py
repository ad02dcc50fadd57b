"""Run bookkeeping: atomic files, provenance, memory."""

from __future__ import annotations

import errno
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``."""
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
