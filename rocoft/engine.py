"""The run's engine: its Accelerator (device, precision, processes, tracker; engines a method refuses) and its
optimizer (AdamW, weight decay on weight matrices and RoCoFT's trained values only)."""

from __future__ import annotations

import importlib.util

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration

from .core import RoCoFTSlice
from .distributed import check_engine, export_slurm_environment
from .errors import UserError
from .tracking import TRACKERS


def build_accelerator(cfg) -> Accelerator:
    """The run's Accelerator; the tasks of a multi-task SLURM job become the ranks of one run. A method that
    cannot train under a sharded engine (RoCoFT under FSDP / DeepSpeed) is refused here, before anything runs."""
    export_slurm_environment()  # SLURM tasks -> RANK, WORLD_SIZE, MASTER_ADDR ... (no-op otherwise)
    from .methods import method_class  # (the methods import this module's optimizer)

    cls = method_class(cfg.method)
    refused = None if cls is None else cls.sharded_engines_refused
    check_engine(None, cfg.method.name, refused)  # asked for (accelerate launch --use_fsdp ...): refused first
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
    tracker = cfg.logger.name if cfg.logger.name != "none" else None
    if tracker is not None and tracker not in TRACKERS:
        raise UserError(f"logger={tracker} is not supported; use one of: none, {', '.join(TRACKERS)}")
    if tracker is not None and importlib.util.find_spec(TRACKERS[tracker]) is None:
        raise UserError(f"logger={tracker} needs the {TRACKERS[tracker]} package: pip install {TRACKERS[tracker]}")
    accelerator = Accelerator(cpu=device == "cpu" or not cuda, mixed_precision=precision, log_with=tracker,
                              project_dir=str(cfg.output_dir) if tracker == "tensorboard" else None,
                              gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    check_engine(accelerator.distributed_type, cfg.method.name, refused)
    return accelerator


def no_decay(name: str, param: torch.Tensor, rocoft_values: frozenset[int] = frozenset()) -> bool:
    """Biases and 1-D norm weights get no weight decay (the usual transformers convention). RoCoFT's
    trained values (``rocoft_values``: the ids of the RoCoFTSlice weights) decay whatever their shape
    (the random-entry ablation keeps them as a 1-D vector)."""
    if name.endswith("bias"):
        return True
    return param.ndim < 2 and id(param) not in rocoft_values


def build_optimizer(model, train_cfg) -> torch.optim.Optimizer:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise UserError("The method left no trainable parameter in the model.")
    rocoft_values = frozenset(id(m.weight) for m in model.modules() if isinstance(m, RoCoFTSlice))
    skip = {n for n, p in params if no_decay(n, p, rocoft_values)}
    groups = [{"params": [p for n, p in params if n not in skip], "weight_decay": train_cfg.weight_decay},
              {"params": [p for n, p in params if n in skip], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_cfg.lr,
                             betas=tuple(train_cfg.adam_betas), eps=train_cfg.adam_eps)
