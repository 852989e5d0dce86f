"""The planning glue: what the pure planner needs from a model, gathered in one place.

:func:`planning_inputs` finds the target modules (:func:`~sdcompress.plan.targets.describe_modules`),
refuses a hand-set rank above a target's full rank, and measures what the strategy needs:
singular values (``energy``), Fisher row sums (``fisher``) and the per-module curvature
(``sd``, ``trace``, ``hawq``; :mod:`sdcompress.plan.curvature`). :func:`sdcompress.api.plan_model`,
the pipeline's closed loop and the experiments all call it, then :func:`~sdcompress.plan.make_plan`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sdcompress.data.core import Batch
from sdcompress.plan.config import CURVATURE_STRATEGIES, PlanConfig
from sdcompress.plan.curvature import ModuleCurvature, module_curvature
from sdcompress.plan.targets import ModuleInfo, ModuleStats, check_target_rank, describe_modules, module_statistics


@dataclass(frozen=True)
class PlanningInputs:
    """The planner's inputs from a model.

    Attributes:
        modules: the target modules, in model order.
        stats: singular values / Fisher rows (``energy`` and ``fisher`` only), else ``None``.
        curvature: per-module curvature (``sd``, ``trace``, ``hawq`` with batches), else ``None``.
    """

    modules: list[ModuleInfo]
    stats: Mapping[str, ModuleStats] | None = None
    curvature: Mapping[str, ModuleCurvature] | None = None


def needs_curvature(config: PlanConfig) -> bool:
    """The strategy splits by per-module curvature and ``curvature_batches`` > 0 (a hand-set
    rank of the SD planner needs none)."""
    return (config.strategy in CURVATURE_STRATEGIES and config.curvature_batches > 0
            and (config.strategy != "sd" or config.rank_mode == "auto"))


def planning_inputs(
    model: nn.Module,
    config: PlanConfig,
    *,
    params: Sequence[str] | None = None,
    fisher_batches: Sequence[Batch] = (),
    curvature_batches: Sequence[Batch] = (),
    loss_fn: Any = torch.nn.functional.cross_entropy,
) -> PlanningInputs:
    """Target modules and the statistics ``config.strategy`` needs (module docstring).

    Args:
        model: the model (not changed).
        config: the planner's settings (``targets``, ``ignore``, ``strategy``, ...).
        params: the parameter patterns of the estimate (``SDEstimate.params``).
        fisher_batches: minibatches of the Fisher baseline's squared gradients.
        curvature_batches: minibatches of the per-module curvature (the first
            ``config.curvature_batches`` are used; none: no curvature).
        loss_fn: loss on (logits, targets) for tuple batches.

    Raises:
        ModelError: a target pattern matches nothing.
        PlanError: a hand-set rank above a target's full rank.
    """
    modules = describe_modules(model, config.targets, config.ignore, params=list(params) if params else None)
    check_target_rank(config, modules)
    stats = None
    if config.strategy in ("energy", "fisher"):
        stats = module_statistics(model, modules, fisher_batches if config.strategy == "fisher" else (), loss_fn=loss_fn)
    curvature = None
    if needs_curvature(config) and curvature_batches:
        curvature = module_curvature(model, modules, list(curvature_batches)[: config.curvature_batches], loss_fn=loss_fn,
                                     probes=config.curvature_probes, seed=config.seed)
    return PlanningInputs(modules, stats, curvature)


__all__ = ["PlanningInputs", "needs_curvature", "planning_inputs"]
