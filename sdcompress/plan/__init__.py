"""Compression plans: the schema, the SD-guided planner and the baselines.

``plan(estimate, modules, config)`` is :func:`sdcompress.plan.planner.make_plan`. The
package itself is callable with the same arguments, because ``from sdcompress import
plan`` can return this package instead of the function once it has been imported (a
package attribute set by the import system wins over the lazy export table).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from sdcompress.plan.baselines import energy_rank, fisher_row_weights, hawq_cost, plan_baseline
from sdcompress.plan.config import BASELINES, BUDGET_KEYS, CURVATURE_STRATEGIES, STRATEGIES, SUPPORTED_BITS, PlanConfig
from sdcompress.plan.curvature import ModuleCurvature, curvature_from_dict, module_curvature, rank_grid
from sdcompress.plan.planner import (
    allot,
    curvature_options,
    importance_weights,
    make_plan,
    measured_shares,
    module_floors,
    plan_sd,
    rank_floor,
    water_fill,
)
from sdcompress.plan.schema import ALLOWED_BITS, KNOWN_STRATEGIES, PLAN_VERSION, ModulePlan, Plan, kept_count, quantized_bytes
from sdcompress.plan.sizing import RankOption, fit_budget, greedy_path, path_prefix, rank_options, size_fraction
from sdcompress.plan.targets import (
    ModuleInfo,
    ModuleStats,
    candidate_modules,
    check_rank,
    check_target_rank,
    default_targets,
    describe_modules,
    module_statistics,
    resolve_targets,
    stats_to_dict,
)
from sdcompress.plan.inputs import PlanningInputs, needs_curvature, planning_inputs

plan = make_plan

__all__ = [
    "ALLOWED_BITS",
    "BASELINES",
    "BUDGET_KEYS",
    "CURVATURE_STRATEGIES",
    "ModuleCurvature",
    "RankOption",
    "curvature_from_dict",
    "curvature_options",
    "greedy_path",
    "hawq_cost",
    "measured_shares",
    "module_curvature",
    "path_prefix",
    "rank_grid",
    "rank_options",
    "KNOWN_STRATEGIES",
    "ModuleInfo",
    "ModulePlan",
    "PlanningInputs",
    "ModuleStats",
    "PLAN_VERSION",
    "Plan",
    "PlanConfig",
    "STRATEGIES",
    "SUPPORTED_BITS",
    "allot",
    "candidate_modules",
    "check_rank",
    "check_target_rank",
    "default_targets",
    "describe_modules",
    "energy_rank",
    "fisher_row_weights",
    "fit_budget",
    "importance_weights",
    "kept_count",
    "make_plan",
    "module_floors",
    "module_statistics",
    "needs_curvature",
    "plan",
    "plan_baseline",
    "plan_sd",
    "planning_inputs",
    "quantized_bytes",
    "rank_floor",
    "resolve_targets",
    "size_fraction",
    "stats_to_dict",
    "water_fill",
]


class _CallablePackage(types.ModuleType):
    """``sdcompress.plan(...)`` is ``make_plan(...)`` (see the module docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Plan:
        return make_plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
