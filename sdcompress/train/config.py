"""``TrainConfig``: constant-step SGD at the edge of stability, and the built-in defaults.

Recipes are YAML views of this dataclass (plain types only). Batch size, minibatch seed
and sampling live in :class:`sdcompress.config.DataConfig`: they define the noise ω,
which belongs to the data, not to the optimiser.

Why weight decay is on by default
---------------------------------
Without weight decay the minibatch Hessian has hundreds of exactly-zero eigenvalues
(neutral exponents ln|1 − η·0| = 0) and the Sharpness Dimension comes out ≈ d
(PAPER.md §7), which leaves nothing for SD-guided compression. With coupled weight
decay the SGD step is w ↦ w − η(∇L_B(w) + wd·w), its Jacobian (1 − η·wd) I − η H_B, and
the neutral bulk contracts (ln(1 − η·wd) < 0). The built-in defaults use wd = 1e-2.
Measured on ``tiny-gpt2`` (η = 0.3, 1,500 steps, batch 16; SD by the pseudo-spectrum
estimator, 8 SLQ runs × 40 Lanczos steps):

    | wd   | SD/d  | train loss | test loss | at EoS |
    | ---- | ----- | ---------- | --------- | ------ |
    | 0    | 0.993 | 2.49       | 2.43      | yes    |
    | 1e-3 | 0.989 | 2.52       | 2.45      | yes    |
    | 3e-3 | 0.978 | 2.67       | 2.59      | yes    |
    | 1e-2 | 0.563 | 2.87       | 2.79      | yes    |

(losses in nats per byte on fixed 64-block subsets, at the last step; at EoS they
oscillate by ±0.1). Only wd = 1e-2 moves SD well below d, at a cost of ≈ 0.35 nats of
loss after the same number of steps; on the ``digits`` MLP wd = 1e-2 gave SD/d ≈ 0.56 at
η = 0.2 in the reference measurements with test accuracy kept (PAPER.md §7). Pass
``weight_decay=0`` (``--weight-decay 0``) for plain SGD as in the paper's MNIST runs.

Built-in defaults (measured on this project's 2-core CPU machine, one torch thread)
-----------------------------------------------------------------------------------
- ``tiny-gpt2`` (35,744 parameters, block 64) on ``pydoc``, batch 16: η = 0.3, 1,500
  steps, λ_max logged every 100 steps. At initialisation λ_max(H_B) ≈ 32 > 2/η ≈ 6.7:
  the first steps catapult, then λ_max(H_B) + wd settles at about 1.1–1.8 × 2/η
  (minibatch Hessians sit above the full-batch sharpness) while the train loss falls
  from 5.5 to ≈ 2.8 nats/byte. 65–130 s depending on the machine's load.
- ``mlp`` (64-16-16-10, ReLU, no bias, 1,440 parameters) on ``digits``, batch 64:
  η = 0.2, 1,000 steps. λ_max rises from 0.35 (progressive sharpening) to 2/η = 10 by
  step ≈ 150 and then hovers at 0.65–1.3 × 2/η while the train loss falls to ≈ 0.18
  (test accuracy ≈ 0.93). About 5 s.
- ``modular-mlp`` on ``modular`` (p = 97): η = 10, batch 64, 12,000 steps, wd = 1e-3
  (η·wd = 1e-2 per step already; wd = 1e-2 would shrink the weights by 10 % a step and
  nothing is learnt). Its loss is very flat at the default initialisation: λ_max + wd
  creeps from 0.47 × 2/η past the 0.8 bar at step ≈ 2,500 and hovers at ≈ 0.9 × 2/η
  (the verdict says "at EoS"), but
  the train loss only falls from 4.58 (= ln 97) to ≈ 4.45 and test loss rises. About
  20 s. A weak default: η = 3 learns faster (train loss 3.98 after 8,000 steps) but stays
  at 0.38 × 2/η, η = 30 sits at 2 × 2/η without learning. Tuning grokking runs is the job
  of the experiments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from sdcompress.config import AUTO_LR, DataConfig, FieldError, Validated, check_step_size, is_number, need_int
from sdcompress.errors import ConfigError
from sdcompress.models.loader import BUILTIN_MODELS, DEFAULT_DATASET

DEFAULT_WEIGHT_DECAY = 1e-2


@dataclass
class TrainConfig(Validated):
    """Constant-step SGD, its log, the EoS verdict and checkpoints.

    The step map is ``torch.optim.SGD`` with coupled weight decay: with momentum μ = 0,
    w_{t+1} = w_t − η (∇L_{B_t}(w_t) + wd · w_t), B_t the t-th batch of the seeded stream.
    It is linearly stable while λ_max(H_B) + wd < 2/η (the eigenvalues of its Jacobian
    (1 − η·wd) I − η H_B stay above −1); with momentum μ the bound is 2(1 + μ)/η. The EoS
    verdict compares λ_max(H_B) + wd with 2(1 + μ)/η (:mod:`sdcompress.train.eos`).

    Attributes:
        lr: constant step size η > 0, or ``"auto"``: η = 2(1 + μ)/(λ_0 + wd) from the top
            Hessian eigenvalue λ_0 of the first minibatch at the starting weights
            (:mod:`sdcompress.train.step_size`; the default for models that are not built in).
        steps: number of SGD steps.
        momentum: heavy-ball momentum μ in [0, 1) (``torch.optim.SGD``, no dampening).
        weight_decay: coupled L2 coefficient wd ≥ 0 (default 1e-2: see the module docstring).
        log_every: log (losses, λ_max) every this many steps, plus step 0 and the last step.
        sharpness_steps: Lanczos steps for λ_max of the minibatch Hessian.
        eval_batches: batches (of the training batch size) in the fixed train and test
            subsets that the logged train/test losses are computed on.
        eos_window: fraction of the logged points, at the end, that the EoS verdict looks at.
        eos_tolerance: a logged point is at EoS when λ_max + wd ≥ (1 − tol) · 2/η.
        checkpoint_every: save model + optimizer state every this many steps (and at the end).
    """

    SECTION: ClassVar[str] = "train"

    lr: float | str = 0.3
    steps: int = 1500
    momentum: float = 0.0
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    log_every: int = 100
    sharpness_steps: int = 20
    eval_batches: int = 4
    eos_window: float = 0.5
    eos_tolerance: float = 0.2
    checkpoint_every: int = 500

    def validate(self) -> "TrainConfig":
        """Check every field; returns ``self`` (run on construction).

        Raises:
            FieldError: naming the field (``train.NAME``), the received value and the fix.
        """
        s = self.SECTION
        check_step_size(self.lr, self.weight_decay, section=s, allow_auto=True)
        for name in ("momentum", "eos_window", "eos_tolerance"):
            if not is_number(getattr(self, name)):
                raise FieldError(s, name, "a finite number", getattr(self, name))
        need_int(s, "steps", self.steps, 0, "the number of SGD steps, e.g. 1000")
        for name in ("log_every", "sharpness_steps", "eval_batches", "checkpoint_every"):
            need_int(s, name, getattr(self, name), 1)
        if not 0 <= self.momentum < 1:
            raise FieldError(s, "momentum", "in [0, 1)", self.momentum, "0 for plain SGD, e.g. 0.9 for heavy ball")
        if not 0 < self.eos_window <= 1:
            raise FieldError(s, "eos_window", "in (0, 1]", self.eos_window)
        if not 0 <= self.eos_tolerance < 1:
            raise FieldError(s, "eos_tolerance", "in [0, 1)", self.eos_tolerance)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping; unknown keys are errors.

        Raises:
            ConfigError: an unknown key.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown train setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


#: Per built-in model: (train settings, data settings) that reach EoS (see the module docstring).
BUILTIN_DEFAULTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny-gpt2": (dict(lr=0.3, steps=1500, log_every=100, checkpoint_every=500), dict(batch_size=16)),
    "mlp": (dict(lr=0.2, steps=1000, log_every=50, checkpoint_every=500), dict(batch_size=64)),
    "modular-mlp": (dict(lr=10.0, steps=12000, weight_decay=1e-3, log_every=500, checkpoint_every=2000), dict(batch_size=64)),
}


#: Train settings of a model that is not built in (a checkpoint): η from its sharpness.
CHECKPOINT_DEFAULTS: dict[str, Any] = dict(lr=AUTO_LR)


def default_train_config(model: str) -> TrainConfig:
    """The documented EoS training defaults of a built-in model; for any other model (a
    checkpoint, whose step size nobody knows) ``lr: auto``."""
    train, _ = BUILTIN_DEFAULTS.get(model, (CHECKPOINT_DEFAULTS, {}))
    return TrainConfig(**train)


def default_data_config(model: str) -> DataConfig:
    """The data settings that go with :func:`default_train_config` (dataset, batch size)."""
    _, data = BUILTIN_DEFAULTS.get(model, ({}, {}))
    return DataConfig(name=DEFAULT_DATASET.get(model), **data)


__all__ = [
    "AUTO_LR",
    "BUILTIN_DEFAULTS",
    "CHECKPOINT_DEFAULTS",
    "BUILTIN_MODELS",
    "DEFAULT_WEIGHT_DECAY",
    "TrainConfig",
    "default_data_config",
    "default_train_config",
]
