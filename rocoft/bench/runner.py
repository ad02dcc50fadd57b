"""Run variants: build, warm up, time steps and measure memory, one variant at a time or interleaved.

Every variant runs on the same inputs (fixed seeds); the model is rebuilt from its shape's config with
the same seed for each variant.

Timing is noisy when other processes share the CPU (OpenMP threads oversubscribed: 3-5x slow-downs
lasting whole variants); :func:`run_interleaved` (CPU, ``--interleave``) builds all variants at once and
alternates their steps so such load hits every variant alike. Records also give min-max per variant and
the minimum step time (the least disturbed step), the steadier figure on a shared machine.
"""

from __future__ import annotations

import statistics
import time

import torch

from .measure import MB, free, live_tensor_bytes, profiled_step_peak_bytes, sync, train_step
from .shapes import DTYPES, Settings, build_model
from .variants import Variant, adapt


class Runner:
    """One variant's model + AdamW on the shared inputs; ``step()`` is one full training step."""

    def __init__(self, settings: Settings, variant: Variant, inputs: dict):
        self.settings, self.variant, self.inputs = settings, variant, inputs
        model = build_model(settings.shape, settings.device, DTYPES[settings.dtype], settings.seed)
        self.model, self.counts = adapt(model, variant, settings.lora_dropout)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr) if params else None
        if sum(p.numel() for p in params) != self.counts["trainable_params"]:
            raise RuntimeError("rocoft.count_parameters disagrees with the parameters that require grad")
        self.times: list[float] = []
        self.loss = None

    def step(self) -> torch.Tensor:
        s = self.settings
        self.loss = train_step(self.model, self.inputs, self.optimizer, s.autocast_dtype, s.device)
        return self.loss

    def timed_step(self) -> None:
        device = self.settings.device
        sync(device)
        t0 = time.perf_counter()
        self.step()
        sync(device)
        self.times.append((time.perf_counter() - t0) * 1e3)

    def cpu_memory(self) -> dict:
        """Live tensor bytes now + peak torch CPU allocations during one profiled step."""
        static = live_tensor_bytes(self.model, self.optimizer, self.inputs)
        return {"static_mb": static / MB, "peak_mb": (static + profiled_step_peak_bytes(self.step)) / MB,
                "memory_measure": "cpu_live_tensors+profiled_step_peak"}

    def result(self) -> dict:
        return {**self.counts, "final_loss": float(self.loss), "step_ms": statistics.median(self.times),
                "step_ms_min": min(self.times), "step_ms_all": list(self.times)}


def _cpu_memory(runner: Runner, cpu_memory: str) -> dict:
    if cpu_memory in ("profiler", "both"):
        return runner.cpu_memory()
    return {"peak_mb": None, "memory_measure": None}


def run_variant(settings: Settings, variant: Variant, inputs: dict, cpu_memory: str) -> dict:
    """Build, warm up, time ``settings.repeats`` steps and measure memory: one variant at a time."""
    device = settings.device
    free(device)
    rec = variant.fields()
    runner = None
    try:
        runner = Runner(settings, variant, inputs)
        rec.update(runner.counts)
        torch.manual_seed(settings.seed)  # same dropout masks for every variant
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            rec["static_mb"] = torch.cuda.memory_allocated(device) / MB
        for _ in range(settings.warmup):
            runner.step()
        for _ in range(settings.repeats):
            runner.timed_step()
        rec.update(runner.result())
        if device.type == "cuda":
            rec["peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
            rec["memory_measure"] = "cuda_max_memory_allocated"
        else:
            rec.update(_cpu_memory(runner, cpu_memory))
    except torch.cuda.OutOfMemoryError as e:  # a variant that does not fit is a result, not a crash
        rec.update(oom=True, step_ms=None, step_ms_all=[], peak_mb=None, error=str(e).splitlines()[0])
    finally:
        del runner
        free(device)
    return rec


def run_interleaved(settings: Settings, variants: list[Variant], inputs: dict, cpu_memory: str, bar) -> list[dict]:
    """CPU only: all variants' models at once; every round runs one step of each (rotating the order), so
    load from other processes slows every variant alike. Memory is then measured per variant as usual."""
    runners = []
    for v in variants:
        bar.set_description(f"{settings.shape.name} build {v.name}")
        runners.append(Runner(settings, v, inputs))
    n = len(runners)
    for rnd in range(settings.warmup + settings.repeats):
        bar.set_description(f"{settings.shape.name} round {rnd + 1}/{settings.warmup + settings.repeats}")
        for k in range(n):
            r = runners[(k + rnd) % n]
            torch.manual_seed(settings.seed + rnd)
            r.step() if rnd < settings.warmup else r.timed_step()
    records = []
    for r in runners:
        records.append({**r.variant.fields(), **r.result(), **_cpu_memory(r, cpu_memory)})
        bar.update(1)
    del runners
    free(settings.device)
    return records
