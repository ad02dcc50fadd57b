"""Models sharded across processes (FSDP2: ``accelerate launch --config_file conf/accelerate/fsdp.yaml``).

Under FSDP each rank holds only a shard of every parameter and of its optimizer state, so a checkpoint
or an artifact written from rank 0's tensors alone would lose the other ranks' shards. Everything here
goes through ``torch.distributed.checkpoint`` (DCP), which knows every engine's layout:

- :func:`save_sharded` / :func:`load_sharded`: a resumable checkpoint of model and optimizer in which
  every rank writes its own shards (no rank ever holds the whole model: what a 13B full fine-tuning
  needs), plus each rank's RNG state;
- :func:`full_model_state`: the whole model gathered (on CPU, rank 0 only), for the run's artifact
  (``save_pretrained``), as ``accelerator.get_state_dict`` does.

Every function is a collective: all ranks call it. On an unsharded model they work too (a single
process writes everything), which is what the tests compare against.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

MODEL_DIR = "model_optimizer"  # the DCP folder in a checkpoint: one .distcp file per rank + .metadata


def is_sharded(model: torch.nn.Module) -> bool:
    """True when some parameter is a DTensor (FSDP2's sharded parameters) or the model is FSDP1-wrapped."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return True
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _state(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_sharded(directory: Path, model, optimizer) -> None:
    """Every rank writes its shards of the model and optimizer states into ``directory/model_optimizer``."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(model, optimizer), checkpoint_id=str(Path(directory) / MODEL_DIR))


def load_sharded(directory: Path, model, optimizer) -> None:
    """Put back what :func:`save_sharded` wrote, each rank reading the shards it holds now."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(Path(directory) / MODEL_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_model_state(model) -> dict[str, torch.Tensor]:
    """The whole model's state dict on CPU on rank 0 (``{}`` on the others)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def rng_file(directory: Path) -> Path:
    """Each rank's RNG states (dropout streams differ per rank)."""
    return Path(directory) / f"rng_rank{rank()}.pt"
