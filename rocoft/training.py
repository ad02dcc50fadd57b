"""Fit and evaluate one configuration, in named stages (as torchtune's recipes are written):

    setup_data    task splits -> encoded datasets -> seeded, resumable loaders
    setup_model   model + method.apply + optimizer + scheduler (+ Accelerate's prepare)
    fit           the loop: steps, logging, periodic validation, checkpoints, resume, preemption
    final         every evaluation split, scored by the task

:func:`train_and_evaluate` runs them and *returns* the results (metrics, prediction records, the
trained model and its method); writing them into the run directory, and the directory's whole
life cycle, belong to :mod:`rocoft.runs` (its safety: :mod:`rocoft.rundir`). While it trains, this module
writes only the run's progress: ``log.jsonl`` and ``checkpoints/`` (through :class:`rocoft.checkpoint.Checkpointer`).

Accelerate handles the device, mixed precision, gradient accumulation and multi-process
(``accelerate launch train.py ...``) runs; the same code runs on CPU, one GPU or several.
"""

from __future__ import annotations

import errno
import gc
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from .checkpoint import Checkpointer, Position, Preempted, Resumed, StopSignals
from .engine import build_optimizer
from .errors import UserError
from .methods import Method, build_method
from .models import build_model, load_tokenizer
from .sampling import LengthGroupedBatchSampler, ShuffledBatchSampler, example_lengths, sorted_by_length
from .sharded import is_sharded
from .tasks import build_task
from .tracking import start_trackers
from .utils import JsonlLog, peak_memory, reset_peak_memory, run_settings
from .validation import check_max_length, check_positions


@torch.no_grad()
def evaluate(model, loader, task, accelerator, dataset, split: str, before_batch=None):
    """Run ``task.predict_step`` over ``loader`` on every process; score the gathered outputs with
    ``task.score(outputs, dataset)``. Returns the metrics and the per-example records (or None).
    ``before_batch()`` runs before each batch (the final evaluation's stop check)."""
    was_training = model.training
    model.eval()
    outputs = defaultdict(list)
    for batch in tqdm(loader, desc=split, leave=False, disable=not accelerator.is_local_main_process):
        if before_batch is not None:
            before_batch()
        for k, v in accelerator.gather_for_metrics(task.predict_step(model, batch)).items():
            outputs[k].append(v.cpu())
    model.train(was_training)
    return task.score({k: torch.cat(v) for k, v in outputs.items()}, dataset)


# ---- stage 1: data
@dataclass
class Data:
    task: object
    tokenizer: object
    datasets: dict  # split -> the task's encoded dataset
    collate: object
    sampler: ShuffledBatchSampler | LengthGroupedBatchSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]  # the task's evaluation splits that exist, validation first


def setup_data(cfg, accelerator) -> Data:
    tcfg, dcfg = cfg.train, cfg.data
    task = build_task(cfg.task, cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    check_max_length(dcfg.max_length, tokenizer, texts=len(getattr(task, "text_fields", ())) or 1)
    raw = task.splits(dcfg.max_train_samples, dcfg.max_eval_samples)
    datasets = {split: task.encode(df, tokenizer, dcfg.max_length, split) for split, df in raw.items()}
    if len(datasets["train"]) < tcfg.batch_size:
        raise UserError(f"The train split has {len(datasets['train'])} examples, fewer than one batch "
                        f"(train.batch_size={tcfg.batch_size}); lower train.batch_size or give more data.")
    if tcfg.batch_size % accelerator.num_processes:
        raise UserError(f"train.batch_size={tcfg.batch_size} is the global batch: it must be a multiple of the "
                        f"{accelerator.num_processes} processes.")
    collate = task.collate(tokenizer)
    if tcfg.group_by_length:
        sampler = LengthGroupedBatchSampler(example_lengths(datasets["train"]), tcfg.batch_size, cfg.seed)
    else:
        sampler = ShuffledBatchSampler(len(datasets["train"]), tcfg.batch_size, cfg.seed)
    # every loader gets a private generator: creating an iterator then never draws from the global RNG,
    # so dropout streams are the same whether a run is resumed or not
    train_loader = DataLoader(datasets["train"], batch_sampler=sampler, collate_fn=collate,
                              generator=torch.Generator())
    eval_loaders = {s: DataLoader(datasets[s], batch_size=tcfg.eval_batch_size, collate_fn=collate,
                                  sampler=sorted_by_length(example_lengths(datasets[s])), generator=torch.Generator())
                    for s in task.eval_splits if s in datasets}
    return Data(task, tokenizer, datasets, collate, sampler, train_loader, eval_loaders)


# ---- stage 2: model, method, optimizer
@dataclass
class Trainee:
    model: torch.nn.Module  # prepared by Accelerate (unwrap it to save)
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: dict  # the method's parameter report
    total_steps: int
    steps_per_epoch: int


def setup_model(cfg, data: Data, accelerator) -> Trainee:
    """Build the model, apply the method (the seed fixes new heads' init and the rows/columns chosen),
    then the optimizer and scheduler. Accelerate prepares the model, the optimizer and ``data``'s loaders
    (which are replaced by the prepared ones)."""
    tcfg, task = cfg.train, data.task
    set_seed(cfg.seed)
    method = build_method(cfg.method, cfg.model, task.kind, cfg.seed)
    model = build_model(cfg.model, task.kind, task.num_labels, data.tokenizer, dropout=cfg.dropout)
    check_positions(cfg.data.max_length, model.config, cfg.model.name)
    base_total = sum(p.numel() for p in model.parameters())
    # split_batches: every process iterates all len(train_loader) batches (each a slice of the global batch)
    steps_per_epoch = math.ceil(len(data.train_loader) / tcfg.gradient_accumulation_steps)
    total_steps = tcfg.max_steps if tcfg.max_steps and tcfg.max_steps > 0 else steps_per_epoch * tcfg.epochs
    calibration = None
    if method.calibration_batches:
        loader = DataLoader(data.datasets["train"], batch_size=tcfg.batch_size, collate_fn=data.collate,
                            generator=torch.Generator())
        calibration = [task.model_inputs(b) for b in islice(loader, method.calibration_batches)]
    model = method.apply(model, calibration_batches=calibration, total_steps=total_steps)
    if tcfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    params = method.parameter_report(model, base_total)
    optimizer = method.optimizer(model, tcfg) or build_optimizer(model, tcfg)
    model, optimizer, data.train_loader, *loaders = accelerator.prepare(model, optimizer, data.train_loader,
                                                                        *data.eval_loaders.values())
    data.eval_loaders = dict(zip(data.eval_loaders, loaders))
    warmup = tcfg.warmup_steps if tcfg.warmup_steps is not None else int(tcfg.warmup_ratio * total_steps)
    scheduler = get_scheduler(tcfg.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return Trainee(model, method, optimizer, scheduler, params, total_steps, steps_per_epoch)


# ---- stage 3: fit
@dataclass
class Clock:
    """Wall and training time and peak memory of a run, its time before a resume included."""

    device: torch.device
    earlier: dict = field(default_factory=lambda: Position().elapsed)  # of the checkpoint resumed from
    start: float = field(default_factory=time.time)
    train_start: float | None = None

    def wall(self) -> float:
        return self.earlier["wall_time_s"] + time.time() - self.start

    def training(self) -> float:
        return self.earlier["train_time_s"] + time.time() - self.train_start

    def memory(self) -> dict:
        return peak_memory(self.device, at_least_mb=self.earlier["peak_memory_mb"])

    def elapsed(self) -> dict:
        return {"wall_time_s": self.wall(), "train_time_s": self.training(),
                "peak_memory_mb": self.memory()["peak_memory_mb"]}


def resume(cfg, trainee: Trainee, checkpointer: Checkpointer, accelerator) -> Resumed | None:
    """Put back the run directory's latest checkpoint, if any (``train.resume``)."""
    if not cfg.train.resume:
        return None
    unwrapped = accelerator.unwrap_model(trainee.model)
    resumed = checkpointer.load_latest(unwrapped, trainee.optimizer, trainee.scheduler)
    if resumed is not None:
        if resumed.method_state is not None:
            trainee.method.load_extra_state(unwrapped, resumed.method_state)
        accelerator.print(f"Resuming from {resumed.path} (step {resumed.position.step})")  # main process only
    return resumed


def stop_now(stop: StopSignals, accelerator, trainee: Trainee, checkpointer: Checkpointer, position: Position,
             log: JsonlLog) -> None:
    """At a step boundary: if any process got a stop signal, every process saves (rank 0 writes) a checkpoint
    at ``position`` and raises :class:`Preempted`; else nothing."""
    signum = stop.agreed()
    if signum is None:
        return
    save_checkpoint(accelerator, trainee, checkpointer, position)
    log.close()
    raise Preempted(signum, position.step, previous=stop.previous_handler(signum), main=accelerator.is_main_process,
                    stage=stop.stage)


def save_checkpoint(accelerator, trainee: Trainee, checkpointer: Checkpointer, position: Position) -> None:
    """A checkpoint at ``position``. A write that fails (a full disk) leaves no partial ``.tmp-*`` folder
    (the previous checkpoints stay intact): a full disk is a :class:`UserError` that says so."""
    unwrapped = accelerator.unwrap_model(trainee.model)
    try:
        checkpointer.save(unwrapped, trainee.optimizer, trainee.scheduler, position,
                          trainee.method.extra_state(unwrapped))
        return
    except BaseException as e:
        for partial in checkpointer.dir.glob(".tmp-*"):  # this run's unfinished write (the run holds its directory)
            shutil.rmtree(partial, ignore_errors=True)
        if not disk_full(e, checkpointer.dir):
            raise
    # raised here, not in the except block: the failed write's traceback (whose frames hold its open file, so
    # the space of the removed folder) is released first, and the run can then record that it failed
    gc.collect()
    raise UserError(f"The disk is full: could not write the checkpoint of step {position.step} in "
                    f"{checkpointer.dir}; the unfinished checkpoint was removed and the previous ones are intact. "
                    f"Free space (or choose another results_dir=...) and run the same command again to resume.")


def disk_full(error: BaseException, directory: Path) -> bool:
    """Whether ``error`` comes from a full disk: an ENOSPC / EDQUOT OSError in its chain (torch.save wraps
    it in a RuntimeError, or, writing to a path, reports only a short write), else under 1 MiB left."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        return shutil.disk_usage(directory).free < 2**20
    except OSError:
        return False


def fit(cfg, accelerator, data: Data, trainee: Trainee, position: Position, log: JsonlLog,
        checkpointer: Checkpointer, clock: Clock, stop: StopSignals | None = None) -> Position:
    """Train from ``position`` to ``total_steps``; returns the final position. On a stop signal (``stop``):
    save a checkpoint at the next step and raise :class:`Preempted`."""
    tcfg, task, method = cfg.train, data.task, trainee.method
    model, optimizer, scheduler = trainee.model, trainee.optimizer, trainee.scheduler
    total, per_epoch = trainee.total_steps, trainee.steps_per_epoch
    step, epoch, in_epoch, history = position.step, position.epoch, position.in_epoch, position.history
    eval_every = tcfg.eval_every or per_epoch
    val_split = task.eval_splits[0]
    window = []
    bar = tqdm(total=total, initial=step, desc=f"train {cfg.method.tag}", disable=not accelerator.is_local_main_process)
    model.train()
    clock.train_start = time.time()
    stop = stop or StopSignals(())  # none: never stops
    while step < total:
        data.train_loader.set_epoch(epoch)  # the prepared loader passes it on to our sampler at each __iter__
        data.sampler.set_epoch(epoch)
        loader = data.train_loader
        for batch in (accelerator.skip_first_batches(loader, in_epoch) if in_epoch else loader):
            in_epoch += 1
            with accelerator.accumulate(model):
                loss = task.loss(model, batch)
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
            if step % tcfg.log_every == 0 or step == total:
                log.write(step=step, epoch=round(step / per_epoch, 4), loss=step_loss, lr=lr)
                accelerator.log({"train/loss": step_loss, "train/lr": lr}, step=step)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if val_split in data.eval_loaders and step % eval_every == 0 and step < total:
                result, _ = evaluate(model, data.eval_loaders[val_split], task, accelerator,
                                     data.datasets[val_split], val_split)
                log.write(step=step, split=val_split, **result)
                accelerator.log({f"{val_split}/{k}": v for k, v in result.items()}, step=step)
                history.append({"step": step, **result})
            at_end = in_epoch == len(loader)
            position = Position(step, epoch + at_end, 0 if at_end else in_epoch, history, clock.elapsed())
            stop_now(stop, accelerator, trainee, checkpointer, position, log)
            if tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0:
                save_checkpoint(accelerator, trainee, checkpointer, position)
            if step >= total:
                break
        else:
            epoch, in_epoch = epoch + 1, 0
    bar.close()
    return Position(step, epoch, in_epoch, history, clock.elapsed())


def enter_stage(stage: str, stop: StopSignals, accelerator) -> None:
    """Say which stage the run enters (one line on the main process; the stop messages name it too)."""
    stop.stage = stage
    accelerator.print(f"[{stage}]", flush=True)


# ---- stage 4: final evaluation
def final_evaluation(accelerator, data: Data, trainee: Trainee, step: int, log: JsonlLog, before_batch=None):
    """Score every evaluation split: ``({split: metrics}, {split: records or None})``. ``before_batch()``
    runs before each batch (a stop check: a stop signal during the final evaluation checkpoints and stops
    there; the resumed run redoes the final evaluation)."""
    metrics, records = {}, {}
    for split, loader in data.eval_loaders.items():
        metrics[split], records[split] = evaluate(trainee.model, loader, data.task, accelerator,
                                                  data.datasets[split], split, before_batch)
        log.write(step=step, split=split, final=True, **metrics[split])
        accelerator.log({f"final/{split}/{k}": v for k, v in metrics[split].items()}, step=step)
    return metrics, records


@dataclass
class Result:
    """What a run produced, for :mod:`rocoft.runs` to write."""

    metrics: dict  # the content of metrics.json (without the suite's provenance)
    records: dict[str, list[dict] | None]  # per evaluation split: predictions_<split>.jsonl records
    model: torch.nn.Module  # the trained model, unwrapped
    method: Method  # saves the model's artifact


def train_and_evaluate(cfg, accelerator: Accelerator, run_dir: Path, stop: StopSignals | None = None) -> Result:
    """All four stages; resumes from the latest checkpoint in ``run_dir/checkpoints`` (``train.resume``).

    ``stop``: the run's stop signals, installed by the caller for the whole run (:func:`rocoft.runs.execute`);
    None: held here, from the start to the end of the final evaluation. Until training starts a stop signal
    stops the run at once (nothing to save); from then on, at the next step boundary (or batch of the final
    evaluation), after a checkpoint of the latest step."""
    if stop is None:
        with StopSignals(cfg.train.stop_signals, immediate=True) as stop:
            return train_and_evaluate(cfg, accelerator, run_dir, stop)
    clock = Clock(accelerator.device)
    transformers.logging.set_verbosity_error()  # the load report of a new task head is expected
    transformers.utils.logging.disable_progress_bar()
    reset_peak_memory(accelerator.device)
    main = accelerator.is_main_process
    stop.device = accelerator.device
    start_trackers(cfg, accelerator, run_dir)
    enter_stage("data preparation", stop, accelerator)
    data = setup_data(cfg, accelerator)
    enter_stage("model loading", stop, accelerator)
    trainee = setup_model(cfg, data, accelerator)
    sharded = is_sharded(trainee.model)  # FSDP: every rank writes its shards of each checkpoint
    checkpointer = Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints, enabled=main or sharded,
                                sharded=sharded, settings=run_settings(cfg))
    resumed = resume(cfg, trainee, checkpointer, accelerator)
    position = resumed.position if resumed else Position()
    clock.earlier = position.elapsed  # time and memory of the run before its last resume
    stop.immediate = False  # from here on a stop waits for a step boundary and saves a checkpoint first
    if stop.received is not None:  # a stop the handler's exception did not end (caught on its way)
        raise Preempted(stop.received, None, previous=stop.previous_handler(stop.received), stage=stop.stage)
    log = JsonlLog(run_dir / "log.jsonl", enabled=main, keep_until_step=position.step if resumed else None)
    enter_stage("training", stop, accelerator)
    position = fit(cfg, accelerator, data, trainee, position, log, checkpointer, clock, stop)
    train_time = clock.training()
    done = position
    enter_stage("final evaluation", stop, accelerator)
    final, records = final_evaluation(
        accelerator, data, trainee, position.step, log,
        before_batch=lambda: stop_now(stop, accelerator, trainee, checkpointer,
                                      Position(done.step, done.epoch, done.in_epoch, done.history,
                                               clock.elapsed()), log))
    stop.stage = "writing the results"
    log.close()
    metrics = {
        "model": cfg.model.name, "task": cfg.task.name, "method": cfg.method.name,
        "rank": trainee.method.rank, "seed": cfg.seed, "main_metric": data.task.main_metric,
        **final, "eval_splits": list(final),
        "validation_history": position.history,
        "params": trainee.params,
        "steps": position.step, "train_examples": len(data.datasets["train"]),
        "wall_time_s": clock.wall(), "train_time_s": train_time, **clock.memory(),
        "resumed": resumed is not None,
        "device": str(accelerator.device), "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
    return Result(metrics, records, accelerator.unwrap_model(trainee.model), trainee.method)
