"""Containers for in-memory datasets.

Every dataset the toolkit uses fits in memory as a handful of tensors of equal length.
An :class:`ArrayDataset` holds them and turns a tensor of indices into a *batch*, the
unit every later stage consumes:

- language modelling (``task="lm"``): ``{"input_ids": (B, T), "labels": (B, T)}``,
  the format Hugging Face causal LMs take (the model shifts labels itself);
- classification (``task="classification"``): a tuple ``(inputs, targets)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Union

import torch
from torch import Tensor

from sdcompress.errors import DataError

Batch = Union[Mapping[str, Tensor], tuple[Tensor, Tensor]]
Task = Literal["lm", "classification"]


@dataclass(frozen=True)
class ArrayDataset:
    """Equal-length tensors, indexed together.

    Attributes:
        tensors: named tensors sharing their first dimension.
        task: ``"lm"`` gives dict batches, ``"classification"`` gives
            ``(tensors["inputs"], tensors["targets"])`` tuples.
    """

    tensors: Mapping[str, Tensor]
    task: Task

    def __post_init__(self) -> None:
        lengths = {name: len(t) for name, t in self.tensors.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"tensors of an ArrayDataset must share their length, got {lengths}")
        needed = {"input_ids"} if self.task == "lm" else {"inputs", "targets"}
        if not needed <= set(self.tensors):
            raise DataError(f"a {self.task!r} dataset needs tensors {sorted(needed)}, got {sorted(self.tensors)}")

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def take(self, indices: Tensor) -> Batch:
        """The batch made of the given rows."""
        if self.task == "lm":
            ids = self.tensors["input_ids"][indices]
            labels = self.tensors["labels"][indices] if "labels" in self.tensors else ids
            return {"input_ids": ids, "labels": labels}
        return self.tensors["inputs"][indices], self.tensors["targets"][indices]

    def all(self) -> Batch:
        """The whole dataset as one batch."""
        return self.take(torch.arange(len(self)))


@dataclass(frozen=True)
class DatasetBundle:
    """A train/test pair with what a model needs to know about it.

    Attributes:
        name: how the dataset was asked for (``"pydoc"``, a path, a hub name).
        train: the training split (the one SGD samples minibatches from).
        test: the held-out split.
        info: facts a model builder needs: ``vocab_size`` and ``block_size`` for
            language modelling, ``input_dim`` and ``n_classes`` for classification,
            and whatever the loader wants to record (split rule, seed).
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        return self.train.task


def move_batch(batch: Batch, device: torch.device | str) -> Batch:
    """The same batch on ``device`` (no copy when it is already there)."""
    if isinstance(batch, Mapping):
        return {k: v.to(device) for k, v in batch.items()}
    return tuple(t.to(device) for t in batch)  # type: ignore[return-value]


def batch_size_of(batch: Batch) -> int:
    """Number of examples in a batch."""
    if isinstance(batch, Mapping):
        return len(next(iter(batch.values())))
    return len(batch[0])
