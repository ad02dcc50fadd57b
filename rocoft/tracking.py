"""Experiment tracking through Accelerate's trackers: ``logger=wandb`` (one W&B run per run directory,
continued after a resume or a SLURM requeue) and ``logger=tensorboard`` (event files under the run)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

from .utils import flat_dict

TRACKERS = {"wandb": "wandb", "tensorboard": "tensorboard"}  # logger=<name> -> the package it needs


def wandb_run_id(run_dir: Path) -> str:
    """A W&B run id fixed by the run directory: a resumed or requeued run logs into the same W&B run."""
    return "rocoft-" + hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def start_trackers(cfg, accelerator, run_dir: Path) -> None:
    """Accelerate's tracker for ``logger=wandb`` (one W&B run per run directory, resumed after a requeue;
    stored under <run>/wandb) or ``logger=tensorboard`` (event files under <run>/tensorboard)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.logger.name == "wandb":
        accelerator.init_trackers(cfg.logger.project, config=config, init_kwargs={"wandb": {
            "dir": str(run_dir), "entity": cfg.logger.entity, "tags": list(cfg.logger.tags),
            "name": "/".join(run_dir.parts[-4:]), "id": wandb_run_id(run_dir), "resume": "allow"}})
    elif cfg.logger.name == "tensorboard":
        # TensorBoard's hparams take scalars only: the config flattened, other values as text
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in flat_dict(config).items()}
        accelerator.init_trackers(cfg.logger.subdir, config=flat)
