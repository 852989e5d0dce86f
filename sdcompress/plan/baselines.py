"""Baseline planners, each sized to a budget so that it compares with the SD plan at equal size.

- ``uniform-rank``: every module keeps the same fraction ρ of its full rank,
  ``k = max(1, round(ρ · min(out, in)))``.
- ``size``: size-proportional: every module keeps the same fraction f of its stored
  values, ``k = max(1, ⌊f · out·in / (out + in)⌋)``.
- ``trace``: Hessian-trace-proportional (the split the issue calls "as in HAWQ"): the
  stored values are water-filled in proportion to each module's Hessian trace
  tr(H_mm) (capped at the module's size), ``k = max(1, ⌊alloc_m / (out + in)⌋)``.
- ``hawq``: HAWQ-v2's criterion (Dong et al., NeurIPS 2020) for ranks: the greedy split
  of :func:`sdcompress.plan.sizing.greedy_path` minimising Σ_m (tr(H_mm)/n_m) ·
  ‖W_m − W_m,k‖²_F, i.e. average curvature times the squared truncation error.
  ``trace`` and ``hawq`` need :func:`sdcompress.plan.curvature.module_curvature`.
- ``energy``: per module the smallest k keeping a fraction τ of the squared singular
  values, ``Σ_{j≤k} σ_j² ≥ τ Σ_j σ_j²`` (one τ for all modules).
- ``fisher``: Fisher-weighted SVD (Hsu et al., ICLR 2022): the ranks of
  ``uniform-rank``, with row weights ``Σ_j E[(∂L/∂W_ij)²]`` so the truncation keeps
  what matters to the loss.
- ``magnitude``: every module keeps the same fraction of its largest-|W| weights.
- ``uniform-bits``: every module at 8 bits, or at 4 when 8 does not fit (two sizes only:
  this baseline cannot be tuned to an arbitrary budget, and its notes say so).

The knob (ρ, τ, kept fraction) is set by bisection to the largest plan within the budget
(:func:`sdcompress.plan.sizing.fit_budget`). A factorisation that would store at least
``out·in`` values keeps the module dense. All functions are pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sdcompress.errors import ConfigError, PlanError
from sdcompress.estimator.result import SDEstimate
from sdcompress.plan.config import BASELINES, PlanConfig
from sdcompress.plan.curvature import ModuleCurvature
from sdcompress.plan.schema import ModulePlan, Plan
from sdcompress.plan.sizing import fit_budget, greedy_path, path_prefix, rank_options, size_fraction
from sdcompress.plan.targets import ModuleInfo, ModuleStats


def _lowrank_or_dense(m: ModuleInfo, k: int, bits: int | None, group: int, reason: str, rows=None) -> ModulePlan:
    o, i = m.out_features, m.in_features
    if k * (o + i) >= o * i:
        return ModulePlan(m.name, o, i, bits=bits, group_size=group, reason=f"{reason}: k(o+i) ≥ o·i, kept dense")
    return ModulePlan(m.name, o, i, rank=k, bits=bits, group_size=group, row_weights=rows, reason=reason)


def _need_stats(modules: Sequence[ModuleInfo], stats: Mapping[str, ModuleStats], what: str, strategy: str) -> None:
    missing = [m.name for m in modules if m.name not in stats or (what == "fisher" and stats[m.name].fisher_rows is None)]
    if missing:
        raise PlanError(
            f"baseline {strategy!r} needs {what} statistics of every module; missing for {missing[:4]}: compute them with "
            "sdcompress.plan.module_statistics(model, modules, batches)"
        )


def _need_curvature(modules: Sequence[ModuleInfo], curvature: Mapping[str, ModuleCurvature] | None, strategy: str) -> None:
    missing = [m.name for m in modules if not curvature or m.name not in curvature]
    if missing:
        raise PlanError(
            f"baseline {strategy!r} needs the per-module Hessian trace of every module; missing for {missing[:4]}: compute it "
            "with sdcompress.plan.module_curvature(model, modules, batches) (curvature_batches ≥ 1 in the pipeline)"
        )


def hawq_cost(curv: ModuleCurvature, stats: ModuleStats | None, k: int) -> float:
    """HAWQ-v2's sensitivity of rank k: ``max(tr(H_mm), 0) / n_m · Σ_{j>k} σ_j²`` (exact
    singular values from ``stats`` when given, else the curvature's measured ‖δ_k‖²)."""
    if stats is not None:
        tail = sum(s * s for s in stats.singular_values[k:])
    else:
        from sdcompress.plan.curvature import _interp

        tail = max(_interp(curv.ranks, curv.sq_norms, k), 0.0)
    return max(curv.trace, 0.0) / curv.numel * tail


def energy_rank(singular_values: Sequence[float], tau: float) -> int:
    """Smallest ``k ≥ 1`` with ``Σ_{j≤k} σ_j² ≥ τ Σ σ_j²``."""
    sq = [s * s for s in singular_values]
    total, run = sum(sq), 0.0
    if total <= 0:
        return 1
    for k, v in enumerate(sq, start=1):
        run += v
        if run >= tau * total * (1 - 1e-12):
            return k
    return len(sq)


def fisher_row_weights(fisher_rows: Sequence[float]) -> tuple[float, ...]:
    """Fisher row sums normalised to mean 1, floored at 1e-6 (weights must be > 0)."""
    mean = sum(fisher_rows) / len(fisher_rows)
    if not mean > 0:
        return tuple(1.0 for _ in fisher_rows)
    return tuple(float(f"{max(f / mean, 1e-6):.6g}") for f in fisher_rows)


def _make(strategy: str, modules: Sequence[ModuleInfo], stats: Mapping[str, ModuleStats], bits: int | None, group: int,
          curvature: Mapping[str, ModuleCurvature] | None = None):
    """knob → module plans for one baseline."""
    if strategy == "size":

        def make(f: float) -> list[ModulePlan]:
            out = []
            for m in modules:
                k = max(1, min(min(m.out_features, m.in_features), int(f * m.numel / (m.out_features + m.in_features))))
                out.append(_lowrank_or_dense(m, k, bits, group, f"size-proportional: keeps {f:.3f} of its values → rank {k}"))
            return out

        return make, 0.0, 1.0
    if strategy == "trace":
        from sdcompress.plan.planner import water_fill

        traces = [max(curvature[m.name].trace, 0.0) for m in modules]
        shares = traces if sum(traces) > 0 else [float(m.numel) for m in modules]
        total_size = sum(m.numel for m in modules)

        def make(f: float) -> list[ModulePlan]:
            alloc = water_fill([m.numel for m in modules], shares, f * total_size)
            out = []
            for m, a, t in zip(modules, alloc, traces):
                k = max(1, min(min(m.out_features, m.in_features), int(a / (m.out_features + m.in_features))))
                out.append(_lowrank_or_dense(m, k, bits, group,
                                             f"trace-proportional: tr(H_mm) = {t:.4g} → {a:.0f} stored values → rank {k}"))
            return out

        return make, 0.0, 1.0
    if strategy == "hawq":
        options = {m.name: rank_options(m.out_features, m.in_features,
                                        lambda k, m=m: hawq_cost(curvature[m.name], stats.get(m.name), k)) for m in modules}
        path = greedy_path(options)
        total_size = sum(m.numel for m in modules)

        def make(f: float) -> list[ModulePlan]:
            cur = path_prefix(options, path, f * total_size, key="stored")
            out = []
            for m in modules:
                opt = options[m.name][cur[m.name]]
                why = f"HAWQ-v2 greedy: tr(H_mm)/n = {curvature[m.name].trace / m.numel:.3g}, Ω = {opt.cost:.3g}"
                if opt.rank is None:
                    out.append(ModulePlan(m.name, m.out_features, m.in_features, bits=bits, group_size=group, reason=f"{why}: dense"))
                else:
                    out.append(ModulePlan(m.name, m.out_features, m.in_features, rank=opt.rank, bits=bits, group_size=group,
                                          reason=f"{why}: rank {opt.rank}"))
            return out

        return make, 0.0, 1.0
    if strategy in ("uniform-rank", "fisher"):
        rows = {m.name: fisher_row_weights(stats[m.name].fisher_rows) for m in modules} if strategy == "fisher" else {}

        def make(rho: float) -> list[ModulePlan]:
            out = []
            for m in modules:
                k = max(1, min(min(m.out_features, m.in_features), round(rho * min(m.out_features, m.in_features))))
                tag = "Fisher-weighted SVD" if strategy == "fisher" else "uniform rank"
                out.append(_lowrank_or_dense(m, k, bits, group, f"{tag}: {rho:.3f} of full rank → {k}", rows.get(m.name)))
            return out

        return make, 0.0, 1.0
    if strategy == "energy":

        def make(tau: float) -> list[ModulePlan]:
            return [
                _lowrank_or_dense(m, k := energy_rank(stats[m.name].singular_values, tau), bits, group,
                                  f"energy threshold: keeps {tau:.4f} of Σσ² → rank {k}")
                for m in modules
            ]

        return make, 0.0, 1.0
    if strategy == "magnitude":

        def make(f: float) -> list[ModulePlan]:
            out = []
            for m in modules:
                if f >= 1.0:
                    out.append(ModulePlan(m.name, m.out_features, m.in_features, bits=bits, group_size=group, reason="all weights kept"))
                else:
                    out.append(ModulePlan(m.name, m.out_features, m.in_features, keep_fraction=f, bits=bits, group_size=group,
                                          reason=f"magnitude pruning: keeps the largest {f:.4f} of |W|"))
            return out

        return make, 1.0 / min(m.numel for m in modules), 1.0
    raise ConfigError(f"unknown baseline {strategy!r}; choose one of {list(BASELINES)}")


def plan_baseline(
    strategy: str,
    modules: Sequence[ModuleInfo],
    stats: Mapping[str, ModuleStats],
    config: PlanConfig | None = None,
    *,
    budget: Mapping[str, float],
    estimate: SDEstimate | None = None,
    curvature: Mapping[str, ModuleCurvature] | None = None,
) -> Plan:
    """A baseline plan sized to ``budget``.

    Args:
        strategy: one of ``uniform-rank``, ``size``, ``trace``, ``hawq``, ``energy``,
            ``fisher``, ``magnitude``, ``uniform-bits``.
        modules: target modules.
        stats: per-module statistics (singular values for ``energy``; Fisher rows for ``fisher``).
        curvature: per-module curvature (``trace`` and ``hawq``; :func:`sdcompress.plan.curvature.module_curvature`).
        config: ``bits`` (8/4) quantizes the kept values too; ``group_size``.
        budget: ``{"params_fraction": f}`` or ``{"bytes_fraction": f}``.
        estimate: recorded in the plan (``sd``, ``d``) when given.

    Raises:
        ConfigError: unknown strategy or a budget this baseline cannot express.
        PlanError: statistics missing.
    """
    config = config or PlanConfig()
    if not modules:
        raise PlanError("no target modules to plan for")
    if len(budget) != 1:
        raise ConfigError(f"a baseline needs exactly one budget entry (params_fraction or bytes_fraction), got {dict(budget)!r}")
    (key, target), = budget.items()
    bits = config.bits if config.bits_mode == "manual" else None
    group = config.group_size
    notes = []
    if config.bits_mode == "auto" and strategy != "uniform-bits":
        notes.append("bits='auto' is SD-guided; this baseline keeps float weights")
    if strategy == "uniform-bits":
        if key != "bytes_fraction":
            raise ConfigError("uniform-bits changes bytes, not parameter counts: give it a bytes_fraction budget")
        plans = []
        for b in (8, 4):
            plans = [ModulePlan(m.name, m.out_features, m.in_features, bits=b, group_size=group, reason=f"uniform {b} bits")
                     for m in modules]
            if size_fraction(plans, key) <= target:
                break
        met = size_fraction(plans, key) <= target
        notes.append("uniform bits has two sizes only (8 or 4 bits); it is compared at its own size")
        knob = float(plans[0].bits)
    else:
        if strategy == "energy":
            _need_stats(modules, stats, "singular-value", strategy)
        if strategy == "fisher":
            _need_stats(modules, stats, "fisher", strategy)
        if strategy in ("trace", "hawq"):
            _need_curvature(modules, curvature, strategy)
        make, lo, hi = _make(strategy, modules, stats, bits, group, curvature)
        knob, plans, met = fit_budget(make, lo, hi, key, target)
    if not met:
        notes.append(f"budget {key} = {target:g} is not met: the smallest {strategy} plan has {size_fraction(plans, key):.3f}")
    realised = {k: round(size_fraction(plans, k), 6) for k in ("params_fraction", "bytes_fraction")}
    plan = Plan(
        modules=tuple(plans),
        strategy=strategy,
        sd=None if estimate is None else float(estimate.sd),
        d=None if estimate is None else int(estimate.d),
        budget={key: float(target), "knob": knob, "achieved": realised},
        notes=tuple(notes),
    )
    plan.validate()
    return plan


__all__ = ["energy_rank", "fisher_row_weights", "hawq_cost", "plan_baseline"]
