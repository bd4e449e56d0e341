"""Length-grouped batch order: pairs of similar length share a batch.

Less padding for the padded layout and fuller packed rows for the fast one, at the cost
of batches that are less mixed; the order across mega-batches stays random.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from preftune.batching.plan import BatchPlan


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int,
                         mega_batch: int = 50) -> list[int]:
    """A seeded permutation in which each run of ``batch_size x mega_batch`` indices is
    sorted longest first, so batches hold pairs of similar length (less padding, fuller
    packed rows) while the order across mega-batches stays random; the same trade as
    transformers' ``group_by_length``. A pure function of its arguments, so resuming
    reproduces it."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    size = max(1, batch_size * mega_batch)
    grouped = []
    for start in range(0, len(order), size):
        grouped += sorted(order[start:start + size], key=lambda i: -lengths[i])
    return grouped


@dataclass(frozen=True)
class LengthGroupedPlan(BatchPlan):
    """:class:`BatchPlan` whose epoch order is :func:`length_grouped_order` of the pairs'
    token counts; still a pure function of (lengths, seed, epoch), so resume is exact."""

    lengths: tuple = ()

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_pairs))
        return length_grouped_order(self.lengths, self.global_batch,
                                    seed=self.seed * 100_003 + epoch)
