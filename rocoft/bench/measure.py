"""One training step, and the memory measures taken around it on CPU and CUDA.

One step = forward + loss + backward + AdamW step + zero_grad(set_to_none).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over all warm-up and timed steps (peak stats reset
after the model is built). On CPU (``--cpu-memory``):
  * ``profiler`` (default, in process): bytes of every live tensor before a step (parameters, buffers,
    optimizer state, inputs; shared storages once, :func:`live_tensor_bytes`) + the peak of torch's CPU
    allocations during one extra step recorded by ``torch.profiler.profile(profile_memory=True)``
    (:func:`profiled_step_peak_bytes`). Comparable to CUDA's max_memory_allocated; allocations outside
    torch's allocator (oneDNN/BLAS scratch) are not seen.
  * ``rss``: each variant again in a fresh process (``python -m rocoft.bench.rss``: build + 2 steps); its
    RSS high-water (/proc/self/status VmHWM; not ru_maxrss, which Linux carries over from the parent into
    an exec'd child) minus its RSS just before the model was built.
  * ``both``: ``profiler`` for peak_mb, plus the ``rss`` figure in ``rss_peak_mb``.  ``none``: skip.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

import torch
from torch import nn

from ..utils import peak_memory

MB = 2 ** 20
CPU_MEMORY_MODES = ("profiler", "rss", "both", "none")

MEMORY_DOC = {
    "fake_tensor_estimate": "predicted peak of live tensor storages (512-byte granules) over 3 steps under "
                            "FakeTensorMode on the CPU, with the CUDA settings; no arithmetic ran (see --estimate-memory)",
    "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated over warm-up + timed steps (weights included)",
    "cpu_live_tensors+profiled_step_peak": "live torch tensors before a step (weights, optimizer state, inputs) + "
                                           "peak torch CPU allocations during one profiled step",
    "rss": "RSS high-water (VmHWM) of a fresh subprocess per variant (build + 2 steps) minus its RSS before "
           "the model was built",
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_step(model, inputs, optimizer, autocast_dtype, device) -> torch.Tensor:
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        loss = model(**inputs).loss
    loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def live_tensor_bytes(model: nn.Module, optimizer, inputs: dict) -> int:
    """Bytes of parameters, grads, buffers, optimizer state and inputs; each storage counted once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.numel():
            st = t.untyped_storage()
            key = (t.device, st.data_ptr())
            if key not in seen:
                seen.add(key)
                total += st.nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
    for b in model.buffers():
        add(b)
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                add(v)
    for v in inputs.values():
        add(v)
    return total


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence the profiler's native start/stop lines (written straight to fd 2)."""
    sys.stderr.flush()
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def profiled_step_peak_bytes(step) -> int:
    """Peak of torch CPU allocations made during ``step()`` (still-live + transient), via the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        if e.device_type() == torch.autograd.DeviceType.CPU:
            cur += e.nbytes()
            peak = max(peak, cur)
    return peak


def current_rss_bytes() -> int | None:
    """This process's resident set size now (/proc/self/status VmRSS, else psutil), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except Exception:  # noqa: BLE001
        return None


def peak_rss_bytes() -> int:
    """This process's RSS high-water (VmHWM, via :func:`rocoft.utils.peak_memory`). VmHWM belongs to the
    address space created at exec; ru_maxrss would NOT do: Linux carries the parent's high-water into an
    exec'd child's ru_maxrss."""
    return round(peak_memory(torch.device("cpu"))["peak_memory_mb"] * MB)
