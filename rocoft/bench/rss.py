"""RSS high-water of one variant, measured in a fresh process (``--cpu-memory rss`` / ``both``).

A process's RSS high-water covers everything it ever held, so each variant is measured in a process of
its own: :func:`rss_in_subprocess` runs this module as a program,

    python -m rocoft.bench.rss --shape tiny --variant rocoft_row_r1 [--dtype float32 --batch 4 ...]

which builds the model, runs 2 training steps and prints one line ``BENCH_RSS_JSON {...}``: the RSS
high-water (VmHWM) minus the RSS just before the model was built, and the variant's parameter counts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from .measure import MB, current_rss_bytes, peak_rss_bytes
from .runner import Runner
from .shapes import DTYPES, SHAPES, Settings, make_inputs
from .variants import Variant, parse_variant

RSS_JSON_PREFIX = "BENCH_RSS_JSON "
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding this ``rocoft`` package


def rss_probe(settings: Settings, variant: Variant, steps: int = 2) -> dict:
    """In a fresh process: RSS high-water of building + ``steps`` training steps, minus the RSS before."""
    inputs = make_inputs(settings.shape, settings.batch, settings.seq_len, settings.device, settings.input_seed)
    gc.collect()
    before = current_rss_bytes()
    if before is None:
        raise RuntimeError("cannot read this process's RSS (/proc/self/status or psutil): use --cpu-memory profiler")
    runner = Runner(settings, variant, inputs)
    torch.manual_seed(settings.seed)
    for _ in range(steps):
        runner.step()
    return dict(variant=variant.name, rss_peak_mb=(peak_rss_bytes() - before) / MB, rss_before_mb=before / MB,
                **runner.counts)


def probe_command(settings: Settings, variant: Variant, threads: int) -> list[str]:
    """The command line that measures ``variant`` with ``settings`` in a fresh Python process."""
    return [sys.executable, "-m", "rocoft.bench.rss", "--variant", variant.name, "--shape", settings.shape.name,
            "--dtype", settings.dtype, "--batch", str(settings.batch), "--seq-len", str(settings.seq_len),
            "--threads", str(threads), "--seed", str(settings.seed), "--lora-dropout", str(settings.lora_dropout),
            "--autocast" if settings.autocast else "--no-autocast"]


def rss_in_subprocess(settings: Settings, variant: Variant, threads: int) -> dict:
    """Run :func:`rss_probe` for ``variant`` in a fresh process (this module as a program); its result."""
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    proc = subprocess.run(probe_command(settings, variant, threads), capture_output=True, text=True,
                          cwd=str(PACKAGE_PARENT), env=env)  # cwd: ``-m`` finds this same package
    for line in proc.stdout.splitlines():
        if line.startswith(RSS_JSON_PREFIX):
            return json.loads(line[len(RSS_JSON_PREFIX):])
    raise RuntimeError(f"RSS subprocess for {variant.name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m rocoft.bench.rss", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", required=True, choices=list(SHAPES))
    p.add_argument("--variant", required=True, help="one variant name, e.g. rocoft_row_r1")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--autocast", default=False, action=argparse.BooleanOptionalAction)
    p.add_argument("--batch", type=int, default=None, help="default: the shape's CPU default")
    p.add_argument("--seq-len", type=int, default=None, help="default: the shape's CPU default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    args = p.parse_args(argv)
    shape = SHAPES[args.shape]
    try:
        variant = parse_variant(args.variant)
    except ValueError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = shape.defaults.get("cpu") or shape.defaults["cuda"]
    settings = Settings(shape=shape, device=torch.device("cpu"), dtype=args.dtype, autocast=args.autocast,
                        batch=args.batch or defaults["batch"], seq_len=args.seq_len or defaults["seq_len"],
                        warmup=0, repeats=0, seed=args.seed, lora_dropout=args.lora_dropout)
    result = rss_probe(settings, variant)
    print(RSS_JSON_PREFIX + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
