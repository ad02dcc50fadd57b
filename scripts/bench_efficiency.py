"""Training-step time and peak memory of RoCoFT against LoRA, full fine-tuning and the frozen floor.

Run from the repository root with the virtualenv active (``. .venv/bin/activate``):

    python scripts/bench_efficiency.py --shape roberta-base --device cpu
    python scripts/bench_efficiency.py --shape roberta-base --device cpu --cpu-memory both --interleave
    python scripts/bench_efficiency.py --shape tiny --device cpu --variants frozen_floor,rocoft_row_r1,lora_r8
    python scripts/bench_efficiency.py --shape llama2-7b llama-1b roberta-base --device cuda
    python scripts/bench_efficiency.py --shape llama2-7b llama-1b --estimate-memory   # no GPU needed

Defaults per device (each overridable by ``--dtype/--autocast/--batch/--seq-len/--warmup/--repeats``):

    cpu : float32, batch 8 x seq 128 (tiny, tiny-llama 4 x 32; llama-1b 2 x 128), warmup 2, repeats 5
    cuda: llama2-7b bf16 4 x 512; llama-1b bf16 8 x 512; roberta-base fp32 + bf16 autocast 32 x 128;
          warmup 4, repeats 12

Every variant runs in this one process on the same inputs (fixed seeds) and targets the same layers
(``rocoft.core.targets.FAMILY_TARGETS[model_type]``); the model is rebuilt from its config with the
same seed for each variant. One step = forward + loss + backward + AdamW step + zero_grad(set_to_none).
Variants (``--variants``, comma list; the floor is always added since every ratio is relative to it):

    frozen_floor      all weights frozen, embedding output requires grad: the backward still runs
                      through every block. No parameter trains (no optimizer step).
    full_ft           every parameter trains.
    lora_r<N>         peft LoRA, r=N, alpha=2N, dropout --lora-dropout (0), on the exact target names.
    rocoft_row_r<N>   rocoft.apply_rocoft(axis="row", rank=N)   (also rocoft_col_r<N>)
    torchcat_row_r<N> reference re-implementation of the official code: trained rows as a Parameter,
                      the rest as a buffer, weight rebuilt with torch.cat every forward (full weight
                      gradient every step). Also torchcat_col_r<N>.

Timing is noisy when other processes share the CPU (OpenMP threads oversubscribed: 3-5x slow-downs
lasting whole variants); ``--interleave`` (CPU) builds all variants at once and alternates their steps
so such load hits every variant alike; the tables also give min-max per variant and the ratio of the
minimum step times (the least disturbed steps), which is the steadier figure on a shared machine.

Task heads (classifier / lm_head) are frozen in every variant but full_ft, so "trainable" counts only
the adaptation itself.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over all warm-up and timed steps (peak stats reset
after the model is built). On CPU (``--cpu-memory``):
  * ``profiler`` (default, in process): bytes of every live tensor before a step (parameters, buffers,
    optimizer state, inputs; shared storages once) + the peak of torch's CPU allocations during one extra
    step recorded by ``torch.profiler.profile(profile_memory=True)``. Comparable to CUDA's
    max_memory_allocated; allocations outside torch's allocator (oneDNN/BLAS scratch) are not seen.
  * ``rss``: each variant again in a fresh subprocess (this script with ``--only VARIANT``: build + 2
    steps); its RSS high-water (/proc/self/status VmHWM; not ru_maxrss, which Linux carries over from
    the parent into an exec'd child) minus its RSS just before the model was built.
  * ``both``: ``profiler`` for peak_mb, plus the ``rss`` figure in ``rss_peak_mb``.  ``none``: skip.

Memory estimate without a GPU (``--estimate-memory``): every variant runs 3 training steps under torch's
FakeTensorMode on the CPU (tensors with shapes and dtypes but no data, so no arithmetic: seconds even at
LLaMA-2-7B shape), with the CUDA defaults above (dtype, autocast, batch, sequence length). A dispatch
mode counts every tensor storage from its creation until it is freed, rounded up to 512 bytes like
CUDA's caching allocator; the peak is the prediction of ``max_memory_allocated`` minus what lies outside
torch's tensors (cuBLAS workspaces, the CUDA context). Attention runs torch's CPU kernels (flash-style
SDPA: output + log-sum-exp saved, like CUDA's flash kernel). No step times.

Outputs (``--out``, default results/bench): ``efficiency_<shapes>_<device>.json`` (one record per shape x
variant) and ``efficiency_<shapes>_<device>.md`` (tables with every figure's ratio to the frozen floor,
also printed).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # allow ``python scripts/bench_efficiency.py`` without installing
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.weak import WeakIdKeyDictionary  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from rocoft.core import RoCoFTConfig, apply_rocoft, count_parameters, find_targets  # noqa: E402

MB = 2 ** 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_MEMORY_MODES = ("profiler", "rss", "both", "none")
RSS_JSON_PREFIX = "BENCH_RSS_JSON "


# --------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Shape:
    name: str
    model_type: str
    task: str  # "seq_cls" (RobertaForSequenceClassification) or "causal_lm"
    config: dict
    defaults: dict  # device type -> {"dtype", "autocast", "batch", "seq_len"}
    gpu_only: bool = False


def _roberta(hidden, layers, heads, ffn, vocab):
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                vocab_size=vocab, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, num_labels=2)


def _llama(hidden, layers, heads, ffn, vocab=32000):
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=heads, intermediate_size=ffn, vocab_size=vocab,
                max_position_embeddings=4096, tie_word_embeddings=False)


def _d(dtype, autocast, batch, seq_len):
    return dict(dtype=dtype, autocast=autocast, batch=batch, seq_len=seq_len)


SHAPES: dict[str, Shape] = {s.name: s for s in [
    Shape("tiny", "roberta", "seq_cls", _roberta(64, 2, 4, 256, 1000),
          {"cpu": _d("float32", False, 4, 32), "cuda": _d("float32", False, 4, 32)}),
    Shape("roberta-base", "roberta", "seq_cls", _roberta(768, 12, 12, 3072, 50265),
          {"cpu": _d("float32", False, 8, 128), "cuda": _d("float32", True, 32, 128)}),
    Shape("tiny-llama", "llama", "causal_lm", _llama(64, 2, 4, 176, vocab=1000),
          {"cpu": _d("float32", False, 4, 32), "cuda": _d("float32", False, 4, 32)}),
    Shape("llama-1b", "llama", "causal_lm", _llama(2048, 16, 32, 5504),
          {"cpu": _d("float32", False, 2, 128), "cuda": _d("bfloat16", False, 8, 512)}),
    Shape("llama2-7b", "llama", "causal_lm", _llama(4096, 32, 32, 11008),
          {"cuda": _d("bfloat16", False, 4, 512)}, gpu_only=True),
]}
DEVICE_DEFAULTS = {"cpu": dict(warmup=2, repeats=5), "cuda": dict(warmup=4, repeats=12)}


def build_model(shape: Shape, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Random-init model from the shape's config (never downloads), built directly on ``device``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = AutoConfig.for_model(shape.model_type, **shape.config)
    cls = AutoModelForSequenceClassification if shape.task == "seq_cls" else AutoModelForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls.from_config(cfg, dtype=dtype)
    return model.to(device).train()


def make_inputs(shape: Shape, batch: int, seq_len: int, device: torch.device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    vocab = shape.config["vocab_size"]
    ids = torch.randint(3, vocab, (batch, seq_len), generator=g)  # >= 3: no pad/bos/eos ids
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if shape.task == "seq_cls":
        inputs["labels"] = torch.randint(0, shape.config["num_labels"], (batch,), generator=g)
    else:
        inputs["labels"] = ids.clone()
    return {k: v.to(device) for k, v in inputs.items()}


# ------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    name: str
    method: str  # frozen_floor | full_ft | lora | rocoft | torchcat
    axis: str | None = None
    rank: int | None = None


DEFAULT_VARIANTS = ["frozen_floor", "full_ft", "lora_r8",
                    *[f"rocoft_row_r{r}" for r in (1, 3, 8, 64)], *[f"rocoft_col_r{r}" for r in (1, 3, 8, 64)],
                    "torchcat_row_r3"]
_VARIANT_RE = re.compile(r"^(?:(?P<fixed>frozen_floor|full_ft)|lora_r(?P<lr>\d+)|"
                         r"(?P<m>rocoft|torchcat)_(?P<axis>row|col)_r(?P<r>\d+))$")


def parse_variant(name: str) -> Variant:
    m = _VARIANT_RE.match(name.strip())
    if not m:
        raise ValueError(f"unknown variant {name!r}: use frozen_floor, full_ft, lora_r<N>, rocoft_row_r<N>, "
                         f"rocoft_col_r<N>, torchcat_row_r<N> or torchcat_col_r<N> (N >= 1)")
    if m["fixed"]:
        return Variant(m["fixed"], m["fixed"])
    rank = int(m["lr"] or m["r"])
    if rank < 1:
        raise ValueError(f"variant {name!r}: the rank must be >= 1")
    if m["lr"]:
        return Variant(name.strip(), "lora", rank=rank)
    return Variant(name.strip(), m["m"], axis="row" if m["axis"] == "row" else "column", rank=rank)


class TorchCatLinear(nn.Module):
    """How the official RoCoFT code trains rows/columns: the first r rows (columns) are a Parameter,
    the rest a frozen buffer, and every forward rebuilds the full weight with ``torch.cat`` before
    ``F.linear``. Autograd therefore forms the full (d_out x d_in) weight gradient every step (then
    slices it), and each layer keeps its rebuilt weight alive until the backward.

    The trained slice keeps the base dtype (``torch.cat`` needs one dtype), as in the official code. The
    buffer is a view of the original weight (no copy) and the bias stays frozen (``bias="none"``)."""

    def __init__(self, base: nn.Linear, axis: str, rank: int):
        super().__init__()
        self.dim = 0 if axis == "row" else 1
        w = base.weight.detach()
        size = w.shape[self.dim]
        if not 1 <= rank <= size:
            raise ValueError(f"torchcat rank {rank} must lie in [1, {size}] ({axis}s of a {tuple(w.shape)} weight)")
        self.trainable = nn.Parameter(w.narrow(self.dim, 0, rank).clone())
        self.register_buffer("frozen", w.narrow(self.dim, rank, size - rank))
        self.register_buffer("bias", None if base.bias is None else base.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([self.trainable, self.frozen], dim=self.dim)
        return F.linear(x, weight, self.bias)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def prepare(model: nn.Module, variant: Variant, lora_dropout: float) -> tuple[nn.Module, list[str]]:
    """Apply ``variant`` to ``model``; returns the (possibly wrapped) model and the targeted layer names."""
    targets = find_targets(model, RoCoFTConfig())  # the family's default target layers, full names
    if variant.method == "full_ft":
        for p in model.parameters():
            p.requires_grad_(True)
    elif variant.method == "frozen_floor":
        for p in model.parameters():
            p.requires_grad_(False)
        model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_())
    elif variant.method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=variant.rank, lora_alpha=2 * variant.rank, lora_dropout=lora_dropout,
                         target_modules=list(targets), bias="none")
        model = get_peft_model(model, cfg)
    elif variant.method == "rocoft":
        apply_rocoft(model, RoCoFTConfig(axis=variant.axis, rank=variant.rank))
    elif variant.method == "torchcat":
        for p in model.parameters():
            p.requires_grad_(False)
        for name in targets:
            _set_module(model, name, TorchCatLinear(model.get_submodule(name), variant.axis, variant.rank))
    else:  # pragma: no cover - parse_variant guards this
        raise ValueError(variant.method)
    return model, targets


# ------------------------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_bytes() -> int | None:
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except Exception:  # noqa: BLE001
        return None


def peak_rss_bytes() -> int:
    """This process's RSS high-water. VmHWM belongs to the address space created at exec; ru_maxrss would
    NOT do: Linux carries the parent's high-water into an exec'd child's ru_maxrss."""
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB elsewhere


@dataclass
class Settings:
    shape: Shape
    device: torch.device
    dtype: str
    autocast: bool
    batch: int
    seq_len: int
    warmup: int
    repeats: int
    seed: int = 0
    input_seed: int = 1234
    lora_dropout: float = 0.0
    lr: float = 1e-4

    @property
    def autocast_dtype(self):
        return torch.bfloat16 if self.autocast else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parameter_counts(trainable: int, total: int, targets) -> dict:
    return dict(trainable_params=trainable, total_params=total, n_targets=len(targets),
                trainable_pct=100.0 * trainable / total)


class Runner:
    """One variant's model + AdamW on the shared inputs; ``step()`` is one full training step."""

    def __init__(self, settings: Settings, variant: Variant, inputs: dict):
        self.settings, self.variant, self.inputs = settings, variant, inputs
        model = build_model(settings.shape, settings.device, DTYPES[settings.dtype], settings.seed)
        total = sum(p.numel() for p in model.parameters())
        self.model, targets = prepare(model, variant, settings.lora_dropout)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr) if params else None
        trainable = sum(p.numel() for p in params)
        if variant.method == "rocoft" and count_parameters(self.model)["trainable"] != trainable:
            raise RuntimeError("rocoft.count_parameters disagrees with the parameters that require grad")
        self.counts = parameter_counts(trainable, total, targets)
        self.times: list[float] = []
        self.loss = None

    def step(self) -> torch.Tensor:
        s = self.settings
        self.loss = train_step(self.model, self.inputs, self.optimizer, s.autocast_dtype, s.device)
        return self.loss

    def timed_step(self) -> None:
        device = self.settings.device
        _sync(device)
        t0 = time.perf_counter()
        self.step()
        _sync(device)
        self.times.append((time.perf_counter() - t0) * 1e3)

    def cpu_memory(self) -> dict:
        """Live tensor bytes now + peak torch CPU allocations during one profiled step."""
        static = live_tensor_bytes(self.model, self.optimizer, self.inputs)
        return {"static_mb": static / MB, "peak_mb": (static + profiled_step_peak_bytes(self.step)) / MB,
                "memory_measure": "cpu_live_tensors+profiled_step_peak"}

    def result(self) -> dict:
        return {**self.counts, "final_loss": float(self.loss), "step_ms": statistics.median(self.times),
                "step_ms_min": min(self.times), "step_ms_all": list(self.times)}


def _variant_fields(variant: Variant) -> dict:
    return {"variant": variant.name, "method": variant.method, "axis": variant.axis, "rank": variant.rank}


def run_variant(settings: Settings, variant: Variant, inputs: dict, cpu_memory: str) -> dict:
    """Build, warm up, time ``settings.repeats`` steps and measure memory: one variant at a time."""
    device = settings.device
    _free(device)
    rec = _variant_fields(variant)
    runner = None
    try:
        runner = Runner(settings, variant, inputs)
        rec.update(runner.counts)
        torch.manual_seed(settings.seed)  # same dropout masks for every variant
        if device.type == "cuda":
            _sync(device)
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
        elif cpu_memory in ("profiler", "both"):
            rec.update(runner.cpu_memory())
        else:
            rec["peak_mb"], rec["memory_measure"] = None, None
    except torch.cuda.OutOfMemoryError as e:  # a variant that does not fit is a result, not a crash
        rec.update(oom=True, step_ms=None, step_ms_all=[], peak_mb=None, error=str(e).splitlines()[0])
    finally:
        del runner
        _free(device)
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
        rec = {**_variant_fields(r.variant), **r.result()}
        if cpu_memory in ("profiler", "both"):
            rec.update(r.cpu_memory())
        else:
            rec["peak_mb"], rec["memory_measure"] = None, None
        records.append(rec)
        bar.update(1)
    del runners
    _free(settings.device)
    return records


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


def rss_in_subprocess(settings: Settings, variant: Variant, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", variant.name, "--shape", settings.shape.name,
           "--device", "cpu", "--dtype", settings.dtype, "--batch", str(settings.batch),
           "--seq-len", str(settings.seq_len), "--threads", str(threads), "--seed", str(settings.seed),
           "--lora-dropout", str(settings.lora_dropout), "--autocast" if settings.autocast else "--no-autocast"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith(RSS_JSON_PREFIX):
            return json.loads(line[len(RSS_JSON_PREFIX):])
    raise RuntimeError(f"RSS subprocess for {variant.name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------ memory estimate (fake)
class LiveStorageBytes(TorchDispatchMode):
    """A dispatch mode that counts the bytes of live tensor storages and their peak.

    Each storage counts once, from the op that created it until Python frees it (a weakref finalizer),
    rounded up to CUDA's 512-byte allocation granularity. ``track`` adds tensors made before the mode."""

    GRANULE = 512

    def __init__(self):
        super().__init__()
        self.seen, self.current, self.peak = WeakIdKeyDictionary(), 0, 0

    def track(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        st = t.untyped_storage()
        if st in self.seen:
            return
        n = -(-st.nbytes() // self.GRANULE) * self.GRANULE
        self.seen[st] = n
        self.current += n
        self.peak = max(self.peak, self.current)
        weakref.finalize(st, self._free, n)

    def _free(self, n: int) -> None:
        self.current -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.track(t)
        return out


def estimate_memory(settings: Settings, variant: Variant, steps: int = 3) -> dict:
    """Peak tensor memory of ``steps`` training steps of ``variant``, under FakeTensorMode (no arithmetic)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = build_model(settings.shape, torch.device("meta"), DTYPES[settings.dtype], settings.seed)
    total = sum(p.numel() for p in model.parameters())
    model, targets = prepare(model, variant, settings.lora_dropout)  # on meta: selection indices are real
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shapes = {k: (v.shape, v.dtype) for k, v in make_inputs(settings.shape, settings.batch, settings.seq_len,
                                                              torch.device("meta"), settings.input_seed).items()
              if k != "attention_mask"}  # all ones: the same as no mask (and it needs no data-dependent check)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu").train()  # fake CPU tensors: shapes and dtypes, no data
        inputs = {k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in shapes.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, foreach=True) if params else None  # CUDA's default
        live = LiveStorageBytes()
        for t in [*model.parameters(), *model.buffers(), *inputs.values()]:
            live.track(t)
        static = live.current
        with live:
            for _ in range(steps):
                train_step(model, inputs, optimizer, settings.autocast_dtype, torch.device("cpu"))
        peak = live.peak
    return dict(**parameter_counts(trainable, total, targets), static_mb=static / MB, peak_mb=peak / MB,
                memory_measure="fake_tensor_estimate", step_ms=None, step_ms_all=[])


# -------------------------------------------------------------------------------------------- reports
def versions() -> dict:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def add_ratios(records: list[dict]) -> None:
    """ratio_*_vs_floor per shape; the floor's own ratios are exactly 1.0."""
    for shape in {r["shape"] for r in records}:
        rows = [r for r in records if r["shape"] == shape]
        floor = next((r for r in rows if r["variant"] == "frozen_floor"), None)
        for r in rows:
            for key, out in (("step_ms", "ratio_time_vs_floor"), ("step_ms_min", "ratio_min_time_vs_floor"),
                             ("peak_mb", "ratio_mem_vs_floor"),
                             ("rss_peak_mb", "ratio_rss_vs_floor")):
                if key not in r:
                    continue
                a, b = r.get(key), (floor or {}).get(key)
                r[out] = (a / b) if (a is not None and b) else None


def _fmt(x, spec=",.1f", none="n/a"):
    return none if x is None else format(x, spec)


def markdown(records: list[dict], header: dict) -> str:
    lines = ["# RoCoFT efficiency benchmark", "",
             f"torch {header['versions']['torch']}, transformers {header['versions']['transformers']}, "
             f"peft {header['versions']['peft']}; device {header['device_name']}; {header['threads']} CPU threads; "
             f"command: `{header['command']}`", ""]
    for shape in dict.fromkeys(r["shape"] for r in records):
        rows = [r for r in records if r["shape"] == shape]
        r0 = rows[0]
        has_rss = any("rss_peak_mb" in r for r in rows)
        timing = (f"median of {r0['repeats']} steps after {r0['warmup']} warm-up"
                  if r0.get("memory_measure") != "fake_tensor_estimate" else "memory estimate only, 3 steps")
        lines += [f"## {shape}: {r0['model_class']}, {r0['device']}, {r0['dtype']}"
                  f"{' + bf16 autocast' if r0['autocast'] else ''}, batch {r0['batch']} x seq {r0['seq_len']}, "
                  f"{timing}"
                  f"{' (variants interleaved step by step)' if r0.get('interleaved') else ''}", "",
                  f"memory: {MEMORY_DOC.get(r0.get('memory_measure'), 'not measured')}"
                  + (f"; rss: {MEMORY_DOC['rss']}" if has_rss else ""), ""]
        if r0.get("memory_measure") == "fake_tensor_estimate":
            lines += ["| variant | trainable params | % of total | static MB | estimated peak MB | x floor |",
                      "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {r['variant']} | {r['trainable_params']:,} | {r['trainable_pct']:.3f} | {r['static_mb']:,.0f} "
                      f"| {r['peak_mb']:,.0f} | {_fmt(r.get('ratio_mem_vs_floor'), '.3f')} |" for r in rows]
            lines.append("")
            continue
        head = ("| variant | trainable params | % of total | step ms (median) | x floor | min-max ms | min x floor "
                "| peak MB | x floor |")
        sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        if has_rss:
            head += " RSS peak MB | x floor |"
            sep += "---:|---:|"
        lines += [head, sep]
        for r in rows:
            if r.get("oom"):
                lines.append(f"| {r['variant']} | {_fmt(r.get('trainable_params'), ',d')} | | OOM | | | | OOM | |")
                continue
            t = r["step_ms_all"]
            line = (f"| {r['variant']} | {r['trainable_params']:,} | {r['trainable_pct']:.3f} | {r['step_ms']:,.1f} | "
                    f"{_fmt(r.get('ratio_time_vs_floor'), '.2f')} | {min(t):,.0f}-{max(t):,.0f} | "
                    f"{_fmt(r.get('ratio_min_time_vs_floor'), '.2f')} | "
                    f"{_fmt(r.get('peak_mb'), ',.0f')} | {_fmt(r.get('ratio_mem_vs_floor'), '.2f')} |")
            if has_rss:
                line += f" {_fmt(r.get('rss_peak_mb'), ',.0f')} | {_fmt(r.get('ratio_rss_vs_floor'), '.2f')} |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


MEMORY_DOC = {
    "fake_tensor_estimate": "predicted peak of live tensor storages (512-byte granules) over 3 steps under "
                            "FakeTensorMode on the CPU, with the CUDA settings; no arithmetic ran (see --estimate-memory)",
    "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated over warm-up + timed steps (weights included)",
    "cpu_live_tensors+profiled_step_peak": "live torch tensors before a step (weights, optimizer state, inputs) + "
                                           "peak torch CPU allocations during one profiled step",
    "rss": "RSS high-water (VmHWM) of a fresh subprocess per variant (build + 2 steps) minus its RSS before "
           "the model was built",
}


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for variants, defaults and memory measures.")
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
                   help="memory measure on CPU (see the module docstring)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench"), help="output folder")
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
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: the RSS subprocess
    return p


def resolve(args, parser) -> tuple[torch.device, list[Settings], list[Variant]]:
    shapes = [s for item in args.shape for s in item.split(",") if s]
    bad = [s for s in shapes if s not in SHAPES]
    if bad or not shapes:
        parser.error(f"unknown --shape {', '.join(bad) or '(none)'}; choose from {', '.join(SHAPES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch build")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if args.estimate_memory:
        if args.device == "cuda" or args.interleave or args.only is not None:
            parser.error("--estimate-memory runs on the CPU under fake tensors: drop --device cuda / --interleave")
        device = torch.device("cpu")
    for shape in shapes:
        if SHAPES[shape].gpu_only and device.type != "cuda" and not args.estimate_memory:
            parser.error(f"--shape {shape} is GPU only (bf16 weights alone are ~13 GB and a CPU step would take "
                         f"many minutes); run it with --device cuda on a GPU, or use llama-1b / roberta-base on CPU")
    for name, val, lo in (("--batch", args.batch, 1), ("--seq-len", args.seq_len, 1), ("--warmup", args.warmup, 0),
                          ("--repeats", args.repeats, 1), ("--threads", args.threads, 1)):
        if val is not None and val < lo:
            parser.error(f"{name} must be >= {lo}, got {val}")
    if not 0.0 <= args.lora_dropout < 1.0:
        parser.error(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    try:
        names = [v for v in (x.strip() for x in args.variants.split(",")) if v] if args.only is None else [args.only]
        variants = [parse_variant(v) for v in dict.fromkeys(names)]
    except ValueError as e:
        parser.error(str(e))
    if not variants:
        parser.error("--variants is empty")
    if args.only is None and all(v.name != "frozen_floor" for v in variants):
        variants.insert(0, parse_variant("frozen_floor"))  # every ratio is relative to the floor
    variants.sort(key=lambda v: v.name != "frozen_floor")  # floor first
    if args.interleave and device.type != "cpu":
        parser.error("--interleave is for cpu: on cuda the variants would share max_memory_allocated")
    defaults_for = "cuda" if args.estimate_memory else device.type  # the estimate predicts a GPU run
    dd = DEVICE_DEFAULTS[defaults_for]
    settings = []
    for name in shapes:
        shape = SHAPES[name]
        d = shape.defaults[defaults_for]
        dtype = args.dtype or d["dtype"]
        autocast = args.autocast if args.autocast is not None else (d["autocast"] and dtype == "float32")
        if autocast and dtype != "float32":
            parser.error(f"--autocast is bf16 autocast over float32 weights; got --dtype {dtype} (drop one of them)")
        seq_len = args.seq_len or d["seq_len"]
        max_len = shape.config["max_position_embeddings"] - (2 if shape.model_type == "roberta" else 0)
        if seq_len > max_len:
            parser.error(f"--seq-len {seq_len} exceeds what {name} supports ({max_len})")
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
    device, settings, variants = resolve(args, parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    if args.only is not None:  # internal RSS probe: one variant, fresh process, print one JSON line
        if device.type != "cpu" or len(settings) != 1:
            parser.error("--only is internal: one --shape on --device cpu")
        res = rss_probe(settings[0], variants[0])
        print(RSS_JSON_PREFIX + json.dumps(res), flush=True)
        return res

    from rocoft.utils import atomic_write_json, atomic_write_text, git_info

    ver = versions()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    command = "python scripts/bench_efficiency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cpu_memory = args.cpu_memory if device.type == "cpu" else "cuda"
    if args.estimate_memory:
        cpu_memory, device_name = "none", "none (FakeTensorMode estimate on the CPU)"
    records = []
    t_start = time.perf_counter()
    bar = tqdm(total=len(settings) * len(variants), desc="bench", unit="variant", disable=args.no_progress,
               dynamic_ncols=True)
    for s in settings:
        inputs = make_inputs(s.shape, s.batch, s.seq_len, device, s.input_seed)  # the same for every variant
        common = {"shape": s.shape.name, "model_class": ("RobertaForSequenceClassification"
                                                         if s.shape.task == "seq_cls" else "LlamaForCausalLM"),
                  "device": device.type, "device_name": device_name, "dtype": s.dtype, "autocast": s.autocast,
                  "batch": s.batch, "seq_len": s.seq_len, "warmup": s.warmup, "repeats": s.repeats,
                  "threads": threads, "interleaved": bool(args.interleave)}
        if args.estimate_memory:
            common["device"] = "fake"
            shape_recs = []
            for v in variants:
                bar.set_description(f"{s.shape.name} estimate {v.name}")
                shape_recs.append({**common, **_variant_fields(v), **estimate_memory(s, v)})
                bar.update(1)
        elif args.interleave:
            shape_recs = [{**common, **r} for r in run_interleaved(s, variants, inputs, cpu_memory, bar)]
        else:
            shape_recs = []
            for v in variants:
                bar.set_description(f"{s.shape.name} {v.name}")
                rec = {**common, **run_variant(s, v, inputs, cpu_memory)}
                shape_recs.append(rec)
                if rec.get("step_ms") is not None:
                    bar.set_postfix_str(f"{rec['step_ms']:.0f} ms")
                bar.update(1)
        del inputs
        for rec, v in zip(shape_recs, variants):
            if cpu_memory in ("rss", "both"):
                bar.set_description(f"{s.shape.name} rss {v.name}")
                rss = rss_in_subprocess(s, v, threads)
                if rss["trainable_params"] != rec["trainable_params"]:
                    raise RuntimeError(f"RSS subprocess of {v.name} trained {rss['trainable_params']} parameters, "
                                       f"this process {rec['trainable_params']}")
                rec["rss_peak_mb"] = rss["rss_peak_mb"]
                if cpu_memory == "rss":
                    rec["peak_mb"], rec["memory_measure"] = rss["rss_peak_mb"], "rss"
            rec["versions"] = ver
        records += shape_recs
    bar.close()
    add_ratios(records)

    out = Path(args.out)
    stem = f"efficiency_{'+'.join(s.shape.name for s in settings)}_{'fake' if args.estimate_memory else device.type}"
    header = {"versions": ver, "device_name": device_name, "threads": threads, "command": command}
    table = markdown(records, header)
    table += f"\nWall time {time.perf_counter() - t_start:.0f} s; git {git_info().get('commit')}\n"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_json(json_path, records)
    atomic_write_text(md_path, table)
    print(table)
    print(f"wrote {json_path} and {md_path}")
    return {"records": records, "json": str(json_path), "markdown": str(md_path), "table": table}


if __name__ == "__main__":
    main()
