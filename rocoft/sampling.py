"""Batching by length: fewer padding tokens, same data, seeded order."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def example_lengths(dataset) -> list[int]:
    return [len(row["input_ids"]) for row in dataset.rows]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length examples (the idea of transformers' ``group_by_length``).

    Each epoch: a seeded permutation of all examples is cut into mega-batches of
    ``mega_batches x batch_size`` examples; each mega-batch is sorted by length (longest first)
    and cut into batches; the batches' order is shuffled again. Every example appears exactly
    once per epoch; the order depends only on ``seed`` and the epoch number.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega = lengths, batch_size, seed, mega_batches
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.mega * self.batch_size
        batches = []
        for start in range(0, len(perm), size):
            chunk = sorted(perm[start:start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield batches[b]


def sorted_by_length(lengths: list[int]) -> list[int]:
    """Indices longest-first: evaluation order with the least padding (metrics don't depend on order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])
