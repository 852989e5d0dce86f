"""The estimators' one batch source: minibatch i on the compute device, and how many there are.

What a caller may pass as ``batches`` and how each estimator uses it:

- a :class:`~sdcompress.data.BatchStream` (the seeded noise ω): an unbounded stream;
  minibatch i is ``stream.batch(i)``. ``exact`` draws ``n_batches``, the SLQ family one
  per run (``slq_runs``), ``lyapunov`` one per step (``lyapunov_steps``).
- a finite sequence of batches (a list or tuple of batches): **used as given**, never
  silently reweighted. ``exact`` uses each batch exactly once (``n_batches`` is the list's
  length, whatever the config says); the SLQ family gives every batch the same number of
  runs: ``slq_runs`` is rounded *up* to the next multiple of the list's length L and run
  r uses batch r mod L (so 3 batches and ``slq_runs=32`` make 33 runs, 11 per batch; the
  estimate's settings record 33); ``lyapunov`` follows the list as its trajectory, one
  batch per step, and refuses a list shorter than ``lyapunov_steps``.
- a single batch (a dict of tensors, or a tuple/list of tensors): a list of one batch.
- any other iterable (a generator, a DataLoader): a stream consumed in order as needed
  and never cycled; running out is an :class:`~sdcompress.errors.EstimatorError`.

Batches are moved to the model's device and, for ``dtype="float64"``, their floating
tensors cast to that dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from sdcompress.data.core import Batch, move_batch
from sdcompress.data.stream import BatchStream
from sdcompress.errors import EstimatorError

logger = logging.getLogger(__name__)


def is_single_batch(batches: Any) -> bool:
    """A dict of tensors, or a tuple/list of tensors, is one batch, not a stream of them."""
    if isinstance(batches, Mapping):
        return True
    return isinstance(batches, (tuple, list)) and len(batches) > 0 and all(isinstance(t, Tensor) for t in batches)


class BatchSource:
    """Minibatch i, on ``device`` (and ``dtype``), from a stream, a finite list or an iterator.

    Args:
        batches: see the module docstring.
        device: where batches go.
        dtype: cast floating tensors to this dtype (``None``: leave them).

    Attributes:
        size: the number of batches of a finite list (``None`` for streams and iterators).
        description: what the batches are, for an estimate's settings.

    Raises:
        EstimatorError: an empty list or iterator, or something that is not batches.
    """

    def __init__(self, batches: BatchStream | Iterable[Batch] | Batch, device: torch.device | str,
                 dtype: torch.dtype | None = None) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self._stream: BatchStream | None = None
        self._items: list[Batch] = []
        self._iter: Iterator[Batch] | None = None
        self._last: tuple[int, Batch] | None = None
        self.size: int | None = None
        if isinstance(batches, BatchStream):
            self._stream = batches
            self.description = (f"BatchStream(seed={batches.seed}, batch_size={batches.batch_size}, "
                                f"replacement={batches.replacement})")
            return
        if is_single_batch(batches):
            logger.warning("got a single batch: every minibatch/run uses it (the operator does not vary)")
            self._items, self.size = [batches], 1  # type: ignore[list-item]
            self.description = "a single batch"
        elif isinstance(batches, Sequence) and not isinstance(batches, (str, bytes)):
            self._items = list(batches)
            self.size = len(self._items)
            self.description = f"a list of {self.size} batches, each used as given"
        elif isinstance(batches, Iterable) and not isinstance(batches, (str, bytes)):
            self._iter = iter(batches)
            self.description = "an iterator of batches, consumed in order"
        else:
            raise EstimatorError(f"batches must be a BatchStream, a list or an iterable of batches, got {type(batches).__name__}")
        if self.size == 0:
            raise EstimatorError("the batch list is empty: pass a BatchStream or at least one batch")

    @property
    def finite(self) -> bool:
        """A finite list (used as given) rather than a stream."""
        return self.size is not None

    def _raw(self, i: int) -> Batch:
        if self._stream is not None:
            return self._stream.batch(i)
        while self._iter is not None and len(self._items) <= i:
            try:
                self._items.append(next(self._iter))
            except StopIteration:
                self._iter = None
                what = "empty" if not self._items else f"exhausted after {len(self._items)} batches"
                raise EstimatorError(
                    f"the batch iterator is {what} but batch {i + 1} is needed; pass a BatchStream, "
                    "a longer iterator, or a list (a list is used as given)"
                ) from None
        if i >= len(self._items):
            raise EstimatorError(f"batch {i + 1} asked of a list of {len(self._items)} batches")
        return self._items[i]

    def __call__(self, i: int) -> Batch:
        """Batch ``i`` on the device (the last one is kept, so asking twice costs nothing).

        Raises:
            EstimatorError: past the end of a list or an exhausted iterator.
        """
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        batch = move_batch(self._raw(i), self.device)
        if self.dtype is not None:
            cast = lambda t: t.to(self.dtype) if t.is_floating_point() else t  # noqa: E731
            batch = {k: cast(v) for k, v in batch.items()} if isinstance(batch, Mapping) else tuple(cast(t) for t in batch)
        self._last = (i, batch)
        return batch

    def take(self, n: int) -> list[Batch]:
        """Batches 0 … n − 1."""
        return [self(i) for i in range(n)]

    def __iter__(self) -> Iterator[Batch]:
        """Batches in order: the whole list, or the stream without end."""
        i = 0
        while self.size is None or i < self.size:
            yield self(i)
            i += 1

    # -- how many batches each estimator uses ---------------------------------------------
    def n_exact(self, n_batches: int) -> int:
        """Minibatches of ``exact``: every batch of a list once; ``n_batches`` of a stream."""
        if self.size is not None:
            if self.size != n_batches:
                logger.info("exact: using the %d batches given, each once (n_batches=%d applies to streams)", self.size, n_batches)
            return self.size
        return n_batches

    def n_runs(self, slq_runs: int) -> int:
        """SLQ runs: ``slq_runs`` for a stream; for a list of L batches, ``slq_runs`` rounded
        up to a multiple of L so that every batch gets the same number of runs."""
        if self.size is None:
            return slq_runs
        runs = math.ceil(slq_runs / self.size) * self.size
        if runs != slq_runs:
            logger.info("SLQ: %d runs instead of %d, so each of the %d batches given gets %d runs", runs, slq_runs,
                        self.size, runs // self.size)
        return runs

    def for_run(self, r: int) -> Batch:
        """The batch of SLQ run ``r``: batch r of a stream, batch r mod L of a list of L."""
        return self(r % self.size if self.size is not None else r)

    def check_steps(self, steps: int) -> None:
        """A list must hold a batch for each of ``steps`` trajectory steps (Lyapunov).

        Raises:
            EstimatorError: a shorter list.
        """
        if self.size is not None and self.size < steps:
            raise EstimatorError(
                f"got {self.size} batches for {steps} Lyapunov steps (one batch per step); "
                "pass a BatchStream or more batches, or lower lyapunov_steps"
            )


__all__ = ["BatchSource", "is_single_batch"]
