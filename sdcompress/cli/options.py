"""Errors under the option the user typed.

The configs check their own fields (:class:`sdcompress.config.FieldError`, keyed
``section.name``); the CLI builds configs from its options inside :func:`under_options`,
which re-words an error about ``train.lr`` as one about ``--lr`` (the value and the fix
stay the configs' own). Errors of fields the user set with ``--set`` keep the ``--set``
path, because those configs are built elsewhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from sdcompress.config import FieldError
from sdcompress.errors import ConfigError

#: config field -> option of the main job (``sdcompress MODEL``)
RUN_OPTIONS: dict[str, str] = {
    "model.name": "MODEL",
    "data.name": "--dataset",
    "data.batch_size": "--batch-size",
    "train.lr": "--lr",
    "train.weight_decay": "--weight-decay",
    "train.steps": "--steps",
    "estimate.method": "--method",
    "plan.target_rank": "--target-rank",
    "plan.prune": "--prune",
    "plan.bits": "--bits",
    "plan.tolerance": "--tolerance",
    "plan.budget": "--budget",
    "plan.budget.params_fraction": "--budget",
    "plan.strategy": "--strategy",
    "plan.targets": "--targets",
    "plan.ignore": "--ignore",
    "evaluate.tolerance": "--eval-tolerance",
    "output.dir": "--output-dir",
    "seed": "--seed",
    "device": "--device",
}


@contextmanager
def under_options(options: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a :class:`FieldError` whose key is in ``options`` under that option's name.

    Args:
        options: config key (``"train.lr"``) -> the option the user typed (``"--lr"``).

    Raises:
        ConfigError: ``"--lr must be a finite number > 0, got 0.0; ..."``.
    """
    try:
        yield
    except FieldError as exc:
        label = options.get(exc.key)
        if label is None:
            raise
        raise ConfigError(exc.as_named(label)) from exc


__all__ = ["RUN_OPTIONS", "under_options"]


def step_size(text: str) -> float | str:
    """argparse type of ``--lr``: a number, or ``auto`` (η = 2/λ_max at the start; the
    configs check the range, so ``--lr 0`` is reported under ``--lr`` with its fix)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or auto, got {text!r}") from None
