"""One rank of a real FSDP2 run on CPU (gloo), started by tests/test_sharded.py through torchrun.

    torchrun --nproc_per_node 2 tests/sharded_worker.py OUT MODE [--no-shard]

``--no-dropout``: dropout 0 (so that runs with other numbers of ranks compare). MODE: ``full`` trains STEPS steps; ``stop`` trains STOP steps and writes a checkpoint with the suite's
Checkpointer; ``resume`` puts that checkpoint back and trains to STEPS. Each ends by gathering the model
(rocoft.sharded.full_model_state) and, on rank 0, writing it to OUT/<MODE>.pt and the artifact with
FullFT.save. ``--no-shard``: the same run without FSDP (one process holds everything), the reference.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForSequenceClassification, get_scheduler

from omegaconf import OmegaConf

from rocoft.checkpoint import Checkpointer, Position
from rocoft.methods.native import FullFT
from rocoft.sharded import full_model_state, is_sharded

STEPS, STOP, BATCH = 6, 3, 4


def model_and_optimizer(shard: bool, dropout: bool):
    torch.manual_seed(0)
    drop = 0.1 if dropout else 0.0
    config = BertConfig(hidden_dropout_prob=drop, attention_probs_dropout_prob=drop, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config)
    if shard:
        from torch.distributed.fsdp import fully_shard

        for layer in model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=STEPS)
    return model, optimizer, scheduler


def batch(step: int, rank: int, world: int):
    """The global batch of a step, this rank's slice (the same data whatever the number of ranks)."""
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 64, (BATCH * 2, 12), generator=g)
    labels = torch.randint(0, 3, (BATCH * 2,), generator=g)
    per = ids.shape[0] // world
    return ids[rank * per:(rank + 1) * per], labels[rank * per:(rank + 1) * per]


def train(model, optimizer, scheduler, start: int, end: int, rank: int, world: int, shard: bool):
    model.train()
    for step in range(start, end):
        ids, labels = batch(step, rank, world)
        loss = model(input_ids=ids, labels=labels).loss
        if not shard and world > 1:
            raise SystemExit("--no-shard runs in one process")
        loss.backward()  # FSDP2 averages the gradients of the ranks (reduce-scatter)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def main():
    out, mode = Path(sys.argv[1]), sys.argv[2]
    shard = "--no-shard" not in sys.argv
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(1000 + rank)  # dropout streams differ per rank: a resume must put back each rank's
    model, optimizer, scheduler = model_and_optimizer(shard, "--no-dropout" not in sys.argv)
    assert is_sharded(model) == shard
    if mode == "full":
        initial = full_model_state(model)
        if rank == 0:
            torch.save(initial, out / "init.pt")
    checkpointer = Checkpointer(out / "checkpoints", keep=2, enabled=True, sharded=shard)
    start = 0
    if mode == "resume":
        resumed = checkpointer.load_latest(model, optimizer, scheduler)
        start = resumed.position.step
    train(model, optimizer, scheduler, start, STOP if mode == "stop" else STEPS, rank, world, shard)
    if mode == "stop":
        checkpointer.save(model, optimizer, scheduler, Position(step=STOP))
    state = full_model_state(model)  # a collective: every rank takes part
    method = FullFT("full_ft", model_cfg=OmegaConf.create({"name": "tiny", "family": "bert",
                                                            "head_modules": {"classification": ["classifier"]}}),
                    kind="classification", seed=0)
    method.gather(model)  # a collective, as rocoft.runs calls it on every rank
    if rank == 0:
        torch.save(state, out / f"{mode}.pt")
        method.save(model, out / f"{mode}_model")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
