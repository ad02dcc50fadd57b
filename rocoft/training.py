"""The training loop behind ``train.py``: compose -> build -> fit -> evaluate -> write results.

Accelerate handles the device, mixed precision, gradient accumulation and multi-process
(``accelerate launch train.py ...``) runs; the same code runs on CPU, one GPU or several.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import time
from collections import defaultdict
from itertools import islice
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from .errors import UserError
from .methods import build_method
from .runs import write_status
from .models import build_model, load_tokenizer
from .checkpoint import Checkpointer, Preempted, StopSignals
from .sampling import LengthGroupedBatchSampler, ShuffledBatchSampler, example_lengths, sorted_by_length
from .tasks import build_task
from .utils import (JsonlLog, atomic_write_json, atomic_write_text, git_info, package_versions, peak_memory,
                    reset_peak_memory)


def build_accelerator(cfg) -> Accelerator:
    device, precision = cfg.device, cfg.train.mixed_precision
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise UserError("device=cuda was requested but no CUDA GPU is visible; use device=cpu or device=auto.")
    if precision == "auto":
        precision = "bf16" if cuda and device != "cpu" and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and (not cuda or device == "cpu"):
        raise UserError("train.mixed_precision=fp16 needs a CUDA GPU; use no (or bf16) on CPU.")
    if precision == "bf16" and cuda and device != "cpu" and not torch.cuda.is_bf16_supported():
        raise UserError("This GPU does not support bf16; use train.mixed_precision=fp16 or no.")
    # Several runs in one process (Hydra's local multirun, tests) each get a fresh Accelerate state;
    # a distributed process keeps its process group.
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    AcceleratorState._reset_state(reset_partial_state=not distributed)
    GradientState._reset_state()
    # cpu=True whenever no GPU is used: Accelerate then runs multi-process CPU jobs (torchrun) over gloo
    # split_batches: train.batch_size is the global batch, split across processes, so that N processes
    # see exactly the batches one process would
    tracker = None
    if cfg.logger.name == "wandb":
        if importlib.util.find_spec("wandb") is None:
            raise UserError("logger=wandb needs the wandb package: pip install wandb")
        tracker = "wandb"
    return Accelerator(cpu=device == "cpu" or not cuda, mixed_precision=precision, log_with=tracker,
                       gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and 1-D norm weights get no weight decay (the usual transformers convention). RoCoFT's
    trained values decay whatever their shape (the random-entry ablation keeps them as a 1-D vector)."""
    if name.endswith("bias"):
        return True
    return param.ndim < 2 and not (".rocoft." in name or ".rocoft_slices." in name)


def build_optimizer(model, train_cfg) -> torch.optim.Optimizer:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise UserError("The method left no trainable parameter in the model.")
    groups = [
        {"params": [p for n, p in params if not no_decay(n, p)], "weight_decay": train_cfg.weight_decay},
        {"params": [p for n, p in params if no_decay(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_cfg.lr,
                             betas=tuple(train_cfg.adam_betas), eps=train_cfg.adam_eps)


@torch.no_grad()
def evaluate(model, loader, task, accelerator, split: str):
    """Run ``task.predict_step`` over ``loader`` on every process; score the gathered outputs.

    Returns the metrics and the task's per-example records (or None)."""
    was_training = model.training
    model.eval()
    outputs = defaultdict(list)
    for batch in tqdm(loader, desc=split, leave=False, disable=not accelerator.is_local_main_process):
        for k, v in accelerator.gather_for_metrics(task.predict_step(model, batch)).items():
            outputs[k].append(v.cpu())
    model.train(was_training)
    outputs = {k: torch.cat(v) for k, v in outputs.items()}
    return task.compute_metrics(outputs, split), task.prediction_records(outputs, split)


def check_output_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"Cannot write to output_dir={run_dir} ({e.strerror}); "
                        f"choose another with output_dir=... or results_dir=...") from None


def run(cfg) -> dict:
    """Train and evaluate one configuration; returns the metrics written to ``metrics.json``."""
    start = time.time()
    transformers.logging.set_verbosity_error()  # the load report of a new task head is expected
    transformers.utils.logging.disable_progress_bar()
    accelerator = build_accelerator(cfg)
    reset_peak_memory(accelerator.device)
    main = accelerator.is_main_process
    run_dir = Path(cfg.output_dir)
    if main:
        check_output_dir(run_dir)
        if (run_dir / "metrics.json").exists():  # a forced re-run: no stale results, but the old ones kept aside
            os.replace(run_dir / "metrics.json", run_dir / "metrics.replaced.json")
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_status(run_dir, "running")
    tcfg, dcfg = cfg.train, cfg.data
    if cfg.logger.name == "wandb":
        accelerator.init_trackers(cfg.logger.project, config=OmegaConf.to_container(cfg, resolve=True),
                                  init_kwargs={"wandb": {"dir": str(run_dir), "entity": cfg.logger.entity,
                                                         "tags": list(cfg.logger.tags),
                                                         "name": "/".join(run_dir.parts[-4:])}})

    # ---- data
    task = build_task(cfg.task)
    tokenizer = load_tokenizer(cfg.model)
    raw = task.splits(dcfg.max_train_samples, dcfg.max_eval_samples)
    data = {split: task.encode(df, tokenizer, dcfg.max_length, split) for split, df in raw.items()}
    if len(data["train"]) < tcfg.batch_size:
        raise UserError(f"The train split has {len(data['train'])} examples, fewer than one batch "
                        f"(train.batch_size={tcfg.batch_size}); lower train.batch_size or give more data.")
    if tcfg.batch_size % accelerator.num_processes:
        raise UserError(f"train.batch_size={tcfg.batch_size} is the global batch: it must be a multiple of the "
                        f"{accelerator.num_processes} processes.")
    collate = task.collate(tokenizer)
    if tcfg.group_by_length:
        sampler = LengthGroupedBatchSampler(example_lengths(data["train"]), tcfg.batch_size, cfg.seed)
    else:
        sampler = ShuffledBatchSampler(len(data["train"]), tcfg.batch_size, cfg.seed)
    # every loader gets a private generator: creating an iterator then never draws from the global RNG,
    # so dropout streams are the same whether a run is resumed or not
    train_loader = DataLoader(data["train"], batch_sampler=sampler, collate_fn=collate, generator=torch.Generator())
    eval_loaders = {s: DataLoader(data[s], batch_size=tcfg.eval_batch_size, collate_fn=collate,
                                  sampler=sorted_by_length(example_lengths(data[s])), generator=torch.Generator())
                    for s in task.eval_splits if s in data}

    # ---- model + method (seed fixes new heads' init and the rows/columns chosen)
    set_seed(cfg.seed)
    method = build_method(cfg.method, cfg.model, task.kind, cfg.seed)
    model = build_model(cfg.model, task.kind, task.num_labels, tokenizer, dropout=cfg.get("dropout"))
    base_total = sum(p.numel() for p in model.parameters())
    # split_batches: every process iterates all len(train_loader) batches (each a slice of the global batch)
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.gradient_accumulation_steps)
    total_steps = tcfg.max_steps if tcfg.max_steps and tcfg.max_steps > 0 else steps_per_epoch * tcfg.epochs
    calib = DataLoader(data["train"], batch_size=tcfg.batch_size, collate_fn=collate, generator=torch.Generator())
    n_calib = cfg.method.get("calibration_batches") or 0
    model = method.apply(model, calibration_batches=list(islice(calib, n_calib)) if n_calib else None,
                         total_steps=total_steps)
    if tcfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    params = method.parameter_report(model, base_total)

    optimizer = method.optimizer(model, tcfg) or build_optimizer(model, tcfg)
    model, optimizer, train_loader, *loaders = accelerator.prepare(model, optimizer, train_loader,
                                                                   *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))
    warmup = tcfg.warmup_steps if tcfg.warmup_steps is not None else int(tcfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(tcfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)

    # ---- train (resuming from the latest checkpoint of this run directory, if any)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=tcfg.keep_checkpoints, enabled=main)
    resumed = ckpt.load_latest(accelerator.unwrap_model(model), optimizer, scheduler) if tcfg.resume else None
    step, epoch, in_epoch, history = 0, 0, 0, []
    if resumed:
        step, epoch, in_epoch, history = resumed["step"], resumed["epoch"], resumed["in_epoch"], resumed["history"]
        if resumed.get("method_state") is not None:
            method.load_extra_state(accelerator.unwrap_model(model), resumed["method_state"])
        print(f"Resuming from {resumed['path']} (step {step})")
    log = JsonlLog(run_dir / "log.jsonl", enabled=main, keep_until_step=step if resumed else None)
    earlier = (resumed or {}).get("elapsed") or {}  # time and memory of the run before its last resume
    eval_every = tcfg.eval_every or steps_per_epoch
    val_split = task.eval_splits[0]
    window = []
    bar = tqdm(total=total_steps, initial=step, desc=f"train {cfg.method.tag}",
               disable=not accelerator.is_local_main_process)
    model.train()
    train_start = time.time()
    with StopSignals() as stop:
        while step < total_steps:
            train_loader.set_epoch(epoch)  # the prepared loader passes it on to our sampler at each __iter__
            sampler.set_epoch(epoch)
            batches = accelerator.skip_first_batches(train_loader, in_epoch) if in_epoch else train_loader
            for batch in batches:
                in_epoch += 1
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and tcfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        method.after_step(accelerator.unwrap_model(model), step + 1)
                    optimizer.zero_grad(set_to_none=True)
                window.append(loss.detach())
                if not accelerator.sync_gradients:
                    continue
                lr = scheduler.get_last_lr()[0]  # the lr this step trained with
                scheduler.step()
                step += 1
                step_loss = accelerator.reduce(torch.stack(window).mean(), reduction="mean").item()
                window = []
                if not math.isfinite(step_loss):
                    raise UserError(f"Training diverged: loss is {step_loss} at step {step}; lower train.lr "
                                    f"(now {tcfg.lr}).")
                if step % tcfg.log_every == 0 or step == total_steps:
                    log.write(step=step, epoch=round(step / steps_per_epoch, 4), loss=step_loss, lr=lr)
                    accelerator.log({"train/loss": step_loss, "train/lr": lr}, step=step)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                bar.update(1)
                if val_split in eval_loaders and step % eval_every == 0 and step < total_steps:
                    result, _ = evaluate(model, eval_loaders[val_split], task, accelerator, val_split)
                    log.write(step=step, split=val_split, **result)
                    accelerator.log({f"{val_split}/{k}": v for k, v in result.items()}, step=step)
                    history.append({"step": step, **result})
                at_end = in_epoch == len(train_loader)
                position = {"step": step, "epoch": epoch + at_end, "in_epoch": 0 if at_end else in_epoch,
                            "history": history, "elapsed": elapsed(earlier, start, train_start, accelerator.device)}
                if stop.received is not None or (tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0):
                    unwrapped = accelerator.unwrap_model(model)
                    ckpt.save(unwrapped, optimizer, scheduler, position, method.extra_state(unwrapped))
                if stop.received is not None:
                    log.close()
                    raise Preempted(stop.received, step)
                if step >= total_steps:
                    break
            else:
                epoch, in_epoch = epoch + 1, 0
    bar.close()
    train_time = time.time() - train_start + earlier.get("train_time_s", 0.0)

    # ---- final evaluation and results
    final = {}
    for split, loader in eval_loaders.items():
        final[split], records = evaluate(model, loader, task, accelerator, split)
        log.write(step=step, split=split, final=True, **final[split])
        accelerator.log({f"final/{split}/{k}": v for k, v in final[split].items()}, step=step)
        if records is not None and main:
            atomic_write_text(run_dir / f"predictions_{split}.jsonl",
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    log.close()
    metrics = {
        "model": cfg.model.name, "task": cfg.task.name, "method": cfg.method.name,
        "rank": method.rank, "seed": cfg.seed, "main_metric": task.main_metric,
        **{split: result for split, result in final.items()}, "eval_splits": list(final),
        "validation_history": history,
        "params": params,
        "steps": step, "train_examples": len(data["train"]),
        "wall_time_s": time.time() - start + earlier.get("wall_time_s", 0.0), "train_time_s": train_time,
        **peak_memory(accelerator.device, at_least_mb=earlier.get("peak_memory_mb")),
        "resumed": bool(resumed),
        "device": str(accelerator.device), "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "git": git_info(), "versions": package_versions(),
    }
    if main:
        save_artifacts(accelerator.unwrap_model(model), method, cfg, run_dir)
        atomic_write_json(run_dir / "metrics.json", metrics)
        write_status(run_dir, "complete")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is done: results + adapter stay
        print_summary(metrics, run_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def elapsed(earlier: dict, start: float, train_start: float, device) -> dict:
    """Wall and training time and peak memory of the run so far, its time before a resume included."""
    now = time.time()
    return {"wall_time_s": earlier.get("wall_time_s", 0.0) + now - start,
            "train_time_s": earlier.get("train_time_s", 0.0) + now - train_start,
            "peak_memory_mb": peak_memory(device, at_least_mb=earlier.get("peak_memory_mb"))["peak_memory_mb"]}


def save_artifacts(model, method, cfg, run_dir: Path) -> None:
    """The method's artifact in <run>/adapter (for RoCoFT: peft format); optionally a merged model."""
    if cfg.save.adapter:
        method.save(model, run_dir / "adapter")
    if cfg.save.merged:
        merged = method.merged(model)
        if merged is None:
            print(f"note: method={method.name} cannot be merged into the weights; no merged model written")
        else:
            merged.save_pretrained(run_dir / "merged")


def print_summary(metrics: dict, run_dir: Path) -> None:
    p = metrics["params"]
    print(f"\n{metrics['model']} / {metrics['task']} / {metrics['method']}"
          f"{'' if metrics['rank'] is None else ' r=' + str(metrics['rank'])} / seed {metrics['seed']}")
    for split in metrics.get("eval_splits", []):
        if split in metrics:
            print(f"  {split:<10} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()))
    print(f"  trainable  {p['trainable']:,} of {p['total']:,} ({p['trainable_percent']:.3f}%), "
          f"{p['trainable_without_head']:,} without the task head; {p['additional']:,} parameters added")
    print(f"  time       {metrics['wall_time_s']:.1f} s wall ({metrics['train_time_s']:.1f} s training), "
          f"peak memory {metrics['peak_memory_mb']:.0f} MB ({metrics['peak_memory_kind']})")
    print(f"  results    {run_dir}")
