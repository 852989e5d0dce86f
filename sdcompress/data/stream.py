"""The seeded minibatch stream: the noise ω of PAPER.md §1.

A :class:`BatchStream` is a pure function of ``(seed, step)``: ``stream.batch(t)`` is the
same batch every time it is asked for, in any order, in any process. Two runs with the
same stream are the same random dynamical system, which is what lets the estimator
replay a training trajectory and lets an interrupted run resume bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from sdcompress.data.core import ArrayDataset, Batch
from sdcompress.errors import ConfigError, DataError

# Large odd constant mixed with the seed so that per-epoch / per-step generators of
# nearby seeds do not share streams.
_MIX = 0x9E3779B97F4A7C15


def _generator(seed: int, counter: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * _MIX + counter * 0x632BE59BD9B4E019 + 1) % (2**63 - 1))
    return g


@dataclass(frozen=True)
class BatchStream:
    """Seeded, random-access minibatch stream over a dataset.

    Without replacement each epoch is a fresh permutation (``drop_last``: the tail that
    does not fill a batch is skipped); with replacement every step draws
    ``batch_size`` indices uniformly.

    Args:
        data: the dataset to sample from (usually the train split).
        batch_size: examples per batch, 1 ≤ batch_size ≤ len(data).
        seed: fixes the whole sequence of batches.
        replacement: sample each batch independently with replacement.

    Raises:
        ConfigError: if ``batch_size`` is not in [1, len(data)].
    """

    data: ArrayDataset
    batch_size: int
    seed: int = 0
    replacement: bool = False

    def __post_init__(self) -> None:
        if len(self.data) == 0:
            raise DataError("the dataset is empty: there is nothing to draw minibatches from")
        if not 1 <= self.batch_size <= len(self.data):
            raise ConfigError(
                f"batch size {self.batch_size} must be between 1 and the dataset size "
                f"{len(self.data)}; pick a smaller --batch-size"
            )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data) // self.batch_size

    def indices(self, step: int) -> Tensor:
        """Row indices of the batch at ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be ≥ 0, got {step}")
        if self.replacement:
            return torch.randint(len(self.data), (self.batch_size,), generator=_generator(self.seed, step))
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(len(self.data), generator=_generator(self.seed, -1 - epoch))
        return perm[within * self.batch_size : (within + 1) * self.batch_size]

    def batch(self, step: int) -> Batch:
        """The batch at ``step``."""
        return self.data.take(self.indices(step))

    def take(self, n: int, start: int = 0) -> list[Batch]:
        """Batches ``start, …, start + n − 1``."""
        return [self.batch(t) for t in range(start, start + n)]

    def __iter__(self) -> Iterator[Batch]:
        step = 0
        while True:
            yield self.batch(step)
            step += 1
