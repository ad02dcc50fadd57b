"""Several processes per run: SLURM tasks as one torch.distributed run, and which engines RoCoFT refuses.

A SLURM job with ``tasks_per_node=N`` (and ``nodes=M``) starts N x M tasks of one ``srun`` step, each running
the same submitit job. :func:`export_slurm_environment` turns them into the ranks of one distributed run by
exporting torch's ``env://`` variables from SLURM's (``SLURM_PROCID`` ...); Accelerate then builds the process
group (gloo on CPU, nccl on GPU), every rank trains, and only rank 0 writes the run directory.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .errors import UserError

# torch's env:// rendezvous variables, as torchrun sets them
TORCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def slurm_environment(environ=os.environ) -> dict[str, str] | None:
    """torch's ``env://`` variables for this process when it is one task of a multi-task SLURM step (srun, as
    submitit runs jobs), else None: a single task, a batch script outside ``srun`` (it has ``SLURM_NTASKS`` but
    is no task of a step), a launcher that already set ``RANK`` (torchrun, accelerate launch)."""
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS") or 1)
    if tasks <= 1 or "RANK" in environ or "SLURM_PROCID" not in environ:
        return None
    from submitit.slurm.slurm import _parse_node_list  # SLURM's compressed host lists: node[01-04],gpu7

    nodes = _parse_node_list(environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"])
    # one node: rendezvous on loopback; several: on the first node (rank 0 runs there)
    master = "127.0.0.1" if len(nodes) == 1 else nodes[0]
    job = environ.get("SLURM_JOB_ID", "0")
    port = environ.get("MASTER_PORT") or str(20000 + int(job) % 40000 if job.isdigit() else 29500)
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(tasks),
            "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"), "LOCAL_WORLD_SIZE": str(max(1, tasks // len(nodes))),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or master, "MASTER_PORT": port}


def export_slurm_environment() -> bool:
    """Export :func:`slurm_environment` (before Accelerate is built) unless a process group already exists;
    True when this process is one rank of a multi-task SLURM run."""
    env = slurm_environment()
    if env is None or _process_group() is not None:
        return False
    os.environ.update(env)
    return True


def _process_group():
    """torch.distributed when a process group exists (without importing torch when nothing did), else None."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes the run directory."""
    dist = _process_group()
    return dist.get_rank() == 0 if dist is not None else int(os.environ.get("RANK") or 0) == 0


def quiet_other_ranks(run_dir) -> None:
    """On ranks other than 0, stop Python logging into the run directory (Hydra's ``<job>.log`` there), so
    that its lines are rank 0's only."""
    if is_main_process():
        return
    run_dir = Path(run_dir).resolve()
    for handler in list(logging.root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().parent == run_dir:
            logging.root.removeHandler(handler)
            handler.close()


# ---- sharded engines
def sharded_engine(distributed_type, environ=os.environ) -> str | None:
    """'FSDP' or 'DeepSpeed' when the run is (or was asked to be, e.g. ``accelerate launch --use_fsdp``; on CPU
    Accelerate ignores that request) sharded by one of them, else None."""
    from accelerate.utils import DistributedType

    if distributed_type == DistributedType.DEEPSPEED or environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "DeepSpeed"
    if distributed_type == DistributedType.FSDP or environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    return None


def check_engine(distributed_type, method_name: str, refused: str | None, environ=os.environ) -> None:
    """Stop (UserError), before any training step, a run under an engine the suite cannot save or train under:

    - DeepSpeed, for every method (its ZeRO states are not saved by the suite);
    - FSDP for a method that gives a reason it cannot shard (``Method.sharded_engines_refused``: all but
      full fine-tuning), and FSDP version 1 for any method (the suite saves through FSDP2's DTensors);
    - FSDP asked for (``accelerate launch --use_fsdp``) where Accelerate cannot shard (CPU: it would silently
      run plain data parallelism). ``distributed_type`` None: the Accelerator is not built yet (the request
      is judged from the environment ``accelerate launch`` sets)."""
    from accelerate.utils import DistributedType

    engine = sharded_engine(distributed_type, environ)
    ddp = ("Use data parallelism (DDP) instead: `accelerate launch --multi_gpu --num_processes N train.py ...` "
           "(or torchrun, or hydra.launcher.tasks_per_node=N on SLURM), without --use_fsdp / --use_deepspeed.")
    if engine == "DeepSpeed":
        raise UserError(f"method={method_name} does not run under DeepSpeed: the suite does not save ZeRO's "
                        f"sharded states. {ddp} Full fine-tuning of large models: FSDP2 "
                        f"(accelerate launch --config_file conf/accelerate/fsdp.yaml train.py method=full_ft ...).")
    if engine is None:
        return
    if refused is not None:
        raise UserError(f"method={method_name} does not run under FSDP: {refused}. {ddp}")
    version = str(environ.get("FSDP_VERSION", "1"))
    if version != "2":
        raise UserError(f"method={method_name} runs under FSDP version 2 only (asked: version {version}); "
                        f"use conf/accelerate/fsdp.yaml or `accelerate launch --use_fsdp --fsdp_version 2`.")
    if distributed_type is not None and distributed_type != DistributedType.FSDP:
        raise UserError(f"FSDP was asked for, but Accelerate runs this job as {distributed_type.value} (FSDP needs "
                        f"GPUs; on CPU it would silently train unsharded). Drop --use_fsdp, or run on GPUs.")
