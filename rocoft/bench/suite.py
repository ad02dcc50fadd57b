"""The whole benchmark: every shape x variant measured, ratios added, JSON and Markdown written.

Outputs (in ``out``): ``efficiency_<shapes>_<device>.json`` (one record per shape x variant; device
``fake`` for the memory estimate) and ``efficiency_<shapes>_<device>.md`` (tables with every figure's
ratio to the frozen floor).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..utils import atomic_write_json, atomic_write_text, git_info, package_versions
from .estimate import estimate_memory
from .report import add_ratios, markdown
from .rss import rss_in_subprocess
from .runner import run_interleaved, run_variant
from .shapes import Settings, make_inputs
from .variants import Variant


def _add_rss(rec: dict, settings: Settings, variant: Variant, threads: int, cpu_memory: str) -> None:
    rss = rss_in_subprocess(settings, variant, threads)
    if rss["trainable_params"] != rec["trainable_params"]:
        raise RuntimeError(f"RSS subprocess of {variant.name} trained {rss['trainable_params']} parameters, "
                           f"this process {rec['trainable_params']}")
    rec["rss_peak_mb"] = rss["rss_peak_mb"]
    if cpu_memory == "rss":
        rec["peak_mb"], rec["memory_measure"] = rss["rss_peak_mb"], "rss"


def measure_shape(s: Settings, variants: list[Variant], common: dict, *, cpu_memory: str, interleave: bool,
                  estimate: bool, threads: int, bar) -> list[dict]:
    """One record per variant for one shape (``common`` fields first)."""
    if estimate:
        recs = []
        for v in variants:
            bar.set_description(f"{s.shape.name} estimate {v.name}")
            recs.append({**common, **v.fields(), **estimate_memory(s, v)})
            bar.update(1)
        return recs
    inputs = make_inputs(s.shape, s.batch, s.seq_len, s.device, s.input_seed)  # the same for every variant
    if interleave:
        recs = [{**common, **r} for r in run_interleaved(s, variants, inputs, cpu_memory, bar)]
    else:
        recs = []
        for v in variants:
            bar.set_description(f"{s.shape.name} {v.name}")
            rec = {**common, **run_variant(s, v, inputs, cpu_memory)}
            recs.append(rec)
            if rec.get("step_ms") is not None:
                bar.set_postfix_str(f"{rec['step_ms']:.0f} ms")
            bar.update(1)
    del inputs
    if cpu_memory in ("rss", "both"):
        for rec, v in zip(recs, variants):
            bar.set_description(f"{s.shape.name} rss {v.name}")
            _add_rss(rec, s, v, threads, cpu_memory)
    return recs


def run_benchmark(settings: list[Settings], variants: list[Variant], out: str | Path, *, command: str,
                  cpu_memory: str = "profiler", interleave: bool = False, estimate: bool = False,
                  progress: bool = True) -> dict:
    """Measure, write the outputs and print the report; returns {"records", "json", "markdown", "table"}.

    ``cpu_memory`` is one of ``rocoft.bench.measure.CPU_MEMORY_MODES`` (ignored on CUDA); ``estimate``
    predicts memory under fake tensors instead of measuring (``rocoft.bench.estimate``)."""
    device = settings[0].device
    threads = torch.get_num_threads()
    versions = package_versions()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    cpu_memory = cpu_memory if device.type == "cpu" else "cuda"
    if estimate:
        cpu_memory, device_name = "none", "none (FakeTensorMode estimate on the CPU)"
    records = []
    t_start = time.perf_counter()
    bar = tqdm(total=len(settings) * len(variants), desc="bench", unit="variant", disable=not progress,
               dynamic_ncols=True)
    for s in settings:
        common = {"shape": s.shape.name, "model_class": s.shape.model_class,
                  "device": "fake" if estimate else device.type, "device_name": device_name, "dtype": s.dtype,
                  "autocast": s.autocast, "batch": s.batch, "seq_len": s.seq_len, "warmup": s.warmup,
                  "repeats": s.repeats, "threads": threads, "interleaved": bool(interleave)}
        recs = measure_shape(s, variants, common, cpu_memory=cpu_memory, interleave=interleave, estimate=estimate,
                             threads=threads, bar=bar)
        for rec in recs:
            rec["versions"] = versions
        records += recs
    bar.close()
    add_ratios(records)

    out = Path(out)
    stem = f"efficiency_{'+'.join(s.shape.name for s in settings)}_{'fake' if estimate else device.type}"
    header = {"versions": versions, "device_name": device_name, "threads": threads, "command": command}
    table = markdown(records, header)
    table += f"\nWall time {time.perf_counter() - t_start:.0f} s; git {git_info().get('commit')}\n"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_json(json_path, records)
    atomic_write_text(md_path, table)
    print(table)
    print(f"wrote {json_path} and {md_path}")
    return {"records": records, "json": str(json_path), "markdown": str(md_path), "table": table}
