"""Config dataclasses of the first stages (data, model). Each later stage defines its own
config next to its code (``train.TrainConfig``, ``estimator.EstimateConfig``, ...);
recipes are YAML views of these same dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    """Which dataset, and how minibatches are drawn (the noise ω).

    Attributes:
        name: built-in (``pydoc``, ``digits``, ``modular``), local path, or hub name;
            ``None`` picks the model's default (tiny-gpt2 → pydoc, mlp → digits,
            modular-mlp → modular).
        batch_size: examples per SGD minibatch.
        seed: seed of the minibatch stream ω (and of seeded splits).
        replacement: draw each minibatch with replacement instead of by epochs.
        block_size: tokens per block for language modelling.
        train_fraction: train split fraction (digits, modular); ``None``: the loader's default.
        p: modulus of the ``modular`` dataset.
    """

    name: str | None = None
    batch_size: int = 16
    seed: int = 0
    replacement: bool = False
    block_size: int = 64
    train_fraction: float | None = None
    p: int = 97


@dataclass
class ModelConfig:
    """Which model.

    Attributes:
        name: ``tiny-gpt2``, ``mlp``, ``modular-mlp``, a ``save_pretrained`` folder, or a hub name.
        options: constructor options of a built-in (``n_layer``, ``widths``, ``hidden``, ...).
        seed: initialisation seed of built-ins.
    """

    name: str = "tiny-gpt2"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
