"""Seeded batch orders that a resumed run can reproduce exactly: the batches of epoch e depend
only on (seed, e), so resuming = ``set_epoch(e)`` and skipping the batches already done."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


def example_lengths(dataset) -> list[int]:
    """Token count of each example of an encoded dataset (rows of feature dicts with ``input_ids``)."""
    return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]


class _EpochSeeded(Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class ShuffledBatchSampler(_EpochSeeded):
    """Batches of a fresh seeded permutation each epoch."""

    def __iter__(self):
        perm = torch.randperm(self.n, generator=self.generator()).tolist()
        for start in range(0, self.n, self.batch_size):
            yield perm[start:start + self.batch_size]


class LengthGroupedBatchSampler(_EpochSeeded):
    """Shuffled batches of similar-length examples (the idea of transformers' ``group_by_length``).

    Each epoch: a seeded permutation of all examples is cut into mega-batches of
    ``mega_batches x batch_size`` examples; each mega-batch is sorted by length (longest first)
    and cut into batches; the batches' order is shuffled again, except that a short batch (the
    remainder) always comes last, where a multi-process loader expects it. Every example appears
    exactly once per epoch.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, mega_batches: int = 50):
        super().__init__(len(lengths), batch_size, seed)
        self.lengths, self.mega = lengths, mega_batches

    def __iter__(self):
        g = self.generator()
        perm = torch.randperm(self.n, generator=g).tolist()
        size = self.mega * self.batch_size
        batches = []
        for start in range(0, len(perm), size):
            chunk = sorted(perm[start:start + size], key=lambda i: -self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        for b in torch.randperm(len(full), generator=g).tolist():
            yield full[b]
        yield from short


def sorted_by_length(lengths: list[int]) -> list[int]:
    """Indices longest-first: evaluation order with the least padding (metrics don't depend on order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])
