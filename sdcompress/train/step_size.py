"""``lr: auto``: the constant step size η chosen from the sharpness at the start.

A checkpoint trained by someone else (``gpt2``, a ``save_pretrained`` folder) comes with no
step size of its own, and no single η fits every model: the generic η = 0.3 makes
GPT-2-small diverge (its λ_max(H_B) at initialisation is ≈ 2,900, so 2/η must be about
7·10⁻⁴). ``auto`` measures λ_0 = λ_max(H_{B_0}(w_0)), the top eigenvalue of the Hessian of
the first minibatch at the starting weights, and sets

    η = AUTO_LR_FRACTION · 2(1 + μ) / (λ_0 + wd),

the stability threshold of the SGD step map (``sdcompress.train.eos``) scaled by the
fraction. With the fraction 1 the run starts at the edge of stability: its top direction
is on the boundary between contraction and oscillation, and the SGD phase that follows
is where the sharpness is held at 2/η (or, where it falls, where progressive sharpening
brings it back). λ_0 is the value the step-0 log record shows (same batch, same seeded
Lanczos start, same number of steps), so ``auto`` costs no extra products.

The choice is deterministic (a function of the weights, the first batch and the seed)
and is recorded in the training log, which later stages read: resuming gives the same η.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from sdcompress.errors import ConfigError
from sdcompress.train.config import AUTO_LR, TrainConfig

#: η = AUTO_LR_FRACTION · 2(1 + μ)/(λ_0 + wd): at 1, the run starts at the stability edge.
AUTO_LR_FRACTION = 1.0


def auto_step_size(lambda_0: float, *, weight_decay: float = 0.0, momentum: float = 0.0,
                   fraction: float = AUTO_LR_FRACTION) -> float:
    """η = fraction · 2(1 + μ) / (λ_0 + wd) (module docstring).

    Args:
        lambda_0: λ_max of the first minibatch's Hessian at the starting weights.
        weight_decay: coupled weight decay wd.
        momentum: heavy-ball momentum μ.
        fraction: share of the stability threshold.

    Returns:
        The step size η > 0.

    Raises:
        ConfigError: λ_0 + wd is not a finite positive number (a flat or concave start has
            no edge of stability to aim at): the message asks for an explicit ``--lr``.
    """
    curvature = float(lambda_0) + float(weight_decay)
    if not math.isfinite(curvature) or curvature <= 0:
        raise ConfigError(
            f"train.lr auto needs a positive top Hessian eigenvalue at the start, but λ_max + wd = {curvature:.4g} "
            f"(λ_max = {float(lambda_0):.4g}): the loss is flat or concave there; pass an explicit --lr (e.g. 0.1)")
    return float(fraction) * 2.0 * (1.0 + float(momentum)) / curvature


def resolve_auto(config: TrainConfig, lambda_0: float) -> TrainConfig:
    """``config`` with ``lr`` set from ``lambda_0`` when it is ``auto`` (unchanged otherwise)."""
    if config.lr != AUTO_LR:
        return config
    return replace(config, lr=auto_step_size(lambda_0, weight_decay=config.weight_decay, momentum=config.momentum))


def trained_lr(log: dict[str, Any]) -> float | None:
    """The step size a training log records (``TrainResult.to_dict()``), or ``None``."""
    lr = (log.get("config") or {}).get("lr")
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


__all__ = ["AUTO_LR", "AUTO_LR_FRACTION", "auto_step_size", "resolve_auto", "trained_lr"]
