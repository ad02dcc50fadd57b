"""Efficiency benchmark: training-step time and peak memory of RoCoFT against LoRA, full fine-tuning,
the frozen floor and the official code's torch.cat rebuild (``scripts/bench_efficiency.py``).

Modules, in the order a measurement uses them:

    shapes     model configs at exact sizes (random weights), per-device settings, inputs
    variants   the compared methods and how each is applied to a fresh model (with parameter counts)
    reference  TorchCatLinear: the official RoCoFT code's torch.cat weight rebuild, for comparison
    measure    one training step; live-tensor bytes, profiled step peak, RSS (CPU memory measures)
    runner     Runner (one variant's model + optimizer), one-at-a-time and interleaved runs
    rss        RSS of one variant in a fresh process (``python -m rocoft.bench.rss``)
    estimate   LiveStorageBytes + estimate_memory: peak GPU memory under FakeTensorMode, no GPU needed
    report     ratios to the frozen floor, Markdown tables
    suite      run_benchmark: every shape x variant, outputs written
    cli        the command-line options of scripts/bench_efficiency.py

Submodules are imported explicitly (``from rocoft.bench.estimate import estimate_memory``); importing
this package loads none of them, so ``python -m rocoft.bench.rss`` runs cleanly.
"""
