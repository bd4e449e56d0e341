"""Which pairs go into which micro-batch of which optimizer step, on which rank.

The plan is a pure function of (number of pairs, seed, epoch, step), so a resumed run
picks up exactly the batches the uninterrupted run would have seen, with no sampler
state to save. Each epoch is a seeded permutation; one optimizer step consumes
``batch_size x accumulation x world_size`` pairs; rank r takes micro-batch slices
``r, r + world, ...`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchPlan:
    num_pairs: int
    batch_size: int
    accumulation: int = 1
    world_size: int = 1
    seed: int = 0
    shuffle: bool = True

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        # With several ranks a last partial step could leave a rank without data (and its
        # collective calls unmatched): drop it. One process keeps every pair.
        if self.world_size > 1:
            return self.num_pairs // self.global_batch
        return math.ceil(self.num_pairs / self.global_batch)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_pairs))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_pairs, generator=generator).tolist()

    def step_indices(self, step: int) -> list[int]:
        """All pair indices of global optimizer step ``step`` (0-based), every rank's."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        return order[within * self.global_batch:(within + 1) * self.global_batch]

    def micro_batches(self, step: int, rank: int = 0) -> list[list[int]]:
        indices = self.step_indices(step)
        chunks = [indices[i:i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        return [c for c in chunks[rank::self.world_size] if c]


def eval_batches(num_pairs: int, batch_size: int, rank: int = 0, world_size: int = 1
                 ) -> list[list[int]]:
    """Evaluation order is fixed; ranks take interleaved batches."""
    chunks = [list(range(i, min(i + batch_size, num_pairs))) for i in range(0, num_pairs, batch_size)]
    return chunks[rank::world_size]
