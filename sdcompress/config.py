"""Config dataclasses of the first stages (data, model), and how every config validates itself.

Each later stage defines its own config next to its code (``train.TrainConfig``,
``estimator.EstimateConfig``, ...); recipes are YAML views of these same dataclasses.

One validation style for every config (issue #9): the dataclass's ``__post_init__``
calls ``validate()``, which checks every field and raises :class:`FieldError` (a
:class:`~sdcompress.errors.ConfigError`) naming the field as ``section.name``, the value
received and the fix. So a config that exists is valid; code that changes a field after
construction calls ``validate()`` again (``RunConfig.resolved()`` does, for every
section, before anything is written). Front ends re-word a :class:`FieldError` under the
name the user typed (``--lr`` on the command line, ``train.lr`` in a recipe) from its
``key``, ``rule``, ``value`` and ``fix``.

The step size η and weight decay wd are checked in one place, :func:`check_step_size`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sdcompress.errors import ConfigError


class FieldError(ConfigError):
    """One config field holds a value outside its range.

    Args:
        section: the config section (``"train"``, ``"estimate"``, ...; ``""`` for a
            field of the top-level config or of a plain function argument).
        name: the field (a dotted path below ``section`` for cross-section checks).
        rule: what the value must be, completing "must be ...".
        value: the value received.
        fix: how to fix it (optional).

    Attributes:
        key: ``section.name`` (or ``name``), how recipes and ``--set`` spell the field.
        detail: the message without the field's name: ``"must be > 0, got 0; fix"``.
    """

    def __init__(self, section: str, name: str, rule: str, value: Any, fix: str = "") -> None:
        self.section, self.name, self.rule, self.value, self.fix = section, name, rule, value, fix
        self.key = f"{section}.{name}" if section else name
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        self.detail = f"must be {rule}, got {shown}" + (f"; {fix}" if fix else "")
        super().__init__(self.as_named(self.key))

    def as_named(self, label: str) -> str:
        """The message with the field called ``label`` (e.g. the CLI option ``--lr``)."""
        return f"{label} {self.detail}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.section, self.name, self.rule, self.value, self.fix))


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def need_int(section: str, name: str, value: Any, minimum: int = 1, fix: str = "") -> None:
    """Raise :class:`FieldError` unless ``value`` is an integer ≥ ``minimum``."""
    if not is_int(value) or value < minimum:
        raise FieldError(section, name, f"an integer ≥ {minimum}", value, fix)


#: ``lr: auto``: η chosen from the sharpness at the start of training (:mod:`sdcompress.train.step_size`)
AUTO_LR = "auto"


def check_step_size(lr: Any, weight_decay: Any = 0.0, *, section: str = "", lr_name: str = "lr",
                    wd_name: str = "weight_decay", allow_auto: bool = False) -> tuple[float | str, float]:
    """The one check of the SGD step size η and the coupled weight decay wd.

    Args:
        lr: η, a finite number > 0 (or ``"auto"`` where ``allow_auto``).
        weight_decay: wd, a finite number ≥ 0.
        section, lr_name, wd_name: how the caller names them in messages.
        allow_auto: accept ``"auto"`` (η chosen from the sharpness at the start of training,
            :mod:`sdcompress.train.step_size`); it is returned as is.

    Returns:
        ``(float(lr), float(weight_decay))`` (``("auto", wd)`` for an allowed ``auto``).

    Raises:
        FieldError: either is out of range (naming it, the value and the fix).
    """
    auto = allow_auto and lr == AUTO_LR
    if not auto and (not is_number(lr) or not lr > 0):
        if allow_auto:
            raise FieldError(section, lr_name, "a finite number > 0 or 'auto'", lr,
                             "pass the constant SGD step size η, e.g. 0.1, or auto (η = 2/λ_max at the start)")
        raise FieldError(section, lr_name, "a finite number > 0", lr,
                         "pass the constant SGD step size η the model is (or was) trained with, e.g. 0.1")
    if not is_number(weight_decay) or weight_decay < 0:
        raise FieldError(section, wd_name, "a finite number ≥ 0", weight_decay, "pass 0 for plain SGD, e.g. 0.01 with decay")
    return (AUTO_LR if auto else float(lr)), float(weight_decay)


class Validated:
    """Mixin of every config dataclass: ``__post_init__`` runs ``validate()``."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> Any:  # overridden; returns self so calls chain
        return self


@dataclass
class DataConfig(Validated):
    """Which dataset, and how minibatches are drawn (the noise ω).

    Attributes:
        name: built-in (``pydoc``, ``digits``, ``modular``), local path, or hub name;
            ``None`` picks the model's default (tiny-gpt2 → pydoc, mlp → digits,
            modular-mlp → modular).
        batch_size: examples per SGD minibatch.
        seed: seed of the minibatch stream ω (and of seeded splits).
        replacement: draw each minibatch with replacement instead of by epochs.
        block_size: tokens per block for language modelling (≥ 2: a block of T tokens
            predicts T − 1).
        train_fraction: train split fraction (digits, modular); ``None``: the loader's default.
        p: modulus of the ``modular`` dataset.
    """

    SECTION: ClassVar[str] = "data"

    name: str | None = None
    batch_size: int = 16
    seed: int = 0
    replacement: bool = False
    block_size: int = 64
    train_fraction: float | None = None
    p: int = 97

    def validate(self) -> "DataConfig":
        """Check every field; returns ``self``.

        Raises:
            FieldError: naming the field, the value and the fix.
        """
        s = self.SECTION
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise FieldError(s, "name", "a dataset name or path, or null for the model's default", self.name)
        need_int(s, "batch_size", self.batch_size, 1, "examples per minibatch, e.g. 16")
        need_int(s, "seed", self.seed, 0)
        if not isinstance(self.replacement, bool):
            raise FieldError(s, "replacement", "true or false", self.replacement)
        need_int(s, "block_size", self.block_size, 2, "tokens per block; a block of T tokens predicts T − 1")
        if self.train_fraction is not None and (not is_number(self.train_fraction) or not 0 < self.train_fraction < 1):
            raise FieldError(s, "train_fraction", "in (0, 1) or null", self.train_fraction)
        need_int(s, "p", self.p, 2, "the modulus of the modular dataset, e.g. 97")
        return self


@dataclass
class ModelConfig(Validated):
    """Which model.

    Attributes:
        name: ``tiny-gpt2``, ``mlp``, ``modular-mlp``, a ``save_pretrained`` folder, or a hub name.
        options: constructor options of a built-in (``n_layer``, ``widths``, ``hidden``, ...).
        seed: initialisation seed of built-ins.
    """

    SECTION: ClassVar[str] = "model"

    name: str = "tiny-gpt2"
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def validate(self) -> "ModelConfig":
        """Check every field; returns ``self``.

        Raises:
            FieldError: naming the field, the value and the fix.
        """
        s = self.SECTION
        if not isinstance(self.name, str) or not self.name.strip():
            raise FieldError(s, "name", "a built-in name (tiny-gpt2, mlp, modular-mlp), a model folder or a hub name", self.name)
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise FieldError(s, "options", "a mapping of constructor option names to values", self.options)
        need_int(s, "seed", self.seed, 0)
        return self


__all__ = ["AUTO_LR", "DataConfig", "FieldError", "ModelConfig", "Validated", "check_step_size", "is_int", "is_number", "need_int"]
