"""Training-step time and peak memory of RoCoFT against LoRA, full fine-tuning and the frozen floor.

Run from the repository root with the virtualenv active (``. .venv/bin/activate``):

    python scripts/bench_efficiency.py --shape roberta-base --device cpu
    python scripts/bench_efficiency.py --shape roberta-base --device cpu --cpu-memory both --interleave
    python scripts/bench_efficiency.py --shape tiny --device cpu --variants frozen_floor,rocoft_row_r1,lora_r8
    python scripts/bench_efficiency.py --shape llama2-7b llama-1b roberta-base --device cuda
    python scripts/bench_efficiency.py --shape llama2-7b llama-1b --estimate-memory   # no GPU needed

Every variant runs in this one process on the same inputs (fixed seeds) and targets the same layers; the
floor is always added, since every ratio is relative to it. This module turns the options into
:class:`rocoft.bench.shapes.Settings` and variants and calls :func:`rocoft.bench.suite.run_benchmark`;
``--help`` prints the documentation of each part below.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..utils import PROJECT_ROOT
from . import estimate, measure, runner, shapes, suite, variants as variants_module
from .measure import CPU_MEMORY_MODES
from .shapes import DEVICE_DEFAULTS, DTYPES, SHAPES, Settings
from .suite import run_benchmark
from .variants import DEFAULT_VARIANTS, Variant, parse_variant

PROG = "python scripts/bench_efficiency.py"


def _docs() -> str:
    """The epilog of ``--help``: this module's examples, then the documentation of each part."""
    parts = [shapes, variants_module, runner, measure, estimate, suite]
    return "\n\n".join([__doc__.split("\n\n", 1)[1].strip(),
                        *(f"{m.__name__}:\n{m.__doc__.strip()}" for m in parts)])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_docs())
    p.add_argument("--shape", nargs="+", default=["roberta-base"], metavar="SHAPE",
                   help=f"one or more of {', '.join(SHAPES)} (space or comma separated)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="base weight dtype (default per shape)")
    p.add_argument("--autocast", default=None, action=argparse.BooleanOptionalAction,
                   help="bf16 autocast on float32 weights (default: on for roberta-base on cuda)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None, help="default 4 on cuda, 2 on cpu")
    p.add_argument("--repeats", type=int, default=None, help="default 12 on cuda, 5 on cpu")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma list (default: all): " + ",".join(DEFAULT_VARIANTS))
    p.add_argument("--cpu-memory", default="profiler", choices=CPU_MEMORY_MODES,
                   help="memory measure on CPU (see rocoft.bench.measure below)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "results" / "bench"), help="output folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="model init seed (same for every variant)")
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--interleave", action="store_true",
                   help="cpu only: build every variant at once and alternate their steps, so that other load on "
                        "the machine slows all variants alike (needs memory for all models together)")
    p.add_argument("--estimate-memory", action="store_true",
                   help="no timing: predict each variant's peak GPU tensor memory with the CUDA settings, under "
                        "FakeTensorMode on the CPU (no arithmetic; works at llama2-7b shape without a GPU)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _variants(args, parser) -> list[Variant]:
    try:
        names = [v for v in (x.strip() for x in args.variants.split(",")) if v]
        variants = [parse_variant(v) for v in dict.fromkeys(names)]
    except ValueError as e:
        parser.error(str(e))
    if not variants:
        parser.error("--variants is empty")
    if all(v.name != "frozen_floor" for v in variants):
        variants.insert(0, parse_variant("frozen_floor"))  # every ratio is relative to the floor
    variants.sort(key=lambda v: v.name != "frozen_floor")  # floor first
    return variants


def resolve(args, parser) -> tuple[torch.device, list[Settings], list[Variant]]:
    """Check the options (``parser.error`` names the bad one) and fill every default per shape and device."""
    names = [s for item in args.shape for s in item.split(",") if s]
    bad = [s for s in names if s not in SHAPES]
    if bad or not names:
        parser.error(f"unknown --shape {', '.join(bad) or '(none)'}; choose from {', '.join(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch build")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.estimate_memory:
        if args.device == "cuda" or args.interleave:
            parser.error("--estimate-memory runs on the CPU under fake tensors: drop --device cuda / --interleave")
        device = torch.device("cpu")
    for name in names:
        if SHAPES[name].gpu_only and device.type != "cuda" and not args.estimate_memory:
            parser.error(f"--shape {name} is GPU only (bf16 weights alone are ~13 GB and a CPU step would take "
                         f"many minutes); run it with --device cuda on a GPU, or use llama-1b / roberta-base on CPU")
    for flag, val, lo in (("--batch", args.batch, 1), ("--seq-len", args.seq_len, 1), ("--warmup", args.warmup, 0),
                          ("--repeats", args.repeats, 1), ("--threads", args.threads, 1)):
        if val is not None and val < lo:
            parser.error(f"{flag} must be >= {lo}, got {val}")
    if not 0.0 <= args.lora_dropout < 1.0:
        parser.error(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    variants = _variants(args, parser)
    if args.interleave and device.type != "cpu":
        parser.error("--interleave is for cpu: on cuda the variants would share max_memory_allocated")
    defaults_for = "cuda" if args.estimate_memory else device.type  # the estimate predicts a GPU run
    dd = DEVICE_DEFAULTS[defaults_for]
    settings = []
    for name in names:
        shape = SHAPES[name]
        d = shape.defaults[defaults_for]
        dtype = args.dtype or d["dtype"]
        autocast = args.autocast if args.autocast is not None else (d["autocast"] and dtype == "float32")
        if autocast and dtype != "float32":
            parser.error(f"--autocast is bf16 autocast over float32 weights; got --dtype {dtype} (drop one of them)")
        seq_len = args.seq_len or d["seq_len"]
        if seq_len > shape.max_seq_len:
            parser.error(f"--seq-len {seq_len} exceeds what {name} supports ({shape.max_seq_len})")
        settings.append(Settings(shape=shape, device=device, dtype=dtype, autocast=autocast,
                                 batch=args.batch or d["batch"], seq_len=seq_len,
                                 warmup=dd["warmup"] if args.warmup is None else args.warmup,
                                 repeats=args.repeats or dd["repeats"], seed=args.seed,
                                 lora_dropout=args.lora_dropout))
    return device, settings, variants


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns {"records": [...], "json": path, "markdown": path, "table": text}."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _, settings, variants = resolve(args, parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv)
    return run_benchmark(settings, variants, args.out, command=command, cpu_memory=args.cpu_memory,
                         interleave=args.interleave, estimate=args.estimate_memory, progress=not args.no_progress)
